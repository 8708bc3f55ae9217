"""Expected noise is silenced only where it arises, and everything else comes back afterwards."""

import warnings

import lightning as L
import pytest
from datasets.utils import logging as datasets_logging
from transformers.utils import logging as transformers_logging

from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import AdapterFinetuneModule
from fedbiot_pl.quiet import EVAL_MODE_WARNING, expected_warnings, no_library_progress_bars
from tests.conftest import tiny_llama
from tests.toy_data import ToyFederatedData


@pytest.mark.parametrize("enabled", [True, False])
def test_library_progress_bars_are_off_inside_and_as_before_after(enabled):
    for library in (datasets_logging, transformers_logging):
        (library.enable_progress_bar if enabled else library.disable_progress_bar)()
    with no_library_progress_bars():
        assert not datasets_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()
    assert datasets_logging.is_progress_bar_enabled() is enabled
    assert transformers_logging.is_progress_bar_enabled() is enabled
    datasets_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()


def test_expected_warnings_ignores_only_the_named_messages():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with expected_warnings(EVAL_MODE_WARNING):
            warnings.warn("Found 193 module(s) in eval mode at the start of training. This may ...", stacklevel=1)
            warnings.warn("something the user must see", stacklevel=1)
        warnings.warn("Found 5 module(s) in eval mode at the start of training.", stacklevel=1)  # outside: shown
    assert [str(w.message)[:20] for w in seen] == ["something the user m", "Found 5 module(s) in"]


def test_a_module_fit_hides_the_eval_mode_warning_and_restores_the_filters():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    module = AdapterFinetuneModule(split)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    data = ToyFederatedData()
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=data.client_dataloader(0))
    assert any(not m.training for m in split.full.modules())  # frozen layers are in eval mode on purpose
    assert not [w for w in seen if "in eval mode at the start of training" in str(w.message)]
    assert warnings.filters == filters

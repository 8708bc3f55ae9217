"""The old name of the model views still imports, warns, and reads configs of runs made before the rename."""

import importlib

import pytest
import yaml

from fedbiot_pl.cli import DEFAULT_CONFIG
from fedbiot_pl.evaluate import run_views
from fedbiot_pl.model.views import ModelViews

STORIES = "embedded:models/stories260K"


@pytest.mark.parametrize("module", ["fedbiot_pl", "fedbiot_pl.split"])
def test_split_model_is_a_deprecated_alias_that_still_takes_the_algorithm(module):
    with pytest.warns(DeprecationWarning, match="SplitModel is deprecated: use fedbiot_pl.model.views.ModelViews"):
        split_model = importlib.import_module(module).SplitModel
    assert issubclass(split_model, ModelViews) and split_model.__name__ == "SplitModel"
    views = split_model(STORIES, algorithm="fedot")
    assert views.algorithm_name == "fedot" and views.layout.bottom_adapter == (0, 1)


def test_a_run_folder_written_before_the_rename_is_still_read(tmp_path):
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    # what train.py wrote then: the old class path, and the algorithm linked into the split
    config["model"]["split"] = {"class_path": "fedbiot_pl.split.SplitModel",
                                "init_args": {"model": STORIES, "adapter_layers": 1, "algorithm": "fedot"}}
    config["federated"] = {**config.get("federated", {}), "algorithm": "fedot"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(DeprecationWarning):
        views, tokenizer = run_views(tmp_path)
    assert views.algorithm_name == "fedot" and views.layout.top_adapter == (4,) and tokenizer == STORIES

"""The paper's recipes carry the reference's defaults where ours differ (issue 13, item 4, first part)."""

from pathlib import Path

import pytest

from fedbiot_pl.cli import read_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "llama2-7b").glob("*.yaml"))


def test_the_four_gsm8k_recipes_are_there():
    assert [r.name for r in RECIPES] == [f"gsm8k-adpt{k}-beta{b}.yaml" for k in (2, 4) for b in (0.2, 0.5)]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_paper_recipes_average_uniformly_and_count_padding_as_the_reference(recipe):
    config = read_config([recipe])  # the CLI's own parser: the recipe is valid as written
    assert config.federated.weighting == "uniform"  # the reference: 300 examples per client per round
    assert config.model.include_padding is True  # the reference's L2 and KL run over padded positions (B6)
    assert read_config([ROOT / "configs" / "gsm8k.yaml"]).federated.weighting == "examples"  # the toolkit default

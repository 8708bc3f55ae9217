"""Every sub-package ships: `pip install .` (not editable) installs only the packages pyproject.toml lists."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_with_an_init_is_listed_in_pyproject():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    folders = {name: Path(path) for name, path in setup["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set(), f"add {sorted(found - listed)} to [tool.setuptools] packages"


def test_the_flower_app_folder_ships_as_package_data():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "app/pyproject.toml" in setup["package-data"]["fedbiot_pl.flower"]
    assert (ROOT / "fedbiot_pl" / "flower" / "app" / "pyproject.toml").is_file()

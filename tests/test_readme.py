"""The README and docs: generated tables equal their JSON sources, commands exist, every module is listed."""

import re

import pytest

from core.report import BEGIN, BLOCKS, END, block_in, generated, results_table
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()
CORE = sorted(p for p in (ROOT / "core").glob("*.py") if p.stem != "__init__")


def test_results_table_is_the_generated_one(shipped_models):
    shipped = README.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shipped == results_table().strip(), "run: python -m core.report --update-readme"


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_generated_block_matches_its_json(name, shipped_models):
    assert block_in(name) == generated(name).strip(), "run: python -m core.report --update-readme"


def test_readme_shows_the_two_setup_commands_and_stays_short():
    assert "pip install -r requirements.txt && streamlit run app.py" in README
    assert "pip install -r requirements-dev.txt && python -m pytest" in README
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()
    assert len(README.encode()) <= 10 * 1024


def test_readme_cli_modules_exist_and_every_cli_is_documented():
    documented = set(re.findall(r"python -m (core\.\w+)", README))
    for module in documented:
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
    clis = {f"core.{p.stem}" for p in CORE if "\ndef main(" in p.read_text()}
    assert clis <= documented, clis - documented


def test_layout_names_every_module_and_links_resolve():
    layout = (ROOT / "docs" / "architecture.md").read_text()
    assert "docs/architecture.md" in README.split("## Layout", 1)[1]
    assert not [p.name for p in CORE if f" {p.name} " not in layout]
    for link in re.findall(r"\]\(((?:docs|models)/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link

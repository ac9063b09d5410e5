"""The README's numbers come from the shipped artifacts, and its commands exist."""

import re

from core.report import BEGIN, END, results_table
from tests.conftest import ROOT


def test_results_table_is_the_generated_one(shipped_models):
    text = (ROOT / "README.md").read_text()
    shipped = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shipped == results_table().strip(), "run: python -m core.report --update-readme"


def test_readme_shows_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert "pip install -r requirements.txt && streamlit run app.py" in text
    assert "pip install -r requirements-dev.txt && python -m pytest" in text
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_readme_cli_modules_exist():
    text = (ROOT / "README.md").read_text()
    for module in set(re.findall(r"python -m (core\.\w+)", text)):
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module

"""Fixtures: the dataset (found as the code finds it), the shipped models, and the ``slow`` switch.
Helpers live in :mod:`tests.helpers`; ``pyproject.toml`` puts the repository on the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import NO_DATA

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("PNEUMONIA_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or PNEUMONIA_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from core.data import find_data_dir

    found = find_data_dir(required=False)
    if found is None:
        pytest.skip(NO_DATA)
    return found


@pytest.fixture(scope="session")
def samples_dir(data_dir) -> Path:
    path = data_dir.parent / "samples_fullres"
    if not path.is_dir():
        pytest.skip("full-resolution samples (../shared/data/samples_fullres) not present")
    return path


@pytest.fixture(scope="session")
def shipped_models():
    from core.registry import available_models

    names = available_models()
    if not names:
        pytest.skip("no trained models under models/")
    return names

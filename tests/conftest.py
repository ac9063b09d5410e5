"""Shared fixtures: the dataset (found as the code finds it), generated images, tiny models."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NO_DATA = (
    "chest X-ray dataset not found: set PNEUMONIA_DATA_DIR to a Kaggle 'chest_xray' folder "
    "(or place it at ../shared/data/chest_xray) to run this test"
)


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


def xray_like(h: int = 300, w: int = 260, seed: int = 0) -> np.ndarray:
    """A synthetic grayscale 'chest X-ray': dark background, two bright lung-shaped fields."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 30 + 20 * rng.random((h, w))
    for cx in (0.32, 0.68):
        img += 140 * np.exp(-(((xx / w - cx) / 0.13) ** 2 + ((yy / h - 0.5) / 0.28) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def shipped_models():
    from core.registry import available_models

    names = available_models()
    if not names:
        pytest.skip("no trained models under models/")
    return names

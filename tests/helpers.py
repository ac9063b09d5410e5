"""Helpers the tests share: the repository root, generated images and a tiny generated dataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

NO_DATA = (
    "chest X-ray dataset not found: set PNEUMONIA_DATA_DIR to a Kaggle 'chest_xray' folder "
    "(or place it at ../shared/data/chest_xray) to run this test"
)


PAIR = np.zeros((224, 224), bool)  # a plausible pair of lungs, as a 224 x 224 mask
PAIR[40:190, 25:100] = PAIR[40:190, 124:200] = True


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


def tiny_dataset(root: Path, n: int = 24) -> Path:
    """A dataset folder of ``n`` normal and ``n`` pneumonia generated 96 x 96 images (one patient each),
    the pneumonia ones with an "opacity" in one lung; ``test/`` is empty."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
    for i in range(n):
        img = xray_like(96, 96, seed=i).astype(float)
        (root / "train" / "NORMAL" / f"IM-{i:04d}-0001.jpeg").write_bytes(encode(img.astype(np.uint8), "JPEG"))
        img[30:70, 20:45] += 80 + 20 * rng.random()  # an "opacity" in one lung
        (root / "train" / "PNEUMONIA" / f"person{i}_bacteria_{i}.jpeg").write_bytes(
            encode(np.clip(img, 0, 255).astype(np.uint8), "JPEG"))
    return root

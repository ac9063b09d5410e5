"""Find the chest X-ray dataset, split it by patient, and load it as arrays (no Keras here)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from core import LABELS
from core.errors import DatasetNotFoundError
from core.preprocessing import decode_image, load_grayscale

__all__ = [
    "DATA_ENV",
    "DatasetNotFoundError",
    "Sample",
    "find_data_dir",
    "list_split",
    "patient_id",
    "split_train_val",
    "fingerprint",
    "load_images",
    "class_weights",
    "identical_images",
]

DATA_ENV = "PNEUMONIA_DATA_DIR"
_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"
_EXTENSIONS = {".jpeg", ".jpg", ".png"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One image of the dataset."""

    path: Path
    label: int  # 0 = NORMAL, 1 = PNEUMONIA

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def patient(self) -> str:
        return patient_id(self.path.name)


def find_data_dir(data_dir: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """Locate the dataset.

    Order: the ``data_dir`` argument, the ``PNEUMONIA_DATA_DIR`` environment variable,
    then ``../shared/data/chest_xray`` beside the project.

    Args:
        data_dir: Explicit folder holding ``train/`` and ``test/``.
        required: Raise when nothing is found (otherwise return ``None``).

    Returns:
        The dataset folder, or ``None`` when absent and not required.

    Raises:
        DatasetNotFoundError: No usable folder was found and ``required`` is true.
    """
    candidates = [data_dir, os.environ.get(DATA_ENV), _DEFAULT]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate).expanduser()
        if (path / "train" / "NORMAL").is_dir() or (path / "test" / "NORMAL").is_dir():
            return path
        if candidate is not _DEFAULT:
            raise DatasetNotFoundError(
                f"{path} does not look like the chest X-ray dataset: expected "
                "train/NORMAL, train/PNEUMONIA, test/NORMAL, test/PNEUMONIA inside it."
            )
    if required:
        raise DatasetNotFoundError(
            "Chest X-ray dataset not found. Download Kaggle's 'chest-xray-pneumonia' data and "
            f"set {DATA_ENV}=/path/to/chest_xray (or pass --data-dir)."
        )
    return None


def patient_id(filename: str) -> str:
    """Patient identifier encoded in an official file name.

    ``person1430_bacteria_3695.jpeg`` -> ``person1430``; ``IM-0011-0001-0002.jpeg`` ->
    ``IM-0011``; ``NORMAL2-IM-0058-0001.jpeg`` -> ``NORMAL2-IM-0058``. Unknown names are
    their own patient.
    """
    stem = Path(filename).stem
    match = re.match(r"^(person\d+)_", stem) or re.match(r"^((?:NORMAL2-)?IM-\d+)-", stem)
    return match.group(1) if match else stem


def list_split(data_dir: Path, split: str) -> list[Sample]:
    """All images of one split, sorted by label then file name."""
    samples = []
    for label, name in enumerate(LABELS):
        folder = Path(data_dir) / split / name
        if not folder.is_dir():
            raise DatasetNotFoundError(f"Missing folder {folder}.")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _EXTENSIONS)
        samples += [Sample(p, label) for p in files]
    return samples


def split_train_val(
    samples: list[Sample], val_fraction: float = 0.1, seed: int = 42
) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``val_fraction`` of the patients, stratified by class.

    No patient appears on both sides. Deterministic for a given ``seed``.
    """
    n_splits = round(1 / val_fraction)
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient for s in samples])
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def fingerprint(samples: list[Sample]) -> str:
    """Short sha256 over (label, file name, size) of the given samples."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.label, s.name)):
        digest.update(f"{s.label}/{s.name}/{s.path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def class_weights(labels) -> np.ndarray:
    """Balanced class weights ``n / (2 * n_c)`` indexed by label."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    return (len(labels) / (2.0 * counts)).astype(np.float32)


def load_images(samples: list[Sample], size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Decode samples to a uint8 array ``(N, H, W)`` of grayscale images at ``size``."""
    out = np.empty((len(samples), size[0], size[1]), dtype=np.uint8)
    for i, s in enumerate(samples):
        out[i] = load_grayscale(s.path.read_bytes(), size=size)
    return out


def identical_images(samples: list[Sample]) -> dict[str, list[str]]:
    """For each sample whose decoded pixels equal another's, the names of the others (the official test set
    holds six such pairs, e.g. NORMAL2-IM-0095-0001 and NORMAL2-IM-0096-0001)."""
    groups: dict[str, list[str]] = {}
    for s in samples:
        pixels = decode_image(s.path.read_bytes(), s.name)
        key = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
        groups.setdefault(key, []).append(s.name)
    return {name: [o for o in names if o != name] for names in groups.values() if len(names) > 1 for name in names}

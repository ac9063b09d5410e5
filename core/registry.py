"""Every shipped artifact: where it lives, what it holds, and whether it is the file it should be.

``models/<name>/`` holds a model (:class:`ModelFiles`: ``model.keras``, ``card.json``, ``history.csv``,
``test_predictions.csv``, ``metrics.json``); ``models/ood/`` the out-of-distribution guard
(``guard.npz``, ``card.json``, ``report.json``); ``benchmarks/latest.json`` the last speed run; the
converted ImageNet weights live in the user's cache. Every weights file is checked against a
sha256 before use: the models' and the guard's against their cards, the converted weights
against the digest recorded here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from core.cards import ModelCard
from core.errors import ModelIntegrityError, ModelNotFoundError
from core.layers import LungCellPooling  # noqa: F401  (registers the layers a model file may name)
from core.runtime import cache_dir

__all__ = [
    "MODELS_DIR",
    "MODEL_NAMES",
    "GUARD_NAME",
    "ModelNotFoundError",
    "ModelIntegrityError",
    "ModelFiles",
    "GuardFiles",
    "ComponentFiles",
    "models_dir",
    "model_files",
    "guard_files",
    "lungs_files",
    "invariance_file",
    "available_models",
    "sha256_file",
    "verify_sha256",
    "load_card",
    "write_card",
    "load_keras_model",
    "load_metrics",
    "load_predictions",
    "load_history",
    "benchmark_file",
    "read_converted_weights",
    "write_converted_weights",
]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
MODEL_NAMES = ("baseline", "transfer", "finetuned", "lungfocus")
GUARD_NAME = "ood"
LUNGS_NAME = "lungs"

# Content digests (see _arrays_digest) of weights converted on the user's machine; a cached file
# that does not match is converted again, and a conversion that does not match is refused.
CONVERTED_WEIGHTS_SHA256 = {
    "efficientnet_lite0_imagenet": "673afeaae941252005656ba3f189df21df1795e09aeedbafed84c9cd54e6c1c7",
}


@dataclass(frozen=True)
class ModelFiles:
    """The files of one shipped model (:meth:`at` a folder)."""

    folder: Path
    card: Path
    weights: Path
    metrics: Path
    predictions: Path
    history: Path

    @classmethod
    def at(cls, folder: Path) -> ModelFiles:
        return cls(folder, *(folder / n for n in ("card.json", "model.keras", "metrics.json", "test_predictions.csv",
                                                  "history.csv")))


@dataclass(frozen=True)
class ComponentFiles:
    """The files of a serving component that is not a classifier (the guard, the lung segmenter)."""

    folder: Path
    card: Path
    weights: Path
    report: Path

    @classmethod
    def at(cls, folder: Path, weights: str, report: str) -> ComponentFiles:
        return cls(folder, folder / "card.json", folder / weights, folder / report)


GuardFiles = ComponentFiles  # the guard's: guard.npz and report.json


def models_dir() -> Path:
    """``$PNEUMONIA_MODELS_DIR`` or the repository's ``models/``."""
    return Path(os.environ.get("PNEUMONIA_MODELS_DIR", MODELS_DIR))


def model_files(name: str, root: Path | None = None, must_exist: bool = True) -> ModelFiles:
    """Where model ``name``'s files are.

    Raises:
        ModelNotFoundError: ``must_exist`` and there is no card for that name.
    """
    root = root or models_dir()
    files = ModelFiles.at(root / name)
    if must_exist and not files.card.exists():
        raise ModelNotFoundError(
            f"Model '{name}' not found. Available: {', '.join(available_models(root)) or 'none'}"
        )
    return files


def guard_files(root: Path | None = None) -> ComponentFiles:
    """Where the out-of-distribution guard's files are (they may not exist): ``guard.npz``, ``report.json``."""
    return ComponentFiles.at((root or models_dir()) / GUARD_NAME, "guard.npz", "report.json")


def lungs_files(root: Path | None = None) -> ComponentFiles:
    """Where the lung segmenter's files are (they may not exist): ``decoder.npz``, ``metrics.json``."""
    return ComponentFiles.at((root or models_dir()) / LUNGS_NAME, "decoder.npz", "metrics.json")


def invariance_file(root: Path | None = None) -> Path:
    """The invariance measurement of the shipped models (``python -m core.evaluate --invariance``)."""
    return (root or models_dir()) / "invariance.json"


def benchmark_file() -> Path:
    """The latest speed measurement (``python -m core.bench``)."""
    return ROOT / "benchmarks" / "latest.json"


def available_models(root: Path | None = None) -> list[str]:
    """Names of models with a card and weights, in the canonical order."""
    root = root or models_dir()
    found = [p.name for p in root.iterdir() if (p / "card.json").exists() and (p / "model.keras").exists()] if root.exists() else []
    order = {n: i for i, n in enumerate(MODEL_NAMES)}
    return sorted(found, key=lambda n: (order.get(n, len(order)), n))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, what: str) -> None:
    """Refuse ``path`` unless its sha256 is ``expected``.

    Raises:
        ModelIntegrityError: With a message naming ``what`` and how to restore it.
    """
    actual = sha256_file(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{what} refused: {path.name} does not match the sha256 recorded for it "
            f"(expected {str(expected)[:12]}…, found {actual[:12]}…). "
            "The file was changed or corrupted; restore it from the repository."
        )


def load_card(name: str, root: Path | None = None) -> ModelCard:
    """The model card of ``name`` (raises :class:`ModelNotFoundError`)."""
    return ModelCard.from_dict(json.loads(model_files(name, root).card.read_text()))


def write_card(folder: Path, card: ModelCard | dict) -> None:
    """Write a card (a model's, or the guard's as a dict) as ``folder/card.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = card.to_dict() if isinstance(card, ModelCard) else card
    (folder / "card.json").write_text(json.dumps(data, indent=2) + "\n")


def load_keras_model(name: str, root: Path | None = None) -> keras.Model:
    """Load ``models/<name>/model.keras`` in safe mode after checking its sha256.

    Raises:
        ModelNotFoundError: No such model.
        ModelIntegrityError: The file differs from the one the card describes.
    """
    files = model_files(name, root)
    verify_sha256(files.weights, load_card(name, root).weights_sha256, f"Model '{name}'")
    return keras.saving.load_model(files.weights, compile=False, safe_mode=True)


def load_metrics(name: str, root: Path | None = None) -> dict | None:
    """``metrics.json`` of a model (test metrics, curves, intervals), or ``None`` before evaluation."""
    path = model_files(name, root).metrics
    return json.loads(path.read_text()) if path.exists() else None


def load_predictions(name: str, root: Path | None = None) -> pd.DataFrame | None:
    """``test_predictions.csv`` (filename, label, probability) with ``y`` = 1 for PNEUMONIA, or ``None``."""
    path = model_files(name, root).predictions
    if not path.exists():
        return None
    df = pd.read_csv(path)
    df["y"] = (df["label"] == "PNEUMONIA").astype(int)
    return df


def load_history(name: str, root: Path | None = None) -> pd.DataFrame | None:
    """``history.csv`` (one row per epoch; a ``member_seed`` column for a soup), or ``None``."""
    path = model_files(name, root).history
    return pd.read_csv(path) if path.exists() else None


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, so it does not depend on how the file was zipped."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}\n".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _converted_path(name: str) -> Path:
    if name not in CONVERTED_WEIGHTS_SHA256:
        raise KeyError(f"Unknown converted weights {name!r}. Known: {', '.join(CONVERTED_WEIGHTS_SHA256)}")
    return cache_dir() / f"{name}.npz"


def read_converted_weights(name: str) -> dict[str, np.ndarray] | None:
    """Converted weights from the cache, or ``None`` when absent or not the recorded ones (then
    the caller converts them again; a damaged cache is logged and ignored)."""
    path = _converted_path(name)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = dict(f)
    except (OSError, ValueError) as exc:
        log.warning("Ignoring unreadable cached weights %s (%s); converting again.", path, exc)
        return None
    if _arrays_digest(arrays) != CONVERTED_WEIGHTS_SHA256[name]:
        log.warning("Cached weights %s are not the recorded ones; converting again.", path)
        return None
    return arrays


def write_converted_weights(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Check freshly converted weights against the recorded digest, then cache them.

    Raises:
        ModelIntegrityError: The conversion gave other weights than the recorded ones.
    """
    if _arrays_digest(arrays) != CONVERTED_WEIGHTS_SHA256[name]:
        raise ModelIntegrityError(
            f"Converted {name} weights do not match the recorded digest; the installed weights package "
            "differs from the one this project was built with."
        )
    path = _converted_path(name)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # processes converting at once (parallel tests) do not collide
    np.savez(tmp, **arrays)
    tmp.replace(path)
    log.info("Converted weights cached at %s", path)

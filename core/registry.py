"""Shipped models: where they live, their cards, and loading them safely."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = [
    "MODELS_DIR",
    "MODEL_NAMES",
    "ModelNotFoundError",
    "ModelIntegrityError",
    "models_dir",
    "available_models",
    "sha256_file",
    "load_card",
    "write_card",
    "load_keras_model",
]

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
MODEL_NAMES = ("baseline", "transfer", "finetuned")


class ModelNotFoundError(FileNotFoundError):
    """No shipped model of that name."""


class ModelIntegrityError(RuntimeError):
    """The weights file does not match the sha256 recorded in its card."""


def models_dir() -> Path:
    """``$PNEUMONIA_MODELS_DIR`` or the repository's ``models/``."""
    return Path(os.environ.get("PNEUMONIA_MODELS_DIR", MODELS_DIR))


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


def _model_path(name: str, root: Path | None) -> Path:
    root = root or models_dir()
    path = root / name
    if not (path / "card.json").exists():
        raise ModelNotFoundError(
            f"Model '{name}' not found. Available: {', '.join(available_models(root)) or 'none'}"
        )
    return path


def load_card(name: str, root: Path | None = None) -> dict:
    """The model card (``models/<name>/card.json``) as a dict."""
    return json.loads((_model_path(name, root) / "card.json").read_text())


def write_card(folder: Path, card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def load_keras_model(name: str, root: Path | None = None):
    """Load ``models/<name>/model.keras`` in safe mode after checking its sha256.

    Raises:
        ModelNotFoundError: No such model.
        ModelIntegrityError: The file differs from the one the card describes.
    """
    import keras

    folder = _model_path(name, root)
    card = load_card(name, root)
    path = folder / "model.keras"
    actual = sha256_file(path)
    if actual != card.get("weights_sha256"):
        raise ModelIntegrityError(
            f"Model '{name}' refused: {path.name} does not match the sha256 in its card "
            f"(expected {str(card.get('weights_sha256'))[:12]}…, found {actual[:12]}…). "
            "The file was changed or corrupted; restore it from the repository."
        )
    return keras.saving.load_model(path, compile=False, safe_mode=True)

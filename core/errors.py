"""The errors the library raises for a person to read, in one module that imports nothing else of ours."""

from __future__ import annotations

__all__ = [
    "ImageDecodeError",
    "DatasetNotFoundError",
    "ModelNotFoundError",
    "ModelIntegrityError",
    "BackboneWeightsUnavailable",
]


class ImageDecodeError(ValueError):
    """An upload cannot be used as a chest X-ray; the message is meant for a person."""


class DatasetNotFoundError(FileNotFoundError):
    """No dataset laid out as ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}`` was found."""


class ModelNotFoundError(FileNotFoundError):
    """No shipped model (or guard) of that name."""


class ModelIntegrityError(RuntimeError):
    """A weights file does not match the sha256 recorded for it."""


class BackboneWeightsUnavailable(RuntimeError):
    """Pretrained weights cannot be obtained on this machine."""

"""DICOM uploads: pixel data to an 8-bit grayscale image, and the few header fields worth showing.

Applies the modality LUT (rescale slope/intercept), then the VOI LUT or window, inverts
MONOCHROME1, and takes the first frame of a multi-frame file. Patient identifiers are never
read out, logged or returned.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

from core.errors import ImageDecodeError
from core.rawimage import RawImage, linear_window

__all__ = ["decode_dicom", "read_dicom", "dicom_summary", "is_dicom", "patient_age_years", "column_spacing",
           "AGE_KEY", "WIDTH_KEY", "WIDTH_FROM_KEY", "Stated", "stated"]

AGE_KEY = "patient age (years)"
"""The summary's entry for the header's PatientAge, in years (capped at 90, as de-identification rules ask)."""
WIDTH_KEY = "image width (cm)"
"""The summary's entry for the image's width, ``Columns`` times the header's column spacing (:func:`column_spacing`)."""
WIDTH_FROM_KEY = "pixel size from"
"""Which header attribute gave the pixel size (``PixelSpacing`` or ``ImagerPixelSpacing``)."""
MAX_SPACING_MM = 5.0
"""A stated pixel larger than this (or not positive) is not believed: no chest detector has pixels that coarse."""
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def is_dicom(data: bytes) -> bool:
    """Whether bytes carry the DICOM preamble marker ``DICM`` at offset 128."""
    return len(data) > 132 and data[128:132] == b"DICM"


def _read(data: bytes, filename: str | None, header_only: bool = False):
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, AttributeError, TypeError) as exc:
        raise ImageDecodeError(f"{_name(filename)} is a damaged DICOM file and cannot be read ({type(exc).__name__}).") from None


def _name(filename: str | None) -> str:
    return f"'{filename}'" if filename else "This DICOM file"


def _first(value) -> float | None:
    """First number of a possibly multi-valued DICOM attribute."""
    if value is None:
        return None
    try:
        return float(value[0]) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _to_unit(arr: np.ndarray, center: float | None = None, width: float | None = None) -> np.ndarray:
    """Map to [0, 1]: DICOM's linear window (PS3.3 C.11.2.1.2) when given, else min-max."""
    if center is not None and width is not None and width >= 1:
        return linear_window(arr, center, width)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def decode_dicom(data: bytes, filename: str | None = None) -> np.ndarray:
    """Decode a DICOM file to a 2-D uint8 grayscale array.

    Raises:
        ImageDecodeError: No pixel data, an unreadable compression, or a damaged file.
    """
    return _pixels(_read(data, filename), filename)[0]


def read_dicom(data: bytes, filename: str | None = None) -> tuple[np.ndarray, dict, RawImage | None]:
    """Parse a DICOM file once: its image (as :func:`decode_dicom`), its :func:`dicom_summary`, and for a
    grayscale file its values after the modality LUT with its window (:class:`core.rawimage.RawImage`)."""
    ds = _read(data, filename)
    gray, raw = _pixels(ds, filename)
    return gray, _summary(ds), raw


def _pixels(ds, filename: str | None) -> tuple[np.ndarray, RawImage | None]:
    """The 8-bit image the models read, and for a grayscale file its values before any window."""
    name = _name(filename)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(f"{name} has no image in it (a DICOM header without pixel data).")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing decoders
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        label = getattr(syntax, "name", str(syntax)) if syntax else "unknown"
        raise ImageDecodeError(
            f"{name} uses a compression ({label}) that cannot be decoded here. "
            "Export it uncompressed or as PNG and upload again."
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if frames > 1:
        arr = arr[0]
    if colour:
        rgb = arr if photometric == "RGB" else _to_rgb(arr, ds)
        rgb = np.asarray(rgb, np.float64)
        rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-9) * 255
        return np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L")), None
    arr = apply_modality_lut(arr, ds).astype(np.float64)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if "VOILUTSequence" in ds:
        unit = _to_unit(apply_voi_lut(arr, ds).astype(np.float64))
    else:
        unit = _to_unit(arr, center, width)
    invert = photometric == "MONOCHROME1"
    if invert:
        unit = 1.0 - unit
    if center is None or width is None or width < 1:  # no linear window of its own: the values' range
        lo, hi = float(arr.min()), float(arr.max())
        center, width = lo + (hi - lo) / 2 + 0.5, hi - lo + 1.0  # exactly the min-max scaling above
    units = "HU" if str(ds.get("RescaleType", "")).upper() == "HU" else "value"
    raw = RawImage(arr.astype(np.float32), float(center), float(width), invert, units)
    return np.round(unit * 255).astype(np.uint8), raw


def _to_rgb(arr, ds):
    return convert_color_space(arr, str(ds.PhotometricInterpretation), "RGB")


def dicom_summary(data: bytes) -> dict:
    """Only what helps reading: modality, view position, image size, frames. No identifiers."""
    return _summary(_read(data, None, header_only=True))  # the pixels are not needed (nor read) here


def patient_age_years(value) -> float | None:
    """The header's PatientAge (DICOM "AS": ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``) in years, capped at 90;
    ``None`` when absent or not in that form."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or text[-1] not in _AGE_UNITS or not text[:-1].isdigit():
        return None
    return round(min(int(text[:-1]) * _AGE_UNITS[text[-1]], 90.0), 2)


def column_spacing(ds) -> tuple[float, str] | None:
    """The header's horizontal pixel size in mm and the attribute it came from: ``PixelSpacing`` (in the patient's
    plane where the system calibrates it), else ``ImagerPixelSpacing`` (at the detector); both are "row spacing
    \\ column spacing". ``None`` when neither holds a plausible value (0 < mm <= :data:`MAX_SPACING_MM`)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            mm = float(value[1]) if value is not None and len(value) > 1 else None
        except (TypeError, ValueError):
            mm = None
        if mm is not None and 0 < mm <= MAX_SPACING_MM:
            return mm, keyword
    return None


@dataclass(frozen=True)
class Stated:
    """What is stated about the patient and the image that a check can use: the age in years (from the file's header,
    or entered by the user: ``age_entered``) and the image's width in cm (with the header attribute its pixel size
    came from); ``None`` where nothing is stated."""

    age_years: float | None = None
    width_cm: float | None = None
    width_from: str | None = None
    age_entered: bool = False

    def with_entered_age(self, age_years: float | None) -> Stated:
        """These facts with an age the user entered, where the file states none (the file's own word wins); capped at
        90 like the header's, so that no message or report carries an age that identifies."""
        if age_years is None or self.age_years is not None:
            return self
        return replace(self, age_years=min(float(age_years), 90.0), age_entered=True)


def stated(summary: dict | None) -> Stated | None:
    """The :class:`Stated` facts of a :func:`dicom_summary` (``None`` for a file that is not DICOM)."""
    if summary is None:
        return None
    return Stated(summary.get(AGE_KEY), summary.get(WIDTH_KEY), summary.get(WIDTH_FROM_KEY))


def _summary(ds) -> dict:
    out = {
        "modality": str(ds.get("Modality", "unknown")),
        "view position": str(ds.get("ViewPosition", "") or "not stated"),
        "size": f"{ds.get('Columns', '?')} × {ds.get('Rows', '?')} px",
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "bits stored": int(ds.get("BitsStored", 0) or 0),
    }
    age = patient_age_years(ds.get("PatientAge"))
    if age is not None:  # an age is not an identifier below 90 (HIPAA safe harbour); it decides scope
        out[AGE_KEY] = age
    spacing, columns = column_spacing(ds), ds.get("Columns")
    if spacing is not None and columns:
        out[WIDTH_KEY] = round(int(columns) * spacing[0] / 10, 2)
        out[WIDTH_FROM_KEY] = spacing[1]
    return out

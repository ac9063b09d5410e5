"""An X-ray's values before any display window, for a viewer's window/level.

A DICOM file (after its modality LUT: stored values, or Hounsfield-like units where the file rescales) or
a 16-bit PNG/TIFF holds far more grey levels than the 8-bit image the models read. :class:`RawImage`
keeps them, with the file's own window, so the viewer can window the original values rather than an
8-bit copy of them. For display only: diagnosis never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RawImage", "linear_window"]


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2): values from ``center - width / 2`` to ``center + width / 2``
    spread over [0, 1], the rest clipped (float64)."""
    return np.clip((np.asarray(values, np.float64) - (float(center) - 0.5)) / max(float(width) - 1, 1e-6) + 0.5,
                   0.0, 1.0)


@dataclass(frozen=True)
class RawImage:
    """A 2-D image in its file's own units, with the window that file is displayed with by default."""

    values: np.ndarray  # (H, W) float32, after the modality LUT
    center: float  # the file's default window: DICOM WindowCenter/WindowWidth, else the values' range
    width: float
    invert: bool = False  # MONOCHROME1: high values are dark
    units: str = "stored value"

    @property
    def low(self) -> float:
        return float(self.values.min())

    @property
    def high(self) -> float:
        return float(self.values.max())

    @property
    def integral(self) -> bool:
        """Whether every value is a whole number (the viewer's sliders then step by 1)."""
        return bool(np.all(self.values == np.round(self.values)))

    def window(self, center: float, width: float) -> np.ndarray:
        """The image through :func:`linear_window` (as the file's own window is applied), inverted for
        MONOCHROME1; uint8. A width below 1 counts as 1."""
        unit = linear_window(self.values, center, max(float(width), 1.0))
        if self.invert:
            unit = 1.0 - unit
        return np.round(unit * 255).astype(np.uint8)

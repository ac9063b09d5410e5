"""An X-ray's values before any display window, for a viewer's window/level.

A DICOM file (after its modality LUT: stored values, or Hounsfield-like units where the file rescales) or
a 16-bit PNG/TIFF holds far more grey levels than the 8-bit image the models read. :class:`RawImage`
keeps them, with the file's own window, so the viewer can window the original values rather than an
8-bit copy of them. For display only: diagnosis never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["RawImage"]


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
        """The image through a linear window (DICOM PS3.3 C.11.2.1.2, as the file's own window is applied):
        values from ``center - width / 2`` to ``center + width / 2`` spread over 0-255, the rest clipped;
        inverted for MONOCHROME1. Returns uint8."""
        width = max(float(width), 1.0)
        unit = np.clip((self.values - (float(center) - 0.5)) / max(width - 1, 1e-6) + 0.5, 0.0, 1.0)
        if self.invert:
            unit = 1.0 - unit
        return np.round(unit * 255).astype(np.uint8)

    def fit_within(self, max_side: int = 1600) -> RawImage:
        """The same image scaled down (Lanczos, aspect kept) so that its longer side is at most ``max_side``."""
        h, w = self.values.shape
        if max(h, w) <= max_side:
            return self
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(Image.fromarray(self.values.astype(np.float32), mode="F").resize(size, Image.LANCZOS))
        return RawImage(small, self.center, self.width, self.invert, self.units)

"""The encoding path as augmentation: the same X-ray as another file would bring it.

A clinic's file differs from our 224 x 224 training copies by how it was made: its resolution and
the resampling that squashed it, blur, noise and JPEG compression. :func:`encoding_path` draws one such
version of a uint8 grayscale image; training on them teaches a model (or the lung segmenter) to give the
same answer whatever the encoding. Nothing of this runs at serving.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from core.preprocessing import decode_upload, squash

__all__ = ["encoding_path", "VARIANTS", "encode_variant", "served_variant"]

_RESAMPLERS = (Image.BILINEAR, Image.BICUBIC, Image.LANCZOS)


def encoding_path(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random re-encoding of a 2-D uint8 image, same size: with probability 0.5 resampled to 0.5-4x its
    size (bilinear, bicubic or Lanczos) and squashed back with bilinear, as an upload is; 0.3 a Gaussian
    blur σ 0.2-1.2; 0.3 Gaussian noise σ 0.5-4 grey levels; 0.6 JPEG at quality 30-95."""
    h, w = gray.shape
    img = Image.fromarray(np.asarray(gray, np.uint8))
    if rng.random() < 0.5:
        size = int(w * rng.uniform(0.5, 4.0))
        img = img.resize((size, size), _RESAMPLERS[rng.integers(3)]).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.2)))
    arr = np.asarray(img, np.float32)
    if rng.random() < 0.3:
        arr = np.clip(arr + rng.normal(0, rng.uniform(0.5, 4.0), arr.shape), 0, 255)
    arr = arr.astype(np.uint8)
    if rng.random() < 0.6:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
        arr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return arr


def _jpeg(gray: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _up4(gray: np.ndarray) -> Image.Image:
    h, w = gray.shape
    return Image.fromarray(gray).resize((4 * w, 4 * h), Image.BICUBIC)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless at any level; 1 encodes ~4x faster than the default 6
    return buf.getvalue()


VARIANTS: dict[str, Callable[[np.ndarray], bytes]] = {
    "jpeg_q50": lambda g: _jpeg(g, 50),
    "jpeg_q95": lambda g: _jpeg(g, 95),
    "up4_png": lambda g: _png(_up4(g)),
    "up4_jpeg_q90": lambda g: _jpeg(np.asarray(_up4(g)), 90),
}
"""How each variant's file is made from a 224 x 224 grayscale copy."""


def encode_variant(gray: np.ndarray, variant: str) -> bytes:
    """The file bytes of ``variant`` of a 224 x 224 uint8 image (in memory)."""
    return VARIANTS[variant](np.asarray(gray, np.uint8))


def served_variant(gray: np.ndarray, variant: str) -> np.ndarray:
    """``variant`` of a 224 x 224 uint8 image as the dashboard would read it (decoded and squashed back)."""
    return squash(decode_upload(encode_variant(gray, variant), variant)[0])

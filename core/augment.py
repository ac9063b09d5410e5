"""The encoding path as augmentation: the same X-ray as another file would bring it.

A clinic's file differs from our 224 x 224 training copies by how it was made: its resolution and
the resampling that squashed it, blur, noise and JPEG compression. :func:`encoding_path` draws one such
version of a uint8 grayscale image; training on them teaches a model (or the lung segmenter) to give the
same answer whatever the encoding. Nothing of this runs at serving.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["encoding_path"]

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

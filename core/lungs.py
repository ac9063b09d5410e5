"""Lung masks and how much of an explanation lies on the lungs.

The human lung masks (``lung_masks/{train,test}/{NORMAL,PNEUMONIA}/<image stem>.png``, 224 x 224,
255 = lung) sit beside the dataset; they are found like it (:func:`find_mask_dir`). The test masks
only measure: how much of a Grad-CAM map's energy lies inside the lungs, whether its maximum does
(the pointing game), and how much every image's map is one template; and how well a segmenter
reproduces the masks (Dice).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from core import LABELS
from core.data import Sample, find_data_dir
from core.errors import DatasetNotFoundError

__all__ = [
    "MASKS_ENV",
    "find_mask_dir",
    "mask_path",
    "load_masks",
    "dice",
    "lung_energy",
    "pointing_hit",
    "template_index",
    "explanation_quality",
    "LUNG_AREA_RANGE",
    "implausible_lungs",
    "lung_span",
    "outline",
    "draw_outline",
    "EVIDENCE_OUTSIDE_WARNING",
]

LUNG_AREA_RANGE = (0.08, 0.80)
"""A plausible pair of lungs covers this share of a 224 x 224 chest film (human masks: 14 % to 71 %)."""

EVIDENCE_OUTSIDE_WARNING = (
    "Most of this model's evidence ({outside:.0%}) lies outside the lungs: the map points at something "
    "other than the lung fields, so do not read it as a finding in the lungs."
)

MASKS_ENV = "PNEUMONIA_MASKS_DIR"


def find_mask_dir(mask_dir: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """Locate the lung masks: ``mask_dir``, ``$PNEUMONIA_MASKS_DIR``, then ``lung_masks/`` beside the dataset.

    Raises:
        DatasetNotFoundError: Nothing found and ``required``.
    """
    def holds_masks(path: Path) -> bool:
        return (path / "train").is_dir() or (path / "test").is_dir()

    for given in (mask_dir, os.environ.get(MASKS_ENV)):
        if given:
            if not holds_masks(Path(given).expanduser()):
                raise DatasetNotFoundError(f"{given} does not hold lung masks (expected train/ and test/ inside it).")
            return Path(given).expanduser()
    try:
        data = find_data_dir(required=False)
    except DatasetNotFoundError:
        data = None
    if data is not None and holds_masks(data.parent / "lung_masks"):
        return data.parent / "lung_masks"
    if required:
        raise DatasetNotFoundError(f"Lung masks not found: set {MASKS_ENV}=/path/to/lung_masks (or keep lung_masks/ "
                                   "beside the chest_xray folder).")
    return None


def mask_path(mask_dir: Path, split: str, sample: Sample) -> Path:
    """Where the mask of a dataset image would be (it may be missing: a few images have none)."""
    return Path(mask_dir) / split / LABELS[sample.label] / f"{sample.path.stem}.png"


def load_masks(samples: list[Sample], split: str, mask_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Masks of ``samples`` as booleans ``(N, 224, 224)`` and which of them exist ``(N,)`` (missing: all False)."""
    masks = np.zeros((len(samples), 224, 224), bool)
    present = np.zeros(len(samples), bool)
    for i, s in enumerate(samples):
        path = mask_path(mask_dir, split, s)
        if path.exists():
            masks[i] = np.asarray(Image.open(path)) > 0
            present[i] = True
    return masks, present


def dice(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice overlap of boolean masks, per image for ``(N, H, W)`` (1 when both are empty)."""
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    axes = tuple(range(p.ndim - 2, p.ndim))
    inter, total = (p & t).sum(axis=axes), p.sum(axis=axes) + t.sum(axis=axes)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def lung_energy(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative map's energy inside the lungs: Σ(map · mask) / Σ map (``nan`` for an empty map)."""
    heat = np.asarray(heat, np.float64)
    total = heat.sum()
    return float((heat * mask).sum() / total) if total > 0 else float("nan")


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's maximum lies inside the lungs, 0.0 when not, ``nan`` for an empty map."""
    heat = np.asarray(heat)
    if not heat.size or heat.max() <= 0:
        return float("nan")
    return float(mask.flat[int(np.argmax(heat))])


def template_index(heats: np.ndarray) -> float:
    """How much every image's map is one template: the Pearson correlation of each map with the sum of
    all the others, averaged (1 = every image gets the same map)."""
    flat = np.asarray(heats, np.float64).reshape(len(heats), -1)
    others = flat.sum(axis=0)[None] - flat
    a, b = flat - flat.mean(axis=1, keepdims=True), others - others.mean(axis=1, keepdims=True)
    denom = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    r = np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1), np.nan)
    return float(np.nanmean(r))


def explanation_quality(heats: np.ndarray, masks: np.ndarray, present: np.ndarray) -> dict:
    """Where a model's maps (``(N, 224, 224)``, explaining P(pneumonia), as displayed) lie against the true
    lungs, over the images that have a mask and a non-empty map."""
    heats = np.asarray(heats, np.float32)
    used = [i for i in range(len(heats)) if present[i] and heats[i].max() > 0]
    energy = [lung_energy(heats[i], masks[i]) for i in used]
    hits = [pointing_hit(heats[i], masks[i]) for i in used]
    return {
        "images": len(used),
        "empty_maps": int(sum(present[i] and heats[i].max() <= 0 for i in range(len(heats)))),
        "lung_energy_mean": float(np.mean(energy)) if used else None,
        "lung_area_mean": float(masks[present].mean()) if present.any() else None,
        "pointing_game": float(np.mean(hits)) if used else None,
        "template_index": template_index(heats[used]) if len(used) > 1 else None,
        "meaning": "map energy inside the true lungs (averaged per image; a uniform map scores the lungs' share "
                   "of the area), share of images whose map maximum lies inside the lungs, and the mean Pearson "
                   "correlation of each map with the sum of all others (1 = one template for every image)",
    }


def implausible_lungs(mask: np.ndarray) -> str | None:
    """Why a predicted lung mask is not a plausible pair of lungs, or ``None`` when it is.

    Plausible: lungs cover :data:`LUNG_AREA_RANGE` of the image, and the two largest connected regions
    each cover at least 2 % of it, one centred left of the middle and one right of it.
    """
    mask = np.asarray(mask, bool)
    area = float(mask.mean())
    low, high = LUNG_AREA_RANGE
    if area < low:
        return f"no pair of lungs was found in it (lung area {area:.0%} of the image)"
    if area > high:
        return f"the lungs found would fill {area:.0%} of the image, more than a chest film shows"
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:] / mask.size
    big = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= 0.02]
    if len(big) < 2:
        return "only one lung-like region was found in it, not a pair"
    centres = sorted(float(np.argwhere(labels == i)[:, 1].mean()) / mask.shape[1] for i in big)
    if not (centres[0] < 0.5 < centres[1]):
        return "the two lung-like regions found are not on either side of the chest"
    return None


def lung_span(mask: np.ndarray) -> float | None:
    """The share of the image's width that the lungs span, both together: from the 0.5th to the 99.5th percentile
    of their pixels' columns, so that a few stray pixels do not widen it. ``None`` for an empty mask."""
    mask = np.asarray(mask, bool)
    columns = np.nonzero(mask)[1]
    if not columns.size:
        return None
    left, right = np.percentile(columns, [0.5, 99.5])
    return float((right - left + 1) / mask.shape[1])


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask (``width`` pixels wide, inside the mask)."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 255)) -> np.ndarray:
    """An RGB uint8 image with a mask's outline drawn on it (the mask is resized to the image when needed)."""
    mask = np.asarray(mask, bool)
    if mask.shape != rgb.shape[:2]:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(rgb.shape[1::-1], Image.NEAREST)) > 0
    out = np.array(rgb, copy=True)
    out[outline(mask, width=max(1, round(rgb.shape[0] / 224)))] = colour
    return out

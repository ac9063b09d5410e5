"""Does a model give the same answer whatever the file's encoding and resolution?

Each official test image (a 224 x 224 copy) is re-encoded in memory as a clinic might send it, and
every variant goes through the normal upload path (:func:`core.inference.read_upload`, which squashes
a large image back to 224 x 224) and :func:`core.inference.score`:

- ``jpeg_q50``, ``jpeg_q95``: the copy re-encoded as JPEG at quality 50 and 95;
- ``up4_png``, ``up4_jpeg_q90``: the copy upsampled 4x (bicubic) and saved as PNG or JPEG quality 90;

plus the full-resolution originals in ``samples_fullres/`` against their 224 x 224 copies. For each
model: mean and largest |ΔP| and the share of labels that agree (at the card threshold); for the guard:
the share of test X-rays it withholds. Nothing is written to disk but the result
(``models/invariance.json``, via ``python -m core.evaluate --invariance``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.augment import VARIANTS, encode_variant, served_variant
from core.data import Sample, list_split
from core.inference import LoadedModel, read_upload, score
from core.ood import OODCheck
from core.preprocessing import equalize, low_pass
from core.segmenter import LungSegmenter

__all__ = ["BARS", "TREATMENTS", "compare", "measure", "invariance_table", "stretch", "input_change",
           "input_change_table"]


BARS = {"mean_abs_dp": 0.02, "label_agreement": 0.99}
"""The invariance bar for every model and variant (and the guard withholds no more than on the copies)."""


NEAR = (0.01, 0.02)  # distances to the threshold counted by compare()


def compare(reference: list, other: list, models: list[str]) -> dict:
    """Per model, how far ``other`` readings are from ``reference`` readings of the same images; and, to read the
    flips by, how many reference images lie within each :data:`NEAR` distance of the threshold and how far from it
    the flipped ones lay (median and largest, on the reference probability; ``None`` without flips)."""
    out = {}
    for name in models:
        p0 = np.array([r.diagnoses[name].probability for r in reference])
        p1 = np.array([r.diagnoses[name].probability for r in other])
        same = np.array([r0.diagnoses[name].label == r1.diagnoses[name].label for r0, r1 in zip(reference, other,
                                                                                                  strict=True)])
        near = np.abs(p0 - np.array([r.diagnoses[name].threshold for r in reference]))
        flipped = near[~same]
        out[name] = {"mean_abs_dp": float(np.abs(p1 - p0).mean()), "max_abs_dp": float(np.abs(p1 - p0).max()),
                     "label_agreement": float(same.mean()), "labels_flipped": int((~same).sum()),
                     "copies_near_threshold": {f"{d:g}": int((near < d).sum()) for d in NEAR},
                     "flipped_distance_to_threshold": {"median": float(np.median(flipped)), "max": float(flipped.max())}
                     if len(flipped) else None}
    return out


def _withheld(readings: list) -> float | None:
    flags = [r.ood.flagged for r in readings if r.ood is not None]
    return float(np.mean(flags)) if flags else None


def _copies_of(originals: list[Path], data_dir: Path) -> list[tuple[Path, Sample]]:
    pairs = []
    for split in ("train", "test"):
        by_name = {s.name: s for s in list_split(data_dir, split)}
        pairs += [(p, by_name[p.name]) for p in originals if p.name in by_name]
    return pairs


def measure(models: list[LoadedModel], guard: OODCheck | None, data_dir: Path, batch: int = 64,
            variants=tuple(VARIANTS), lungs: LungSegmenter | None = None, samples: list[Sample] | None = None) -> dict:
    """The invariance of every model (and the guard, with the lung check when ``lungs`` is given) over the
    official test set and the full-resolution samples; or, given ``samples`` (e.g. a validation split, for
    choosing between candidates), over those images only."""
    names = [m.name for m in models]
    split = "test" if samples is None else "given"
    samples = list_split(data_dir, "test") if samples is None else samples
    copies = [read_upload(s.path.read_bytes(), s.name).gray for s in samples]
    reference = []
    for i in range(0, len(copies), batch):
        reference += score(copies[i : i + batch], models, guard, lungs)
    result = {"images": len(samples), "bars": BARS, "copies": {"withheld": _withheld(reference)}, "variants": {}}
    for variant in variants:
        readings = []
        for i in range(0, len(copies), batch):
            grays = [read_upload(encode_variant(g, variant), variant).gray for g in copies[i : i + batch]]
            readings += score(grays, models, guard, lungs)
        result["variants"][variant] = {"models": compare(reference, readings, names), "withheld": _withheld(readings)}
    if split != "test":
        return result
    folder = data_dir.parent / "samples_fullres"
    pairs = _copies_of(sorted(folder.glob("*.jp*g")) + sorted(folder.glob("*.png")), data_dir) if folder.is_dir() else []
    if pairs:
        ref = score([read_upload(s.path.read_bytes()).gray for _, s in pairs], models, guard, lungs)
        full = score([read_upload(p.read_bytes(), p.name).gray for p, _ in pairs], models, guard, lungs)
        result["fullres"] = {"files": [p.name for p, _ in pairs], "models": compare(ref, full, names),
                             "withheld_originals": [r.flagged for r in full], "withheld_copies": [r.flagged for r in ref]}
    return result


def invariance_table(result: dict) -> str:
    """Markdown: one row per (variant, model) with |ΔP|, agreement and the guard's withheld share."""
    lines = ["| variant | model | mean \\|ΔP\\| | max \\|ΔP\\| | labels agreeing | flipped (their copies' median distance "
             "to the threshold) | guard withholds (copies: "
             f"{_pct(result['copies']['withheld'])}) |", "|---|---|---|---|---|---|---|"]
    rows = [(v, r["models"], _pct(r["withheld"])) for v, r in result["variants"].items()]
    if "fullres" in result:
        f = result["fullres"]
        rows.append((f"{len(f['files'])} full-resolution originals", f["models"],
                     f"{sum(f['withheld_originals'])} of {len(f['files'])} (copies: {sum(f['withheld_copies'])})"))
    for variant, models, withheld in rows:
        for name, m in models.items():
            lines.append(f"| {variant} | {name} | {m['mean_abs_dp']:.3f} | {m['max_abs_dp']:.3f} | "
                         f"{_pct(m['label_agreement'])} | {_flipped(m)} | {withheld} |")
    return "\n".join(lines)


def _flipped(m: dict) -> str:
    """How many labels flipped and, where recorded (since session 15), how near the threshold their copies lay."""
    if "labels_flipped" not in m:
        return ""
    d = m.get("flipped_distance_to_threshold")
    return f"{m['labels_flipped']}" + (f" ({d['median']:.3f})" if d else "")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def stretch(gray: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """A linear grey-level stretch of uint8 image(s) ``(H, W)`` or ``(N, H, W)``, each on its own: its ``low``-th
    percentile to 0 and its ``high``-th to 255, clipped and rounded. Not used by any shipped model: the
    comparison in :func:`input_change` between equalisation and doing nothing."""
    gray = np.asarray(gray)
    if gray.ndim == 3:
        return np.stack([stretch(g, low, high) for g in gray]) if len(gray) else gray.copy()
    lo, hi = np.percentile(gray, [low, high])
    if hi <= lo:
        return gray.copy()
    return np.clip(np.rint((gray.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


TREATMENTS = {"blurred only": lambda g: g, "equalised": equalize, "stretched 1-99 %": stretch}
"""What follows the blur in :func:`input_change`: nothing (as every shipped model since v16-v20, and the checks),
histogram equalisation (as the Lite0 models before), or a linear stretch (the middle way, not shipped)."""


def input_change(copies: np.ndarray, sigma: float, variants=tuple(VARIANTS), features=None) -> dict:
    """How much of a file's encoding reaches a model's input, by what the input does after the blur.

    ``copies`` are 224 x 224 uint8 images; each is served as every variant (decoded and squashed back, as
    an upload) and both are blurred at ``sigma`` and then given each of :data:`TREATMENTS`. Per variant and
    treatment: the mean absolute difference of the two inputs in grey levels, and, given ``features`` (a
    function from such uint8 images to pooled backbone features, e.g. :func:`core.ood.feature_extractor`),
    the mean distance between an image's and its variant's features over the mean distance of the copies'
    features to their centre (0: the features do not move; 1: as far as images lie apart)."""
    copies = np.asarray(copies, np.uint8)
    blurred = low_pass(copies, sigma) if sigma else copies
    base = {t: f(blurred) for t, f in TREATMENTS.items()}
    spread = {}
    if features is not None:
        for t, view in base.items():
            f0 = features(view)
            spread[t] = (f0, float(np.linalg.norm(f0 - f0.mean(axis=0), axis=1).mean()))
    out = {"images": len(copies), "blur_sigma": sigma, "variants": {}}
    for variant in variants:
        served = np.stack([served_variant(g, variant) for g in copies])
        served = low_pass(served, sigma) if sigma else served
        row = {}
        for t, f in TREATMENTS.items():
            view = f(served)
            row[t] = {"input_change": float(np.abs(view.astype(np.float64) - base[t]).mean())}
            if t in spread:
                f0, s = spread[t]
                row[t]["feature_move"] = float(np.linalg.norm(features(view) - f0, axis=1).mean() / s)
        out["variants"][variant] = row
    return out


def input_change_table(result: dict) -> str:
    """Markdown: one row per variant, the input's change (and the features' move) per treatment."""
    treatments = list(TREATMENTS)
    with_features = any("feature_move" in r for v in result["variants"].values() for r in v.values())
    head = [f"input change: {t}" for t in treatments] + ([f"feature move: {t}" for t in treatments]
                                                       if with_features else [])
    lines = ["| variant | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for variant, row in result["variants"].items():
        cells = [f"{row[t]['input_change']:.3f}" for t in treatments]
        if with_features:
            cells += [f"{row[t]['feature_move']:.3f}" for t in treatments]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

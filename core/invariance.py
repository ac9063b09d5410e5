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

from core.augment import VARIANTS, encode_variant
from core.data import Sample, list_split
from core.inference import LoadedModel, read_upload, score
from core.ood import OODCheck
from core.segmenter import LungSegmenter

__all__ = ["BARS", "compare", "measure", "invariance_table"]


BARS = {"mean_abs_dp": 0.02, "label_agreement": 0.99}
"""The invariance bar for every model and variant (and the guard withholds no more than on the copies)."""


def compare(reference: list, other: list, models: list[str]) -> dict:
    """Per model, how far ``other`` readings are from ``reference`` readings of the same images."""
    out = {}
    for name in models:
        p0 = np.array([r.diagnoses[name].probability for r in reference])
        p1 = np.array([r.diagnoses[name].probability for r in other])
        same = np.array([r0.diagnoses[name].label == r1.diagnoses[name].label for r0, r1 in zip(reference, other,
                                                                                                  strict=True)])
        out[name] = {"mean_abs_dp": float(np.abs(p1 - p0).mean()), "max_abs_dp": float(np.abs(p1 - p0).max()),
                     "label_agreement": float(same.mean()), "labels_flipped": int((~same).sum())}
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
    lines = ["| variant | model | mean \\|ΔP\\| | max \\|ΔP\\| | labels agreeing | guard withholds (copies: "
             f"{_pct(result['copies']['withheld'])}) |", "|---|---|---|---|---|---|"]
    rows = [(v, r["models"], _pct(r["withheld"])) for v, r in result["variants"].items()]
    if "fullres" in result:
        f = result["fullres"]
        rows.append((f"{len(f['files'])} full-resolution originals", f["models"],
                     f"{sum(f['withheld_originals'])} of {len(f['files'])} (copies: {sum(f['withheld_copies'])})"))
    for variant, models, withheld in rows:
        for name, m in models.items():
            lines.append(f"| {variant} | {name} | {m['mean_abs_dp']:.3f} | {m['max_abs_dp']:.3f} | "
                         f"{_pct(m['label_agreement'])} | {withheld} |")
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"

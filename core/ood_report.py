"""How well the out-of-distribution checks work: official test X-rays that pass, non-X-rays refused.

``python -m core.ood --report`` runs :func:`report` and writes ``models/ood/report.json``;
:func:`guard_table` turns that file into the table in ``docs/security.md``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skdata

from core.data import find_data_dir, list_split, load_images
from core.preprocessing import squash

__all__ = ["PHOTOS", "non_xray_images", "report", "summary", "guard_table"]

PHOTOS = ("chelsea", "astronaut", "coffee", "camera", "rocket", "horse", "moon", "page", "text", "brick",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "clock")
"""scikit-image's bundled photographs (no download) used as non-X-rays."""


def non_xray_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Things that are not chest X-rays, as 2-D uint8 arrays: photographs (scikit-image),
    noise, gradients and text. Used to measure how many the guard refuses."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in PHOTOS:
        img = np.asarray(getattr(skdata, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        out[f"photo:{name}"] = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("L"))
    out["noise:uniform"] = (rng.random((300, 300)) * 255).astype(np.uint8)
    out["noise:gaussian"] = np.clip(rng.normal(128, 40, (300, 300)), 0, 255).astype(np.uint8)
    out["noise:salt-pepper"] = (rng.random((300, 300)) > 0.5).astype(np.uint8) * 255
    ramp = np.linspace(0, 255, 300)
    out["gradient:horizontal"] = np.tile(ramp, (300, 1)).astype(np.uint8)
    out["gradient:vertical"] = np.tile(ramp, (300, 1)).T.astype(np.uint8).copy()
    out["gradient:radial"] = (255 * np.hypot(*np.mgrid[-1:1:300j, -1:1:300j]) / np.sqrt(2)).astype(np.uint8)
    for name, (bg, fg) in {"text:document": (255, 0), "text:inverted": (0, 255)}.items():
        canvas = Image.new("L", (400, 400), bg)
        draw = ImageDraw.Draw(canvas)
        for i in range(20):
            draw.text((10, 10 + 19 * i), "Radiology report: no acute findings. " * 2, fill=fg)
        out[name] = np.asarray(canvas)
    canvas = Image.new("L", (400, 400), 0)
    ImageDraw.Draw(canvas).text((140, 190), "CHEST X-RAY", fill=255)
    out["text:label"] = np.asarray(canvas)
    return out


def report(check, data_dir=None) -> dict:
    """Share of official test X-rays that pass and of non-X-ray images that are refused, by the guard and the scope
    check together (what withholds an image; the lung check is not part of it) and by the guard alone.

    Args:
        check: The checks to measure (:class:`core.ood.OODCheck`).
        data_dir: Dataset folder (see :func:`core.data.find_data_dir`).
    """
    found = check(load_images(list_split(find_data_dir(data_dir), "test")))
    scores = np.array([r.score for r in found])
    named = non_xray_images()
    others = dict(zip(named, check(np.stack([squash(v) for v in named.values()])), strict=True))
    cutoff = check.guard.cutoff
    return {
        "cutoff": cutoff,
        "scope_cutoff": None if check.scope is None else check.scope.cutoff,
        "test_xrays": int(len(scores)),
        "test_xrays_passing": float(np.mean([not r.flagged for r in found])),
        "test_xrays_passing_guard": float(np.mean(scores <= cutoff)),
        "non_xray_images": len(others),
        "non_xray_refused": float(np.mean([r.flagged for r in others.values()])),
        "non_xray_refused_by_guard": float(np.mean([r.score > cutoff for r in others.values()])),
        "non_xray_scores": {name: r.score for name, r in others.items()},
        "non_xray_scope_scores": {name: r.scope_score for name, r in others.items()},
        "lowest_non_xray_score": min(r.score for r in others.values()),
        "highest_test_xray_score": float(scores.max()),
    }


def summary(result: dict) -> str:
    """The one line ``python -m core.ood --report`` prints."""
    return (f"official test X-rays passing: {result['test_xrays_passing']:.1%} of {result['test_xrays']}; "
            f"non-X-ray images refused: {result['non_xray_refused']:.1%} of {result['non_xray_images']} "
            f"(by the guard alone: {result['test_xrays_passing_guard']:.1%} passing, "
            f"{result['non_xray_refused_by_guard']:.1%} refused)")


def guard_table(result: dict) -> str:
    """The checks' measurements as the Markdown table (and margin sentences) of ``docs/security.md``."""
    n, m = result["test_xrays"], result["non_xray_images"]
    kinds = {k.split(":")[0] for k in result["non_xray_scores"]}
    count = {k: sum(name.startswith(f"{k}:") for name in result["non_xray_scores"]) for k in kinds}
    guard_pass, guard_refused = result["test_xrays_passing_guard"], result["non_xray_refused_by_guard"]

    def pct(x: float, of: int, digits: int) -> str:
        return f"{100 * x:.{digits}f} % ({round(x * of)} of {of})"

    lines = [
        "| | guard and scope check together | guard alone | goal (together) |",
        "|---|---|---|---|",
        f"| official test X-rays passing | {pct(result['test_xrays_passing'], n, 1)} | {pct(guard_pass, n, 1)} "
        "| ≥ 98 % |",
        f"| non-X-ray images refused ({count.get('photo', 0)} photographs from scikit-image incl. `chelsea`, "
        f"`astronaut`, `coffee`; {count.get('noise', 0)} noise images; {count.get('gradient', 0)} gradients; "
        f"{count.get('text', 0)} text images) | {pct(result['non_xray_refused'], m, 0)} | {pct(guard_refused, m, 0)} "
        "| 100 % |",
        "",
        f"The guard's margin: the least X-ray-like test X-ray scores {result['highest_test_xray_score']:.2f} and "
        f"the most X-ray-like non-X-ray (`{min(result['non_xray_scores'], key=result['non_xray_scores'].get)}`) "
        f"{result['lowest_non_xray_score']:.2f}, against a cut-off of {result['cutoff']:.2f}.",
    ]
    scope, scope_cut = result.get("non_xray_scope_scores") or {}, result.get("scope_cutoff")
    passed = sorted(k for k, v in result["non_xray_scores"].items() if v <= result["cutoff"])
    if passed and scope and scope_cut:
        for text, names in (("refused by the scope check", [k for k in passed if scope[k] > scope_cut]),
                            ("passed by both checks", [k for k in passed if scope[k] <= scope_cut])):
            if names:
                lines.append(f"Passed by the guard and {text} (cut-off {scope_cut:.2f}): " + ", ".join(
                    f"`{k}` (guard {result['non_xray_scores'][k]:.2f}, scope {scope[k]:.2f})" for k in names) + ".")
    return "\n".join(lines)

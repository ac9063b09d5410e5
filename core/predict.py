"""``python -m core.predict [--model NAME|all] [--json] [--heatmap-dir DIR [--maps]] [--lung-dir DIR] [--age YEARS] FILE …``

Scores X-ray files with the shipped models. With ``--json``: one JSON object per line,
``{"file", "model", "probability", "label", "threshold", "lung_share"}`` per scored (file, model),
or ``{"file", "error"}`` for a file that cannot be used. ``lung_share`` is the share of the model's
Grad-CAM map (explaining P(pneumonia)) inside the lungs the segmenter found (``null`` without a
segmenter or for an empty map). A file that does not look like a chest X-ray, not like a young child's
film (:mod:`core.scope`), or has no plausible pair of lungs (the guard), is still scored, and its lines
gain ``"ood": true``, a short ``"reason"`` and a ``"warning"``; so do those of a film stated to be an adult's (by
its DICOM header, by ``--age`` for files whose header states no age, or by its lungs' width in cm: docs/scope.md).
``--heatmap-dir`` gets an overlay PNG per (file, model); with ``--maps`` also ``<stem>.<model>.npy``,
the 224 x 224 float32 map in [0, 1] as displayed normalised per image (the dashboard's other scale
multiplies it by P), explaining P(pneumonia). ``--lung-dir`` gets
``<stem>.lungs.png`` (224 x 224, 255 = lung). Exit status: 0 when every file was scored, 1 when any
file was refused, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core import inference
from core.errors import ImageDecodeError
from core.gradcam import overlay
from core.ood import OODCheck
from core.registry import available_models
from core.segmenter import LungSegmenter

__all__ = ["main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2  # argparse exits with 2 on a usage error
BATCH = 32  # files decoded and scored together


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.predict", description="Score chest X-rays for pneumonia.")
    parser.add_argument("--model", default="all", help="model name or 'all' (default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--heatmap-dir", type=Path, help="write a Grad-CAM overlay PNG per (file, model)")
    parser.add_argument("--maps", action="store_true",
                        help="also write each map as <stem>.<model>.npy (224 x 224 float32, explaining P(pneumonia)) "
                             "into --heatmap-dir")
    parser.add_argument("--lung-dir", type=Path, help="write the lungs found as <stem>.lungs.png (255 = lung)")
    parser.add_argument("--no-ood-check", action="store_true", help="skip the out-of-distribution guard")
    parser.add_argument("--age", type=float, metavar="YEARS",
                        help="the patient's age, for every file whose header states none (JPEG and PNG never do); "
                             "18 or more withholds the film as an adult's")
    parser.add_argument("files", nargs="*", metavar="FILE")
    args = parser.parse_args(argv)
    if not args.files:
        parser.error("no files given")
    if args.maps and not args.heatmap_dir:
        parser.error("--maps needs --heatmap-dir")
    if args.age is not None and not 0 <= args.age <= 120:
        parser.error(f"--age {args.age:g} is not an age in years (0 to 120)")
    names = available_models()
    if args.model != "all" and args.model not in names:
        parser.error(f"unknown model '{args.model}'. Available: {', '.join(names) or 'none'}")

    lungs = _optional(LungSegmenter)
    models = [inference.load_model(n, lungs=lungs) for n in (names if args.model == "all" else [args.model])]
    guard = None if args.no_ood_check else _optional(OODCheck)
    if args.lung_dir and lungs is None:
        parser.error("--lung-dir needs the lung segmenter (models/lungs; train it with python -m core.segmenter)")
    for folder in (args.heatmap_dir, args.lung_dir):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(args.files)
    status = EXIT_OK
    numbered = list(enumerate(args.files))
    for start in range(0, len(numbered), BATCH):
        chunk, uploads = numbered[start : start + BATCH], {}
        for index, path in chunk:
            try:
                uploads[index] = inference.read_upload(inference.read_file(path), Path(path).name)
            except ImageDecodeError as exc:
                uploads[index] = str(exc)
        good = [i for i, _ in chunk if not isinstance(uploads[i], str)]
        found = inference.score([uploads[i].gray for i in good], models, guard, lungs,
                                stated=[uploads[i].stated.with_entered_age(args.age) for i in good])
        readings = dict(zip(good, found, strict=True))
        for index, path in chunk:
            if index not in readings:
                status = EXIT_REFUSED
                _emit(args.json, {"file": path, "error": uploads[index]})
                continue
            reading, gray = readings[index], uploads[index].gray
            if args.lung_dir:
                Image.fromarray(reading.lungs.astype(np.uint8) * 255).save(args.lung_dir / f"{stems[index]}.lungs.png")
            for model in models:
                d = reading.diagnoses[model.name]
                share = reading.lung_share(model.name)
                record = {"file": path, "model": model.name, "probability": round(d.probability, 6),
                          "label": d.label, "threshold": round(d.threshold, 6),
                          "lung_share": None if share is None else round(share, 4)}
                if reading.flagged:
                    record.update(ood=True, reason=reading.ood.reason, warning=reading.ood.warning)
                _emit(args.json, record)
                if args.heatmap_dir:
                    out = args.heatmap_dir / f"{index:03d}_{Path(path).stem}_{model.name}.png"
                    Image.fromarray(overlay(gray, d.heatmap(gray.shape, d.label))).save(out)
                if args.maps:
                    np.save(args.heatmap_dir / f"{stems[index]}.{model.name}.npy",
                            d.heatmap((224, 224), "PNEUMONIA").astype(np.float32))
    return status


def _optional(component):
    """The shipped guard or segmenter, or ``None`` (with a warning) when it is not shipped."""
    try:
        return component()
    except FileNotFoundError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return None


def _unique_stems(paths: list[str]) -> list[str]:
    """File stems for output names; a stem seen before gets ``-2``, ``-3``… so no output overwrites another."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def _emit(as_json: bool, record: dict) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
    elif "error" in record:
        print(f"{record['file']}: ERROR {record['error']}", flush=True)
    else:
        print(f"{record['file']}: {record['model']}: P(pneumonia)={record['probability']:.4f} -> "
              f"{record['label']} (threshold {record['threshold']:.4f})"
              + (f", {record['lung_share']:.0%} of the evidence in the lungs" if record["lung_share"] is not None else "")
              + (f"  WARNING: {record['warning']}" if record.get("ood") else ""), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

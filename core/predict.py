"""``python -m core.predict [--model NAME|all] [--json] [--heatmap-dir DIR] FILE [FILE ...]``

Scores X-ray files with the shipped models. With ``--json``: one JSON object per line,
``{"file", "model", "probability", "label", "threshold"}`` per scored (file, model), or
``{"file", "error"}`` for a file that cannot be used. A file that does not look like a chest
X-ray (out-of-distribution guard) is still scored, and its lines gain ``"ood": true`` and a
``"warning"``. Exit status: 0 when every file was scored, 1 when any file was refused, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from core import inference
from core.errors import ImageDecodeError
from core.gradcam import overlay
from core.ood import OODCheck
from core.registry import available_models

__all__ = ["main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2  # argparse exits with 2 on a usage error
BATCH = 32  # files decoded and scored together


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.predict", description="Score chest X-rays for pneumonia.")
    parser.add_argument("--model", default="all", help="model name or 'all' (default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--heatmap-dir", type=Path, help="write a Grad-CAM overlay PNG per (file, model)")
    parser.add_argument("--no-ood-check", action="store_true", help="skip the out-of-distribution guard")
    parser.add_argument("files", nargs="*", metavar="FILE")
    args = parser.parse_args(argv)
    if not args.files:
        parser.error("no files given")
    names = available_models()
    if args.model != "all" and args.model not in names:
        parser.error(f"unknown model '{args.model}'. Available: {', '.join(names) or 'none'}")

    models = [inference.load_model(n) for n in (names if args.model == "all" else [args.model])]
    guard = None if args.no_ood_check else _guard()
    if args.heatmap_dir:
        args.heatmap_dir.mkdir(parents=True, exist_ok=True)
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
        readings = dict(zip(good, inference.score([uploads[i].gray for i in good], models, guard), strict=True))
        for index, path in chunk:
            if index not in readings:
                status = EXIT_REFUSED
                _emit(args.json, {"file": path, "error": uploads[index]})
                continue
            reading, gray = readings[index], uploads[index].gray
            for model in models:
                d = reading.diagnoses[model.name]
                record = {"file": path, "model": model.name, "probability": round(d.probability, 6),
                          "label": d.label, "threshold": round(d.threshold, 6)}
                if reading.flagged:
                    record.update(ood=True, warning=reading.ood.warning)
                _emit(args.json, record)
                if args.heatmap_dir:
                    out = args.heatmap_dir / f"{index:03d}_{Path(path).stem}_{model.name}.png"
                    Image.fromarray(overlay(gray, d.heatmap(gray.shape, d.label))).save(out)
    return status


def _guard() -> OODCheck | None:
    try:
        return OODCheck()
    except FileNotFoundError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return None


def _emit(as_json: bool, record: dict) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
    elif "error" in record:
        print(f"{record['file']}: ERROR {record['error']}", flush=True)
    else:
        print(f"{record['file']}: {record['model']}: P(pneumonia)={record['probability']:.4f} -> "
              f"{record['label']} (threshold {record['threshold']:.4f})"
              + (f"  WARNING: {record['warning']}" if record.get("ood") else ""), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

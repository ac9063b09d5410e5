"""``python -m core.predict [--model NAME|all] [--json] [--heatmap-dir DIR] FILE [FILE ...]``

Scores X-ray files with the shipped models. With ``--json``: one JSON object per line,
``{"file", "model", "probability", "label", "threshold"}`` per scored (file, model), or
``{"file", "error"}`` for a file that cannot be used. A file that does not look like a chest
X-ray (out-of-distribution guard) is still scored, and its lines gain ``"ood": true`` and a
``"warning"``. Exit status: 0 when every file was
scored, 1 when any file was refused, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
BATCH = 32  # files decoded and scored together


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 without a traceback
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _read(path: str) -> bytes:
    from core.preprocessing import ImageDecodeError

    p = Path(path)
    if p.is_dir():
        raise ImageDecodeError(f"'{path}' is a folder, not an image file.")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"'{path}' does not exist.") from None
    except OSError as exc:
        raise ImageDecodeError(f"'{path}' cannot be read: {exc.strerror or exc}.") from None


def main(argv=None) -> int:
    parser = _Parser(prog="python -m core.predict", description="Score chest X-rays for pneumonia.")
    parser.add_argument("--model", default="all", help="model name or 'all' (default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--heatmap-dir", type=Path, help="write a Grad-CAM overlay PNG per (file, model)")
    parser.add_argument("--no-ood-check", action="store_true", help="skip the out-of-distribution guard")
    parser.add_argument("files", nargs="*", metavar="FILE")
    args = parser.parse_args(argv)
    if not args.files:
        parser.error("no files given")

    from core.registry import available_models

    names = available_models()
    if args.model != "all" and args.model not in names:
        parser.error(f"unknown model '{args.model}'. Available: {', '.join(names) or 'none'}")
    selected = names if args.model == "all" else [args.model]

    import numpy as np
    from PIL import Image

    from core.gradcam import overlay
    from core.inference import OODCheck, load_model
    from core.preprocessing import ImageDecodeError, load_grayscale

    models = [load_model(n) for n in selected]
    ood = None if args.no_ood_check else _guard(OODCheck)
    if args.heatmap_dir:
        args.heatmap_dir.mkdir(parents=True, exist_ok=True)
    status = EXIT_OK
    numbered = list(enumerate(args.files))
    for start in range(0, len(numbered), BATCH):
        decoded = []  # (index, path, gray or None, error or None), in the order given
        for index, path in numbered[start : start + BATCH]:
            try:
                decoded.append((index, path, load_grayscale(_read(path), filename=Path(path).name), None))
            except ImageDecodeError as exc:
                decoded.append((index, path, None, str(exc)))
        good = [gray for _, _, gray, _ in decoded if gray is not None]
        batch = np.stack(good) if good else None
        checks = ood(batch) if ood is not None and good else [None] * len(good)
        readings = {model.name: model.diagnose_gray(batch) for model in models} if good else {}
        k = 0
        for index, path, gray, error in decoded:
            if error is not None:
                status = EXIT_REFUSED
                _emit(args.json, {"file": path, "error": error})
                continue
            for model in models:
                d = readings[model.name][k]
                record = {"file": path, "model": model.name, "probability": round(d.probability, 6),
                          "label": d.label, "threshold": round(d.threshold, 6)}
                if checks[k] is not None and checks[k].flagged:
                    record.update(ood=True, warning=checks[k].warning)
                _emit(args.json, record)
                if args.heatmap_dir:
                    out = args.heatmap_dir / f"{index:03d}_{Path(path).stem}_{model.name}.png"
                    Image.fromarray(overlay(gray, d.heatmap(gray.shape, d.label))).save(out)
            k += 1
    return status


def _guard(factory):
    try:
        return factory()
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

"""``python -m core.evaluate [--model NAME|all] [--data-dir D]``: score the official test set.

Writes ``models/<name>/test_predictions.csv`` (filename, label, probability) and
``metrics.json``. Nothing here is tuned: the threshold comes from the model card, which
was chosen on validation data.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

from core import LABELS

log = logging.getLogger(__name__)


def evaluate_model(name: str, data_dir=None, root: Path | None = None) -> dict:
    """Score the test split with the shipped model ``name`` and write its artifacts."""
    from core.data import find_data_dir, fingerprint, list_split, load_images
    from core.evaluation import full_report
    from core.inference import load_model
    from core.registry import models_dir

    root = root or models_dir()
    samples = list_split(find_data_dir(data_dir), "test")
    model = load_model(name, root)
    probs = np.array([d.probability for d in model.diagnose_gray(load_images(samples))])
    labels = np.array([s.label for s in samples])
    folder = root / name
    with open(folder / "test_predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "probability"])
        for s, p in zip(samples, probs, strict=False):
            writer.writerow([s.name, LABELS[s.label], f"{p:.8f}"])
    # metrics from the rounded values in the CSV, so the file alone reproduces them
    probs = np.round(probs, 8)
    report = {
        "model": name,
        "split": "official test",
        "test_fingerprint": fingerprint(samples),
        "threshold_source": model.card["threshold_rule"],
        **full_report(labels, probs, model.threshold),
    }
    (folder / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    from core.registry import available_models

    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__)
    parser.add_argument("--model", default="all", help="a model name or 'all'")
    parser.add_argument("--data-dir", help="dataset folder (default: $PNEUMONIA_DATA_DIR or ../shared/data/chest_xray)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    names = available_models()
    if args.model != "all" and args.model not in names:
        print(f"Unknown model '{args.model}'. Available: {', '.join(names)}", file=sys.stderr)
        return 2
    for name in names if args.model == "all" else [args.model]:
        r = evaluate_model(name, args.data_dir)
        m = r["at_card_threshold"]
        print(f"{name:10s} acc {m['accuracy']:.4f}  sens {m['sensitivity']:.4f}  spec {m['specificity']:.4f}  "
              f"F1 {m['f1']:.4f}  ROC AUC {r['roc_auc']:.4f}  PR AUC {r['pr_auc']:.4f}  (threshold {m['threshold']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

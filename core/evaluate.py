"""``python -m core.evaluate [--model NAME|all] [--split test|val] [--data-dir D]``: score the official test set.

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
from sklearn.metrics import average_precision_score, roc_auc_score

from core import LABELS
from core.data import find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.evaluation import full_report, interval_text, metrics_at
from core.gradcam import border_share, central_share
from core.inference import load_model, score
from core.registry import available_models, model_files, models_dir

__all__ = ["evaluate_model", "validation_summary", "summary_line", "main"]

log = logging.getLogger(__name__)


def evaluate_model(name: str, data_dir=None, root: Path | None = None) -> dict:
    """Score the test split with the shipped model ``name`` and write its artifacts."""
    root = root or models_dir()
    samples = list_split(find_data_dir(data_dir), "test")
    model = load_model(name, root)
    diagnoses = _diagnoses(model, load_images(samples))
    probs = np.array([d.probability for d in diagnoses])
    labels = np.array([s.label for s in samples])
    files = model_files(name, root)
    with open(files.predictions, "w", newline="") as f:
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
        "threshold_source": model.card.threshold_rule,
        **full_report(labels, probs, model.threshold),
        "gradcam": _gradcam_summary(diagnoses, model.threshold),
    }
    files.metrics.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _diagnoses(model, gray: np.ndarray) -> list:
    """The model's diagnosis of each image, through the serving path."""
    return [reading.diagnoses[model.name] for reading in score(gray, [model])]


def _gradcam_summary(diagnoses, threshold: float) -> dict:
    """Where the PNEUMONIA evidence sits, over images the model calls PNEUMONIA."""
    heats = [d.heatmap((224, 224), "PNEUMONIA") for d in diagnoses if d.probability >= threshold]
    heats = [h for h in heats if h.sum() > 0]

    def mean(fn):
        return float(np.mean([fn(h) for h in heats])) if heats else None

    return {
        "images": len(heats),
        "central_third_share_mean": mean(central_share),
        "border_share_mean": mean(border_share),
        "meaning": "share of the pneumonia Grad-CAM mass in the central third of the image width "
                   "(mediastinum and heart; a uniform map gives 0.333) and in the top 12 % / outer 8 % "
                   "borders (shoulders, corners, labels; a uniform map gives 0.26)",
    }


def validation_summary(name: str, data_dir=None, root: Path | None = None) -> dict:
    """Metrics on the model's own validation split (as recorded in its card); writes nothing."""
    model = load_model(name, root)
    cfg = model.card.config
    _, val = split_train_val(list_split(find_data_dir(data_dir), "train"), cfg["val_fraction"], cfg["seed"])
    diagnoses = _diagnoses(model, load_images(val))
    probs, labels = np.array([d.probability for d in diagnoses]), np.array([s.label for s in val])
    return {"model": name, "split": "validation", "roc_auc": float(roc_auc_score(labels, probs)),
            "pr_auc": float(average_precision_score(labels, probs)),
            "at_card_threshold": metrics_at(labels, probs, model.threshold),
            "gradcam": _gradcam_summary(diagnoses, model.threshold)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__)
    parser.add_argument("--model", default="all", help="a model name or 'all'")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="'val': print validation metrics only (used to choose between runs); writes nothing")
    parser.add_argument("--data-dir", help="dataset folder (default: $PNEUMONIA_DATA_DIR or ../shared/data/chest_xray)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    names = available_models()
    if args.model != "all" and args.model not in names:
        print(f"Unknown model '{args.model}'. Available: {', '.join(names)}", file=sys.stderr)
        return 2
    for name in names if args.model == "all" else [args.model]:
        r = evaluate_model(name, args.data_dir) if args.split == "test" else validation_summary(name, args.data_dir)
        print(summary_line(name, args.split, r))
    return 0


def summary_line(name: str, split: str, r: dict) -> str:
    """One printed line per model; Grad-CAM shares read "n/a" when no image was called pneumonia."""
    m, g = r["at_card_threshold"], r["gradcam"]

    def share(key, digits):
        return "n/a" if g[key] is None else f"{g[key]:.{digits}f}"

    return (f"{name:10s} [{split}] acc {m['accuracy']:.4f}  sens {m['sensitivity']:.4f}  spec {m['specificity']:.4f}  "
            f"F1 {m['f1']:.4f}  ROC AUC {r['roc_auc']:.4f}  PR AUC {r['pr_auc']:.4f}  (threshold {m['threshold']:.4f})  "
            f"Grad-CAM central share {share('central_third_share_mean', 2)}, "
            f"border share {share('border_share_mean', 3)}"
            + (f"  95 % CI: acc {interval_text(r['ci95']['accuracy'])}, ROC AUC {interval_text(r['ci95']['roc_auc'])}"
               if "ci95" in r else ""))


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m core.evaluate [--model NAME|all] [--split test|val] [--explanations] [--invariance] [--finer-maps] [--lungs] [--input-change [--images N] [--blur-sigma S]] [--threshold-rules] [--models-dir DIR] [--data-dir D]``

Scores the official test set: writes ``models/<name>/test_predictions.csv`` (filename, label,
probability) and ``metrics.json``, which holds, where the lung masks are present, how the model's
Grad-CAM maps lie against the true lungs (``explanation``). ``--explanations`` measures only that and
adds it to ``metrics.json``, leaving the predictions as they are. ``--invariance`` measures how every
model's answer moves with the file's encoding and resolution (``models/invariance.json``, see
:mod:`core.invariance`; with ``--split val``, on the validation split: ``invariance-val.json``, the rule for
candidates); with ``--model NAME`` it re-measures that model and keeps the other models' rows of the file. ``--models-dir DIR`` reads candidates written by ``python -m core.train --out DIR``. ``--lungs`` measures the lung segmenter's Dice on the test masks
(``models/lungs/metrics.json``). ``--input-change`` measures, on validation images and for the ImageNet backbone
alone, how much of each served variant's change reaches the input and the pooled features when the blur is followed
by nothing, histogram equalisation or a linear stretch (``models/input-change-val.json``; docs/lungs.md §12).
``--threshold-rules`` compares, on each model's validation split only, how well and how steadily two rules place the
threshold on images they did not choose on (``models/threshold-rules-val.json``; docs/lungs.md §20). Nothing here is tuned: thresholds come from the model cards, chosen on
validation data.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from core import LABELS
from core.augment import VARIANTS, encode_variant
from core.calibration import compare_threshold_rules
from core.data import find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.evaluation import full_report, interval_text, metrics_at
from core.gradcam import GradCam, border_share, central_share
from core.inference import load_model, read_upload, score
from core.invariance import input_change, input_change_table, invariance_table, measure
from core.lungs import dice, explanation_quality, find_mask_dir, implausible_lungs, load_masks
from core.ood import OODCheck, feature_extractor
from core.registry import (
    available_models,
    guard_files,
    invariance_file,
    load_card,
    load_metrics,
    lungs_files,
    model_files,
    models_dir,
)
from core.segmenter import LungSegmenter

__all__ = ["evaluate_model", "explanation_summary", "add_explanations", "evaluate_lungs", "validation_summary", "summary_line",
           "explanation_line", "merge_invariance", "main"]

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
    explanation = explanation_summary(samples, diagnoses)
    if explanation is not None:
        report["explanation"] = explanation
    files.metrics.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _diagnoses(model, gray: np.ndarray) -> list:
    """The model's diagnosis of each image, through the serving path."""
    return [reading.diagnoses[model.name] for reading in score(gray, [model])]


def explanation_summary(samples, diagnoses, mask_dir=None, split: str = "test") -> dict | None:
    """How the maps the app shows (explaining P(pneumonia), 224 x 224) lie against the true lung masks of
    the images (from the official ``split``: validation images are in ``train``;
    :func:`core.lungs.explanation_quality`); ``None`` when the masks are not here."""
    found = find_mask_dir(mask_dir, required=False)
    if found is None:
        return None
    masks, present = load_masks(samples, split, found)
    heats = np.stack([d.heatmap((224, 224), "PNEUMONIA") for d in diagnoses])
    return explanation_quality(heats, masks, present)


def add_explanations(name: str, data_dir=None, root: Path | None = None) -> dict:
    """Measure :func:`explanation_summary` for a model and add it to its ``metrics.json`` (nothing else changes).

    Raises:
        DatasetNotFoundError: The lung masks are not here.
    """
    find_mask_dir()
    samples = list_split(find_data_dir(data_dir), "test")
    model = load_model(name, root)
    report = load_metrics(name, root) or {}
    report["explanation"] = explanation_summary(samples, _diagnoses(model, load_images(samples)))
    model_files(name, root).metrics.write_text(json.dumps(report, indent=1) + "\n")
    return report


def evaluate_lungs(data_dir=None, mask_dir=None, root: Path | None = None) -> dict:
    """Dice of the shipped segmenter on the official ``test`` masks (mean, 5th percentile, minimum), and
    its invariance: Dice between the lungs found on each copy and on each encoding variant
    (:mod:`core.invariance`). Writes ``models/lungs/metrics.json``."""
    segmenter = LungSegmenter(root)
    samples = list_split(find_data_dir(data_dir), "test")
    masks, present = load_masks(samples, "test", find_mask_dir(mask_dir))
    gray = load_images(samples)
    found = segmenter.masks(gray)
    scores = dice(found[present], masks[present])
    report = {"split": "official test", "images": int(present.sum()),
              "test": {"dice_mean": float(scores.mean()), "dice_p05": float(np.percentile(scores, 5)),
                       "dice_min": float(scores.min()),
                       "implausible_lungs": int(sum(implausible_lungs(m) is not None for m in found))},
              "invariance": {}}
    for variant in VARIANTS:
        again = segmenter.masks(np.stack([read_upload(encode_variant(g, variant)).gray for g in gray]))
        report["invariance"][variant] = {"dice_to_copy_mean": float(dice(again, found).mean()),
                                         "dice_to_truth_mean": float(dice(again[present], masks[present]).mean())}
    lungs_files(root).report.write_text(json.dumps(report, indent=1) + "\n")
    return report


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


def own_validation(model, data_dir=None) -> list:
    """The model's own validation split: the images its card says were held out of ``train`` (fraction and seed)."""
    cfg = model.card.config
    return split_train_val(list_split(find_data_dir(data_dir), "train"), cfg["val_fraction"], cfg["seed"])[1]


def validation_summary(name: str, data_dir=None, root: Path | None = None) -> dict:
    """Metrics and explanation quality (where the lung masks are here) on the model's own validation split
    (as recorded in its card); writes nothing."""
    model = load_model(name, root)
    val = own_validation(model, data_dir)
    diagnoses = _diagnoses(model, load_images(val))
    probs, labels = np.array([d.probability for d in diagnoses]), np.array([s.label for s in val])
    return {"model": name, "split": "validation", "roc_auc": float(roc_auc_score(labels, probs)),
            "pr_auc": float(average_precision_score(labels, probs)),
            "at_card_threshold": metrics_at(labels, probs, model.threshold),
            "gradcam": _gradcam_summary(diagnoses, model.threshold),
            "explanation": explanation_summary(val, diagnoses, split="train")}


FINER_MAPS = (("top_activation", "gradcam"), ("top_activation", "hirescam"), ("block14_add", "gradcam"),
              ("block14_add", "hirescam"), ("block10_add", "gradcam"), ("block10_add", "hirescam"))
"""Map layers (7 x 7, 7 x 7, 14 x 14) and methods compared by :func:`finer_maps_summary`; the first is served."""


def finer_maps_summary(name: str, data_dir=None, root: Path | None = None) -> dict:
    """Explanation quality of each of :data:`FINER_MAPS` for a Lite0 model on its validation split (writes
    nothing): does a finer map lie more on the lungs than the one served?"""
    model = load_model(name, root)
    val = own_validation(model, data_dir)
    gray, out = load_images(val), {}
    model.gives_lungs = False  # maps only
    for layer, method in FINER_MAPS:
        model.explainer = GradCam(model.keras_model, layer, method=method)
        out[f"{layer} {method}"] = explanation_summary(val, _diagnoses(model, gray), split="train")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__)
    parser.add_argument("--model", default="all", help="a model name or 'all'")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="'val': print validation metrics only (used to choose between runs); writes nothing")
    parser.add_argument("--explanations", action="store_true",
                        help="only measure the Grad-CAM maps against the true lungs and add that to metrics.json")
    parser.add_argument("--lungs", action="store_true",
                        help="measure the lung segmenter on the test masks (writes models/lungs/metrics.json)")
    parser.add_argument("--invariance", action="store_true",
                        help="measure how answers move with encoding and resolution (writes models/invariance.json)")
    parser.add_argument("--finer-maps", action="store_true",
                        help="compare finer Grad-CAM layers and HiResCAM on the validation split (writes nothing)")
    parser.add_argument("--input-change", action="store_true",
                        help="how much of each variant's change reaches the ImageNet backbone's input and features, "
                             "by what follows the blur (validation images; writes models/input-change-val.json)")
    parser.add_argument("--images", type=int, default=240, metavar="N",
                        help="--input-change: how many validation images, drawn at random (seed 0; default 240)")
    parser.add_argument("--blur-sigma", type=float, default=3.0, metavar="S",
                        help="--input-change: the blur before the treatments, in pixels (default 3, as 'transfer')")
    parser.add_argument("--threshold-rules", action="store_true",
                        help="on each model's validation split only: Youden's J, on patient-disjoint halves, of the "
                             "threshold chosen on the other half by the empirical maximum and through the calibration, "
                             "and how much each choice wobbles (writes models/threshold-rules-val.json)")
    parser.add_argument("--models-dir", type=Path, metavar="DIR",
                        help="read the models (and their guard and segmenter) from DIR instead of models/, e.g. a "
                             "candidate written by 'python -m core.train --out DIR'")
    parser.add_argument("--data-dir", help="dataset folder (default: $PNEUMONIA_DATA_DIR or ../shared/data/chest_xray)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    root = args.models_dir
    names = available_models(root)
    if args.model != "all" and args.model not in names:
        print(f"Unknown model '{args.model}'. Available: {', '.join(names)}", file=sys.stderr)
        return 2
    chosen = names if args.model == "all" else [args.model]
    if args.lungs:
        r = evaluate_lungs(args.data_dir)
        print(f"lung segmenter: test Dice {r['test']['dice_mean']:.4f} (5th percentile {r['test']['dice_p05']:.4f}, "
              f"lowest {r['test']['dice_min']:.4f}); Dice to the copy's lungs: "
              + ", ".join(f"{v} {x['dice_to_copy_mean']:.4f}" for v, x in r["invariance"].items()))
        return 0
    if args.invariance:
        return _invariance(chosen, root, args.split, find_data_dir(args.data_dir))
    if args.input_change:
        return _input_change(args.images, args.blur_sigma, root, find_data_dir(args.data_dir))
    if args.threshold_rules:
        return _threshold_rules(chosen, root, find_data_dir(args.data_dir))
    if args.finer_maps:
        for name in [n for n in chosen if load_card(n, root).backbone]:
            for variant, e in finer_maps_summary(name, args.data_dir, root).items():
                print(explanation_line(f"{name} {variant}", e))
        return 0
    if args.explanations:
        for name in chosen:
            print(explanation_line(name, add_explanations(name, args.data_dir)["explanation"]))
        return 0
    for name in chosen:
        r = (evaluate_model(name, args.data_dir, root) if args.split == "test"
             else validation_summary(name, args.data_dir, root))
        print(summary_line(name, args.split, r))
        if r.get("explanation"):
            print(explanation_line(name, r["explanation"]))
    return 0


def threshold_rules_summary(name: str, data_dir=None, root: Path | None = None, halvings: int = 20) -> dict:
    """:func:`core.calibration.compare_threshold_rules` on the model's own validation split (as its card records it),
    with the probabilities serving shows, grouped by patient; reads no test image."""
    model = load_model(name, root)
    val = own_validation(model, data_dir)
    probs = np.array([d.probability for d in _diagnoses(model, load_images(val))])
    return {"card_threshold": model.threshold,
            **compare_threshold_rules([s.label for s in val], probs, [s.patient for s in val], halvings)}


def _threshold_rules(chosen: list[str], root: Path | None, data_dir: Path) -> int:
    """``--threshold-rules``: print the comparison and write ``threshold-rules-val.json`` beside the models."""
    out = {name: threshold_rules_summary(name, data_dir, root) for name in chosen}
    print("| model | rule | threshold on all validation images | its spread over halves (SD) | held-out J (mean ± SD) |")
    print("|---|---|---|---|---|")
    for name, r in out.items():
        for rule in ("youden", "calibrated_youden"):
            x = r[rule]
            print(f"| {name} | {rule} | {x['on_all']:.3f} | {x['threshold_sd']:.3f} | "
                  f"{x['held_out_j_mean']:.3f} ± {x['held_out_j_sd']:.3f} |")
    path = (root or models_dir()) / "threshold-rules-val.json"
    path.write_text(json.dumps({"split": "validation", "models": out}, indent=1) + "\n")
    print(f"Wrote {path}")
    return 0


def _invariance(chosen: list[str], root: Path | None, split: str, data_dir: Path) -> int:
    """``--invariance``: on the test set (writes ``invariance.json``) or on the models' common validation split
    (writes ``invariance-val.json``, the candidates' rule)."""
    # a candidate folder without its own guard or segmenter uses the shipped one
    guard_root = root if guard_files(root).weights.exists() else None
    guard = OODCheck(guard_root) if guard_files(guard_root).weights.exists() else None
    lungs_root = root if lungs_files(root).weights.exists() else None
    lungs = LungSegmenter(lungs_root) if lungs_files(lungs_root).weights.exists() else None
    models = [load_model(n, root, lungs=lungs) for n in chosen]
    samples, out = None, invariance_file(root)
    if split == "val":
        splits = {(m.card.config["val_fraction"], m.card.config["seed"]) for m in models}
        if len(splits) != 1:
            print(f"The models were validated on different splits ({sorted(splits)}); measure them one at a time.",
                  file=sys.stderr)
            return 2
        (fraction, seed), = splits
        _, samples = split_train_val(list_split(data_dir, "train"), fraction, seed)
        out = out.with_name("invariance-val.json")
    result = measure(models, guard, data_dir, lungs=lungs, samples=samples)
    result["split"] = "official test" if split == "test" else "validation"
    if out.exists() and set(chosen) != set(available_models(root)):  # some models re-measured: the others' rows stay
        result = merge_invariance(json.loads(out.read_text()), result)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(invariance_table(result))
    return 0


def _input_change(n: int, sigma: float, root: Path | None, data_dir: Path) -> int:
    """``--input-change``: ``n`` validation images (the recipes' split: 10 %, seed 42), drawn with seed 0."""
    if n < 2 or sigma < 0:
        print("--images needs at least 2 and --blur-sigma at least 0.", file=sys.stderr)
        return 2
    _, val = split_train_val(list_split(data_dir, "train"), 0.1, 42)
    chosen = sorted(np.random.default_rng(0).choice(len(val), size=min(n, len(val)), replace=False))
    copies = load_images([val[i] for i in chosen])
    result = input_change(copies, sigma, features=feature_extractor())
    result["split"] = "validation"
    invariance_file(root).with_name("input-change-val.json").write_text(json.dumps(result, indent=1) + "\n")
    print(input_change_table(result))
    return 0


def merge_invariance(earlier: dict, new: dict) -> dict:
    """``new`` (some models' invariance) laid over ``earlier`` (the file it replaces): every model measured now
    replaces its earlier entry, models not measured now keep theirs, and the guard's withheld shares are the new
    run's (the same guard gives the same shares). An earlier file of other images or variants is replaced whole."""
    if (earlier.get("images"), earlier.get("split"), set(earlier.get("variants", {}))) != \
            (new["images"], new["split"], set(new["variants"])):
        return new
    merged = copy.deepcopy(earlier)
    merged["copies"], merged["bars"] = new["copies"], new["bars"]
    for variant, r in new["variants"].items():
        merged["variants"][variant]["models"].update(r["models"])
        merged["variants"][variant]["withheld"] = r["withheld"]
    if "fullres" in new:
        if merged.get("fullres", {}).get("files") == new["fullres"]["files"]:
            merged["fullres"]["models"].update(new["fullres"]["models"])
            merged["fullres"].update({k: v for k, v in new["fullres"].items() if k != "models"})
        else:
            merged["fullres"] = new["fullres"]
    return merged


def explanation_line(name: str, e: dict) -> str:
    """One printed line of explanation quality."""
    return (f"{name:10s} map energy in the lungs {e['lung_energy_mean']:.3f} (lungs: {e['lung_area_mean']:.3f} of the "
            f"area)  pointing game {e['pointing_game']:.3f}  template index {e['template_index']:.3f}  "
            f"({e['images']} images, {e['empty_maps']} empty maps)")


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

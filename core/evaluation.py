"""Metrics with scikit-learn: thresholds chosen on validation, test metrics, curves."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

__all__ = [
    "classification_rows",
    "logit",
    "apply_temperature",
    "fit_temperature",
    "mean_log_loss",
    "calibrated_youden_threshold",
    "choose_threshold",
    "metrics_at",
    "full_report",
    "calibration_bins",
    "bootstrap_ci",
    "interval_text",
]


def logit(p) -> np.ndarray:
    """log(p / (1 - p)), with p kept 1e-7 away from 0 and 1."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def apply_temperature(p, temperature: float) -> np.ndarray:
    """P(pneumonia) with the logit divided by ``temperature`` (1 leaves it as it is): temperature scaling
    (:mod:`core.calibration` fits it)."""
    return 1.0 / (1.0 + np.exp(-logit(p) / float(temperature)))


_EPS = 1e-7


def mean_log_loss(y, p) -> float:
    """The mean negative log-likelihood of 0/1 labels ``y`` given probabilities ``p``."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(y, p) -> float:
    """The temperature that minimises the negative log-likelihood of labels ``y`` (0/1) given ``p``."""
    y = np.asarray(y, np.float64)
    z = logit(p)
    result = minimize_scalar(lambda log_t: mean_log_loss(y, 1.0 / (1.0 + np.exp(-z / np.exp(log_t)))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def calibrated_youden_threshold(y, p) -> float:
    """Youden's point estimated through the calibration: the threshold on ``p`` whose temperature-calibrated
    probability equals the share of positives in ``y``.

    For calibrated probabilities, sensitivity + specificity - 1 is largest where the two classes' score densities
    cross, which is where P equals the prevalence of the data it was calibrated on. Estimated this way the threshold
    rests on every image's probability, not on the few images where the empirical maximum happens to fall, which on
    a validation split that the model ranks almost perfectly is a wide, flat plateau.
    """
    y = np.asarray(y, np.float64)
    t = fit_temperature(y, p)
    return float(apply_temperature(y.mean(), 1.0 / t))  # sigmoid(T * logit(prevalence)), on the raw scale


def choose_threshold(y_true, prob, rule: str = "youden") -> float:
    """Decision threshold on P(pneumonia) chosen on *validation* data.

    Args:
        y_true: 0/1 labels.
        prob: Predicted P(pneumonia).
        rule: ``"youden"`` maximises sensitivity + specificity - 1 (ties: the threshold
            closest to 0.5); ``"calibrated_youden"`` estimates the same point through a temperature
            calibration fitted on these data (:func:`calibrated_youden_threshold`);
            ``"fixed"`` returns 0.5.

    Returns:
        The threshold; a case is PNEUMONIA when ``prob >= threshold``.
    """
    if rule == "fixed":
        return 0.5
    if rule == "calibrated_youden":
        return calibrated_youden_threshold(y_true, prob)
    if rule != "youden":
        raise ValueError(f"Unknown threshold rule {rule!r}. Available: youden, calibrated_youden, fixed")
    # every distinct probability is a candidate (drop_intermediate=False keeps them all; the first, +inf, calls
    # nothing pneumonia and never wins)
    fpr, tpr, candidates = skm.roc_curve(np.asarray(y_true), np.asarray(prob, dtype=np.float64),
                                         drop_intermediate=False)
    j, candidates = (tpr - fpr)[1:], candidates[1:]
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def metrics_at(y_true, prob, threshold: float) -> dict:
    """Accuracy, precision, sensitivity, specificity, F1 and confusion matrix at a threshold.

    Precision is ``None`` (undefined) when no image is called pneumonia; F1 is then 0.
    """
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "precision": float(tp / (tp + fp)) if tp + fp else None,  # undefined when nothing is called pneumonia
        "sensitivity": float(skm.recall_score(y_true, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def classification_rows(y_true, prob, threshold: float) -> list[dict]:
    """scikit-learn's classification report at a threshold, one dict per row as it prints them: each class, then
    ``accuracy`` (its ``f1-score`` is the accuracy, its ``support`` every image; no precision or recall), then the
    macro and weighted averages. A precision is ``None`` (undefined) for a class that no image is called, and so
    is the averages' precision then (scikit-learn would average the defined one alone)."""
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    report = skm.classification_report(y_true, pred, labels=[0, 1], target_names=["NORMAL", "PNEUMONIA"],
                                       output_dict=True, zero_division=np.nan)
    undefined = any(np.isnan(report[c]["precision"]) for c in ("NORMAL", "PNEUMONIA"))

    def row(name: str) -> dict:
        r = report[name]
        return {"class": name, **{k: None if np.isnan(r[k]) or (k == "precision" and undefined and "avg" in name)
                                  else float(r[k]) for k in ("precision", "recall", "f1-score")},
                "support": int(r["support"])}

    return [row("NORMAL"), row("PNEUMONIA"),
            {"class": "accuracy", "f1-score": float(report["accuracy"]), "support": len(y_true)},
            row("macro avg"), row("weighted avg")]


def calibration_bins(y_true, prob, n_bins: int = 10) -> list[dict]:
    """Reliability table: per equal-width bin, mean predicted probability and observed rate."""
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(prob, edges[1:-1]), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = idx == b
        out.append({
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": int(mask.sum()),
            "mean_predicted": float(prob[mask].mean()) if mask.any() else None,
            "observed_rate": float(y_true[mask].mean()) if mask.any() else None,
        })
    return out


def bootstrap_ci(y_true, prob, threshold: float, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0, curves: bool = True) -> dict:
    """Percentile bootstrap intervals for the test metrics: how much they would move on another
    draw of a test set of the same make-up.

    Resamples images with replacement *within each class*, so every resample keeps the test set's
    numbers of pneumonia and normal images (as the official split fixes them).

    Args:
        y_true: 0/1 labels (both classes present).
        prob: Predicted P(pneumonia).
        threshold: The operating point for accuracy, sensitivity and specificity.
        n_resamples: Bootstrap resamples.
        level: Coverage of each interval.
        seed: Seed of the resampling, so the intervals are reproducible.
        curves: Also give ROC AUC and PR AUC intervals (about a second per thousand resamples).

    Returns:
        ``{"level", "resamples", "method", metric: [low, high], ...}``.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    pos, neg = np.flatnonzero(y_true == 1), np.flatnonzero(y_true == 0)
    if not len(pos) or not len(neg):
        raise ValueError("Bootstrap intervals need both classes among the labels.")
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(pos, (n_resamples, len(pos))), rng.choice(neg, (n_resamples, len(neg)))], axis=1)
    called = prob >= threshold
    sens = called[rows[:, : len(pos)]].mean(axis=1)
    spec = 1 - called[rows[:, len(pos):]].mean(axis=1)
    samples = {"accuracy": (sens * len(pos) + spec * len(neg)) / len(y_true), "sensitivity": sens, "specificity": spec}
    if curves:
        samples["roc_auc"], samples["pr_auc"] = _curve_areas(prob, rows[:, : len(pos)], rows[:, len(pos):])
    tail = (1 - level) / 2 * 100
    out = {"level": level, "resamples": n_resamples,
           "method": f"percentile bootstrap, resampled within each class, seed {seed}"}
    for metric, values in samples.items():
        low, high = np.percentile(values, [tail, 100 - tail])
        out[metric] = [float(low), float(high)]
    return out


def _curve_areas(prob: np.ndarray, pos_rows: np.ndarray, neg_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision of every resample at once (each row: indices of its positives and
    negatives), equal to scikit-learn's ``roc_auc_score`` and ``average_precision_score`` per row.

    Each resample is a weighting of the distinct scores, so both areas follow from per-score counts:
    ROC AUC = P(a positive outscores a negative) + half the ties; AP = sum over thresholds, from the
    top, of (recall gained) x (precision there). A score absent from a resample adds nothing to either.
    """
    values, code = np.unique(prob, return_inverse=True)
    n_res, n_val = len(pos_rows), len(values)
    offset = np.arange(n_res)[:, None] * n_val

    def counts(rows):
        return np.bincount((code[rows] + offset).ravel(), minlength=n_res * n_val).reshape(n_res, n_val).astype(np.float64)

    pos, neg = counts(pos_rows), counts(neg_rows)
    n_pos, n_neg = pos_rows.shape[1], neg_rows.shape[1]
    neg_below = np.cumsum(neg, axis=1) - neg  # negatives scoring lower than each value
    roc_auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    tp, fp = (np.cumsum(c[:, ::-1], axis=1)[:, ::-1] for c in (pos, neg))  # scoring at or above each value
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    pr_auc = (pos / n_pos * precision).sum(axis=1)
    return roc_auc, pr_auc


def interval_text(interval) -> str | None:
    """``[low, high]`` as the README and the dashboard print it ("0.841–0.889"); ``None`` stays ``None``."""
    return None if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}"

def full_report(y_true, prob, threshold: float) -> dict:
    """Everything ``metrics.json`` holds: metrics at the card threshold and at 0.5, curves, and 95 % bootstrap
    intervals (at the card threshold)."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    fpr, tpr, roc_t = skm.roc_curve(y_true, prob)
    precision, recall, pr_t = skm.precision_recall_curve(y_true, prob)
    return {
        "n": int(len(y_true)),
        "n_pneumonia": int(y_true.sum()),
        "n_normal": int((1 - y_true).sum()),
        "roc_auc": float(skm.roc_auc_score(y_true, prob)),
        "pr_auc": float(skm.average_precision_score(y_true, prob)),
        "brier": float(skm.brier_score_loss(y_true, prob)),
        "at_card_threshold": metrics_at(y_true, prob, threshold),
        "at_0.5": metrics_at(y_true, prob, 0.5),
        "roc_curve": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.minimum(roc_t, 1.0).tolist()},
        "pr_curve": {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": pr_t.tolist()},
        "calibration": calibration_bins(y_true, prob),
        "ci95": bootstrap_ci(y_true, prob, threshold),
    }

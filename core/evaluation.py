"""Metrics with scikit-learn: thresholds chosen on validation, test metrics, curves."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "choose_threshold",
    "metrics_at",
    "full_report",
    "calibration_bins",
]


def choose_threshold(y_true, prob, rule: str = "youden") -> float:
    """Decision threshold on P(pneumonia) chosen on *validation* data.

    Args:
        y_true: 0/1 labels.
        prob: Predicted P(pneumonia).
        rule: ``"youden"`` maximises sensitivity + specificity - 1 (ties: the threshold
            closest to 0.5); ``"fixed"`` returns 0.5.

    Returns:
        The threshold; a case is PNEUMONIA when ``prob >= threshold``.
    """
    if rule == "fixed":
        return 0.5
    if rule != "youden":
        raise ValueError(f"Unknown threshold rule {rule!r}. Available: youden, fixed")
    y_true, prob = np.asarray(y_true), np.asarray(prob, dtype=np.float64)
    candidates = np.unique(prob)
    best, best_j = 0.5, -np.inf
    for t in candidates:
        pred = prob >= t
        sens = pred[y_true == 1].mean()
        spec = (~pred[y_true == 0]).mean()
        j = sens + spec - 1
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_j = float(t), j
    return best


def metrics_at(y_true, prob, threshold: float) -> dict:
    """Accuracy, precision, sensitivity, specificity, F1 and confusion matrix at a threshold."""
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "sensitivity": float(skm.recall_score(y_true, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


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


def full_report(y_true, prob, threshold: float) -> dict:
    """Everything ``metrics.json`` holds: metrics at the card threshold and at 0.5, curves."""
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
    }

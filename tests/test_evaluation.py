"""Metrics against values computed by hand, and the validation threshold rule."""

import numpy as np
import pytest

from core.evaluation import bootstrap_ci, calibration_bins, choose_threshold, full_report, metrics_at

# 4 normal, 6 pneumonia
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.95, 0.55])


def test_metrics_at_half_by_hand():
    m = metrics_at(Y, P, 0.5)
    # predicted positive: 0.6 (FP), 0.9 0.8 0.7 0.95 0.55 (TP); 0.4 is FN
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 5}
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(2 * (5 / 6) * (5 / 6) / (5 / 6 + 5 / 6))


def test_threshold_is_inclusive():
    assert metrics_at(Y, P, 0.6)["confusion_matrix"]["fp"] == 1
    assert metrics_at(Y, P, 0.61)["confusion_matrix"]["fp"] == 0


def test_roc_auc_by_hand():
    # pairs (pos, neg) ranked correctly: every positive beats 0.1, 0.2, 0.3 (18 pairs);
    # against 0.6: 0.9 0.8 0.7 0.95 beat it, 0.4 and 0.55 do not (4 of 6) -> 22 / 24
    assert full_report(Y, P, 0.5)["roc_auc"] == pytest.approx(22 / 24)


def test_youden_threshold_by_hand():
    # at 0.7: sens 4/6, spec 4/4 -> J 0.667; at 0.4: sens 6/6, spec 3/4 -> J 0.75 (best)
    assert choose_threshold(Y, P) == pytest.approx(0.4)
    assert choose_threshold(Y, P, "fixed") == 0.5
    with pytest.raises(ValueError):
        choose_threshold(Y, P, "test-set")


def test_calibration_bins_by_hand():
    bins = calibration_bins(Y, P, n_bins=2)
    assert [b["count"] for b in bins] == [4, 6]  # [0, .5): .1 .2 .3 .4 ; [.5, 1]: the rest
    assert bins[0]["observed_rate"] == pytest.approx(1 / 4)
    assert bins[1]["mean_predicted"] == pytest.approx(np.mean([0.6, 0.9, 0.8, 0.7, 0.95, 0.55]))


def test_report_has_everything_the_dashboard_reads():
    r = full_report(Y, P, 0.4)
    assert r["at_card_threshold"]["threshold"] == 0.4 and r["at_0.5"]["threshold"] == 0.5
    assert len(r["roc_curve"]["fpr"]) == len(r["roc_curve"]["tpr"])
    assert 0 <= r["pr_auc"] <= 1 and (r["n"], r["n_pneumonia"], r["n_normal"]) == (10, 6, 4)
    assert r["ci95"]["level"] == 0.95 and len(r["ci95"]["accuracy"]) == 2


def _scores(n_pos=380, n_neg=220, seed=1):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)


def test_bootstrap_keeps_each_class_count():
    """Resampling within each class: calling everything pneumonia scores the same on every resample."""
    y, _ = _scores()
    ci = bootstrap_ci(y, np.ones(len(y)), 0.5, n_resamples=300, curves=False)
    assert ci["sensitivity"] == [1.0, 1.0] and ci["specificity"] == [0.0, 0.0]
    assert ci["accuracy"] == [pytest.approx(380 / 600)] * 2


def test_bootstrap_interval_has_the_binomial_width_and_holds_the_estimate():
    y, p = _scores()
    ci = bootstrap_ci(y, p, 0.5)
    m = metrics_at(y, p, 0.5)
    sens, spec = m["sensitivity"], m["specificity"]
    # stratified: var(acc) = (n_pos * sens(1 - sens) + n_neg * spec(1 - spec)) / n^2
    sd = np.sqrt(380 * sens * (1 - sens) + 220 * spec * (1 - spec)) / 600
    low, high = ci["accuracy"]
    assert low < m["accuracy"] < high and high - low == pytest.approx(2 * 1.96 * sd, rel=0.12)
    low, high = ci["specificity"]
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(spec * (1 - spec) / 220), rel=0.12)
    assert ci["roc_auc"][0] < full_report(y, p, 0.5)["roc_auc"] < ci["roc_auc"][1]
    assert ci == bootstrap_ci(y, p, 0.5)  # seeded: the same intervals every time
    assert ci["roc_auc"] != bootstrap_ci(y, p, 0.5, seed=1)["roc_auc"]  # and another seed draws other resamples


def test_bootstrap_curve_areas_equal_scikit_learns_per_resample():
    """The vectorised ROC AUC and average precision of each resample are scikit-learn's, ties included."""
    from sklearn import metrics as skm

    from core.evaluation import _curve_areas

    rng = np.random.default_rng(3)
    for n, decimals in ((12, 1), (90, 2), (300, 3)):
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        p = np.round(rng.random(n), decimals)  # few distinct scores: many ties
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        rows = np.concatenate([rng.choice(pos, (40, len(pos))), rng.choice(neg, (40, len(neg)))], axis=1)
        roc, ap = _curve_areas(p, rows[:, : len(pos)], rows[:, len(pos):])
        np.testing.assert_allclose(roc, [skm.roc_auc_score(y[r], p[r]) for r in rows], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ap, [skm.average_precision_score(y[r], p[r]) for r in rows], rtol=0, atol=1e-12)


def test_bootstrap_of_a_perfect_ranking_and_of_one_class():
    ci = bootstrap_ci(Y, np.where(Y == 1, 0.9, 0.1), 0.5, n_resamples=200)
    assert all(ci[k] == [1.0, 1.0] for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"))
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_ci(np.ones(5), np.linspace(0, 1, 5), 0.5)


def test_summary_line_when_no_image_was_called_pneumonia():
    """The evaluate CLI prints every model, even one that called nothing pneumonia (no Grad-CAM share)."""
    from core.evaluate import summary_line

    r = {"at_card_threshold": metrics_at(Y, P, 0.99), "roc_auc": 0.9, "pr_auc": 0.8,
         "gradcam": {"central_third_share_mean": None, "border_share_mean": None}}
    line = summary_line("baseline", "val", r)
    assert "central share n/a" in line and "border share n/a" in line and "sens 0.0000" in line
    r["gradcam"] = {"central_third_share_mean": 0.4412, "border_share_mean": 0.0991}
    assert "central share 0.44, border share 0.099" in summary_line("baseline", "val", r)
    assert "CI" not in line  # validation summaries carry no intervals
    r["ci95"] = {"accuracy": [0.8413, 0.8894], "roc_auc": [0.9498, 0.9768]}
    assert summary_line("finetuned", "test", r).endswith("95 % CI: acc 0.841–0.889, ROC AUC 0.950–0.977")


def test_precision_is_undefined_when_nothing_is_called_pneumonia():
    m = metrics_at(Y, P, 1.01)
    assert m["precision"] is None and m["sensitivity"] == 0 and m["f1"] == 0


def test_the_classification_report_rows_are_sklearns_with_undefined_precision_and_a_whole_accuracy_row():
    from sklearn.metrics import classification_report

    from core.evaluation import classification_rows

    rows = classification_rows(Y, P, 0.5)
    assert [r["class"] for r in rows] == ["NORMAL", "PNEUMONIA", "accuracy", "macro avg", "weighted avg"]
    report = classification_report(Y, P >= 0.5, target_names=["NORMAL", "PNEUMONIA"], output_dict=True)
    for r in rows[:2] + rows[3:]:
        assert r["precision"] == pytest.approx(report[r["class"]]["precision"]) and r["support"] == \
            report[r["class"]]["support"]
    assert rows[2] == {"class": "accuracy", "f1-score": pytest.approx(0.8), "support": 10}  # no precision or recall

    nothing_called = {r["class"]: r for r in classification_rows(Y, P, 1.01)}
    assert nothing_called["PNEUMONIA"]["precision"] is None and nothing_called["PNEUMONIA"]["recall"] == 0
    assert nothing_called["macro avg"]["precision"] is None and nothing_called["weighted avg"]["precision"] is None
    assert nothing_called["NORMAL"]["precision"] == pytest.approx(0.4) and nothing_called["accuracy"]["support"] == 10

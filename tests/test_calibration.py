"""Temperature scaling: fitted on validation, recorded in the card, applied wherever a probability is shown."""

import numpy as np
import pytest

from core.calibration import apply_temperature, calibration_record, expected_calibration_error, fit_temperature


def test_the_fitted_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * true_logit))  # logits three times too large
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3, rel=0.15)
    after = apply_temperature(overconfident, t)
    assert expected_calibration_error(y, after) < expected_calibration_error(y, overconfident) / 2
    assert (np.diff(after[np.argsort(overconfident)]) >= 0).all()  # the order, hence every label, is kept
    record = calibration_record(y, overconfident)
    assert record["val_ece_after"] < record["val_ece_before"] and record["val_log_loss_after"] < record[
        "val_log_loss_before"]
    assert apply_temperature([0.2, 0.5, 0.9], 1.0) == pytest.approx([0.2, 0.5, 0.9])


def test_the_card_threshold_gives_the_same_labels_on_calibrated_probabilities(shipped_models):
    from core.registry import load_card

    for name in shipped_models:
        card = load_card(name)
        raw = np.linspace(0.001, 0.999, 2001)
        assert ((raw >= card.threshold) == (apply_temperature(raw, card.temperature) >= card.decision_threshold)).all()


def test_serving_shows_the_calibrated_probability(shipped_models, samples_dir):
    from core.inference import load_model, read_upload
    from core.preprocessing import to_model_input

    gray = read_upload((samples_dir / "IM-0061-0001.jpeg").read_bytes()).gray
    for name in shipped_models:
        model = load_model(name)
        raw = float(model.keras_model.predict(to_model_input(gray[None], model.spec), verbose=0)[0, 0])
        assert model.diagnose_gray(gray)[0].probability == pytest.approx(
            float(apply_temperature(raw, model.card.temperature)), abs=1e-5)
        assert model.threshold == pytest.approx(model.card.decision_threshold)


def _two_gaussians(n: int, prevalence: float, k: float, seed: int = 0):
    """Labels, and probabilities ``k`` times too confident whose true posterior is known: scores N(+-1.5, 1)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(np.where(y == 1, 1.5, -1.5), 1.0)
    true_logit = np.log(prevalence / (1 - prevalence)) + 3 * z  # likelihood ratio exp(3z)
    return y, 1 / (1 + np.exp(-k * true_logit))


def test_youden_through_the_calibration_finds_where_the_true_posterior_equals_the_prevalence():
    """For calibrated probabilities J is largest where P equals the prevalence; the rule finds that point on an
    over-confident model's own scale, and more steadily than the empirical maximum of J."""
    from core.calibration import calibrated_youden_threshold, compare_threshold_rules

    y, p = _two_gaussians(20000, 0.74, k=2.0)
    truth = 1 / (1 + np.exp(-2.0 * np.log(0.74 / 0.26)))  # the raw score whose true posterior is 0.74
    assert calibrated_youden_threshold(y, p) == pytest.approx(truth, abs=0.01)
    # where the prevalence differs, so does the point (a rule that ignored the labels' share would fail here)
    y2, p2 = _two_gaussians(20000, 0.3, k=2.0, seed=1)
    assert calibrated_youden_threshold(y2, p2) == pytest.approx(1 / (1 + np.exp(-2.0 * np.log(0.3 / 0.7))), abs=0.01)

    y, p = _two_gaussians(600, 0.74, k=2.0, seed=2)
    r = compare_threshold_rules(y, p, np.arange(600) // 2, halvings=10)
    assert (r["halvings"], r["images"], r["groups"]) == (10, 600, 300)
    emp, cal = r["youden"], r["calibrated_youden"]
    assert cal["threshold_sd"] < emp["threshold_sd"] / 2  # the empirical maximum wanders over J's plateau
    assert cal["held_out_j_mean"] >= emp["held_out_j_mean"] - 0.02 and 0 < emp["held_out_j_mean"] < 1
    # thresholds are reported on the probability calibrated on all images, where the rule's point is the prevalence
    assert cal["on_all"] == pytest.approx(y.mean(), abs=0.02)


def test_threshold_rules_are_compared_on_validation_images_only(shipped_models, data_dir, tmp_path, monkeypatch):
    """``python -m core.evaluate --threshold-rules`` reads the model's validation split, never the test set, and
    writes its comparison beside the models."""
    import shutil

    import core.evaluate as ev
    from core.registry import models_dir

    name = "baseline" if "baseline" in shipped_models else shipped_models[0]
    shutil.copytree(models_dir() / name, tmp_path / name)
    read = []
    real = ev.load_images
    monkeypatch.setattr(ev, "load_images", lambda samples, *a, **k: (read.extend(samples), real(samples, *a, **k))[1])
    assert ev.main(["--threshold-rules", "--model", name, "--models-dir", str(tmp_path),
                    "--data-dir", str(data_dir)]) == 0
    assert read and all("/train/" in str(s.path) for s in read)  # the validation split is held out of train
    out = __import__("json").loads((tmp_path / "threshold-rules-val.json").read_text())["models"][name]
    assert out["images"] == len(read) and out["halvings"] == 20
    assert 0 < out["calibrated_youden"]["on_all"] < 1 and out["youden"]["threshold_sd"] >= 0


def test_rethresholding_a_card_records_the_rule_the_validation_metrics_and_what_training_chose(shipped_models):
    """``python -m core.calibration --threshold-rule R`` changes a card's threshold, its rule's text and the validation
    metrics at it, and notes once what training had chosen; the weights and ROC AUC are untouched."""
    from core.calibration import rethreshold
    from core.cards import THRESHOLD_RULES
    from core.evaluation import metrics_at
    from core.registry import load_card

    card = load_card(shipped_models[0])
    y, p = _two_gaussians(400, 0.74, k=2.0, seed=3)
    new = rethreshold(card, y, p, "calibrated_youden")
    assert new.threshold != card.threshold and new.threshold_rule == THRESHOLD_RULES["calibrated_youden"]
    assert new.val_metrics == {"roc_auc": card.val_metrics["roc_auc"], **metrics_at(y, p, new.threshold)}
    assert new.weights_sha256 == card.weights_sha256 and new.calibration == card.calibration
    trained = f"training chose {card.threshold:.4f} by '{card.config['threshold_rule']}'."
    assert new.config["notes"][-1].endswith(trained) and new.config["notes"][:-1] == card.config["notes"]
    again = rethreshold(new, y, p, "youden")  # a second re-choice keeps one note, still naming training's threshold
    assert again.config["notes"][:-1] == card.config["notes"] and again.config["notes"][-1].endswith(trained)
    assert "'youden'" in again.config["notes"][-1] and again.threshold_rule == THRESHOLD_RULES["youden"]

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

"""Calibrated probabilities: temperature scaling fitted on validation data.

A model's P(pneumonia) is often over- or under-confident. Temperature scaling (Guo et al., ICML 2017)
divides the model's logit by one number T, fitted on the validation split by minimising the negative
log-likelihood, so that "80 %" means about 80 % on data like the validation images. It changes no
label: the card threshold moves with it (the same rank order), and ROC AUC is unchanged. T is written
in the model's card (``calibration``) and serving applies it wherever a probability is shown.

``python -m core.calibration [--model NAME|all]`` fits it for the shipped models and writes it into their
cards (weights untouched); training does the same for a newly trained model.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from core.evaluation import apply_temperature, calibration_bins, logit

__all__ = ["logit", "apply_temperature", "fit_temperature", "expected_calibration_error", "calibration_record", "main"]

_EPS = 1e-7


def _nll(y, p) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(y, p) -> float:
    """The temperature that minimises the negative log-likelihood of labels ``y`` (0/1) given ``p``."""
    y = np.asarray(y, np.float64)
    z = logit(p)
    result = minimize_scalar(lambda log_t: _nll(y, 1.0 / (1.0 + np.exp(-z / np.exp(log_t)))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between mean prediction and observed share over equal-width bins
    (:func:`core.evaluation.calibration_bins`)."""
    rows = [r for r in calibration_bins(y, p, bins) if r["count"]]
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["mean_predicted"] - r["observed_rate"]) for r in rows) / n) if n else float("nan")


def calibration_record(y_val, p_val) -> dict:
    """What a card records: T and the validation ECE and log-loss before and after."""
    y_val, p_val = np.asarray(y_val), np.asarray(p_val, np.float64)
    t = fit_temperature(y_val, p_val)
    after = apply_temperature(p_val, t)
    return {"method": "temperature scaling (Guo et al. 2017): P = sigmoid(logit / T)", "temperature": t,
            "fitted_on": f"the validation split ({len(y_val)} images)",
            "val_ece_before": expected_calibration_error(y_val, p_val),
            "val_ece_after": expected_calibration_error(y_val, after),
            "val_log_loss_before": _nll(y_val, p_val), "val_log_loss_after": _nll(y_val, after)}


def main(argv=None) -> int:
    """Fit the temperature of shipped models on their validation split and write it into their cards."""
    import argparse
    import dataclasses

    from core.data import find_data_dir, list_split, load_images, split_train_val
    from core.preprocessing import to_model_input
    from core.registry import available_models, load_card, load_keras_model, models_dir, write_card

    parser = argparse.ArgumentParser(prog="python -m core.calibration", description=main.__doc__)
    parser.add_argument("--model", default="all")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    names = available_models() if args.model == "all" else [args.model]
    data_dir = find_data_dir(args.data_dir)
    for name in names:
        card = load_card(name)
        _, val = split_train_val(list_split(data_dir, "train"), card.config["val_fraction"], card.config["seed"])
        model, gray = load_keras_model(name), load_images(val)
        raw = np.concatenate([model.predict(to_model_input(gray[i : i + 64], card.spec), verbose=0)[:, 0]
                              for i in range(0, len(gray), 64)])
        record = calibration_record([s.label for s in val], raw)
        write_card(models_dir() / name, dataclasses.replace(card, calibration=record))
        print(f"{name:10s} T = {record['temperature']:.3f}  validation ECE {record['val_ece_before']:.4f} -> "
              f"{record['val_ece_after']:.4f}  log-loss {record['val_log_loss_before']:.4f} -> "
              f"{record['val_log_loss_after']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Calibrated probabilities: temperature scaling fitted on validation data.

A model's P(pneumonia) is often over- or under-confident. Temperature scaling (Guo et al., ICML 2017)
divides the model's logit by one number T, fitted on the validation split by minimising the negative
log-likelihood, so that "80 %" means about 80 % on data like the validation images. It changes no
label: the card threshold moves with it (the same rank order), and ROC AUC is unchanged. T is written
in the model's card (``calibration``) and serving applies it wherever a probability is shown.

``python -m core.calibration [--model NAME|all] [--threshold-rule R]`` fits it for the shipped models and writes it
into their cards (weights untouched); training does the same for a newly trained model. With ``--threshold-rule`` it
also chooses the card threshold again on the validation split (:func:`rethreshold`; docs/lungs.md, section 20).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.cards import THRESHOLD_RULES
from core.evaluation import (
    apply_temperature,
    calibrated_youden_threshold,
    calibration_bins,
    choose_threshold,
    fit_temperature,
    logit,
    mean_log_loss,
    metrics_at,
)

__all__ = ["logit", "apply_temperature", "fit_temperature", "expected_calibration_error", "calibration_record",
           "calibrated_youden_threshold", "compare_threshold_rules", "rethreshold", "main"]


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
            "val_log_loss_before": mean_log_loss(y_val, p_val), "val_log_loss_after": mean_log_loss(y_val, after)}


def compare_threshold_rules(y, p, groups, halvings: int = 20) -> dict:
    """How well, and how steadily, each threshold rule does on data it did not choose on: for each of ``halvings``
    random splits of the ``groups`` (patients) in two (seeds 0, 1, ...), each rule picks a threshold on one half and
    Youden's J (sensitivity + specificity - 1) is measured on the other, both ways round.

    Rules: ``"youden"`` (the empirical maximum, :func:`core.evaluation.choose_threshold`) and
    ``"calibrated_youden"`` (:func:`calibrated_youden_threshold`). Returns, per rule, the mean and standard deviation of
    the held-out J and of the chosen thresholds (expressed on the probability calibrated on all of ``y``, so that
    the two rules' spreads are comparable).
    """
    y, p, groups = np.asarray(y).astype(int), np.asarray(p, np.float64), np.asarray(groups)
    whole_t = fit_temperature(y, p)
    rules = ("youden", "calibrated_youden")
    held_out = {r: [] for r in rules}
    chosen = {r: [] for r in rules}
    names = np.unique(groups)
    for seed in range(halvings):
        first = np.isin(groups, np.random.default_rng(seed).permutation(names)[: len(names) // 2])
        for pick, score in ((first, ~first), (~first, first)):
            for rule in rules:
                t = choose_threshold(y[pick], p[pick], rule)
                m = metrics_at(y[score], p[score], t)
                held_out[rule].append(m["sensitivity"] + m["specificity"] - 1)
                chosen[rule].append(float(apply_temperature(t, whole_t)))
    return {rule: {"held_out_j_mean": float(np.mean(held_out[rule])), "held_out_j_sd": float(np.std(held_out[rule])),
                   "threshold_mean": float(np.mean(chosen[rule])), "threshold_sd": float(np.std(chosen[rule])),
                   "on_all": float(apply_temperature(choose_threshold(y, p, rule), whole_t))}
            for rule in rules} | {"halvings": halvings, "images": int(len(y)), "groups": int(len(names))}


_RETHRESHOLD_NOTE = "Threshold chosen again after training, on the same validation split,"


def rethreshold(card, y_val, p_val, rule: str):
    """``card`` with its threshold chosen again by ``rule`` on the validation labels and model outputs, the rule's
    text, the validation metrics at the new threshold (ROC AUC unchanged) and a note saying so."""
    t = choose_threshold(y_val, p_val, rule)
    notes = [n for n in card.config.get("notes", []) if not n.startswith(_RETHRESHOLD_NOTE)]
    # the first re-choice's note keeps the threshold training chose; a later one only names the rule
    earlier = [n for n in card.config.get("notes", []) if n.startswith(_RETHRESHOLD_NOTE)]
    trained = earlier[0].split("training chose ", 1)[1] if earlier else (
        f"{card.threshold:.4f} by '{card.config.get('threshold_rule')}'.")
    note = f"{_RETHRESHOLD_NOTE} by the rule '{rule}' (docs/lungs.md, section 20); training chose {trained}"
    return dataclasses.replace(
        card, threshold=float(t), threshold_rule=THRESHOLD_RULES[rule],
        val_metrics={"roc_auc": card.val_metrics["roc_auc"], **metrics_at(y_val, p_val, t)},
        config={**card.config, "notes": [*notes, note]})


def main(argv=None) -> int:
    """Fit the temperature of shipped models on their validation split and write it into their cards."""
    import argparse
    import dataclasses

    from core.data import find_data_dir, list_split, load_images, split_train_val
    from core.preprocessing import to_model_input
    from core.registry import available_models, load_card, load_keras_model, models_dir, write_card

    parser = argparse.ArgumentParser(prog="python -m core.calibration", description=main.__doc__)
    parser.add_argument("--model", default="all")
    parser.add_argument("--threshold-rule", choices=sorted(THRESHOLD_RULES),
                        help="also choose the card threshold again on the validation split by this rule, and record the "
                             "rule and the validation metrics at it (weights untouched; docs/lungs.md, section 20)")
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
        y = [s.label for s in val]
        record = calibration_record(y, raw)
        card = dataclasses.replace(card, calibration=record)
        if args.threshold_rule:
            card = rethreshold(card, y, raw, args.threshold_rule)
            print(f"{name:10s} threshold {card.threshold:.4f} ({card.decision_threshold:.3f} calibrated) by "
                  f"{args.threshold_rule}")
        write_card(models_dir() / name, card)
        print(f"{name:10s} T = {record['temperature']:.3f}  validation ECE {record['val_ece_before']:.4f} -> "
              f"{record['val_ece_after']:.4f}  log-loss {record['val_log_loss_before']:.4f} -> "
              f"{record['val_log_loss_after']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

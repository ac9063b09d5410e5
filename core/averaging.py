"""Weight averaging: a uniform "soup" of runs, and WiSE-FT's mix of a fine-tuned model with its start.

Both average every weight of models with one architecture that started from one point with
BatchNorm frozen, so their BatchNorm statistics agree (Wortsman et al., "Model soups", ICML 2022;
"Robust fine-tuning of zero-shot models", CVPR 2022).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from core.config import WISE_FT_ALPHA_FIXED

__all__ = ["WISE_FT_REPORTED_ALPHAS", "average_weights", "soup_record", "wise_ft"]

WISE_FT_REPORTED_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def average_weights(models: list, coefficients: list[float] | None = None) -> keras.Model:
    """The weighted average of models with one architecture (uniform by default: a "soup").

    Meant for runs fine-tuned from one starting point with BatchNorm frozen, so that the
    BatchNorm statistics agree and only trained weights are averaged (Wortsman et al., 2022);
    the weights the first model keeps frozen must be equal in all. Non-negative
    ``coefficients`` summing to 1 weight the models (WiSE-FT passes ``[alpha, 1 - alpha]``).
    Returns the first model, its weights replaced by the averages.

    Raises:
        ValueError: No models, bad coefficients, other architectures, or frozen weights that differ.
    """
    if not models:
        raise ValueError("No models to average.")
    coefficients = [1 / len(models)] * len(models) if coefficients is None else list(coefficients)
    if len(coefficients) != len(models) or min(coefficients) < 0 or not np.isclose(sum(coefficients), 1):
        raise ValueError(f"Need one non-negative coefficient per model, summing to 1; got {coefficients}.")
    stacks = [m.get_weights() for m in models]
    if len({len(w) for w in stacks}) != 1 or any(a.shape != b.shape for w in stacks[1:] for a, b in zip(stacks[0], w)):
        raise ValueError("Only models with one architecture can be averaged.")
    frozen = {id(v) for v in models[0].non_trainable_weights}
    for i, v in enumerate(models[0].weights):
        if id(v) in frozen and not all(np.array_equal(stacks[0][i], w[i]) for w in stacks[1:]):
            raise ValueError(f"Frozen weight {v.path} differs between models; they did not start from one point.")
    soup = models[0]
    soup.set_weights([sum(c * w[i].astype(np.float64) for c, w in zip(coefficients, stacks)).astype(stacks[0][i].dtype)
                      for i in range(len(stacks[0]))])
    return soup


def soup_record(members: list[tuple[int, dict]], y_va, member_probs: list[np.ndarray]) -> dict:
    """What the card says about a soup: its members (``(seed, run state)``), each scored on validation."""
    rows = [{"seed": seed, "best_epoch": st.get("best_epoch"), "epochs_run": len(st["history"]),
             "training_time_s": round(st["elapsed_s"], 1), "val_roc_auc": float(roc_auc_score(y_va, p))}
            for (seed, st), p in zip(members, member_probs)]
    return {
        "members": rows,
        "rule": "uniform average of every weight of the members (BatchNorm frozen, so its statistics are shared)",
        "member_mean_val_roc_auc": float(np.mean([r["val_roc_auc"] for r in rows])),
        "output_ensemble_val_roc_auc": float(roc_auc_score(y_va, np.mean(member_probs, axis=0))),
    }


def wise_ft(tuned: keras.Model, start: keras.Model, alpha: float, val_probs: Callable[[keras.Model], np.ndarray],
            y_va, start_name: str, start_sha: str | None,
            alpha_choice: str = WISE_FT_ALPHA_FIXED) -> tuple[keras.Model, dict, np.ndarray]:
    """Mix the fine-tuned model with its start at ``alpha`` (WiSE-FT).

    Also scores the mix on validation at the alphas the card reports: ``alpha`` is the recipe's, not chosen
    here (a recipe may have chosen it from this curve, as v13 of ``finetuned`` did; ``alpha_choice`` says how,
    and the card's record keeps it).

    Args:
        tuned: The fine-tuned model (its weights are replaced by the mix).
        start: The model it started from.
        alpha: Weight of the fine-tuned model, 0 to 1.
        val_probs: P(pneumonia) of a model on the validation images.
        y_va: Validation labels.
        start_name, start_sha: The start's name and weights sha256, for the card.
        alpha_choice: How the recipe chose ``alpha``, for the card.

    Returns:
        (the mixed model, the card's ``wise_ft`` record, its validation probabilities).
    """
    weights = tuned.get_weights()

    def mix(a):
        tuned.set_weights(weights)
        return average_weights([tuned, start], [a, 1 - a])

    probs = {a: val_probs(mix(a)) for a in sorted({*WISE_FT_REPORTED_ALPHAS, alpha})}
    record = {"alpha": alpha, "alpha_choice": alpha_choice, "start": start_name, "start_sha256": start_sha,
              "rule": "every weight = (1 - alpha) x the start's + alpha x the fine-tuned one's (WiSE-FT)",
              "val_roc_auc_by_alpha": {f"{a:g}": float(roc_auc_score(y_va, p)) for a, p in probs.items()}}
    return mix(alpha), record, probs[alpha]

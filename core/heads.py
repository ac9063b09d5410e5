"""Frozen-backbone heads: pooled features computed once per image, then dropout and one dense unit trained on them.

With the recipe's ``encoding_augment`` the head trains on the features of each training image and of its
``encoded_views`` re-encoded views. A recipe's ``consistency_grid`` (v14, docs/lungs.md §10) trains one head per
lambda with ``lambda * w'Σw`` added to its loss, Σ the mean outer product of the feature changes under re-encoding,
and keeps the largest lambda whose validation ROC AUC stays within :data:`CONSISTENCY_AUC_SLACK` of lambda 0's.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from core.batches import TrainingData, encode_all, model_outputs
from core.checkpoints import settings
from core.config import Recipe
from core.data import class_weights
from core.models import compile_for

__all__ = ["ENCODED_VIEWS", "CONSISTENCY_AUC_SLACK", "fit_frozen_head", "choose_consistency", "encoding_moment",
           "QuadraticPenalty"]

ENCODED_VIEWS = Recipe.encoded_views  # re-encoded views per training image by default (the recipe's encoded_views)
CONSISTENCY_AUC_SLACK = 0.002


def fit_frozen_head(recipe: Recipe, model, data: TrainingData, run_dir: Path, state: dict):
    """Frozen backbone: compute pooled features once, train dropout + dense on them. With
    ``encoding_augment``, the head trains on the features of each image and of the recipe's
    ``encoded_views`` (default :data:`ENCODED_VIEWS`) re-encoded views of it. The features are cached in
    ``run_dir``; the head's history, best epoch and (with a grid) the consistency record go into ``state``."""
    cached = run_dir / "features.npz"
    # features belong to one split and input; the head's consistency grid does not change them
    key = np.array(json.dumps({k: v for k, v in settings(recipe).items() if k != "consistency_grid"}, sort_keys=True))
    f_tr = f_va = None
    if cached.exists():
        with np.load(cached) as f:
            if "key" in f and f["key"] == key:
                f_tr, f_va = f["train"], f["val"]
    if f_tr is None:
        features = keras.Model(model.input, model.get_layer("avg_pool").output)
        rng = np.random.default_rng(recipe.seed)
        n_views = 1 + (recipe.encoded_views if recipe.encoding_augment else 0)
        views = [data.x_tr] + [encode_all(data.x_tr, rng) for _ in range(n_views - 1)]
        lungs = None if data.m_tr is None else np.concatenate([data.m_tr] * n_views)
        f_tr = model_outputs(features, np.concatenate(views), data.spec, lungs=lungs).astype(np.float32)
        f_va = model_outputs(features, data.x_va, data.spec, lungs=data.m_va).astype(np.float32)
        np.savez(run_dir / "features.tmp.npz", train=f_tr, val=f_va, key=key)
        (run_dir / "features.tmp.npz").replace(cached)
    y_tr = np.tile(np.asarray(data.y_tr, int), len(f_tr) // len(data.y_tr))  # one label per view
    weights = class_weights(data.y_tr)[y_tr] if recipe.class_weights else None
    grid = tuple(recipe.consistency_grid) or (0.0,)
    moment = encoding_moment(f_tr, len(data.y_tr)) if any(grid) else None
    heads = []
    for lam in grid:
        if recipe.consistency_grid:  # every head of the grid from the same start (a recipe without one: as before)
            keras.utils.set_random_seed(recipe.seed)
        logit, hist = _train_head(recipe, f_tr, y_tr, weights, f_va, data.y_va, moment, lam)
        kernel, bias = logit.get_weights()
        # the head's validation ROC AUC: its logits rank the images as its probabilities do
        heads.append((lam, [kernel, bias], hist, float(roc_auc_score(data.y_va, f_va @ kernel[:, 0] + bias[0]))))
    chosen = choose_consistency([(lam, auc) for lam, _, _, auc in heads])
    _, head_weights, hist, _ = next(h for h in heads if h[0] == chosen)
    if recipe.consistency_grid:
        state["consistency"] = {
            "penalty": "lambda * w'Σw added to the head's loss; Σ: mean outer product of the pooled-feature "
                       "differences between each training image and each of its re-encoded views (the mean squared "
                       "change of the logit under re-encoding)",
            "rule": f"the largest lambda whose validation ROC AUC is at least lambda 0's minus {CONSISTENCY_AUC_SLACK}",
            "grid": [{"lambda": lam_, "val_roc_auc": auc, "mean_sq_logit_change_on_training_views":
                      float(w[0][:, 0] @ moment @ w[0][:, 0])} for lam_, w, _, auc in heads],
            "lambda": chosen,
        }
    state["history"] = [{"epoch": i + 1, **{k: float(v[i]) for k, v in hist.items()}}
                        for i in range(len(hist["loss"]))]
    state["best_epoch"] = int(np.argmin(hist["val_loss"])) + 1
    model.get_layer("logit").set_weights(head_weights)
    return model


def choose_consistency(results: list[tuple[float, float]]) -> float:
    """Of ``(lambda, validation ROC AUC)`` pairs, the largest lambda whose AUC is at least lambda 0's (or the smallest
    lambda's) minus :data:`CONSISTENCY_AUC_SLACK`."""
    ref = min(results)[1]
    return max(lam for lam, auc in results if auc >= ref - CONSISTENCY_AUC_SLACK)


def encoding_moment(features: np.ndarray, n_images: int) -> np.ndarray:
    """Σ = mean of d dᵀ over every pair (image, one of its re-encoded views), d their pooled-feature difference;
    ``features`` holds the images' rows first, then each view's rows in the same order."""
    f = np.asarray(features, np.float64)
    base = f[:n_images]
    diffs = np.concatenate([f[k : k + n_images] - base for k in range(n_images, len(f), n_images)])
    return (diffs.T @ diffs / len(diffs)).astype(np.float32)


def _train_head(recipe: Recipe, f_tr, y_tr, weights, f_va, y_va, moment, lam: float):
    """Dropout + one dense unit on features; with ``lam`` > 0 the loss adds ``lam * w'(moment)w``."""
    head_in = keras.Input(f_tr.shape[1:])
    h = keras.layers.Dropout(recipe.dropout)(head_in)
    regulariser = QuadraticPenalty(moment, lam) if lam else None
    logit = keras.layers.Dense(1, kernel_regularizer=regulariser)
    head = keras.Model(head_in, keras.layers.Activation("sigmoid")(logit(h)))
    compile_for(head, recipe)
    best = keras.callbacks.EarlyStopping("val_loss", patience=recipe.early_stopping_patience, restore_best_weights=True)
    lr = keras.callbacks.ReduceLROnPlateau("val_loss", factor=recipe.reduce_lr_factor, patience=recipe.reduce_lr_patience)
    hist = head.fit(f_tr, y_tr.astype(np.float32), sample_weight=weights,
                    validation_data=(f_va, np.asarray(y_va, np.float32)),
                    epochs=recipe.epochs, batch_size=recipe.batch_size, callbacks=[best, lr], verbose=2)
    return logit, hist.history


class QuadraticPenalty(keras.regularizers.Regularizer):
    """``weight * w' M w`` for a kernel ``w`` of shape ``(D, 1)``: with M the moment of the feature changes under
    re-encoding, the mean squared change of the logit (v14, docs/lungs.md §10)."""

    def __init__(self, matrix, weight: float):
        self.matrix = np.asarray(matrix, np.float32)
        self.weight = float(weight)

    def __call__(self, w):
        return self.weight * keras.ops.sum(w * keras.ops.matmul(keras.ops.convert_to_tensor(self.matrix), w))

    def get_config(self):
        return {"matrix": self.matrix.tolist(), "weight": self.weight}

"""Train a recipe: data -> model -> checkpoints every epoch -> model.keras, card, history.

Backend-agnostic Keras 3 (numpy batches through ``keras.utils.PyDataset``, Keras
preprocessing layers for augmentation), so the same code trains on TensorFlow or JAX.
Interrupted runs resume from ``<cache>/runs/<name>/`` (optimizer state included; see
:mod:`core.checkpoints`). Soups and WiSE-FT are in :mod:`core.averaging`, the card in
:mod:`core.cards`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from core.augment import encoding_path
from core.averaging import average_weights, soup_record, wise_ft
from core.calibration import calibration_record
from core.cards import assemble_card
from core.checkpoints import Resumable, check_same_run, load_state, restore_counters, save_state, settings
from core.config import Recipe, trains_head_only
from core.data import Sample, class_weights, find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.evaluation import choose_threshold, metrics_at
from core.lungs import find_mask_dir, load_masks
from core.models import GRADCAM_LAYERS, augmentation, build_model, input_spec_for
from core.preprocessing import InputSpec, to_model_input
from core.registry import load_card, load_keras_model, model_files, models_dir, sha256_file, write_card
from core.runtime import cache_dir, hardware
from core.segmenter import shipped_decoder

__all__ = ["Batches", "train", "predict_arrays", "recipe_spec", "recipe_augmentation", "compile_for"]

log = logging.getLogger(__name__)


class Batches(keras.utils.PyDataset):
    """Batches of model inputs from uint8 grayscale images, optionally with sample weights and, for
    training, each image re-encoded at random (:func:`core.augment.encoding_path`) before preprocessing."""

    def __init__(self, gray, labels, spec, batch_size=32, shuffle=False, weights=None, seed=0, encoding=False,
                 lungs=None, margin_jitter=0, **kw):
        super().__init__(**{"workers": data_workers(), **kw})
        self.gray, self.labels, self.spec = gray, np.asarray(labels, dtype=np.float32), spec
        self.batch_size, self.shuffle, self.weights, self.encoding = batch_size, shuffle, weights, encoding
        self.lungs, self.margin_jitter = lungs, margin_jitter  # a lung-focused spec: masks, margin ± jitter
        self._seed, self._epoch = seed, 0
        self._rng = np.random.default_rng(seed)  # the order only; each batch draws from its own generator
        self._order = np.arange(len(gray))
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self):
        return int(np.ceil(len(self.gray) / self.batch_size))

    def __getitem__(self, i):
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        gray = self.gray[idx]
        # one generator per (seed, epoch, batch): the same draws whichever worker thread makes the batch
        rng = np.random.default_rng((self._seed, self._epoch, i))
        if self.encoding:
            gray = np.stack([encoding_path(g, rng) for g in gray])
        x = to_model_input(gray, self.spec, *self._lungs(idx, rng))
        y = self.labels[idx][:, None]
        if self.weights is None:
            return x, y
        return x, y, self.weights[self.labels[idx].astype(int)]

    def _lungs(self, idx, rng) -> tuple:
        """(masks, margins) for a lung-focused spec; margins drawn per image when jittered."""
        if self.lungs is None:
            return ()
        m, j = self.spec.lung_margin, self.margin_jitter
        return self.lungs[idx], (rng.integers(m - j, m + j + 1, len(idx)) if j else None)

    def on_epoch_end(self):
        self._epoch += 1
        if self.shuffle:
            self._rng.shuffle(self._order)


@dataclass(frozen=True)
class _Data:
    """The split a recipe trains on, decoded once."""

    train: list[Sample]
    val: list[Sample]
    x_tr: np.ndarray
    y_tr: np.ndarray
    x_va: np.ndarray
    y_va: np.ndarray
    spec: InputSpec
    m_tr: np.ndarray | None = None  # human lung masks, for a lung-focused recipe
    m_va: np.ndarray | None = None


@dataclass(frozen=True)
class _Start:
    """The stage-1 model a two-stage recipe starts from (its weights and their sha256)."""

    weights: list | None = None
    sha256: str | None = None


def _outputs(model, gray, spec: InputSpec, batch_size=64, lungs=None) -> np.ndarray:
    return np.asarray(model.predict(Batches(gray, np.zeros(len(gray)), spec, batch_size, lungs=lungs), verbose=0))


def predict_arrays(model, gray, spec: InputSpec, batch_size=64, lungs=None) -> np.ndarray:
    """P(pneumonia) for uint8 grayscale images (with their lung masks for a lung-focused spec), batched."""
    return _outputs(model, gray, spec, batch_size, lungs).astype(np.float64).reshape(-1)


def recipe_spec(recipe: Recipe) -> InputSpec:
    """How a recipe's model is fed (size, equalisation, lungs, blur)."""
    return input_spec_for(recipe.kind, recipe.backbone, recipe.input_size, recipe.equalize, recipe.lung_margin,
                          recipe.blur_sigma)


def recipe_augmentation(recipe: Recipe, spec: InputSpec) -> keras.Sequential:
    """The recipe's augmentation layers (training only) for input ``spec``."""
    return augmentation(spec, recipe.rotation_deg, recipe.shift, recipe.zoom, recipe.brightness, recipe.contrast,
                        recipe.central_erasing, recipe.seed)


def compile_for(model, recipe: Recipe) -> None:
    """Compile ``model`` as the recipe trains it: Adam at its learning rate, BCE with its label smoothing."""
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def _build(recipe: Recipe, weights: list | None = None) -> keras.Model:
    # a lung-pooled model finds the lungs with the shipped decoder (sha256-checked), frozen
    decoder = shipped_decoder() if recipe.kind == "lungpool" else None
    # a stage 2 gets every weight from its start, so it needs no ImageNet weights (a GPU machine has no converter)
    model = build_model(recipe.kind, recipe.backbone, recipe.input_size, recipe.dropout,
                        "imagenet" if weights is None else None, recipe.trainable_top_layers, decoder)
    if weights is not None:
        model.set_weights(weights)
    return model


def _fit_images(recipe: Recipe, model, data: _Data, run_dir: Path, state: dict):
    weights = class_weights(data.y_tr) if recipe.class_weights else None
    train_data = Batches(data.x_tr, data.y_tr, data.spec, recipe.batch_size, shuffle=True, weights=weights,
                         seed=recipe.seed, encoding=recipe.encoding_augment, lungs=data.m_tr,
                         margin_jitter=recipe.lung_margin_jitter)
    val_data = Batches(data.x_va, data.y_va, data.spec, 64, lungs=data.m_va)
    if (run_dir / "last.keras").exists() and state.get("epoch", 0) > 0:
        trainer = keras.saving.load_model(run_dir / "last.keras")
        inner = trainer.get_layer(model.name)
        log.info("Resuming %s after epoch %d", recipe.name, state["epoch"])
    else:
        inner = model
        parts = [recipe_augmentation(recipe, data.spec)] if recipe.augment else []
        trainer = keras.Sequential([keras.Input((*data.spec.size, data.spec.channels)), *parts, inner], name="trainer")
        compile_for(trainer, recipe)
    saved = state.get("callbacks") or [None, None]
    stoppers = [
        restore_counters(keras.callbacks.ReduceLROnPlateau("val_loss", factor=recipe.reduce_lr_factor,
                                                           patience=recipe.reduce_lr_patience, verbose=1), saved[0]),
        restore_counters(keras.callbacks.EarlyStopping("val_loss", patience=recipe.early_stopping_patience, verbose=1),
                         saved[1]),
    ]
    trainer.fit(
        train_data,
        validation_data=val_data,
        epochs=recipe.epochs,
        initial_epoch=state.get("epoch", 0),
        callbacks=[*stoppers, Resumable(run_dir, inner, state, stoppers)],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return keras.saving.load_model(run_dir / "best.keras", compile=False)


def data_workers() -> int:
    """Threads that make training batches (``PNEUMONIA_DATA_WORKERS``, default 1): the re-encoding runs in
    Pillow, which releases the GIL, so a machine with many cores and an accelerator can keep it fed."""
    return max(1, int(os.environ.get("PNEUMONIA_DATA_WORKERS", "1")))


def encode_all(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One re-encoded view of each image (:func:`core.augment.encoding_path`), on :func:`data_workers` threads;
    each image draws from its own generator, spawned from ``rng``, so the result does not depend on the threads."""
    seeds = rng.spawn(len(gray))
    with ThreadPoolExecutor(data_workers()) as pool:
        return np.stack(list(pool.map(encoding_path, gray, seeds)))


MAP_METHODS = {"lungpool": "hirescam"}  # the map a kind is explained by, where not Grad-CAM (core.gradcam)

ENCODED_VIEWS = Recipe.encoded_views  # re-encoded views per training image by default (the recipe's encoded_views)


def _fit_frozen_head(recipe: Recipe, model, data: _Data, run_dir: Path, state: dict):
    """Frozen backbone: compute pooled features once, train dropout + dense on them. With
    ``encoding_augment``, the head trains on the features of each image and of the recipe's
    ``encoded_views`` (default :data:`ENCODED_VIEWS`) re-encoded views of it."""
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
        f_tr = _outputs(features, np.concatenate(views), data.spec, lungs=lungs).astype(np.float32)
        f_va = _outputs(features, data.x_va, data.spec, lungs=data.m_va).astype(np.float32)
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


CONSISTENCY_AUC_SLACK = 0.002


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


def _train_run(member: Recipe, folder: Path, data: _Data, start: _Start) -> tuple[keras.Model, dict, float]:
    """One training run of ``member`` in ``folder``, resumed if it was interrupted, reused if finished.

    Returns:
        (best model, run state, seconds this call spent training).
    """
    t0 = time.time()
    state = load_state(folder)
    check_same_run(state, member, folder)
    if state.get("done") and member.epochs <= state.get("epochs_budget", 0):
        log.info("%s: finished earlier, reusing %s", member.name, folder / "best.keras")
        return keras.saving.load_model(folder / "best.keras", compile=False), state, 0.0
    state["recipe"] = member.to_dict()
    state["epochs_budget"] = member.epochs
    spent_before = state.setdefault("elapsed_s", 0.0)  # by earlier, interrupted calls
    keras.utils.set_random_seed(member.seed)
    model = _build(member, start.weights)
    if trains_head_only(member.kind, member.trainable_top_layers):
        model = _fit_frozen_head(member, model, data, folder, state)
        model.save(folder / "best.keras")
    else:
        model = _fit_images(member, model, data, folder, state)
    spent = time.time() - t0
    state["elapsed_s"] = spent_before + spent
    state["done"] = True
    save_state(folder, state)
    return model, state, spent


def _load_data(recipe: Recipe, data_dir: Path) -> _Data:
    train, val = split_train_val(list_split(data_dir, "train"), recipe.val_fraction, recipe.seed)
    spec = recipe_spec(recipe)
    m_tr = m_va = None
    if recipe.lung_margin:  # a lung-focused recipe trains on the images with a human lung mask
        mask_dir = find_mask_dir()
        (m_tr, has_tr), (m_va, has_va) = (load_masks(s, "train", mask_dir) for s in (train, val))
        log.info("Leaving out %d training and %d validation images without a lung mask",
                 (~has_tr).sum(), (~has_va).sum())
        train, val = [s for s, h in zip(train, has_tr, strict=True) if h], [s for s, h in zip(val, has_va, strict=True) if h]
        m_tr, m_va = m_tr[has_tr], m_va[has_va]
    log.info("Loading %d training and %d validation images", len(train), len(val))
    return _Data(train, val, load_images(train), np.array([s.label for s in train]), load_images(val),
                 np.array([s.label for s in val]), spec, m_tr, m_va)


def _stage_one(recipe: Recipe, spec: InputSpec, out_root: Path) -> _Start:
    """The trained model a two-stage recipe starts from; it must have been fed the same way."""
    if not recipe.init_from:
        return _Start()
    source_spec = load_card(recipe.init_from, out_root).spec
    if source_spec != spec:
        raise ValueError(
            f"'{recipe.init_from}' was trained on differently preprocessed input "
            f"({source_spec.to_dict()}) than '{recipe.name}' ({spec.to_dict()}); retrain it first."
        )
    return _Start(load_keras_model(recipe.init_from, out_root).get_weights(),
                  sha256_file(model_files(recipe.init_from, out_root).weights))


def train(recipe: Recipe, data_dir=None, out_root: Path | None = None, fresh: bool = False) -> Path:
    """Train ``recipe`` and write ``<models>/<name>/{model.keras,card.json,history.csv}``.

    A recipe with ``soup_seeds`` trains stage 2 once per seed (same validation split, same
    stage-1 start; the seed sets augmentation, shuffling and dropout), each in its own resumable
    run folder, and ships the uniform average of their weights (a "model soup"); one with
    ``wise_ft_alpha`` < 1 then mixes that with its start (WiSE-FT).

    Args:
        recipe: What to train.
        data_dir: Dataset folder (see :func:`core.data.find_data_dir`).
        out_root: Where model folders go (default: the repository's ``models/``).
        fresh: Ignore any interrupted run and start again.

    Returns:
        The model's folder.
    """
    if recipe.wise_ft_alpha != 1.0 and not (recipe.init_from and 0 <= recipe.wise_ft_alpha <= 1):
        raise ValueError("WiSE-FT needs a stage-1 model to start from ('init_from') and an alpha between 0 and 1.")
    started = time.time()
    out_root = Path(out_root or models_dir())
    # a candidate's runs (a folder not called models/, e.g. candidates/v7) are kept apart from the shipped recipe's
    run_dir = cache_dir() / "runs" / (recipe.name if out_root.name == "models" else f"{out_root.name}-{recipe.name}")
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = _load_data(recipe, find_data_dir(data_dir))
    start = _stage_one(recipe, data.spec, out_root)

    soup = consistency = None
    if recipe.soup_seeds:
        runs = []
        for seed in recipe.soup_seeds:
            folder = run_dir / f"seed-{seed}"
            folder.mkdir(exist_ok=True)
            runs.append((seed, *_train_run(replace(recipe, seed=seed, soup_seeds=(), wise_ft_alpha=1.0), folder, data,
                                           start)))
        member_probs = [predict_arrays(m, data.x_va, data.spec, lungs=data.m_va) for _, m, _, _ in runs]
        model = average_weights([m for _, m, _, _ in runs])
        soup = soup_record([(seed, st) for seed, _, st, _ in runs], data.y_va, member_probs)
        history = [{"member_seed": seed, **row} for seed, _, st, _ in runs for row in st["history"]]
        best_epoch = [st.get("best_epoch") for _, _, st, _ in runs]
        fitted, spent_now = sum(st["elapsed_s"] for _, _, st, _ in runs), sum(s for *_, s in runs)
    else:
        model, state, spent_now = _train_run(recipe, run_dir, data, start)
        history, best_epoch, fitted = state["history"], state.get("best_epoch"), state["elapsed_s"]
        consistency = state.get("consistency")

    wise = None
    if recipe.wise_ft_alpha != 1.0:
        model, wise, val_prob = wise_ft(model, _build(recipe, start.weights), recipe.wise_ft_alpha,
                                        lambda m: predict_arrays(m, data.x_va, data.spec, lungs=data.m_va), data.y_va,
                                        recipe.init_from, start.sha256, recipe.wise_ft_alpha_choice)
    else:
        val_prob = predict_arrays(model, data.x_va, data.spec, lungs=data.m_va)
    threshold = choose_threshold(data.y_va, val_prob, recipe.threshold_rule)
    files = model_files(recipe.name, out_root, must_exist=False)
    files.folder.mkdir(parents=True, exist_ok=True)
    model.save(files.weights)
    _write_history(files.history, history)
    card = assemble_card(
        recipe=recipe, spec=data.spec, gradcam_layer=GRADCAM_LAYERS[recipe.backbone or "baseline"],
        gradcam_method=MAP_METHODS.get(recipe.kind),
        parameters=int(model.count_params()),
        trainable_parameters=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        threshold=threshold,
        val_metrics={"roc_auc": float(roc_auc_score(data.y_va, val_prob)), **metrics_at(data.y_va, val_prob, threshold)},
        data=_data_record(recipe, data), history_len=len(history), best_epoch=best_epoch,
        weights_sha256=sha256_file(files.weights), hardware=hardware(),
        # every run's fitting (earlier calls included), plus this call's loading and scoring
        training_time_s=fitted + (time.time() - started - spent_now),
        init_sha=start.sha256, soup=soup, wise_ft=wise, calibration=calibration_record(data.y_va, val_prob),
        consistency=consistency,
    )
    write_card(files.folder, card)
    log.info("Wrote %s (val AUC %.4f, threshold %.4f)", files.folder, card.val_metrics["roc_auc"], threshold)
    return files.folder


def _data_record(recipe: Recipe, data: _Data) -> dict:
    return {
        "train_images": len(data.train),
        "val_images": len(data.val),
        "train_patients": len({s.patient for s in data.train}),
        "val_patients": len({s.patient for s in data.val}),
        "fingerprint": fingerprint(data.train + data.val),
        "split": f"{recipe.val_fraction:.0%} of official train held out by patient, stratified by class "
                 f"(StratifiedGroupKFold, seed {recipe.seed})",
    }


def _write_history(path: Path, history: list[dict]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)

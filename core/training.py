"""Train a recipe: data -> model -> checkpoints every epoch -> model.keras, card, history.

Backend-agnostic Keras 3 (numpy batches through ``keras.utils.PyDataset``, Keras
preprocessing layers for augmentation), so the same code trains on TensorFlow or JAX.
Interrupted runs resume from ``<cache>/runs/<name>/`` (optimizer state included).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from core import LABELS
from core.backbones import cache_dir
from core.config import Recipe
from core.data import Batches, class_weights, find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.evaluation import choose_threshold, metrics_at
from core.models import GRADCAM_LAYERS, augmentation, build_model, input_spec_for
from core.preprocessing import InputSpec
from core.registry import load_card, load_keras_model, models_dir, sha256_file, write_card

__all__ = ["train", "predict_arrays", "hardware", "average_weights"]

log = logging.getLogger(__name__)

WISE_FT_REPORTED_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _outputs(model, gray, spec: InputSpec, batch_size=64) -> np.ndarray:
    return np.asarray(model.predict(Batches(gray, np.zeros(len(gray)), spec, batch_size), verbose=0))


def predict_arrays(model, gray, spec: InputSpec, batch_size=64) -> np.ndarray:
    """P(pneumonia) for uint8 grayscale images, batched."""
    return _outputs(model, gray, spec, batch_size).astype(np.float64).reshape(-1)


def _compile(model, recipe: Recipe) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def hardware() -> str:
    """A short description of where this process runs."""
    backend = keras.backend.backend()
    device = "CPU"
    try:
        if backend == "jax":
            import jax

            device = str(jax.devices()[0].device_kind)
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            device = f"{len(gpus)} GPU" if gpus else "CPU"
    except Exception:  # device probing is informational only
        pass
    return f"{_cpu_name()}, {os.cpu_count()} logical CPUs, {device}, Keras {keras.__version__} on {backend}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Resumable(keras.callbacks.Callback):
    """Every epoch: save the full training state; on improvement of val_loss, the best model."""

    def __init__(self, run_dir: Path, inner: keras.Model, state: dict, stoppers: list):
        super().__init__()
        self.run_dir, self.inner, self.state, self.stoppers = run_dir, inner, state, stoppers
        self.clock = (time.time(), state.get("elapsed_s", 0.0))  # so a killed run keeps the time it spent

    def on_epoch_end(self, epoch, logs=None):
        started, spent_before = self.clock
        self.state["elapsed_s"] = spent_before + time.time() - started
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.state["history"].append({"epoch": epoch + 1, **logs})
        self.state["epoch"] = epoch + 1
        if logs["val_loss"] < self.state.get("best_val_loss", np.inf):
            self.state["best_val_loss"] = logs["val_loss"]
            self.state["best_epoch"] = epoch + 1
            self.inner.save(self.run_dir / "best.keras")
        self.state["callbacks"] = [{"wait": int(cb.wait), "best": float(cb.best)} for cb in self.stoppers]
        self.model.save(self.run_dir / "last.keras")
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.run_dir / "state.json")


def _restore(callback, saved: dict | None):
    """Give an EarlyStopping / ReduceLROnPlateau its counters back after a resume."""
    begin = callback.on_train_begin

    def on_train_begin(logs=None):
        begin(logs)
        if saved:
            callback.wait, callback.best = saved["wait"], saved["best"]

    callback.on_train_begin = on_train_begin
    return callback


def _fit_images(recipe: Recipe, model, spec, x_tr, y_tr, x_va, y_va, run_dir: Path, state: dict):
    weights = class_weights(y_tr) if recipe.class_weights else None
    train_data = Batches(x_tr, y_tr, spec, recipe.batch_size, shuffle=True, weights=weights, seed=recipe.seed)
    val_data = Batches(x_va, y_va, spec, 64)
    if (run_dir / "last.keras").exists() and state.get("epoch", 0) > 0:
        trainer = keras.saving.load_model(run_dir / "last.keras")
        inner = trainer.get_layer(model.name)
        log.info("Resuming %s after epoch %d", recipe.name, state["epoch"])
    else:
        inner = model
        parts = [augmentation(spec, recipe.rotation_deg, recipe.shift, recipe.zoom, recipe.brightness,
                               recipe.contrast, recipe.central_erasing, recipe.seed)] if recipe.augment else []
        trainer = keras.Sequential([keras.Input((*spec.size, spec.channels)), *parts, inner], name="trainer")
        _compile(trainer, recipe)
    saved = state.get("callbacks") or [None, None]
    stoppers = [
        _restore(keras.callbacks.ReduceLROnPlateau("val_loss", factor=recipe.reduce_lr_factor,
                                                   patience=recipe.reduce_lr_patience, verbose=1), saved[0]),
        _restore(keras.callbacks.EarlyStopping("val_loss", patience=recipe.early_stopping_patience, verbose=1), saved[1]),
    ]
    trainer.fit(
        train_data,
        validation_data=val_data,
        epochs=recipe.epochs,
        initial_epoch=state.get("epoch", 0),
        callbacks=[*stoppers, _Resumable(run_dir, inner, state, stoppers)],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return keras.saving.load_model(run_dir / "best.keras", compile=False)


def _fit_frozen_head(recipe: Recipe, model, spec, x_tr, y_tr, x_va, y_va, run_dir: Path, state: dict):
    """Frozen backbone: compute pooled features once, train dropout + dense on them."""
    cached = run_dir / "features.npz"
    key = np.array(json.dumps(_settings(recipe), sort_keys=True))  # features belong to one split and input
    f_tr = f_va = None
    if cached.exists():
        with np.load(cached) as f:
            if "key" in f and f["key"] == key:
                f_tr, f_va = f["train"], f["val"]
    if f_tr is None:
        features = keras.Model(model.input, model.get_layer("avg_pool").output)
        f_tr, f_va = (_outputs(features, x, spec).astype(np.float32) for x in (x_tr, x_va))
        np.savez(run_dir / "features.tmp.npz", train=f_tr, val=f_va, key=key)
        (run_dir / "features.tmp.npz").replace(cached)
    head_in = keras.Input(f_tr.shape[1:])
    h = keras.layers.Dropout(recipe.dropout)(head_in)
    logit = keras.layers.Dense(1)
    out = keras.layers.Activation("sigmoid")(logit(h))
    head = keras.Model(head_in, out)
    _compile(head, recipe)
    weights = class_weights(y_tr)[np.asarray(y_tr, int)] if recipe.class_weights else None
    best = keras.callbacks.EarlyStopping("val_loss", patience=recipe.early_stopping_patience, restore_best_weights=True)
    lr = keras.callbacks.ReduceLROnPlateau("val_loss", factor=recipe.reduce_lr_factor, patience=recipe.reduce_lr_patience)
    hist = head.fit(f_tr, np.asarray(y_tr, np.float32), sample_weight=weights, validation_data=(f_va, np.asarray(y_va, np.float32)),
                    epochs=recipe.epochs, batch_size=recipe.batch_size, callbacks=[best, lr], verbose=2)
    state["history"] = [{"epoch": i + 1, **{k: float(v[i]) for k, v in hist.history.items()}} for i in range(len(hist.history["loss"]))]
    state["best_epoch"] = int(np.argmin(hist.history["val_loss"])) + 1
    model.get_layer("logit").set_weights(logit.get_weights())
    return model


def train(recipe: Recipe, data_dir=None, out_root: Path | None = None, fresh: bool = False) -> Path:
    """Train ``recipe`` and write ``<models>/<name>/{model.keras,card.json,history.csv}``.

    A recipe with ``soup_seeds`` trains stage 2 once per seed (same validation split, same
    stage-1 start; the seed sets augmentation, shuffling and dropout), each in its own resumable
    run folder, and ships the uniform average of their weights (a "model soup").

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
    data_dir = find_data_dir(data_dir)
    out_root = out_root or models_dir()
    run_dir = cache_dir() / "runs" / recipe.name
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    train_samples, val_samples = split_train_val(list_split(data_dir, "train"), recipe.val_fraction, recipe.seed)
    spec = input_spec_for(recipe.kind, recipe.backbone, recipe.input_size, recipe.equalize)
    log.info("Loading %d training and %d validation images", len(train_samples), len(val_samples))
    x_tr, x_va = load_images(train_samples), load_images(val_samples)
    y_tr = np.array([s.label for s in train_samples])
    y_va = np.array([s.label for s in val_samples])

    init_weights, init_sha = None, None
    if recipe.init_from:
        source_spec = InputSpec.from_card(load_card(recipe.init_from, out_root))
        if source_spec != spec:
            raise ValueError(
                f"'{recipe.init_from}' was trained on differently preprocessed input "
                f"({source_spec.to_dict()}) than '{recipe.name}' ({spec.to_dict()}); retrain it first."
            )
        init_weights = load_keras_model(recipe.init_from, out_root).get_weights()
        init_sha = sha256_file(out_root / recipe.init_from / "model.keras")

    soup, fitting = None, 0.0  # fitting: seconds spent in run() by this call

    def run(member: Recipe, folder: Path):
        """One training run of ``member`` in ``folder`` (resumed if it was interrupted)."""
        nonlocal fitting
        t0 = time.time()
        state_path = folder / "state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {"history": [], "epoch": 0}
        _check_same_run(state, member, folder)
        if state.get("done") and member.epochs <= state.get("epochs_budget", 0):
            log.info("%s: finished earlier, reusing %s", member.name, folder / "best.keras")
            return keras.saving.load_model(folder / "best.keras", compile=False), state
        state["recipe"] = member.to_dict()
        state["epochs_budget"] = member.epochs
        spent_before = state.setdefault("elapsed_s", 0.0)  # by earlier, interrupted calls
        keras.utils.set_random_seed(member.seed)
        model = _build(member)
        if init_weights is not None:
            model.set_weights(init_weights)
        if member.kind == "transfer":
            model = _fit_frozen_head(member, model, spec, x_tr, y_tr, x_va, y_va, folder, state)
            model.save(folder / "best.keras")
        else:
            model = _fit_images(member, model, spec, x_tr, y_tr, x_va, y_va, folder, state)
        fitting += time.time() - t0
        state["elapsed_s"] = spent_before + time.time() - t0
        state["done"] = True
        state_path.write_text(json.dumps(state, indent=1))
        return model, state

    if recipe.soup_seeds:
        members = []
        for seed in recipe.soup_seeds:
            folder = run_dir / f"seed-{seed}"
            folder.mkdir(exist_ok=True)
            member_model, member_state = run(replace(recipe, seed=seed, soup_seeds=(), wise_ft_alpha=1.0), folder)
            members.append((seed, member_model, member_state))
        member_probs = [predict_arrays(m, x_va, spec) for _, m, _ in members]
        model = average_weights([m for _, m, _ in members])
        soup = _soup_record(members, y_va, member_probs)
        history = [{"member_seed": seed, **row} for seed, _, st in members for row in st["history"]]
        state = {"history": history, "best_epoch": [st.get("best_epoch") for _, _, st in members]}
        fitted = sum(st["elapsed_s"] for _, _, st in members)
    else:
        model, state = run(recipe, run_dir)
        fitted = state["elapsed_s"]

    wise = None
    if recipe.wise_ft_alpha != 1.0:
        model, wise, val_prob = _wise_ft(recipe, model, init_weights, init_sha, x_va, y_va, spec)
    else:
        val_prob = predict_arrays(model, x_va, spec)
    threshold = choose_threshold(y_va, val_prob, recipe.threshold_rule)
    folder = out_root / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    _write_history(folder / "history.csv", state["history"])
    elapsed = fitted + (time.time() - started - fitting)  # every run's fitting, plus this call's loading and scoring
    card = {
        "name": recipe.name,
        "kind": recipe.kind,
        "backbone": recipe.backbone,
        "input_shape": [*recipe.input_size, spec.channels],
        "preprocessing": spec.to_dict(),
        "labels": list(LABELS),
        "output": "P(PNEUMONIA), sigmoid",
        "threshold": threshold,
        "threshold_rule": {
            "youden": "maximise sensitivity + specificity - 1 on the validation split",
            "fixed": "0.5",
        }[recipe.threshold_rule],
        "gradcam_layer": GRADCAM_LAYERS[recipe.backbone or "baseline"],
        "parameters": int(model.count_params()),
        "trainable_parameters_in_training": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "config": recipe.to_dict(),
        "initialised_from": {"model": recipe.init_from, "sha256": init_sha} if recipe.init_from else None,
        "seed": recipe.seed,
        "soup": soup,
        "wise_ft": wise,
        "data": {
            "train_images": len(train_samples),
            "val_images": len(val_samples),
            "train_patients": len({s.patient for s in train_samples}),
            "val_patients": len({s.patient for s in val_samples}),
            "fingerprint": fingerprint(train_samples + val_samples),
            "split": f"{recipe.val_fraction:.0%} of official train held out by patient, stratified by class (StratifiedGroupKFold, seed {recipe.seed})",
        },
        "best_epoch": state.get("best_epoch"),
        "epochs_run": len(state["history"]),
        "val_metrics": {"roc_auc": float(roc_auc_score(y_va, val_prob)), **metrics_at(y_va, val_prob, threshold)},
        "weights_file": "model.keras",
        "weights_sha256": sha256_file(folder / "model.keras"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "training_time_s": round(elapsed, 1),
        "intended_use": "Research and teaching on pediatric AP chest X-rays (ages 1-5, one centre). Not a medical device.",
    }
    write_card(folder, card)
    log.info("Wrote %s (val AUC %.4f, threshold %.4f)", folder, card["val_metrics"]["roc_auc"], threshold)
    return folder


def _build(recipe: Recipe) -> keras.Model:
    return build_model(recipe.kind, recipe.backbone, recipe.input_size, recipe.dropout,
                       "imagenet", recipe.trainable_top_layers)


def _wise_ft(recipe: Recipe, tuned_model, start_weights, start_sha, x_va, y_va, spec):
    """Mix the fine-tuned model with its start at the recipe's alpha (WiSE-FT).

    Also scores the mix on validation at the alphas the card reports, for information only:
    the recipe's alpha is fixed, not chosen here. Returns (mixed model, card record, its
    validation probabilities).
    """
    start = _build(recipe)
    start.set_weights(start_weights)
    tuned = tuned_model.get_weights()

    def mix(a):
        tuned_model.set_weights(tuned)
        return average_weights([tuned_model, start], [a, 1 - a])

    probs = {a: predict_arrays(mix(a), x_va, spec) for a in sorted({*WISE_FT_REPORTED_ALPHAS, recipe.wise_ft_alpha})}
    record = {"alpha": recipe.wise_ft_alpha, "start": recipe.init_from, "start_sha256": start_sha,
              "rule": "every weight = (1 - alpha) x the start's + alpha x the fine-tuned one's (WiSE-FT)",
              "val_roc_auc_by_alpha": {f"{a:g}": float(roc_auc_score(y_va, p)) for a, p in probs.items()}}
    return mix(recipe.wise_ft_alpha), record, probs[recipe.wise_ft_alpha]


def average_weights(models: list, coefficients: list[float] | None = None) -> keras.Model:
    """The weighted average of models with one architecture (uniform by default: a "soup").

    Meant for runs fine-tuned from one starting point with BatchNorm frozen, so that the
    BatchNorm statistics agree and only trained weights are averaged (Wortsman et al., 2022);
    the weights the first model keeps frozen must be equal in all. Non-negative
    ``coefficients`` summing to 1 weight the models (WiSE-FT passes ``[alpha, 1 - alpha]``).
    Returns the first model, its weights replaced by the averages.
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


def _soup_record(members, y_va, member_probs) -> dict:
    """What the card says about a soup: its members, each scored on validation."""
    rows = [{"seed": seed, "best_epoch": st.get("best_epoch"), "epochs_run": len(st["history"]),
             "training_time_s": round(st["elapsed_s"], 1), "val_roc_auc": float(roc_auc_score(y_va, p))}
            for (seed, _, st), p in zip(members, member_probs)]
    return {
        "members": rows,
        "rule": "uniform average of every weight of the members (BatchNorm frozen, so its statistics are shared)",
        "member_mean_val_roc_auc": float(np.mean([r["val_roc_auc"] for r in rows])),
        "output_ensemble_val_roc_auc": float(roc_auc_score(y_va, np.mean(member_probs, axis=0))),
    }


def _settings(recipe: Recipe) -> dict:
    """What must match for a saved run to be resumed: the recipe as JSON, except its epoch budget,
    its notes (prose) and the WiSE-FT mix, which is applied to the finished run."""
    return {k: v for k, v in json.loads(json.dumps(recipe.to_dict())).items()
            if k not in ("epochs", "notes", "wise_ft_alpha")}


def _check_same_run(state: dict, recipe: Recipe, run_dir: Path) -> None:
    """Resume only the run this recipe started (more epochs is fine; another seed or setting is not)."""
    if state.get("epoch", 0) == 0 and not state.get("history"):
        return  # nothing to resume
    saved = state.get("recipe")
    if saved is None:
        raise ValueError(f"{run_dir} holds a run from an older version that did not record its settings; "
                         "pass --fresh to discard it.")
    differs = sorted(k for k, v in _settings(recipe).items() if saved.get(k) != v)
    if differs:
        raise ValueError(
            f"{run_dir} holds a run of '{recipe.name}' with other settings ({', '.join(differs)}); "
            "pass --fresh to discard it, or point PNEUMONIA_CACHE at another folder to keep it."
        )


def _write_history(path: Path, history: list[dict]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)

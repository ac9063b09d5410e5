"""Train a recipe: data -> model -> checkpoints every epoch -> model.keras, card, history.

Backend-agnostic Keras 3 (numpy batches through ``keras.utils.PyDataset``, Keras
preprocessing layers for augmentation), so the same code trains on TensorFlow or JAX.
Interrupted runs resume from ``<cache>/runs/<name>/`` (optimizer state included; see
:mod:`core.checkpoints`). The batches are in :mod:`core.batches`, a frozen backbone's head in
:mod:`core.heads`, soups and WiSE-FT in :mod:`core.averaging`, the card in :mod:`core.cards`.
"""

from __future__ import annotations

import csv
import logging
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from core.averaging import average_weights, soup_record, wise_ft
from core.batches import Batches, TrainingData, predict_arrays
from core.calibration import calibration_record
from core.cards import assemble_card
from core.checkpoints import Resumable, check_same_run, load_state, restore_counters, save_state
from core.config import Recipe, trains_head_only
from core.data import class_weights, find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.evaluation import choose_threshold, metrics_at
from core.heads import fit_frozen_head
from core.lungs import find_mask_dir, load_masks
from core.models import GRADCAM_LAYERS, build_model, compile_for, pair_trainer, recipe_augmentation, recipe_spec
from core.preprocessing import InputSpec
from core.registry import load_card, load_keras_model, model_files, models_dir, sha256_file, write_card
from core.runtime import cache_dir, hardware
from core.segmenter import shipped_decoder

__all__ = ["train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Start:
    """The stage-1 model a two-stage recipe starts from (its weights and their sha256)."""

    weights: list | None = None
    sha256: str | None = None


def _build(recipe: Recipe, weights: list | None = None) -> keras.Model:
    # a lung-pooled model finds the lungs with the shipped decoder (sha256-checked), frozen
    decoder = shipped_decoder() if recipe.kind == "lungpool" else None
    # a stage 2 gets every weight from its start, so it needs no ImageNet weights (a GPU machine has no converter)
    model = build_model(recipe.kind, recipe.backbone, recipe.input_size, recipe.dropout,
                        "imagenet" if weights is None else None, recipe.trainable_top_layers, decoder)
    if weights is not None:
        model.set_weights(weights)
    return model


def _fit_images(recipe: Recipe, model, data: TrainingData, run_dir: Path, state: dict):
    weights = class_weights(data.y_tr) if recipe.class_weights else None
    pairs = bool(recipe.consistency_weight)  # v25: two views of each image, and the gap between them in the loss
    train_data = Batches(data.x_tr, data.y_tr, data.spec, recipe.batch_size, shuffle=True, weights=weights,
                         seed=recipe.seed, encoding=recipe.encoding_augment, lungs=data.m_tr,
                         margin_jitter=recipe.lung_margin_jitter, pairs=pairs)
    # validation pairs are each copy twice: a gap of 0, so val_loss is the BCE alone, as without pairs
    val_data = Batches(data.x_va, data.y_va, data.spec, 64, lungs=data.m_va, pairs=pairs)
    if (run_dir / "last.keras").exists() and state.get("epoch", 0) > 0:
        trainer = keras.saving.load_model(run_dir / "last.keras")
        inner = trainer.get_layer(model.name)
        log.info("Resuming %s after epoch %d", recipe.name, state["epoch"])
    else:
        inner = model
        augment = recipe_augmentation(recipe, data.spec) if recipe.augment else None
        if pairs:
            trainer = pair_trainer(inner, data.spec, augment)
        else:
            trainer = keras.Sequential([keras.Input((*data.spec.size, data.spec.channels)),
                                        *([augment] if augment else []), inner], name="trainer")
        compile_for(trainer, recipe, pairs)
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


MAP_METHODS = {"lungpool": "hirescam"}  # the map a kind is explained by, where not Grad-CAM (core.gradcam)

def _train_run(member: Recipe, folder: Path, data: TrainingData, start: _Start) -> tuple[keras.Model, dict, float]:
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
        model = fit_frozen_head(member, model, data, folder, state)
        model.save(folder / "best.keras")
    else:
        model = _fit_images(member, model, data, folder, state)
    spent = time.time() - t0
    state["elapsed_s"] = spent_before + spent
    state["done"] = True
    save_state(folder, state)
    return model, state, spent


def _load_data(recipe: Recipe, data_dir: Path) -> TrainingData:
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
    return TrainingData(train, val, load_images(train), np.array([s.label for s in train]), load_images(val),
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
    if recipe.consistency_weight and trains_head_only(recipe.kind, recipe.trainable_top_layers):
        raise ValueError("A consistency weight applies to training on images; a frozen-backbone head has its "
                         "consistency grid instead.")
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


def _data_record(recipe: Recipe, data: TrainingData) -> dict:
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

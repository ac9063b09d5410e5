"""``python -m core.train_timing [--recipe NAME] [--per-class N] [--epochs E] [--no-augment]``: training speed.

How fast does a recipe train here? It times the real training code (:func:`core.training.train`: the batch pipeline,
its threads and the recipe's augmentation layers) on generated 224 x 224 images with lung masks, so it needs neither
the dataset nor, for a two-stage recipe, the ImageNet weights: the shipped model of the recipe's name is its start
(its weights change the numbers, not the time). Made for a GPU machine (``KERAS_BACKEND=jax``; docs/lungs.md §22);
on any machine it prints one JSON object: seconds and milliseconds per step of each epoch (the first includes
compiling), images per second; then the recipe's augmentation layers alone on one batch, and one training step on a
fixed batch without the pipeline or the augmentation (the device's own share), on this backend. A head on a frozen
backbone (``transfer``) trains on features computed once: it reports the whole run's time only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from core.batches import data_workers
from core.config import RECIPES, get_recipe, trains_head_only
from core.models import compile_for, pair_trainer, recipe_augmentation, recipe_spec
from core.registry import models_dir
from core.runtime import hardware
from core.training import train

__all__ = ["synthetic_dataset", "time_augmentation", "time_step", "stand_in_for", "time_training", "main"]


def synthetic_dataset(root: Path, per_class: int, size: int = 224, seed: int = 0) -> tuple[Path, Path]:
    """``per_class`` generated chest-like images per class (one patient each) under ``root/chest_xray/train`` and
    their lung masks under ``root/lung_masks/train``; the pneumonia ones carry a bright patch in one lung.

    Returns:
        (dataset folder, mask folder).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = ((((xx - 0.31) / 0.17) ** 2 + ((yy - 0.51) / 0.33) ** 2) < 1) | \
            ((((xx - 0.69) / 0.17) ** 2 + ((yy - 0.51) / 0.33) ** 2) < 1)
    data, masks = root / "chest_xray", root / "lung_masks"
    for label in ("NORMAL", "PNEUMONIA"):
        for folder in (data / "train" / label, data / "test" / label, masks / "train" / label, masks / "test" / label):
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = 40 + 120 * lungs + rng.normal(0, 12, lungs.shape)
            if label == "PNEUMONIA":
                r, c = rng.integers(int(0.35 * size), int(0.6 * size), 2)
                img[r : r + size // 5, c // 2 : c // 2 + size // 6] += 60
            stem = f"IM-{i:04d}-0001" if label == "NORMAL" else f"person{i}_bacteria_{i}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(data / "train" / label / f"{stem}.jpeg",
                                                                        quality=75)
            Image.fromarray(lungs.astype(np.uint8) * 255).save(masks / "train" / label / f"{stem}.png")
    return data, masks


def time_augmentation(recipe, batch_size: int = 32, repeats: int = 5) -> float | None:
    """Milliseconds the recipe's augmentation layers take on one batch, compiled, on this backend (``None``
    without augmentation)."""
    if not recipe.augment:
        return None
    spec = recipe_spec(recipe)
    model = keras.Sequential([keras.Input((*spec.size, spec.channels)), recipe_augmentation(recipe, spec)])
    x = np.random.default_rng(0).random((batch_size, *spec.size, spec.channels), dtype=np.float32)
    if keras.backend.backend() == "jax":
        import jax

        run = jax.jit(lambda v: model(v, training=True))
        done = lambda: run(x).block_until_ready()  # noqa: E731
    else:
        import tensorflow as tf

        run = tf.function(lambda v: model(v, training=True), autograph=False)
        done = lambda: run(x).numpy()  # noqa: E731
    done()
    start = time.perf_counter()
    for _ in range(repeats):
        done()
    return (time.perf_counter() - start) / repeats * 1000


def time_step(model: keras.Model, recipe, repeats: int = 5) -> float:
    """Milliseconds of one training step of ``model`` (its trainable layers as trained) on a fixed random batch,
    compiled as training compiles it, without the batch pipeline or the augmentation layers: what the device itself
    costs a step. A recipe trained on pairs of views (v25) steps its pair trainer, both views."""
    pairs = bool(recipe.consistency_weight)
    trainer = pair_trainer(model, recipe_spec(recipe)) if pairs else model
    compile_for(trainer, recipe, pairs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((recipe.batch_size, *trainer.inputs[0].shape[1:]), dtype=np.float32)
    y = rng.integers(0, 2, (recipe.batch_size, 1)).astype(np.float32)
    targets = {"prediction": y, "consistency": np.zeros_like(y)} if pairs else y
    trainer.train_on_batch(x, targets)
    start = time.perf_counter()
    for _ in range(repeats):
        trainer.train_on_batch(x, targets)
    return (time.perf_counter() - start) / repeats * 1000


def stand_in_for(name: str, start: str, models: Path) -> Path:
    """The model folder whose weights stand in for the stage 1 (``start``) of recipe ``name``: ``models/<name>``, or for
    a kept recipe (``lungfocus_v23``) the model of its current name (``models/lungfocus``), of the same build. Only the
    time of a step is measured, so any weights of that build do.

    Raises:
        ValueError: Neither is there.
    """
    names = [name] + ([name.rsplit("_v", 1)[0]] if re.fullmatch(r".+_v\d+", name) else [])
    for candidate in names:
        if (models / candidate / "model.keras").exists():
            return models / candidate
    raise ValueError(f"'{name}' starts from '{start}': no model {' or '.join(repr(n) for n in names)} in {models} "
                     "to stand in for it (--models-dir).")


def time_training(name: str, per_class: int, epochs: int, work: Path, models: Path | None = None,
                  augment: bool = True) -> dict:
    """Train recipe ``name`` (one run: no soup, no WiSE-FT; without its augmentation layers unless ``augment``) for
    ``epochs`` on :func:`synthetic_dataset` in ``work`` and report each epoch's time."""
    held_out = get_recipe(name).val_fraction
    if per_class < round(1 / held_out):
        raise ValueError(f"'{name}' holds out {held_out:.0%} for validation by patient: it needs at least "
                         f"{round(1 / held_out)} images per class, not {per_class}.")
    saved = {k: os.environ.get(k) for k in ("PNEUMONIA_CACHE", "PNEUMONIA_MASKS_DIR")}
    try:
        return _time_training(name, per_class, epochs, work, models, augment)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _time_training(name: str, per_class: int, epochs: int, work: Path, models: Path | None, augment: bool) -> dict:
    data, masks = synthetic_dataset(work / "data", per_class)
    os.environ["PNEUMONIA_CACHE"] = str(work / "cache")  # runs and checkpoints stay in the scratch folder
    os.environ["PNEUMONIA_MASKS_DIR"] = str(masks)
    base = get_recipe(name)
    recipe = replace(base, epochs=epochs, soup_seeds=(), wise_ft_alpha=1.0, augment=base.augment and augment)
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    if recipe.init_from:  # the shipped model of this name stands in for its stage 1
        shutil.copytree(stand_in_for(name, recipe.init_from, Path(models or models_dir())), out / recipe.init_from)
    started = time.time()
    folder = train(recipe, data, out_root=out, fresh=True)
    trained_s = time.time() - started
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    card = json.loads((folder / "card.json").read_text())
    steps = -(-card["data"]["train_images"] // recipe.batch_size)
    # a head on a frozen backbone trains on features computed once: only the whole run's time means anything
    seconds = [float(r["seconds"]) for r in rows] if not trains_head_only(recipe.kind, recipe.trainable_top_layers) \
        else None
    return {"recipe": name, "augmentation_layers": recipe.augment, "backend": keras.backend.backend(),
            "hardware": hardware(), "data_workers": data_workers(), "train_images": card["data"]["train_images"],
            "steps_per_epoch": steps, "epoch_s": seconds,
            "ms_per_step": seconds and [1000 * s / steps for s in seconds],
            "images_per_s_last_epoch": seconds and card["data"]["train_images"] / seconds[-1],
            "total_s": trained_s,  # the whole training call: loading, the epochs (or features and head), the card
            "augmentation_ms_per_batch": time_augmentation(recipe, recipe.batch_size),
            "step_ms_fixed_batch": seconds and time_step(keras.saving.load_model(folder / "model.keras"), recipe)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.train_timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="lungfocus", choices=list(RECIPES))
    parser.add_argument("--per-class", type=int, default=1200, help="generated images per class (default 1200)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="train without the recipe's augmentation layers (what they cost)")
    parser.add_argument("--models-dir", type=Path, help="where the stage-1 stand-in is (default: models/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="train-timing-") as work:
        try:
            result = time_training(args.recipe, args.per_class, args.epochs, Path(work), args.models_dir, args.augment)
        except ValueError as exc:
            parser.error(str(exc))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

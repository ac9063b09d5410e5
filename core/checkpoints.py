"""Resumable training runs: the state saved every epoch, and the rule for what may be resumed.

A run folder (``<cache>/runs/<name>/``, or ``.../seed-<S>/`` for a member of a soup) holds
``state.json`` (epoch, history, callback counters, time spent, the recipe), ``last.keras`` (the
whole trainer with its optimizer state) and ``best.keras`` (the best model on validation loss).
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

import keras
import numpy as np

from core.config import Recipe

__all__ = ["Resumable", "restore_counters", "load_state", "save_state", "settings", "check_same_run"]


class Resumable(keras.callbacks.Callback):
    """Every epoch: save the full training state; on improvement of val_loss, the best model."""

    def __init__(self, run_dir: Path, inner: keras.Model, state: dict, stoppers: list):
        super().__init__()
        self.run_dir, self.inner, self.state, self.stoppers = run_dir, inner, state, stoppers
        self.clock = (time.time(), state.get("elapsed_s", 0.0))  # so a killed run keeps the time it spent

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        started, spent_before = self.clock
        self.state["elapsed_s"] = spent_before + time.time() - started
        # a pair trainer's (core.models.pair_trainer) metrics are its prediction's: named as any model's in the history
        logs = {k.replace("prediction_", "") if not k.endswith("prediction_loss") else k: float(v)
                for k, v in (logs or {}).items()}
        logs["seconds"] = time.time() - self.epoch_started  # wall time of this epoch, its validation included
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.state["history"].append({"epoch": epoch + 1, **logs})
        self.state["epoch"] = epoch + 1
        if logs["val_loss"] < self.state.get("best_val_loss", np.inf):
            self.state["best_val_loss"] = logs["val_loss"]
            self.state["best_epoch"] = epoch + 1
            self.inner.save(self.run_dir / "best.keras")
        self.state["callbacks"] = [{"wait": int(cb.wait), "best": float(cb.best)} for cb in self.stoppers]
        self.model.save(self.run_dir / "last.keras")
        save_state(self.run_dir, self.state)


def restore_counters(callback, saved: dict | None):
    """Give an EarlyStopping / ReduceLROnPlateau its counters back after a resume."""
    begin = callback.on_train_begin

    def on_train_begin(logs=None):
        begin(logs)
        if saved:
            callback.wait, callback.best = saved["wait"], saved["best"]

    callback.on_train_begin = on_train_begin
    return callback


def load_state(run_dir: Path) -> dict:
    """The saved state of the run in ``run_dir`` (a fresh one when there is none)."""
    path = run_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"history": [], "epoch": 0}


def save_state(run_dir: Path, state: dict) -> None:
    """Write ``state.json`` atomically (a kill mid-write leaves the previous state)."""
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(run_dir / "state.json")


def settings(recipe: Recipe) -> dict:
    """What must match for a saved run to be resumed: the recipe as JSON, except its epoch budget,
    its notes (prose) and the WiSE-FT mix (and how its alpha was chosen), which is applied to the finished run."""
    return {k: v for k, v in json.loads(json.dumps(recipe.to_dict())).items()
            if k not in ("epochs", "notes", "wise_ft_alpha", "wise_ft_alpha_choice")}


def check_same_run(state: dict, recipe: Recipe, run_dir: Path) -> None:
    """Resume only the run this recipe started (more epochs is fine; another seed or setting is not).

    Raises:
        ValueError: The folder holds another run; the message says how to proceed.
    """
    if state.get("epoch", 0) == 0 and not state.get("history"):
        return  # nothing to resume
    saved = state.get("recipe")
    if saved is None:
        raise ValueError(f"{run_dir} holds a run from an older version that did not record its settings; "
                         "pass --fresh to discard it.")
    defaults = {f.name: f.default for f in fields(Recipe)}  # a setting added later reads as its default
    differs = sorted(k for k, v in settings(recipe).items() if saved.get(k, defaults.get(k)) != v)
    if differs:
        raise ValueError(
            f"{run_dir} holds a run of '{recipe.name}' with other settings ({', '.join(differs)}); "
            "pass --fresh to discard it, or point PNEUMONIA_CACHE at another folder to keep it."
        )

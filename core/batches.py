"""Batches of model inputs from decoded images: for training, and for scoring many images at once.

Backend-agnostic Keras 3 (numpy batches through ``keras.utils.PyDataset``), so the same pipeline feeds
TensorFlow or JAX. Training batches re-encode each image at random as other files would bring it
(:func:`core.augment.encoding_path`) before the one preprocessing function (:func:`core.preprocessing.to_model_input`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import keras
import numpy as np

from core.augment import encoding_path
from core.data import Sample
from core.preprocessing import InputSpec, to_model_input

__all__ = ["TrainingData", "Batches", "data_workers", "encode_all", "model_outputs", "predict_arrays"]


@dataclass(frozen=True)
class TrainingData:
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


def data_workers() -> int:
    """Threads that make training batches (``PNEUMONIA_DATA_WORKERS``, default 1): the re-encoding runs in
    Pillow, which releases the GIL, so a machine with many cores and an accelerator can keep it fed."""
    return max(1, int(os.environ.get("PNEUMONIA_DATA_WORKERS", "1")))


class Batches(keras.utils.PyDataset):
    """Batches of model inputs from uint8 grayscale images, optionally with sample weights and, for
    training, each image re-encoded at random (:func:`core.augment.encoding_path`) before preprocessing."""

    def __init__(self, gray, labels, spec, batch_size=32, shuffle=False, weights=None, seed=0, encoding=False,
                 lungs=None, margin_jitter=0, pairs=False, **kw):
        super().__init__(**{"workers": data_workers(), **kw})
        self.pairs = pairs  # two views of each image stacked along the channels, for a consistency trainer
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
        # with pairs, two views of each image, each re-encoded on its own (the image twice without the encoding),
        # stacked along the channels; one lung margin per image for both
        views = [np.stack([encoding_path(g, rng) for g in gray]) if self.encoding else gray
                 for _ in range(2 if self.pairs else 1)]
        lungs = self._lungs(idx, rng)
        inputs = [to_model_input(v, self.spec, *lungs) for v in views]
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=-1)
        y = self.labels[idx][:, None]
        w = None if self.weights is None else self.weights[self.labels[idx].astype(int)]
        if self.pairs:  # targets and weights per output of core.models.pair_trainer: a gap of 0, unweighted
            y = {"prediction": y, "consistency": np.zeros_like(y)}
            w = None if w is None else {"prediction": w, "consistency": np.ones(len(idx), np.float32)}
        return (x, y) if w is None else (x, y, w)

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


def encode_all(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One re-encoded view of each image (:func:`core.augment.encoding_path`), on :func:`data_workers` threads;
    each image draws from its own generator, spawned from ``rng``, so the result does not depend on the threads."""
    seeds = rng.spawn(len(gray))
    with ThreadPoolExecutor(data_workers()) as pool:
        return np.stack(list(pool.map(encoding_path, gray, seeds)))


def model_outputs(model, gray, spec: InputSpec, batch_size=64, lungs=None) -> np.ndarray:
    """``model``'s outputs for uint8 grayscale images fed as ``spec`` says (with their lung masks for a lung-focused
    spec), in batches."""
    return np.asarray(model.predict(Batches(gray, np.zeros(len(gray)), spec, batch_size, lungs=lungs), verbose=0))


def predict_arrays(model, gray, spec: InputSpec, batch_size=64, lungs=None) -> np.ndarray:
    """P(pneumonia) for uint8 grayscale images (with their lung masks for a lung-focused spec), batched."""
    return model_outputs(model, gray, spec, batch_size, lungs).astype(np.float64).reshape(-1)

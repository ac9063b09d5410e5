"""The project's own Keras layers, registered for safe-mode loading (``package="pneumonia"``).

Kept apart from the builders (:mod:`core.models`) so that loading a model file
(:func:`core.registry.load_keras_model`) needs only Keras, not the builders and what they import.
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["LungCellPooling", "CentralBandErasing", "ViewSplit", "LogitGap"]


@keras.saving.register_keras_serializable(package="pneumonia")
class LungCellPooling(layers.Layer):
    """Average of a feature map ``(N, h, w, C)`` over its lung cells, given P(lung) ``(N, H, W, 1)``.

    Each cell's weight is ``clip((f - low) / (high - low), 0, 1) + floor``, ``f`` the cell's mean P(lung):
    continuous, so that a slightly different mask moves the answer only slightly; ``floor`` averages an
    image without lungs over the whole map. The gradient of the pooled value at a cell is its weight over
    the weights' sum, so HiResCAM on the features shows each cell's own share of the logit.
    """

    def __init__(self, low=0.5, high=1.0, floor=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high, self.floor = float(low), float(high), float(floor)

    def cell_weights(self, features, lungs):
        cell = int(lungs.shape[1]) // int(features.shape[1])
        frac = keras.ops.average_pool(lungs, pool_size=cell, strides=cell, padding="valid")
        return keras.ops.clip((frac - self.low) / (self.high - self.low), 0.0, 1.0) + self.floor

    def call(self, inputs):
        features, lungs = inputs
        w = keras.ops.cast(self.cell_weights(features, lungs), features.dtype)
        return keras.ops.sum(features * w, axis=(1, 2)) / keras.ops.sum(w, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high, "floor": self.floor}


@keras.saving.register_keras_serializable(package="pneumonia")
class CentralBandErasing(layers.Layer):
    """Training only: with ``probability``, blank the central third of the image width.

    On an AP chest film that band is the mediastinum and heart; hiding it now and then makes
    a model look for evidence in the lung fields. Identity at inference.
    """

    def __init__(self, probability=0.5, fill_value=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.probability, self.fill_value, self.seed = probability, fill_value, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training:
            return x
        width = keras.ops.shape(x)[2]
        cols = keras.ops.arange(width)
        band = keras.ops.logical_and(cols >= width // 3, cols < width - width // 3)
        erase = keras.random.uniform((keras.ops.shape(x)[0],), seed=self.seed_generator) < self.probability
        mask = keras.ops.logical_and(erase[:, None, None, None], band[None, None, :, None])
        return keras.ops.where(mask, keras.ops.cast(self.fill_value, x.dtype), x)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "fill_value": self.fill_value,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="pneumonia")
class ViewSplit(layers.Layer):
    """Two views of each image stacked along the channels ``(N, H, W, 2C)`` -> ``[(N, H, W, C), (N, H, W, C)]``.

    Stacked, both views go through the same augmentation layers with the same draws (the layers transform every
    channel of an image alike), so they differ only by how each was encoded (:func:`core.batches.Batches`, pairs).
    """

    def call(self, x):
        c = x.shape[-1] // 2
        return [x[..., :c], x[..., c:]]

    def compute_output_shape(self, input_shape):
        half = (*input_shape[:-1], input_shape[-1] // 2)
        return [half, half]


@keras.saving.register_keras_serializable(package="pneumonia")
class LogitGap(layers.Layer):
    """``logit(p_b) - logit(p_a)`` for two probabilities ``(N, 1)``, clipped at ``eps``: how far a second view moves
    the model's answer, in the units a decision threshold moves in (v25, docs/lungs.md §23)."""

    def __init__(self, eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.eps = float(eps)

    def call(self, inputs):
        pa, pb = (keras.ops.clip(keras.ops.cast(p, "float32"), self.eps, 1.0 - self.eps) for p in inputs)
        return (keras.ops.log(pb) - keras.ops.log1p(-pb)) - (keras.ops.log(pa) - keras.ops.log1p(-pa))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}

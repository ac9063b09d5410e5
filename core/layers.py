"""The project's own Keras layers, registered for safe-mode loading (``package="pneumonia"``).

Kept apart from the builders (:mod:`core.models`) so that loading a model file
(:func:`core.registry.load_keras_model`) needs only Keras, not the builders and what they import.
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["LungCellPooling", "CentralBandErasing"]


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

"""Grad-CAM in small pure steps, with one compiled call for probability and map together.

For a single sigmoid output the PNEUMONIA map uses the gradient of the logit, and the
NORMAL map the same gradient with its sign flipped. :class:`GradCam` returns the
*signed* map ``sum_k alpha_k A_k`` once; :func:`class_map` then takes the positive part
for either class, so both explanations cost one forward pass.
"""

from __future__ import annotations

import keras
import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = [
    "GradCam",
    "class_map",
    "upsample",
    "normalise",
    "colourise",
    "colour_bar",
    "overlay",
    "central_share",
    "border_share",
]


class GradCam:
    """Probability and signed Grad-CAM map of a model in one compiled call.

    Args:
        model: A model ending in layers ``logit`` -> ``prediction`` (see :mod:`core.models`).
        layer_name: The convolutional layer to explain (the card's ``gradcam_layer``).
        head: Optionally, another head computed in the same pass (the lung decoder): a model taking
            the outputs of ``head_inputs`` (layers of ``model``) and the input batch.
        head_inputs: The layer names ``head`` reads.
        method: ``"gradcam"`` weights each channel by its mean gradient (Selvaraju et al. 2017);
            ``"hirescam"`` multiplies gradient and activation element-wise before summing the channels
            (Draelos & Carin 2020), so each cell shows its own evidence.

    Call it with a float32 batch ``(N, H, W, C)``; it returns ``(prob (N,), signed (N, h, w))``;
    :meth:`with_head` also returns the head's output. The input signature is fixed (any batch size),
    so new uploads never retrace.
    """

    def __init__(self, model: keras.Model, layer_name: str, head: keras.Model | None = None,
                 head_inputs: tuple[str, ...] = (), method: str = "gradcam"):
        if method not in ("gradcam", "hirescam"):
            raise ValueError(f"Unknown map method {method!r}. Use 'gradcam' or 'hirescam'.")
        self.layer_name, self.has_head, self.method = layer_name, head is not None, method
        self._model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.get_layer("logit").output,
                                                 *(model.get_layer(n).output for n in head_inputs if head)])
        shape = tuple(model.inputs[0].shape[1:])
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise NotImplementedError(f"Grad-CAM serving is implemented for the TensorFlow backend, not {backend}.")
        import tensorflow as tf  # serving runs on TensorFlow; importing this module must not need it

        # autograph=False: nothing here needs conversion, and autograph would write generated
        # source files to the temp directory (we promise a diagnosis writes no files).
        def compile_run(with_head: bool):
            @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)], autograph=False,
                         jit_compile=False)
            def run(x):
                with tf.GradientTape() as tape:
                    features, logit, *taps = self._model(x, training=False)
                grads = tape.gradient(logit, features)  # d logit_i / d A_i (samples independent)
                if method == "hirescam":
                    signed = tf.reduce_sum(grads * features, axis=-1)
                else:
                    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
                    signed = tf.reduce_sum(alpha * features, axis=-1)
                if not with_head:
                    return tf.sigmoid(logit[:, 0]), signed
                return tf.sigmoid(logit[:, 0]), signed, head([*taps, x], training=False)[..., 0]

            return run

        # the head runs only when asked for: a caller that needs it from one model does not pay it in all
        self._runs = {False: compile_run(False), **({True: compile_run(True)} if head is not None else {})}
        self._run = self._runs[False]  # the plain call (tests count its traces)
        self._shape = shape

    def with_head(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(prob, signed, head output)`` for a batch; the head's output is ``None`` without a head."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == len(self._shape):
            x = x[None]
        prob, signed, *head = self._runs[self.has_head](x)
        return prob.numpy().astype(np.float64), signed.numpy(), head[0].numpy() if head else None

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(prob, signed)`` for a batch, without the head."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == len(self._shape):
            x = x[None]
        prob, signed = self._runs[False](x)
        return prob.numpy().astype(np.float64), signed.numpy()

    def warm_up(self) -> None:
        self(np.zeros((1, *self._shape), np.float32))
        if self.has_head:
            self.with_head(np.zeros((1, *self._shape), np.float32))


def class_map(signed: np.ndarray, target: str = "PNEUMONIA") -> np.ndarray:
    """Grad-CAM of one class from the signed map: ReLU of it (PNEUMONIA) or of its negative."""
    if target not in ("PNEUMONIA", "NORMAL"):
        raise ValueError(f"Unknown class {target!r}. Use 'PNEUMONIA' or 'NORMAL'.")
    return np.maximum(signed if target == "PNEUMONIA" else -signed, 0.0)


def normalise(cam: np.ndarray) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its maximum (all zeros stays zeros)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(cam.max()) if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` = (H, W)."""
    return np.asarray(Image.fromarray(np.asarray(cam, np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR))


def colourise(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map to an RGB uint8 image with a matplotlib colormap."""
    rgba = colormaps[colormap](np.clip(heat, 0, 1))
    return (rgba[..., :3] * 255).astype(np.uint8)


def colour_bar(width: int = 320, height: int = 14, colormap: str = "jet") -> np.ndarray:
    """The colour scale of :func:`colourise` as an RGB uint8 strip, 0 on the left, 1 on the right."""
    return np.repeat(colourise(np.linspace(0, 1, width, dtype=np.float32), colormap)[None], height, axis=0)


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap over a uint8 grayscale image of the same size (RGB uint8)."""
    if gray.shape != heat.shape:
        heat = upsample(heat, gray.shape)
    base = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)
    blended = (1 - alpha) * base + alpha * colourise(heat, colormap).astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def central_share(heat: np.ndarray) -> float:
    """Share of a heatmap's mass in the central third of the image width.

    On an AP chest film that band holds the mediastinum and heart rather than the lungs; a
    uniform map gives 1/3. ``nan`` for an all-zero map.
    """
    heat = np.asarray(heat, np.float64)
    total = heat.sum()
    w = heat.shape[1]
    return float(heat[:, w // 3 : w - w // 3].sum() / total) if total > 0 else float("nan")


def border_share(heat: np.ndarray, top: float = 0.12, side: float = 0.08) -> float:
    """Share of a heatmap's mass in the top ``top`` of the rows or the outer ``side`` of the
    columns on either side: shoulders, image corners and burnt-in labels, not lungs."""
    heat = np.asarray(heat, np.float64)
    total = heat.sum()
    if total <= 0:
        return float("nan")
    h, w = heat.shape
    inner = heat[int(top * h) :, int(side * w) : w - int(side * w)].sum()
    return float((total - inner) / total)

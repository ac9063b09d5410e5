"""The lung segmenter: a small decoder on the frozen ImageNet EfficientNet-Lite0 features.

The decoder reads three feature maps of the ImageNet Lite0 backbone (strides 4, 8 and 16:
``block2_add``, ``block4_add``, ``block10_add``, all within the bottom 100 layers that the
Lite0 classifiers keep frozen, so one backbone pass can serve both where a model is fed as the segmenter is) and the
input image itself at 112 x 112 for the outline, and gives P(lung) per pixel at 224 x 224. Only the
decoder is trained and shipped (``models/lungs/decoder.npz``, well under 5 MB); the backbone is the
converted ImageNet Lite0 every install already has.

Input: the 224 x 224 grayscale image, histogram-equalised, then ``(x - 127) / 128`` in three channels
(as ``finetuned`` v6 was fed; the shipped models since v13 blur first, so they cannot share it). Training (:func:`train_segmenter`) augments geometry
(image and mask together) and the encoding path (JPEG quality, down/up-sampling, blur, noise; the image
only), so the lungs found do not depend on how the file was encoded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers
from PIL import Image

from core.augment import encoding_path
from core.backbones import assign_named, efficientnet_lite0, named_weights
from core.checkpoints import Resumable, load_state, restore_counters, save_state
from core.data import find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.lungs import dice, find_mask_dir, load_masks
from core.preprocessing import InputSpec, to_model_input
from core.registry import lungs_files, sha256_file, verify_sha256, write_card
from core.runtime import cache_dir, compiled_forward, hardware

__all__ = ["TAPS", "SPEC", "build_taps", "build_decoder", "build_segmenter", "shipped_decoder", "augment_pair", "LungSegmenter",
           "train_segmenter", "main"]

log = logging.getLogger(__name__)

TAPS = ("block2_add", "block4_add", "block10_add")  # strides 4, 8, 16 of the ImageNet Lite0 backbone
SPEC = InputSpec(equalize=True)
THRESHOLD = 0.5


def build_taps(weights: str | None = "imagenet") -> keras.Model:
    """The ImageNet Lite0 backbone up to its stride-16 features, frozen: image -> the three taps."""
    backbone = efficientnet_lite0(weights=weights)
    backbone.trainable = False
    return keras.Model(backbone.input, [backbone.get_layer(n).output for n in TAPS], name="lite0_taps")


def _sep(x, filters, name):
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_decoder() -> keras.Model:
    """The trainable part: ``[t56, t28, t14, image]`` -> P(lung) ``(224, 224, 1)``."""
    t56, t28, t14 = (keras.Input(s, name=n) for s, n in [((56, 56, 24), "t56"), ((28, 28, 40), "t28"),
                                                         ((14, 14, 112), "t14")])
    image = keras.Input((224, 224, 3), name="image")
    x = layers.Conv2D(64, 1, name="d14_in")(t14)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="d14_up")(x)
    x = layers.Concatenate(name="d28_cat")([x, layers.Conv2D(32, 1, name="d28_skip")(t28)])
    x = _sep(x, 96, "d28")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="d28_up")(x)
    x = layers.Concatenate(name="d56_cat")([x, t56])
    x = _sep(x, 48, "d56")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="d56_up")(x)
    small = layers.AveragePooling2D(2, name="image_112")(image[..., :1])
    x = layers.Concatenate(name="d112_cat")([x, small])
    x = _sep(x, 24, "d112")
    x = layers.Conv2D(1, 1, name="lung_logit")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="lung_logit_224")(x)
    out = layers.Activation("sigmoid", name="lungs", dtype="float32")(x)
    return keras.Model([t56, t28, t14, image], out, name="lung_decoder")


def build_segmenter(decoder: keras.Model, taps: keras.Model | None = None) -> keras.Model:
    """Backbone taps and decoder as one model: normalised image -> P(lung) ``(224, 224, 1)``."""
    taps = taps or build_taps()
    image = keras.Input((224, 224, 3), name="image")
    return keras.Model(image, decoder([*taps(image), image]), name="lung_segmenter")


def _load_decoder(arrays: dict[str, np.ndarray]) -> keras.Model:
    decoder = build_decoder()
    assign_named(decoder, arrays, "Lung decoder weights")
    return decoder


def shipped_decoder(root: Path | None = None) -> keras.Model:
    """The shipped lung decoder (sha256-checked against its card), for a model that finds the lungs itself.

    Raises:
        FileNotFoundError: No segmenter is shipped.
        ModelIntegrityError: ``decoder.npz`` is not the file its card describes.
    """
    files = lungs_files(root)
    if not files.weights.exists():
        raise FileNotFoundError("No lung segmenter under models/lungs (run: python -m core.segmenter).")
    verify_sha256(files.weights, json.loads(files.card.read_text()).get("weights_sha256"), "The lung segmenter")
    with np.load(files.weights, allow_pickle=False) as f:
        return _load_decoder(dict(f))


class LungSegmenter:
    """The shipped segmenter (sha256-checked), compiled once: grayscale images -> P(lung) maps.

    Raises:
        FileNotFoundError: No segmenter is shipped (``python -m core.segmenter`` trains one).
        ModelIntegrityError: ``decoder.npz`` is not the file its card describes.
    """

    def __init__(self, root: Path | None = None):
        self.decoder = shipped_decoder(root)
        self.card = json.loads(lungs_files(root).card.read_text())
        self.taps = build_taps()
        self._forward = compiled_forward(build_segmenter(self.decoder, self.taps))
        self(np.zeros((1, 224, 224), np.uint8))  # warm up

    def head_for(self, model: keras.Model, spec: InputSpec) -> keras.Model | None:
        """The decoder, when ``model`` computes the very taps it reads (same input, same frozen ImageNet
        layers up to ``block10_add``: e.g. ``finetuned`` v6), so one pass can give the lungs too;
        else ``None``."""
        if spec != SPEC:
            return None
        for layer in self.taps.layers[1:]:
            try:
                theirs = model.get_layer(layer.name).get_weights()
            except ValueError:
                return None
            ours = layer.get_weights()
            if len(theirs) != len(ours) or not all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)):
                return None
        return self.decoder

    def __call__(self, gray: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """P(lung) ``(N, 224, 224)`` float32 for uint8 images ``(H, W)`` or ``(N, H, W)`` (224 x 224)."""
        gray = np.asarray(gray)
        batch = gray[None] if gray.ndim == 2 else gray
        return np.concatenate([self._forward(to_model_input(batch[i : i + batch_size], SPEC)).numpy()[..., 0]
                               for i in range(0, len(batch), batch_size)]) if len(batch) else np.zeros((0, 224, 224))

    def masks(self, gray: np.ndarray) -> np.ndarray:
        """Boolean lung masks ``(N, 224, 224)`` (P(lung) >= 0.5)."""
        return self(gray) >= THRESHOLD


def _affine(img: Image.Image, angle: float, scale: float, dx: float, dy: float, resample) -> Image.Image:
    """Rotate by ``angle`` degrees and scale about the centre, then shift by (dx, dy) pixels."""
    w, h = img.size
    a = np.deg2rad(angle)
    cos, sin = np.cos(a) / scale, np.sin(a) / scale
    cx, cy = w / 2, h / 2
    # output pixel (x, y) samples input (cos*(x-cx-dx) + sin*(y-cy-dy) + cx, -sin*(...) + cos*(...) + cy)
    coeffs = (cos, sin, cx - cos * (cx + dx) - sin * (cy + dy), -sin, cos, cy + sin * (cx + dx) - cos * (cy + dy))
    return img.transform((w, h), Image.AFFINE, coeffs, resample=resample, fillcolor=0)


def augment_pair(gray: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random view of a 224 x 224 image and its mask: geometry on both, the encoding path on the image."""
    img, m = Image.fromarray(gray), Image.fromarray(mask.astype(np.uint8) * 255)
    angle, scale = rng.uniform(-10, 10), rng.uniform(0.9, 1.1)
    dx, dy = rng.uniform(-0.08, 0.08, 2) * 224
    img, m = _affine(img, angle, scale, dx, dy, Image.BILINEAR), _affine(m, angle, scale, dx, dy, Image.BILINEAR)
    return encoding_path(np.asarray(img), rng), np.asarray(m) >= 128


def _taps_of(taps_model, gray: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    forward = compiled_forward(taps_model)
    parts = [[] for _ in TAPS]
    for i in range(0, len(gray), batch):
        for part, t in zip(parts, forward(to_model_input(gray[i : i + batch], SPEC)), strict=True):
            part.append(t.numpy().astype(np.float16))
    return [np.concatenate(p) for p in parts]


@keras.saving.register_keras_serializable(package="pneumonia")
def lung_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice loss."""
    bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    inter = keras.ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = keras.ops.sum(y_true, axis=(1, 2, 3)) + keras.ops.sum(y_pred, axis=(1, 2, 3))
    return bce + keras.ops.mean(1 - (2 * inter + 1) / (total + 1))


class _Views(keras.utils.PyDataset):
    """Each epoch, every training image as one of its precomputed views (clean or augmented)."""

    def __init__(self, views, batch_size=32, seed=0, **kw):
        super().__init__(**kw)
        self.views, self.batch_size = views, batch_size  # views: list of (taps, gray, masks)
        self.rng = np.random.default_rng(seed)
        self.n = len(views[0][1])
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(self.n / self.batch_size))

    def on_epoch_end(self):
        self.order = self.rng.permutation(self.n)
        self.pick = self.rng.integers(len(self.views), size=self.n)

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        out = [[] for _ in range(len(TAPS) + 2)]
        for j in idx:
            taps, gray, masks = self.views[self.pick[j]]
            for k in range(len(TAPS)):
                out[k].append(taps[k][j])
            out[-2].append(gray[j])
            out[-1].append(masks[j])
        x = [np.stack(o).astype(np.float32) for o in out[: len(TAPS)]]
        x.append(to_model_input(np.stack(out[-2]), SPEC))
        return tuple(x), np.stack(out[-1])[..., None].astype(np.float32)


def train_segmenter(data_dir=None, mask_dir=None, root: Path | None = None, views: int = 4, epochs: int = 30,
                    seed: int = 42, limit: int | None = None) -> dict:
    """Train the decoder on the ``train`` masks (validation held out by patient, as the models') and ship it.

    The frozen backbone's features are computed once per view (one clean view and ``views - 1``
    augmented ones per image); the decoder then trains on a random view of each image per epoch, with
    Adam, BCE + soft Dice, ReduceLROnPlateau and the best epoch on validation loss. ``limit`` keeps only
    the first images of each side (a quick check of the pipeline, not a model to ship).
    """
    started = time.time()
    data_dir, mask_dir = find_data_dir(data_dir), find_mask_dir(mask_dir)
    train_all, val_all = split_train_val(list_split(data_dir, "train"), 0.1, seed)
    m_tr, p_tr = load_masks(train_all, "train", mask_dir)
    m_va, p_va = load_masks(val_all, "train", mask_dir)
    train, val = [s for s, p in zip(train_all, p_tr, strict=True) if p], [s for s, p in zip(val_all, p_va, strict=True) if p]
    m_tr, m_va = m_tr[p_tr][:limit], m_va[p_va][:limit]
    train, val = train[:limit], val[:limit]
    x_tr, x_va = load_images(train), load_images(val)
    log.info("Segmenter: %d training, %d validation images with masks", len(train), len(val))
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    taps = build_taps()
    made = []
    for v in range(views):
        if v == 0:
            gray, masks = x_tr, m_tr
        else:
            pairs = [augment_pair(g, m, rng) for g, m in zip(x_tr, m_tr, strict=True)]
            gray, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        made.append((_taps_of(taps, gray), gray, masks))
        log.info("Segmenter: view %d of %d computed", v + 1, views)
    val_view = (_taps_of(taps, x_va), x_va, m_va)
    run_dir = cache_dir() / "runs" / f"lungs-{fingerprint(train + val)}-v{views}-s{seed}"  # one folder per setting
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir)
    if state.get("epoch", 0) > 0 and (run_dir / "last.keras").exists():
        decoder = keras.saving.load_model(run_dir / "last.keras")
        log.info("Segmenter: resuming after epoch %d", state["epoch"])
    else:
        decoder = build_decoder()
        decoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss=lung_loss)
    saved = state.get("callbacks") or [None, None]
    stoppers = [restore_counters(keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=3), saved[0]),
                restore_counters(keras.callbacks.EarlyStopping("val_loss", patience=6), saved[1])]
    earlier = state.setdefault("elapsed_s", 0.0)  # fitting time of interrupted calls
    decoder.fit(_Views(made, 32, seed + state.get("epoch", 0)), validation_data=_Views([val_view], 32, seed),
                epochs=epochs, initial_epoch=state.get("epoch", 0),
                callbacks=[*stoppers, Resumable(run_dir, decoder, state, stoppers)], verbose=2)
    save_state(run_dir, state)
    decoder = keras.saving.load_model(run_dir / "best.keras")
    hist = {k: [row[k] for row in state["history"]] for k in ("loss", "val_loss")}
    val_dice = dice(_predict(decoder, val_view) >= THRESHOLD, m_va)
    files = lungs_files(root)
    files.folder.mkdir(parents=True, exist_ok=True)
    np.savez(files.weights, **named_weights(decoder))
    card = {
        "name": "lungs",
        "kind": "lung segmenter",
        "method": "decoder (separable convolutions, bilinear upsampling) on the frozen ImageNet EfficientNet-Lite0 "
                  f"features {', '.join(TAPS)} and the image at 112 x 112; P(lung) per pixel at 224 x 224",
        "preprocessing": SPEC.to_dict(),
        "threshold": THRESHOLD,
        "parameters": int(decoder.count_params()),
        "training": {"views_per_image": views, "augmentation": "rotation ±10°, scale 0.9-1.1, shift ±8 % (image and "
                     "mask); resampling at 0.5-4x with bilinear/bicubic/Lanczos, blur σ 0.2-1.2, noise σ 0.5-4, JPEG "
                     "quality 30-95 (image only)", "loss": "binary cross-entropy + soft Dice", "optimizer": "Adam 1e-3",
                     "epochs_run": len(hist["loss"]), "best_epoch": state.get("best_epoch"), "history": hist},
        "seed": seed,
        "data": {"train_images": len(train), "val_images": len(val), "fingerprint": fingerprint(train + val),
                 "split": "10 % of official train held out by patient, stratified by class (seed 42), images with "
                          "a mask only"},
        "val_metrics": {"dice_mean": float(val_dice.mean()), "dice_p05": float(np.percentile(val_dice, 5))},
        "weights_file": files.weights.name,
        "weights_sha256": sha256_file(files.weights),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "training_time_s": round(time.time() - started + earlier, 1),
    }
    write_card(files.folder, card)
    log.info("Segmenter saved: validation Dice %.4f (5th percentile %.4f)", val_dice.mean(), np.percentile(val_dice, 5))
    return card


def _predict(decoder, view) -> np.ndarray:
    taps, gray, _ = view
    out = []
    for i in range(0, len(gray), 64):
        x = [t[i : i + 64].astype(np.float32) for t in taps] + [to_model_input(gray[i : i + 64], SPEC)]
        out.append(np.asarray(decoder(x, training=False))[..., 0])
    return np.concatenate(out)


def main(argv=None) -> int:
    """``python -m core.segmenter [--data-dir D] [--mask-dir M] [--views N] [--epochs N]``: train the lung
    segmenter on the ``train`` masks and ship it under ``models/lungs/`` (``python -m core.evaluate --lungs``
    then measures it on the ``test`` masks)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.segmenter", description=main.__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--mask-dir", help="lung masks (default: $PNEUMONIA_MASKS_DIR or lung_masks/ beside the data)")
    parser.add_argument("--views", type=int, default=4, help="views per training image: one clean, the rest augmented")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    card = train_segmenter(args.data_dir, args.mask_dir, views=args.views, epochs=args.epochs)
    print(f"validation Dice {card['val_metrics']['dice_mean']:.4f} (5th percentile {card['val_metrics']['dice_p05']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

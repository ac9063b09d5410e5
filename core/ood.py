"""Out-of-distribution guard: is this input like the training X-rays at all?

Pooled ImageNet EfficientNet-Lite0 features (1280-d) are projected onto their top principal
components, fitted on the training split; the score is the Mahalanobis distance in that space
plus the residual outside it (scaled by its mean training value). The cut-off is the quantile
of validation scores that lets ``pass_rate`` of validation X-rays through. What it needs is
stored in ``models/ood/guard.npz`` (small) with a card.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OODGuard", "fit_guard", "load_guard", "feature_extractor", "non_xray_images", "GUARD_DIR"]

log = logging.getLogger(__name__)
GUARD_DIR = "ood"


def feature_extractor(batch_size: int = 64):
    """A function from uint8 grayscale images ``(N, 224, 224)`` to ``(N, 1280)`` pooled ImageNet
    Lite0 features: normalised as Lite0 wants, run in batches through one compiled call."""
    import keras

    from core.backbones import efficientnet_lite0
    from core.gradcam import compiled_forward
    from core.preprocessing import InputSpec, to_model_input

    backbone = efficientnet_lite0(weights="imagenet")
    forward = compiled_forward(keras.Model(backbone.input, keras.layers.GlobalAveragePooling2D()(backbone.output)))
    spec = InputSpec()

    def extract(gray: np.ndarray) -> np.ndarray:
        return np.concatenate([forward(to_model_input(gray[i : i + batch_size], spec)).numpy()
                               for i in range(0, len(gray), batch_size)])

    return extract


@dataclass
class OODGuard:
    """Mahalanobis-in-PCA-space plus residual distance with a validation-chosen cut-off."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D)
    variances: np.ndarray  # (K,)
    residual_scale: float
    cutoff: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each ``(N, D)`` feature row from the training X-rays (higher = stranger)."""
        centred = np.atleast_2d(features) - self.mean
        proj = centred @ self.components.T
        mahalanobis = np.sum(proj**2 / self.variances, axis=1)
        residual = np.sum(centred**2, axis=1) - np.sum(proj**2, axis=1)
        return (mahalanobis + residual / self.residual_scale) / self.components.shape[0]

    def save(self, folder: Path, card: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "guard.npz", mean=self.mean, components=self.components,
                            variances=self.variances, residual_scale=self.residual_scale, cutoff=self.cutoff)
        from core.registry import sha256_file, write_card

        write_card(folder, {**card, "weights_file": "guard.npz", "weights_sha256": sha256_file(folder / "guard.npz")})


def fit_guard(train_features: np.ndarray, val_features: np.ndarray, n_components: int = 64,
              pass_rate: float = 0.995) -> OODGuard:
    """Fit on training features; set the cut-off so ``pass_rate`` of validation rows pass."""
    train_features = np.asarray(train_features, np.float64)
    mean = train_features.mean(axis=0)
    centred = train_features - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:n_components]
    variances = (s[:n_components] ** 2) / (len(train_features) - 1)
    proj = centred @ components.T
    residual = np.sum(centred**2, axis=1) - np.sum(proj**2, axis=1)
    guard = OODGuard(mean.astype(np.float32), components.astype(np.float32), variances.astype(np.float32),
                     float(residual.mean()), 0.0)
    guard.cutoff = float(np.quantile(guard.score(val_features), pass_rate))
    return guard


def load_guard(root: Path | None = None) -> OODGuard | None:
    """The shipped guard, or ``None`` when absent. Checks the sha256 in its card."""
    from core.registry import ModelIntegrityError, models_dir, sha256_file

    folder = (root or models_dir()) / GUARD_DIR
    if not (folder / "guard.npz").exists():
        return None
    card = json.loads((folder / "card.json").read_text())
    if sha256_file(folder / "guard.npz") != card.get("weights_sha256"):
        raise ModelIntegrityError("The out-of-distribution guard file does not match the sha256 in its card.")
    with np.load(folder / "guard.npz", allow_pickle=False) as f:
        return OODGuard(f["mean"], f["components"], f["variances"], float(f["residual_scale"]), float(f["cutoff"]))


def non_xray_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Things that are not chest X-rays, as 2-D uint8 arrays: photographs (scikit-image),
    noise, gradients and text. Used to measure how many the guard refuses."""
    from PIL import Image, ImageDraw
    from skimage import data

    rng = np.random.default_rng(seed)
    out = {}
    for name in ("chelsea", "astronaut", "coffee", "camera", "rocket", "horse", "moon", "page", "text", "brick",
                 "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "clock"):
        img = np.asarray(getattr(data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        out[f"photo:{name}"] = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("L"))
    out["noise:uniform"] = (rng.random((300, 300)) * 255).astype(np.uint8)
    out["noise:gaussian"] = np.clip(rng.normal(128, 40, (300, 300)), 0, 255).astype(np.uint8)
    out["noise:salt-pepper"] = (rng.random((300, 300)) > 0.5).astype(np.uint8) * 255
    ramp = np.linspace(0, 255, 300)
    out["gradient:horizontal"] = np.tile(ramp, (300, 1)).astype(np.uint8)
    out["gradient:vertical"] = np.tile(ramp, (300, 1)).T.astype(np.uint8).copy()
    out["gradient:radial"] = (255 * np.hypot(*np.mgrid[-1:1:300j, -1:1:300j]) / np.sqrt(2)).astype(np.uint8)
    for name, (bg, fg) in {"text:document": (255, 0), "text:inverted": (0, 255)}.items():
        canvas = Image.new("L", (400, 400), bg)
        draw = ImageDraw.Draw(canvas)
        for i in range(20):
            draw.text((10, 10 + 19 * i), "Radiology report: no acute findings. " * 2, fill=fg)
        out[name] = np.asarray(canvas)
    canvas = Image.new("L", (400, 400), 0)
    ImageDraw.Draw(canvas).text((140, 190), "CHEST X-RAY", fill=255)
    out["text:label"] = np.asarray(canvas)
    return out


def report(data_dir=None) -> dict:
    """Share of official test X-rays that pass and of non-X-ray images that are refused."""
    from core.data import find_data_dir, list_split, load_images
    from core.preprocessing import squash

    guard, extract = load_guard(), feature_extractor()
    scores = guard.score(extract(load_images(list_split(find_data_dir(data_dir), "test"))))
    named = non_xray_images()
    others = dict(zip(named, map(float, guard.score(extract(np.stack([squash(v) for v in named.values()]))))))
    return {
        "cutoff": guard.cutoff,
        "test_xrays": int(len(scores)),
        "test_xrays_passing": float(np.mean(scores <= guard.cutoff)),
        "non_xray_images": len(others),
        "non_xray_refused": float(np.mean([s > guard.cutoff for s in others.values()])),
        "non_xray_scores": others,
        "lowest_non_xray_score": min(others.values()),
        "highest_test_xray_score": float(scores.max()),
    }


def main(argv=None) -> int:
    """``python -m core.ood [--data-dir D] [--report]``: fit the guard on the training split and
    save it; with ``--report``, measure it instead (writes ``models/ood/report.json``)."""
    import argparse

    from core.data import find_data_dir, fingerprint, list_split, load_images, split_train_val
    from core.preprocessing import InputSpec
    from core.registry import models_dir

    parser = argparse.ArgumentParser(prog="python -m core.ood", description=main.__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--report", action="store_true", help="measure the shipped guard instead of fitting it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.report:
        result = report(args.data_dir)
        (models_dir() / GUARD_DIR / "report.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"official test X-rays passing: {result['test_xrays_passing']:.1%} of {result['test_xrays']}; "
              f"non-X-ray images refused: {result['non_xray_refused']:.1%} of {result['non_xray_images']}")
        return 0
    train, val = split_train_val(list_split(find_data_dir(args.data_dir), "train"), 0.1, args.seed)
    extract = feature_extractor()
    guard = fit_guard(extract(load_images(train)), extract(load_images(val)))
    card = {
        "name": "ood",
        "kind": "out-of-distribution guard",
        "method": "PCA (64 components) Mahalanobis distance + scaled residual on pooled ImageNet "
                  "EfficientNet-Lite0 features, fitted on the training split",
        "cutoff_rule": "99.5th percentile of validation-split scores (99.5 % of validation X-rays pass)",
        "cutoff": guard.cutoff,
        "preprocessing": InputSpec().to_dict(),
        "seed": args.seed,
        "data": {"train_images": len(train), "val_images": len(val), "fingerprint": fingerprint(train + val)},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    guard.save(models_dir() / GUARD_DIR, card)
    log.info("Guard saved: cut-off %.3f", guard.cutoff)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scope check: is this X-ray from the population the models were trained on (children aged one to five)?

An adult chest film is the likeliest wrong upload, and no adult training set ships here, so the check is
one-class: it models the pediatric training X-rays only and flags what lies far from them. It reads the
image statistics of the ImageNet EfficientNet-Lite0 layers the guard already runs. For each of
:data:`LAYERS` it takes the per-channel mean and standard deviation over the image. These show texture
and scale (bone, soft tissue, how big the structures are in the frame) below the pooled top features the
guard reads.

Each statistic gets a Mahalanobis distance to the training images (Ledoit-Wolf shrinkage, standardised
features, divided by the dimension), scaled by its validation median. Which statistics are used is decided
on pediatric data alone. A statistic is kept when no more than 1 % of each served variant of the
validation images (:data:`core.augment.VARIANTS`) lies beyond its own 99.5th validation percentile: a
statistic that reacts to the file's encoding would withhold re-encoded pediatric X-rays. The score is
the mean over the kept statistics. The cut-off is the 99.5th percentile over the validation images and
all their variants. Nothing adult is used to fit or choose it: ``shared/data/adult_samples`` only tests it.

``python -m core.scope_fit`` fits it (a few minutes on two cores) and writes ``models/ood/scope.npz`` and its
record in ``models/ood/card.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.covariance import LedoitWolf

from core.registry import guard_files, verify_sha256

__all__ = ["LAYERS", "STATISTICS", "SCOPE_WARNING", "ScopeModel", "statistics_outputs", "fit_scope", "load_scope"]

log = logging.getLogger(__name__)

LAYERS = ("block4_add", "block7_add", "block10_add", "block14_add")
"""Backbone layers whose per-channel statistics the check reads (28, 14, 14 and 7 pixels a side)."""

STATISTICS = tuple(f"{layer}.{stat}" for layer in LAYERS for stat in ("mean", "std"))

SCOPE_WARNING = (
    "This X-ray looks unlike the chest films of children aged one to five that the models were trained on "
    "(scope score {score:.2f} > cut-off {cutoff:.2f}). An adult's film is the likeliest reason; the models "
    "are not meant for it."
)

PASS_RATE = 0.995
MAX_VARIANT_RATE = 0.01


def statistics_outputs(backbone: keras.Model) -> list:
    """The per-channel mean and standard deviation of each of :data:`LAYERS`, in :data:`STATISTICS` order."""
    outputs = []
    for layer in LAYERS:
        x = backbone.get_layer(layer).output
        outputs += [keras.ops.mean(x, axis=(1, 2)), keras.ops.std(x, axis=(1, 2))]
    return outputs


@dataclass
class ScopeModel:
    """The kept statistics' training means, scales, shrunk precisions and validation medians, and the cut-off."""

    names: list[str]
    means: list[np.ndarray]
    scales: list[np.ndarray]
    precisions: list[np.ndarray]
    medians: list[float]
    cutoff: float

    def distances(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        """``(len(names), N)``: each kept statistic's distance to the training images over its validation median."""
        rows = []
        for name, mu, sd, prec, med in zip(self.names, self.means, self.scales, self.precisions, self.medians,
                                           strict=True):
            z = (np.asarray(stats[name], np.float64) - mu) / sd
            rows.append(np.einsum("ij,jk,ik->i", z, prec, z) / z.shape[1] / med)
        return np.array(rows)

    def score(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        """The scope score of each image (higher = further from the pediatric training X-rays)."""
        return self.distances(stats).mean(axis=0)

    def save(self, path: Path) -> None:
        arrays = {"names": np.array(self.names), "medians": np.array(self.medians), "cutoff": np.array(self.cutoff)}
        for i in range(len(self.names)):
            arrays |= {f"mean_{i}": self.means[i], f"scale_{i}": self.scales[i],
                       f"precision_{i}": self.precisions[i].astype(np.float32)}
        np.savez_compressed(path, **arrays)


def _fit_one(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train = np.asarray(train, np.float64)
    mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-6
    return mu, sd, LedoitWolf().fit((train - mu) / sd).precision_


def fit_scope(train: dict[str, np.ndarray], val_views: list[dict[str, np.ndarray]],
              pass_rate: float = PASS_RATE, max_variant_rate: float = MAX_VARIANT_RATE) -> tuple[ScopeModel, dict]:
    """Fit on the training images' statistics and choose, on the validation images (``val_views[0]``) and their
    served variants (the other views), the statistics to keep and the cut-off (module docstring).

    Returns:
        The model and a record of the choice (each statistic's variant rates, kept or not).
    """
    names, means, scales, precisions, medians, choice = [], [], [], [], [], {}
    for name in train:
        mu, sd, prec = _fit_one(train[name])
        one = ScopeModel([name], [mu], [sd], [prec], [1.0], 0.0)
        copies = one.distances(val_views[0])[0]
        median = float(np.median(copies))
        own_cut = float(np.quantile(copies, pass_rate))
        rates = [float(np.mean(one.distances(v)[0] > own_cut)) for v in val_views[1:]]
        keep = all(r <= max_variant_rate for r in rates)
        choice[name] = {"variant_rates_beyond_own_cutoff": [round(r, 4) for r in rates], "kept": keep}
        if keep:
            names.append(name)
            means.append(mu)
            scales.append(sd)
            precisions.append(prec)
            medians.append(median)
    if not names:
        raise ValueError("No statistic is stable under the served variants; the scope check cannot be fitted.")
    model = ScopeModel(names, means, scales, precisions, medians, 0.0)
    model.cutoff = float(np.quantile(np.concatenate([model.score(v) for v in val_views]), pass_rate))
    return model, choice


def load_scope(root: Path | None = None) -> ScopeModel | None:
    """The shipped scope check (``models/ood/scope.npz``, sha256-checked against the guard's card), or ``None``."""
    files = guard_files(root)
    path = files.folder / "scope.npz"
    if not path.exists():
        return None
    record = json.loads(files.card.read_text()).get("scope") or {}
    verify_sha256(path, record.get("weights_sha256"), "The scope check")
    with np.load(path, allow_pickle=False) as f:
        n = len(f["names"])
        return ScopeModel([str(s) for s in f["names"]], [f[f"mean_{i}"] for i in range(n)],
                          [f[f"scale_{i}"] for i in range(n)], [f[f"precision_{i}"].astype(np.float64) for i in range(n)],
                          [float(m) for m in f["medians"]], float(f["cutoff"]))

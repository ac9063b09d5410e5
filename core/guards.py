"""The out-of-distribution guard's two scorers: fitted on pooled features, scored, saved and loaded.

:class:`OODGuard` projects the features onto their top principal components and scores the Mahalanobis distance in
that space plus the residual outside it (scaled by its mean training value); :class:`KNNGuard` (checks v5) scores
the distance to the 10th nearest training row among unit-length features. The cut-off is the quantile of validation
scores that lets ``pass_rate`` of validation X-rays through. What a guard needs is stored in ``models/ood/guard.npz``
with a card, which names the scorer. Serving and fitting on images are in :mod:`core.ood`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.registry import guard_files, sha256_file, verify_sha256, write_card

__all__ = ["OODGuard", "KNNGuard", "fit_guard", "fit_knn_guard", "load_guard"]


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
        """Write ``guard.npz`` and its card; the scope check's record in an earlier card is kept (it does not
        depend on the guard, and its file stays)."""
        _save_guard(folder, card, mean=self.mean, components=self.components, variances=self.variances,
                    residual_scale=self.residual_scale, cutoff=self.cutoff)


@dataclass
class KNNGuard:
    """Distance to the ``k``-th nearest training X-ray among unit-length pooled features (checks v5,
    docs/scope.md; Sun et al., ICML 2022): how densely the training X-rays lie around an image, with no
    shape assumed. The training rows are kept projected on their top principal components, in float16."""

    mean: np.ndarray  # (D,) mean of the unit-length training rows
    components: np.ndarray  # (K, D)
    bank: np.ndarray  # (N, K) the training rows, centred and projected
    k: int
    cutoff: float

    def __post_init__(self):
        self._bank = np.asarray(self.bank, np.float32)
        self._bank_sq = np.sum(self._bank**2, axis=1)

    def project(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` feature rows scaled to unit length, centred and projected: ``(N, K)``."""
        f = np.atleast_2d(np.asarray(features, np.float32))
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return (f - self.mean) @ np.asarray(self.components, np.float32).T

    def score(self, features: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Distance of each ``(N, D)`` feature row to its ``k``-th nearest training row (higher = stranger)."""
        q = self.project(features)
        out = np.empty(len(q), np.float32)
        for i in range(0, len(q), chunk):
            part = q[i : i + chunk]
            d2 = np.sum(part**2, axis=1)[:, None] - 2.0 * part @ self._bank.T + self._bank_sq[None]
            out[i : i + chunk] = np.sqrt(np.maximum(np.partition(d2, self.k - 1, axis=1)[:, self.k - 1], 0.0))
        return out

    def save(self, folder: Path, card: dict) -> None:
        """Write ``guard.npz`` and its card, as :meth:`OODGuard.save`."""
        _save_guard(folder, card, method="knn", mean=self.mean, components=self.components,
                    bank=np.asarray(self.bank, np.float16), k=self.k, cutoff=self.cutoff)


def _save_guard(folder: Path, card: dict, **arrays) -> None:
    """``guard.npz`` from ``arrays`` and its card; the scope check's record in an earlier card is kept (it does not
    depend on the guard, and its file stays)."""
    folder.mkdir(parents=True, exist_ok=True)
    earlier = folder / "card.json"
    if earlier.exists() and "scope" in (old := json.loads(earlier.read_text())) and "scope" not in card:
        card = {**card, "scope": old["scope"]}
    np.savez_compressed(folder / "guard.npz", **arrays)
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


def fit_knn_guard(train_features: np.ndarray, val_features: np.ndarray, k: int = 10, n_components: int = 128,
                  pass_rate: float = 0.995) -> KNNGuard:
    """Checks v5: the training rows scaled to unit length, centred and projected on their top ``n_components``
    principal components (kept in float16); cut-off so ``pass_rate`` of validation rows pass."""
    f = np.asarray(train_features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    mean = f.mean(axis=0)
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    components = vt[:n_components].astype(np.float32)
    bank = ((f - mean) @ vt[:n_components].T).astype(np.float16)
    guard = KNNGuard(mean.astype(np.float32), components, bank, int(k), 0.0)
    guard.cutoff = float(np.quantile(guard.score(val_features), pass_rate))
    return guard


def load_guard(root: Path | None = None) -> OODGuard | KNNGuard | None:
    """The shipped guard (either scorer, as its file says), or ``None`` when absent. Checks the sha256 in its card.

    Raises:
        ModelIntegrityError: ``guard.npz`` is not the file its card describes.
    """
    files = guard_files(root)
    if not files.weights.exists():
        return None
    card = json.loads(files.card.read_text())
    verify_sha256(files.weights, card.get("weights_sha256"), "The out-of-distribution guard")
    with np.load(files.weights, allow_pickle=False) as f:
        if "bank" in f:
            return KNNGuard(f["mean"], f["components"], f["bank"], int(f["k"]), float(f["cutoff"]))
        return OODGuard(f["mean"], f["components"], f["variances"], float(f["residual_scale"]), float(f["cutoff"]))

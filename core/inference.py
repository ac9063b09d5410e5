"""The serving path shared by the app, the CLI and evaluation.

bytes -> :func:`core.preprocessing.load_grayscale` -> model input -> one compiled call
(:class:`core.gradcam.GradCam`) giving P(pneumonia) and the signed Grad-CAM map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.gradcam import GradCam, class_map, normalise, upsample
from core.preprocessing import InputSpec, load_grayscale, to_model_input
from core.registry import load_card, load_keras_model

__all__ = ["Diagnosis", "LoadedModel", "load_model", "label_for", "OODCheck", "OODResult", "OOD_WARNING"]

OOD_WARNING = (
    "This image does not look like the pediatric chest X-rays the models were trained on "
    "(out-of-distribution score {score:.2f} > cut-off {cutoff:.2f}); its diagnosis is not trustworthy."
)


@dataclass(frozen=True)
class Diagnosis:
    """One model's reading of one image."""

    model: str
    probability: float  # P(pneumonia)
    threshold: float
    signed_cam: np.ndarray  # (h, w); positive = evidence for PNEUMONIA

    @property
    def label(self) -> str:
        return label_for(self.probability, self.threshold)

    def heatmap(self, size: tuple[int, int], target: str = "PNEUMONIA") -> np.ndarray:
        """Grad-CAM for ``target`` upsampled to ``size`` and scaled to [0, 1]."""
        return normalise(upsample(class_map(self.signed_cam, target), size))


def label_for(probability: float, threshold: float) -> str:
    return "PNEUMONIA" if probability >= threshold else "NORMAL"


class LoadedModel:
    """A shipped model with its card, input spec and compiled Grad-CAM, warmed up once."""

    def __init__(self, name: str, root: Path | None = None):
        self.name = name
        self.card = load_card(name, root)
        self.spec = InputSpec.from_card(self.card)
        self.threshold = float(self.card["threshold"])
        self.keras_model = load_keras_model(name, root)
        self.explainer = GradCam(self.keras_model, self.card["gradcam_layer"])
        self.explainer.warm_up()

    def diagnose_gray(self, gray: np.ndarray, batch_size: int = 32) -> list[Diagnosis]:
        """Diagnose uint8 grayscale image(s) ``(H, W)`` or ``(N, H, W)``, in batches."""
        gray = np.asarray(gray)
        batch = gray[None] if gray.ndim == 2 else gray
        out: list[Diagnosis] = []
        for start in range(0, len(batch), batch_size):
            probs, signed = self.explainer(to_model_input(batch[start : start + batch_size], self.spec))
            out += [Diagnosis(self.name, float(p), self.threshold, s) for p, s in zip(probs, signed, strict=False)]
        return out

    def diagnose_bytes(self, data: bytes, filename: str | None = None) -> Diagnosis:
        """Decode, preprocess and diagnose one uploaded file (raises ``ImageDecodeError``)."""
        return self.diagnose_gray(load_grayscale(data, filename=filename))[0]


def load_model(name: str, root: Path | None = None) -> LoadedModel:
    """Load a shipped model by name (checks sha256, safe mode, warms up)."""
    return LoadedModel(name, root)


@dataclass(frozen=True)
class OODResult:
    """Whether an image looks unlike the training X-rays."""

    score: float
    cutoff: float

    @property
    def flagged(self) -> bool:
        return self.score > self.cutoff

    @property
    def warning(self) -> str:
        return OOD_WARNING.format(score=self.score, cutoff=self.cutoff)


class OODCheck:
    """The shipped out-of-distribution guard with its compiled feature extractor."""

    def __init__(self, root: Path | None = None):
        from core.ood import feature_extractor, load_guard

        self.guard = load_guard(root)
        if self.guard is None:
            raise FileNotFoundError("No out-of-distribution guard under models/ood (run: python -m core.ood).")
        self._features = feature_extractor()
        self._features(np.zeros((1, 224, 224), np.uint8))  # warm up

    def __call__(self, gray: np.ndarray) -> list[OODResult]:
        """Check uint8 grayscale image(s) ``(H, W)`` or ``(N, H, W)`` (224 x 224)."""
        batch = gray[None] if gray.ndim == 2 else gray
        scores = self.guard.score(self._features(batch))
        return [OODResult(float(s), self.guard.cutoff) for s in scores]

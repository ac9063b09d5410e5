"""The model card: one typed record, written by training and read by everything else.

A card lives beside its weights as ``models/<name>/card.json`` (see :mod:`core.registry`).
It holds what a reader needs to trust or reproduce the model: input and preprocessing, the
decision threshold and the validation rule that chose it, the Grad-CAM layer, the full recipe,
the data it saw, validation metrics, the weights' sha256, when, where and how long it trained,
and what it is for and not for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from core import LABELS
from core.evaluation import apply_temperature
from core.preprocessing import InputSpec

__all__ = ["ModelCard", "DISCLAIMER", "INTENDED_USE", "LIMITATIONS", "THRESHOLD_RULES", "RECOMMENDATION_RULE",
           "assemble_card", "recommended"]

DISCLAIMER = (
    "Research and teaching tool for pediatric AP chest X-rays from one centre. "
    "**Not a medical device**: it must not be used to diagnose or treat patients."
)
"""The notice every page and every card carries (the one place it is written)."""

INTENDED_USE = "Research and teaching on pediatric AP chest X-rays (ages 1-5, one centre). Not a medical device."

LIMITATIONS = [
    "Trained on pediatric (ages 1-5) anterior-posterior chest X-rays from one centre in Guangzhou "
    "(Kermany et al., Cell 2018).",
    "Not validated on adults, other views, other hospitals or other scanners.",
    "Validation accuracy overstates test accuracy on this data: the official test set is shifted from the "
    "training set.",
]

THRESHOLD_RULES = {
    "youden": "maximise sensitivity + specificity - 1 on the validation split",
    "calibrated_youden": ("sit where the probability calibrated on the validation split equals that split's share of "
                          "pneumonia: the point where sensitivity + specificity - 1 is largest for calibrated "
                          "probabilities, estimated from every validation image (docs/lungs.md, section 20)"),
    "fixed": "0.5",
}

RECOMMENDATION_RULE = (
    "The dashboard leads with the shipped model whose validation ROC AUC (val_metrics.roc_auc: the patient-level "
    "validation split, never the test set) is highest; a tie goes to the model with fewer parameters. The other "
    "models are shown beside it with whether they agree."
)
"""Which model Diagnose leads with, written into every card (``recommendation``)."""

_OPTIONAL = ("soup", "wise_ft", "consistency", "calibration", "gradcam_method")  # written only when the model has them


@dataclass(frozen=True)
class ModelCard:
    """A shipped model's card (``card.json``), field for field."""

    name: str
    kind: str  # baseline | transfer | finetuned
    backbone: str | None
    input_shape: list[int]
    preprocessing: dict[str, Any]
    threshold: float
    threshold_rule: str
    gradcam_layer: str
    parameters: int
    config: dict[str, Any]
    seed: int
    data: dict[str, Any]
    val_metrics: dict[str, Any]
    weights_sha256: str
    date: str
    hardware: str
    training_time_s: float
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    output: str = "P(PNEUMONIA), sigmoid"
    trainable_parameters_in_training: int | None = None
    initialised_from: dict[str, Any] | None = None
    soup: dict[str, Any] | None = None
    wise_ft: dict[str, Any] | None = None
    consistency: dict[str, Any] | None = None  # v14: the head's encoding-consistency penalty and its choice
    best_epoch: int | list[int] | None = None
    epochs_run: int | None = None
    weights_file: str = "model.keras"
    intended_use: str = INTENDED_USE
    limitations: list[str] = field(default_factory=lambda: list(LIMITATIONS))
    gradcam_method: str | None = None  # "hirescam" where the map is not Grad-CAM (core.gradcam.GradCam)
    calibration: dict[str, Any] | None = None  # temperature scaling fitted on validation (core.calibration)
    recommendation: dict[str, Any] = field(default_factory=lambda: {"rule": RECOMMENDATION_RULE,
                                                                    "score": "val_metrics.roc_auc"})

    @property
    def spec(self) -> InputSpec:
        """How this model wants its input."""
        return InputSpec.from_card(self)

    @property
    def temperature(self) -> float:
        """The calibration temperature (1 when the card has none)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    @property
    def decision_threshold(self) -> float:
        """The card threshold on the calibrated probabilities serving shows (the same labels: calibration keeps
        the order); the threshold itself was chosen on the uncalibrated validation probabilities."""
        return float(apply_temperature(self.threshold, self.temperature)) if self.calibration else float(self.threshold)

    @property
    def map_method(self) -> str:
        """How this model's heatmap is made: ``"gradcam"`` or ``"hirescam"`` (:class:`core.gradcam.GradCam`)."""
        return self.gradcam_method or "gradcam"

    @property
    def map_name(self) -> str:
        """The heatmap's name for captions: "Grad-CAM" or "HiResCAM"."""
        return "HiResCAM" if self.map_method == "hirescam" else "Grad-CAM"

    @property
    def notes(self) -> list[str]:
        """The recipe's notes (prose)."""
        return list(self.config.get("notes", []))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Model card has fields this version does not know: {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, in the order the fields are declared in :data:`_ORDER`."""
        values = dataclasses.asdict(self)
        return {k: values[k] for k in _ORDER if not (k in _OPTIONAL and values[k] is None)}


_ORDER = (
    "name", "kind", "backbone", "input_shape", "preprocessing", "labels", "output", "threshold", "threshold_rule",
    "gradcam_layer", "gradcam_method", "parameters", "trainable_parameters_in_training", "config", "initialised_from", "seed", "soup",
    "wise_ft", "consistency", "data", "best_epoch", "epochs_run", "val_metrics", "calibration", "weights_file", "weights_sha256", "date",
    "hardware", "training_time_s", "intended_use", "limitations", "recommendation",
)


def recommended(cards: list[ModelCard]) -> str | None:
    """The model :data:`RECOMMENDATION_RULE` picks among ``cards`` (``None`` for none)."""
    if not cards:
        return None
    return min(cards, key=lambda c: (-float(c.val_metrics["roc_auc"]), c.parameters, c.name)).name


def assemble_card(*, recipe, spec: InputSpec, gradcam_layer: str, parameters: int, trainable_parameters: int,
                  threshold: float, val_metrics: dict, data: dict, history_len: int, best_epoch,
                  weights_sha256: str, hardware: str, training_time_s: float, init_sha: str | None = None,
                  soup: dict | None = None, wise_ft: dict | None = None, calibration: dict | None = None,
                  gradcam_method: str | None = None, consistency: dict | None = None) -> ModelCard:
    """The card of a model a :class:`core.config.Recipe` just produced.

    Args:
        recipe: The recipe trained.
        spec: The input it was trained on.
        gradcam_layer: The layer Grad-CAM explains.
        gradcam_method: ``"hirescam"`` where the map is HiResCAM rather than Grad-CAM.
        parameters: All parameters of the shipped model.
        trainable_parameters: Those that trained.
        threshold: The decision threshold chosen on validation by ``recipe.threshold_rule``.
        val_metrics: Validation ROC AUC and the metrics at ``threshold``.
        data: Image and patient counts, data fingerprint and how the split was made.
        history_len: Epochs run (summed over a soup's runs).
        best_epoch: The best epoch (one per run for a soup).
        weights_sha256: Of the written ``model.keras``.
        hardware: Where it trained (:func:`core.runtime.hardware`).
        training_time_s: All time spent, interrupted calls included.
        init_sha: sha256 of the stage-1 model it started from, if any.
        soup: The weight-average record, if any.
        wise_ft: The WiSE-FT record, if any.
        calibration: The temperature-scaling record (:func:`core.calibration.calibration_record`), if any.
        consistency: The head's encoding-consistency record (penalty grid, validation AUCs, the chosen one), if any.
    """
    return ModelCard(
        name=recipe.name,
        kind=recipe.kind,
        backbone=recipe.backbone,
        input_shape=[*recipe.input_size, spec.channels],
        preprocessing=spec.to_dict(),
        threshold=threshold,
        threshold_rule=THRESHOLD_RULES[recipe.threshold_rule],
        gradcam_layer=gradcam_layer,
        gradcam_method=gradcam_method,
        parameters=parameters,
        trainable_parameters_in_training=trainable_parameters,
        config=recipe.to_dict(),
        initialised_from={"model": recipe.init_from, "sha256": init_sha} if recipe.init_from else None,
        seed=recipe.seed,
        soup=soup,
        wise_ft=wise_ft,
        consistency=consistency,
        data=data,
        best_epoch=best_epoch,
        epochs_run=history_len,
        val_metrics=val_metrics,
        weights_sha256=weights_sha256,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        hardware=hardware,
        training_time_s=round(training_time_s, 1),
        calibration=calibration,
    )

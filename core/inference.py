"""The one serving path: read an upload, then check and score a batch of images with any models.

Every caller (the CLI, the Diagnose, Compare and Misclassified pages, evaluation) goes through
:func:`read_upload` and :func:`score`::

    bytes -> read_upload -> Upload.gray (224 x 224 uint8)
          -> score(grays, models, guard, lungs) -> [ImageReading(ood, {model: Diagnosis}, lungs)]

Each model computes P(pneumonia) and its signed Grad-CAM map in one compiled call
(:class:`core.gradcam.GradCam`); the guard (:class:`core.ood.OODCheck`) says whether an image
looks like the training X-rays, and the lung segmenter (:class:`core.segmenter.LungSegmenter`) where
the lungs are; an image without a plausible pair of lungs is flagged like any out-of-distribution
image. Choosing a map's class and drawing it are left to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.calibration import apply_temperature
from core.dicom import Stated, stated
from core.errors import ImageDecodeError
from core.gradcam import GradCam, class_map, normalise, upsample
from core.lungs import implausible_lungs, lung_energy
from core.ood import OODCheck, OODResult, stated_age_note, stated_size_note
from core.preprocessing import decode_full, squash, to_model_input
from core.rawimage import RawImage
from core.registry import load_card, load_keras_model, lungs_files
from core.segmenter import TAPS, LungSegmenter
from core.segmenter import THRESHOLD as LUNG_THRESHOLD

__all__ = [
    "Diagnosis",
    "LoadedModel",
    "load_model",
    "label_for",
    "BORDERLINE",
    "is_borderline",
    "BORDERLINE_NOTE",
    "Upload",
    "read_upload",
    "read_file",
    "ImageReading",
    "score",
]


@dataclass(frozen=True)
class Diagnosis:
    """One model's reading of one image."""

    model: str
    probability: float  # P(pneumonia)
    threshold: float
    signed_cam: np.ndarray  # (h, w); positive = evidence for PNEUMONIA
    lungs: np.ndarray | None = None  # (224, 224) bool, when the model's pass also found the lungs

    @property
    def label(self) -> str:
        return label_for(self.probability, self.threshold)

    def heatmap(self, size: tuple[int, int], target: str = "PNEUMONIA", by_evidence: bool = False) -> np.ndarray:
        """Grad-CAM for ``target`` upsampled to ``size``, scaled to [0, 1] by its own maximum; with
        ``by_evidence``, then multiplied by the model's probability of ``target``, so that a weak finding
        looks weak (a map normalised per image makes a 9 % image look as hot as a 98 % one)."""
        heat = normalise(upsample(class_map(self.signed_cam, target), size))
        if by_evidence:
            heat = heat * (self.probability if target == "PNEUMONIA" else 1.0 - self.probability)
        return heat


def label_for(probability: float, threshold: float) -> str:
    return "PNEUMONIA" if probability >= threshold else "NORMAL"


BORDERLINE = 0.02
"""How near its threshold a probability is borderline: issue 13's bar on how far a file's encoding may move the answer
(mean |ΔP|). On the test set the labels that changed when the same X-ray came as another file lay a median 0.001-0.022
from the threshold (``flipped_distance_to_threshold`` in ``models/invariance.json``; docs/lungs.md §1)."""

BORDERLINE_NOTE = ("Borderline: P lies within {margin:.2f} of the threshold, as close as the same X-ray saved as another "
                   "file can move it; most labels that changed with the file's encoding on the test set lay this close. "
                   "Treat this label as uncertain.")


def is_borderline(probability: float, threshold: float, margin: float = BORDERLINE) -> bool:
    """Whether ``probability`` lies less than ``margin`` from ``threshold``, where the label is uncertain."""
    return abs(probability - threshold) < margin


class LoadedModel:
    """A shipped model with its card, input spec and compiled Grad-CAM, warmed up once.

    Given the lung segmenter, a model that shares its backbone taps and input (an unblurred, equalised Lite0 model
    such as ``finetuned`` v6; since v13 no shipped model is) also finds the lungs in the same compiled call
    (``gives_lungs``).
    """

    def __init__(self, name: str, root: Path | None = None, lungs: LungSegmenter | None = None):
        self.name = name
        self.card = load_card(name, root)
        self.spec = self.card.spec
        # probabilities are shown calibrated (core.calibration; T = 1 without a calibration in the card), and the
        # card threshold is mapped onto them, so every label is what the card threshold gives
        self.temperature = self.card.temperature
        self.threshold = self.card.decision_threshold
        self.keras_model = load_keras_model(name, root)
        # a lung-focused model sees only the lungs: it needs their mask before its own pass
        self.needs_lungs = bool(self.spec.lung_margin)
        if self.needs_lungs and lungs is None:
            lungs = LungSegmenter(root) if lungs_files(root).weights.exists() else LungSegmenter()
        self.segmenter = lungs if self.needs_lungs else None
        head = lungs.head_for(self.keras_model, self.spec) if lungs is not None and not self.needs_lungs else None
        self.gives_lungs = head is not None
        self.explainer = GradCam(self.keras_model, self.card.gradcam_layer, head, TAPS if head is not None else (),
                                 method=self.card.map_method)
        self.explainer.warm_up()

    def diagnose_gray(self, gray: np.ndarray, batch_size: int = 32, lungs: bool = False,
                      masks: np.ndarray | None = None) -> list[Diagnosis]:
        """Diagnose uint8 grayscale image(s) ``(H, W)`` or ``(N, H, W)``, in batches; with ``lungs`` (and
        ``gives_lungs``) each diagnosis also carries the lungs found in the same call. A model that
        ``needs_lungs`` takes their masks (``(N, 224, 224)`` booleans), or finds them with its segmenter."""
        gray = np.asarray(gray)
        batch = gray[None] if gray.ndim == 2 else gray
        if self.needs_lungs and masks is None:
            masks = self.segmenter.masks(batch)
        run = self.explainer.with_head if lungs and self.gives_lungs else self.explainer
        out: list[Diagnosis] = []
        for start in range(0, len(batch), batch_size):
            part = slice(start, start + batch_size)
            x = to_model_input(batch[part], self.spec, None if masks is None else np.asarray(masks)[part])
            probs, signed, *found = run(x)
            # the lungs this pass found (a model that gives them); never the masks it was given, which the
            # later batches still need
            given = found[0] >= LUNG_THRESHOLD if found and found[0] is not None else [None] * len(probs)
            probs = apply_temperature(np.asarray(probs, np.float64), self.temperature) if self.temperature != 1.0 \
                else probs
            out += [Diagnosis(self.name, float(p), self.threshold, s, m) for p, s, m in zip(probs, signed, given,
                                                                                            strict=True)]
        return out

    def diagnose_bytes(self, data: bytes, filename: str | None = None) -> Diagnosis:
        """Read and diagnose one file (raises ``ImageDecodeError``)."""
        return score([read_upload(data, filename).gray], [self])[0].diagnoses[self.name]


def load_model(name: str, root: Path | None = None, lungs: LungSegmenter | None = None) -> LoadedModel:
    """Load a shipped model by name (checks sha256, safe mode, warms up); see :class:`LoadedModel`."""
    return LoadedModel(name, root, lungs)


@dataclass(frozen=True)
class Upload:
    """A file read for serving: the 224 x 224 grayscale image every model takes, and for DICOM the
    header fields safe to show (never patient identifiers)."""

    name: str | None
    gray: np.ndarray  # (224, 224) uint8, squashed as the dataset images were made
    dicom: dict | None = None
    original: np.ndarray | None = None  # the decoded image at its own resolution (uint8), for viewing only
    raw: RawImage | None = None  # its values before any window (DICOM, 16-bit files), for the viewer's window

    @property
    def stated(self) -> Stated:
        """What the DICOM header states that the checks use: the patient's age, the image's width in cm (nothing for a
        file that is not DICOM)."""
        return stated(self.dicom) or Stated()

    @property
    def stated_age(self) -> float | None:
        """The patient's age in years as the DICOM header states it (``None``: not DICOM, or not stated)."""
        return self.stated.age_years


def read_upload(data: bytes, filename: str | None = None, max_bytes: int | None = None) -> Upload:
    """Decode any supported file (JPEG, PNG, BMP, TIFF, DICOM...) once, recognised by content.

    Args:
        data: The file's bytes (kept in memory only).
        filename: Its name, used only in messages.
        max_bytes: Refuse larger files (the dashboard's upload limit).

    Raises:
        ImageDecodeError: With a message for a person (what is wrong with this file).
    """
    if max_bytes is not None and len(data) > max_bytes:
        limit_mb = max_bytes / 2**20
        raise ImageDecodeError(f"'{filename or 'This file'}' is {len(data) / 2**20:.0f} MB; the limit is {limit_mb:.0f} MB.")
    gray, dicom, raw = decode_full(data, filename)
    return Upload(filename, squash(gray), dicom, gray, raw)


def read_file(path: str | Path) -> bytes:
    """A file's bytes for :func:`read_upload`, with a message for a person when it cannot be read."""
    p = Path(path)
    if p.is_dir():
        raise ImageDecodeError(f"'{path}' is a folder, not an image file.")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"'{path}' does not exist.") from None
    except OSError as exc:
        raise ImageDecodeError(f"'{path}' cannot be read: {exc.strerror or exc}.") from None


@dataclass(frozen=True)
class ImageReading:
    """What serving says about one image: the guard's verdict (``None`` when not checked), each asked
    model's diagnosis, and the lungs found (a 224 x 224 boolean mask; ``None`` without a segmenter)."""

    ood: OODResult | None
    diagnoses: dict[str, Diagnosis] = field(default_factory=dict)
    lungs: np.ndarray | None = None

    @property
    def flagged(self) -> bool:
        """Whether the guard found the image unlike the training X-rays (or without a pair of lungs)."""
        return self.ood is not None and self.ood.flagged

    def lung_share(self, model: str) -> float | None:
        """Share of the model's map (explaining P(pneumonia), as displayed) inside the lungs found;
        ``None`` without lungs or for an empty map."""
        if self.lungs is None:
            return None
        share = lung_energy(self.diagnoses[model].heatmap(self.lungs.shape), self.lungs)
        return None if np.isnan(share) else share


def score(grays: Sequence[np.ndarray] | np.ndarray, models: Sequence[LoadedModel] = (),
          guard: OODCheck | None = None, lungs: LungSegmenter | None = None,
          batch_size: int = 32, stated: Sequence[Stated | None] | None = None) -> list[ImageReading]:
    """Check and score a batch of images: the guard and the lungs once per image, each model in batches.

    Args:
        grays: 224 x 224 uint8 images (``Upload.gray``), a sequence or an ``(N, 224, 224)`` array.
        models: The models to score with (none: only the checks).
        guard: The out-of-distribution guard, or ``None`` to skip the check.
        lungs: The lung segmenter, or ``None``; with the guard, an image without a plausible pair of
            lungs is flagged.
        batch_size: Images per compiled call.
        stated: What is stated about each image (``Upload.stated``, perhaps with an age the user entered), or
            ``None``; with the guard, a film stated to be an adult's is withheld (:func:`core.ood.stated_age_note`),
            and with the lungs too, one whose lungs span an adult's width by the header's pixel size
            (:func:`core.ood.stated_size_note`).

    Returns:
        One :class:`ImageReading` per image, in order.
    """
    if not len(grays):
        return []
    batch = np.asarray(grays, dtype=np.uint8)
    checks = guard(batch) if guard is not None else [None] * len(batch)
    facts = [f or Stated() for f in stated] if stated is not None else [Stated()] * len(batch)
    if guard is not None:
        checks = [replace(c, age_note=stated_age_note(f.age_years, f.age_entered), age_entered=f.age_entered)
                  for c, f in zip(checks, facts, strict=True)]
    # the lungs come from one model's own pass where a model can give them, else from the segmenter
    giver = next((m for m in models if m.gives_lungs), None) if lungs is not None else None
    done = {giver.name: giver.diagnose_gray(batch, batch_size, lungs=True)} if giver else {}
    masks = None
    if lungs is not None:
        masks = np.stack([d.lungs for d in done[giver.name]]) if giver else lungs.masks(batch)
        if guard is not None:
            checks = [replace(c, lungs_note=implausible_lungs(m)) for c, m in zip(checks, masks, strict=True)]
            # a plausible pair of lungs, measured in cm where the header gives the pixel size
            checks = [c if c.lungs_note is not None else
                      replace(c, size_note=stated_size_note(f.width_cm, m, f.width_from))
                      for c, m, f in zip(checks, masks, facts, strict=True)]
    # a lung-focused model takes the lungs found above (or finds them itself)
    per_model = {m.name: done[m.name] if m.name in done else
                 m.diagnose_gray(batch, batch_size, masks=masks if m.needs_lungs else None) for m in models}
    return [ImageReading(check, {name: found[i] for name, found in per_model.items()},
                         None if masks is None else masks[i]) for i, check in enumerate(checks)]

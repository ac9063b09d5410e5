"""Out-of-distribution guard: is this input like the training X-rays at all?

Pooled ImageNet EfficientNet-Lite0 features (1280-d) are compared with the training split's by one of the two
scorers in :mod:`core.guards` (PCA Mahalanobis, or the distance to the k-th nearest training X-ray), with a
validation-chosen cut-off. This module fits a guard on the images (``python -m core.ood``; ``--report`` measures it,
:mod:`core.ood_report`) and serves it: :class:`OODCheck` (the guard with its compiled feature extractor, and the
scope check of :mod:`core.scope` from the same pass) gives an :class:`OODResult` per image, which also carries
the stated-age and stated-size checks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from core.augment import VARIANTS, encoding_path, served_variant
from core.backbones import efficientnet_lite0
from core.data import find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.guards import KNNGuard, OODGuard, fit_guard, fit_knn_guard, load_guard
from core.lungs import lung_span
from core.preprocessing import InputSpec, to_model_input
from core.registry import guard_files, models_dir, sha256_file, write_card
from core.runtime import compiled_forward
from core.scope import SCOPE_WARNING, STATISTICS, load_scope, statistics_outputs

__all__ = [
    "OOD_WARNING",
    "NO_LUNGS_WARNING",
    "SCOPE_WARNING",
    "AGE_WARNING",
    "ENTERED_AGE_WARNING",
    "SIZE_WARNING",
    "ADULT_AGE_YEARS",
    "ADULT_LUNG_WIDTH_CM",
    "stated_age_note",
    "stated_size_note",
    "OODResult",
    "OODCheck",
    "feature_extractor",
    "fit_and_save",
    "guard_spec",
    "scope_spec",
    "training_views",
]

log = logging.getLogger(__name__)

OOD_WARNING = (
    "This image does not look like the pediatric chest X-rays the models were trained on "
    "(out-of-distribution score {score:.2f} > cut-off {cutoff:.2f}); its diagnosis is not trustworthy."
)


NO_LUNGS_WARNING = "No plausible pair of lungs was found: {note}; its diagnosis is not trustworthy."
AGE_WARNING = (
    "The file's DICOM header gives the patient's age as {age:g} years. The models were trained on chest X-rays of "
    "children aged one to five, so an adult's film is outside what they can read."
)
ENTERED_AGE_WARNING = (
    "The patient's age was entered as {age:g} years. The models were trained on chest X-rays of children aged one to "
    "five, so an adult's film is outside what they can read."
)
ADULT_AGE_YEARS = 18.0
"""A stated age from which a film is an adult's, and withheld (:func:`stated_age_note`)."""
SIZE_WARNING = (
    "By the pixel size in the file's DICOM header ({source}), the lungs found span {width:.1f} cm across, an adult's "
    "size: a child aged one to five, whose films the models were trained on, measures well under {limit:g} cm, so "
    "this film is outside what they can read."
)
ADULT_LUNG_WIDTH_CM = 25.0
"""Lungs this wide or wider (both together, in cm, by the header's pixel size) are an adult's (docs/scope.md, v4)."""


def stated_age_note(age_years: float | None, entered: bool = False) -> str | None:
    """The warning for a film whose header states an adult's age (or, ``entered``, for which the user entered one);
    ``None`` for a child's or no stated age."""
    if age_years is None or age_years < ADULT_AGE_YEARS:
        return None
    return (ENTERED_AGE_WARNING if entered else AGE_WARNING).format(age=age_years)


def stated_size_note(width_cm: float | None, mask: np.ndarray | None, source: str | None = None) -> str | None:
    """The warning for a film whose lungs span :data:`ADULT_LUNG_WIDTH_CM` or more, measured with the image width in
    cm that its header gives (``width_cm``) and the lung mask found in it; ``None`` without either, or under it."""
    span = lung_span(mask) if width_cm is not None and mask is not None else None
    if span is None or span * width_cm < ADULT_LUNG_WIDTH_CM:
        return None
    return SIZE_WARNING.format(source=source or "pixel spacing", width=span * width_cm, limit=ADULT_LUNG_WIDTH_CM)


@dataclass(frozen=True)
class OODResult:
    """Whether an image looks unlike the training X-rays: by its features, by the scope check (unlike the
    children's films, e.g. an adult's: :mod:`core.scope`), or because the lung segmenter found no plausible
    pair of lungs in it (``lungs_note`` says why)."""

    score: float
    cutoff: float
    lungs_note: str | None = None
    scope_score: float | None = None
    scope_cutoff: float | None = None
    age_note: str | None = None  # the file's header (or the user: age_entered) states an adult's age (stated_age_note)
    age_entered: bool = False
    size_note: str | None = None  # the lungs span an adult's width by the header's pixel size (stated_size_note)

    @property
    def out_of_scope(self) -> bool:
        return self.scope_score is not None and self.scope_cutoff is not None and self.scope_score > self.scope_cutoff

    @property
    def flagged(self) -> bool:
        return (self.score > self.cutoff or self.lungs_note is not None or self.out_of_scope
                or self.age_note is not None or self.size_note is not None)

    @property
    def reason(self) -> str:
        """Why the image is withheld, in a few words (the first that applies); ``""`` when it is not."""
        if self.age_note is not None:
            return "an adult's film, by the age entered" if self.age_entered else "an adult's film, by its DICOM header"
        if self.size_note is not None:
            return "an adult's size, by its DICOM pixel size"
        if self.score > self.cutoff:
            return "not like the training X-rays"
        if self.out_of_scope:
            return "not a young child's film (an adult's?)"
        return "no plausible pair of lungs" if self.lungs_note is not None else ""

    @property
    def warning(self) -> str:
        parts = [note for note in (self.age_note, self.size_note) if note is not None]
        if self.score > self.cutoff:
            parts.append(OOD_WARNING.format(score=self.score, cutoff=self.cutoff))
        if self.out_of_scope:
            parts.append(SCOPE_WARNING.format(score=self.scope_score, cutoff=self.scope_cutoff))
        if self.lungs_note is not None:
            parts.append(NO_LUNGS_WARNING.format(note=self.lungs_note))
        return " ".join(parts)


def feature_extractor(batch_size: int = 64, with_statistics: bool = False, spec: InputSpec | None = None):
    """A function from uint8 grayscale images ``(N, 224, 224)`` to ``(N, 1280)`` pooled ImageNet
    Lite0 features: prepared by ``spec`` (default: normalised as Lite0 wants, nothing else; the checks' v2
    blurs first), run in batches through one compiled call. With ``with_statistics`` it returns
    ``(features, {statistic: (N, C)})``, the scope check's layer statistics
    (:func:`core.scope.statistics_outputs`) from the same pass."""
    backbone = efficientnet_lite0(weights="imagenet")
    pooled = keras.layers.GlobalAveragePooling2D()(backbone.output)
    outputs = [pooled, *statistics_outputs(backbone)] if with_statistics else pooled
    forward = compiled_forward(keras.Model(backbone.input, outputs))
    spec = spec or InputSpec()

    def extract(gray: np.ndarray):
        parts = [forward(to_model_input(gray[i : i + batch_size], spec)) for i in range(0, len(gray), batch_size)]
        if not with_statistics:
            return np.concatenate([p.numpy() for p in parts])
        features = np.concatenate([p[0].numpy() for p in parts])
        return features, {name: np.concatenate([p[1 + k].numpy() for p in parts]) for k, name in enumerate(STATISTICS)}

    return extract


class OODCheck:
    """The shipped out-of-distribution guard with its compiled feature extractor, warmed up once.

    Raises:
        FileNotFoundError: No guard is shipped (run ``python -m core.ood``).
    """

    def __init__(self, root: Path | None = None):
        self.guard = load_guard(root)
        if self.guard is None:
            raise FileNotFoundError("No out-of-distribution guard under models/ood (run: python -m core.ood).")
        self.spec = guard_spec(root)
        self.scope = load_scope(root)  # None where no scope check is shipped (python -m core.scope_fit)
        if self.scope is not None and scope_spec(root) != self.spec:
            raise ValueError("The scope check was fitted on other input than the guard reads (their card's "
                             "'preprocessing' differ); refit it: python -m core.scope_fit")
        self._features = feature_extractor(with_statistics=self.scope is not None, spec=self.spec)
        self._features(np.zeros((1, 224, 224), np.uint8))  # warm up

    def __call__(self, gray: np.ndarray) -> list[OODResult]:
        """Check uint8 grayscale image(s) ``(H, W)`` or ``(N, H, W)`` (224 x 224)."""
        batch = gray[None] if gray.ndim == 2 else gray
        if self.scope is None:
            return [OODResult(float(s), self.guard.cutoff) for s in self.guard.score(self._features(batch))]
        features, stats = self._features(batch)
        return [OODResult(float(s), self.guard.cutoff, scope_score=float(t), scope_cutoff=self.scope.cutoff)
                for s, t in zip(self.guard.score(features), self.scope.score(stats), strict=True)]

    def scope_distances(self, gray: np.ndarray) -> dict[str, np.ndarray]:
        """Each kept scope statistic's distance (over its validation median) for images ``(N, 224, 224)``, for
        reports; the scope score is their mean. Needs a shipped scope check."""
        if self.scope is None:
            raise FileNotFoundError("No scope check under models/ood (run: python -m core.scope_fit).")
        return dict(zip(self.scope.names, self.scope.distances(self._features(gray)[1]), strict=True))


def _spec_in(record: dict) -> InputSpec:
    """The ``preprocessing`` a record names; plain Lite0 input for records written before checks v2."""
    return InputSpec.from_card(record) if "preprocessing" in record else InputSpec()


def guard_spec(root: Path | None = None) -> InputSpec:
    """How the checks prepare an image for their Lite0 pass, as the guard's card says."""
    return _spec_in(json.loads(guard_files(root).card.read_text()))


def scope_spec(root: Path | None = None) -> InputSpec:
    """The input the shipped scope check was fitted on (its record in the guard's card)."""
    return _spec_in(json.loads(guard_files(root).card.read_text()).get("scope") or {})


def training_views(x_tr: np.ndarray, encoding_views: int, seed: int) -> list[np.ndarray]:
    """The training images and ``encoding_views`` re-encoded views of each (:func:`core.augment.encoding_path`,
    drawn from ``seed``): the same views for the guard and the scope check."""
    rng = np.random.default_rng(seed)
    return [x_tr] + [np.stack([encoding_path(g, rng) for g in x_tr]) for _ in range(encoding_views)]


GUARD_METHODS = ("mahalanobis", "knn")


def fit_and_save(data_dir=None, seed: int = 42, root: Path | None = None, encoding_views: int = 0,
                 blur_sigma: float = 0.0, method: str = "mahalanobis") -> OODGuard | KNNGuard:
    """Fit the guard on the training split (validation held out by patient as the models') and ship it.

    With ``encoding_views``, it is fitted on each training image and that many re-encoded views of it
    (:func:`core.augment.encoding_path`), and its cut-off passes 99.5 % of the validation images together
    with their four served variants (:data:`core.augment.VARIANTS`), so that an X-ray's encoding does
    not decide whether it is withheld. With ``blur_sigma``, its Lite0 pass reads the image blurred first (as
    the v11 models do), written in its card's ``preprocessing``; the scope check shares that pass and must
    be refitted after (``python -m core.scope_fit``) unless the pass is unchanged. ``method`` "knn" scores by
    the distance to the 10th nearest training row (:class:`KNNGuard`, checks v5) rather than PCA Mahalanobis.
    A joint cut-off (checks v3) was chosen for the old pair, so the scope check gets its own cut-off back (run
    ``python -m core.scope_fit --joint-cutoff`` again for the new pair).
    """
    if method not in GUARD_METHODS:
        raise ValueError(f"Unknown guard method {method!r}; choose one of {', '.join(GUARD_METHODS)}.")
    train, val = split_train_val(list_split(find_data_dir(data_dir), "train"), 0.1, seed)
    spec = InputSpec(blur_sigma=blur_sigma)
    extract = feature_extractor(spec=spec)
    x_tr, x_va = load_images(train), load_images(val)
    train_views = training_views(x_tr, encoding_views, seed)
    val_views = [x_va] + ([np.stack([served_variant(g, v) for g in x_va]) for v in VARIANTS] if encoding_views else [])
    fit = fit_knn_guard if method == "knn" else fit_guard
    guard = fit(np.concatenate([extract(x) for x in train_views]), np.concatenate([extract(x) for x in val_views]))
    n = guard.components.shape[0]
    scorer = (f"distance to the {guard.k}th nearest training row among unit-length features projected on their top "
              f"{n} principal components (checks v5)" if method == "knn" else
              f"PCA ({n} components) Mahalanobis distance + scaled residual")
    card = {
        "name": "ood",
        "kind": "out-of-distribution guard",
        "method": f"{scorer} on pooled ImageNet EfficientNet-Lite0 features, fitted on the training split"
                  + (f" (each image and {encoding_views} re-encoded views of it, core.augment.encoding_path)"
                     if encoding_views else "")
                  + (f"; the image is blurred first (Gaussian, sigma {blur_sigma:g} px)" if blur_sigma else ""),
        "cutoff_rule": "99.5th percentile of validation-split scores (99.5 % of validation X-rays pass)"
                       if not encoding_views else
                       "99.5th percentile of the scores of the validation images and their four served variants "
                       f"({', '.join(VARIANTS)})",
        "encoding_views": encoding_views,
        "cutoff": guard.cutoff,
        "preprocessing": spec.to_dict(),
        "seed": seed,
        "data": {"train_images": len(train), "val_images": len(val), "fingerprint": fingerprint(train + val)},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _separate_scope_cutoff(root)
    guard.save(guard_files(root).folder, card)
    log.info("Guard saved: cut-off %.3f", guard.cutoff)
    return guard


def _separate_scope_cutoff(root: Path | None) -> None:
    """Where the checks under ``root`` share a joint cut-off (checks v3), give the scope check its own cut-off back
    (``scope.npz`` and its record), since the guard it was chosen with is being replaced."""
    files = guard_files(root)
    if not files.card.exists() or "joint_cutoff" not in (card := json.loads(files.card.read_text())):
        return
    scope = load_scope(root)
    if scope is None or "scope" not in card:
        return
    scope.cutoff = float(card["joint_cutoff"]["separate_cutoffs"]["scope"])
    scope.save(files.folder / "scope.npz")
    card["scope"] = {**card["scope"], "cutoff": scope.cutoff, "weights_sha256": sha256_file(files.folder / "scope.npz")}
    del card["joint_cutoff"]
    write_card(files.folder, card)


def main(argv=None) -> int:
    """``python -m core.ood [--data-dir D] [--report] [--encoding-views N] [--blur-sigma S] [--method M] [--out DIR]``: fit the guard on the training split and
    save it; with ``--report``, measure it instead (writes ``models/ood/report.json``)."""
    import argparse

    from core.ood_report import report, summary

    parser = argparse.ArgumentParser(prog="python -m core.ood", description=main.__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--report", action="store_true", help="measure the shipped guard instead of fitting it")
    parser.add_argument("--encoding-views", type=int, default=0, metavar="N",
                        help="fit on each training image and N re-encoded views of it; the cut-off then covers the "
                             "validation images' served variants too (recipe v7: 3)")
    parser.add_argument("--blur-sigma", type=float, default=0.0, metavar="S",
                        help="blur the image (Gaussian, sigma S px) before the Lite0 pass, in fitting and serving "
                             "(checks v2: 2); refit the scope check after")
    parser.add_argument("--method", choices=GUARD_METHODS, default="mahalanobis",
                        help="the guard's score: PCA Mahalanobis (checks v1-v3) or the distance to the 10th nearest "
                             "training X-ray (checks v5)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write the guard under DIR/ood instead of models/ood")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.report:
        result = report(OODCheck(args.out), args.data_dir)
        guard_files(args.out).report.write_text(json.dumps(result, indent=1) + "\n")
        print(summary(result))
        return 0
    fit_and_save(args.data_dir, args.seed, args.out or models_dir(), args.encoding_views, args.blur_sigma, args.method)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

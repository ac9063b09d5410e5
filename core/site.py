"""A site's own operating point: a threshold chosen on the site's labelled X-rays, kept as a small profile.

A site uploads its labelled images (a zip with ``NORMAL/`` and ``PNEUMONIA/`` folders, or image files
plus a CSV of ``filename,label``); a model scores them through the normal serving path; the threshold is
chosen on them (Youden's J, or the lowest threshold that keeps a required sensitivity), with bootstrap
intervals, and the expected PPV and NPV at the site's prevalence. The result is a JSON profile that the
dashboard can load back and use, labelled as the site's. It adapts a threshold to a site's images and
case mix; it does not change, retrain or validate the model, and it is only as good as the labels and
the number of images it was chosen on.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import numpy as np
from sklearn import metrics as skm

from core.errors import ImageDecodeError
from core.evaluation import choose_threshold, metrics_at

__all__ = ["LabelledFile", "read_labelled_zip", "read_labelled_files", "operating_point", "predictive_values",
           "split_half_accuracy", "SiteProfile", "profile_from_json", "MAX_FILES", "MAX_TOTAL_BYTES"]

MAX_FILES = 5000
MAX_TOTAL_BYTES = 2 * 2**30  # uncompressed; a zip bomb stops here
LABEL_NAMES = {"NORMAL": 0, "PNEUMONIA": 1}
PROFILE_KIND = "pneumonia-dashboard site operating point"


@dataclass(frozen=True)
class LabelledFile:
    """One of the site's files with its label (0 NORMAL, 1 PNEUMONIA); its bytes stay in memory."""

    name: str
    label: int
    data: bytes


def _label_of(text: str) -> int | None:
    return LABEL_NAMES.get(text.strip().upper())


def read_labelled_zip(data: bytes) -> tuple[list[LabelledFile], list[str]]:
    """Files under ``NORMAL/`` and ``PNEUMONIA/`` folders (at any depth) of a zip, read in memory.

    Returns:
        (files, notes): the labelled files, and one note per entry left out (with why).

    Raises:
        ImageDecodeError: Not a zip, too many files, too large, or no labelled image at all.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ImageDecodeError("This is not a zip file. Upload a zip with NORMAL/ and PNEUMONIA/ folders.") from None
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > MAX_FILES:
        raise ImageDecodeError(f"The zip holds {len(entries)} files; at most {MAX_FILES} are read.")
    if sum(e.file_size for e in entries) > MAX_TOTAL_BYTES:
        raise ImageDecodeError(f"The zip unpacks to more than {MAX_TOTAL_BYTES / 2**30:.0f} GB.")
    files, notes = [], []
    for e in entries:
        path = PurePosixPath(e.filename)
        if path.name.startswith(".") or "__MACOSX" in path.parts:
            continue
        label = next((_label_of(p) for p in reversed(path.parts[:-1]) if _label_of(p) is not None), None)
        if label is None:
            notes.append(f"{e.filename}: not under a NORMAL/ or PNEUMONIA/ folder, left out")
            continue
        files.append(LabelledFile(e.filename, label, archive.read(e)))
    if not files:
        raise ImageDecodeError("The zip has no files under NORMAL/ or PNEUMONIA/ folders.")
    return files, notes


def read_labelled_files(files: dict[str, bytes], table: bytes) -> tuple[list[LabelledFile], list[str]]:
    """Image files labelled by a CSV with columns ``filename`` and ``label`` (NORMAL or PNEUMONIA).

    Raises:
        ImageDecodeError: The CSV cannot be read or labels none of the files.
    """
    try:
        rows = list(csv.DictReader(io.StringIO(table.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImageDecodeError(f"The CSV cannot be read: {exc}.") from None
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise ImageDecodeError("The CSV needs a header with the columns 'filename' and 'label'.")
    out, notes = [], []
    labels = {}
    for r in rows:
        label = _label_of(r["label"] or "")
        if label is None:
            notes.append(f"{r['filename']}: label {r['label']!r} is neither NORMAL nor PNEUMONIA, left out")
        else:
            labels[r["filename"]] = label
    for name, data in files.items():
        if name in labels:
            out.append(LabelledFile(name, labels[name], data))
        else:
            notes.append(f"{name}: not in the CSV, left out")
    notes += [f"{n}: in the CSV but not uploaded" for n in labels if n not in files]
    if not out:
        raise ImageDecodeError("The CSV labels none of the uploaded files.")
    return out, notes


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> dict:
    """Expected PPV and NPV at a prevalence (Bayes' rule); ``None`` where undefined."""
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return {"ppv": tp / (tp + fp) if tp + fp > 0 else None, "npv": tn / (tn + fn) if tn + fn > 0 else None}


def _choose(y, p, rule: str, sensitivity: float) -> float:
    if rule == "youden":
        return choose_threshold(y, p, "youden")  # the rule the cards use
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if rule == "sensitivity":
        ok = np.flatnonzero(tpr >= sensitivity)
        return float(thresholds[ok[0]])  # the highest threshold that keeps it: the best specificity
    raise ValueError(f"Unknown rule {rule!r}. Use 'youden' or 'sensitivity'.")


def split_half_accuracy(y, p, patients, halvings: int = 20, rule: str = "youden", sensitivity: float = 0.95) -> list[float]:
    """What a site profile can gain, measured on labelled images: for each of ``halvings`` random splits of the
    patients in two (seeds 0, 1, ...), the threshold is chosen on one half (``rule``) and the accuracy measured on
    the other half's images. Returns the accuracies (the Site page quotes them for the official test set)."""
    y, p, patients = np.asarray(y).astype(int), np.asarray(p, np.float64), np.asarray(patients)
    names = np.unique(patients)
    out = []
    for seed in range(halvings):
        first = np.isin(patients, np.random.default_rng(seed).permutation(names)[: len(names) // 2])
        threshold = _choose(y[first], p[first], rule, sensitivity)
        out.append(metrics_at(y[~first], p[~first], threshold)["accuracy"])
    return out


def operating_point(y, p, rule: str = "youden", sensitivity: float = 0.95, n_resamples: int = 1000,
                    seed: int = 0, level: float = 0.95) -> dict:
    """The threshold chosen on a site's labelled probabilities, its sensitivity and specificity, and
    percentile bootstrap intervals (images resampled within each class, the threshold chosen again in
    every resample, so the intervals include the choice's own wobble).

    Raises:
        ValueError: Fewer than two images of either class.
    """
    y, p = np.asarray(y, int), np.asarray(p, np.float64)
    if min((y == 0).sum(), (y == 1).sum()) < 2:
        raise ValueError("The site's images need at least two of each class (NORMAL and PNEUMONIA).")
    t = _choose(y, p, rule, sensitivity)
    pred = p >= t
    sens, spec = float(pred[y == 1].mean()), float((~pred)[y == 0].mean())
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    draws = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        yb, pb = y[idx], p[idx]
        tb = _choose(yb, pb, rule, sensitivity)
        predb = pb >= tb
        draws.append((tb, predb[yb == 1].mean(), (~predb)[yb == 0].mean(), skm.roc_auc_score(yb, pb)))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    ci = {k: [float(np.percentile(col, lo)), float(np.percentile(col, hi))]
          for k, col in zip(("threshold", "sensitivity", "specificity", "roc_auc"), np.array(draws).T, strict=True)}
    fpr, tpr, _ = skm.roc_curve(y, p)
    return {"rule": rule, "required_sensitivity": sensitivity if rule == "sensitivity" else None, "threshold": t,
            "sensitivity": sens, "specificity": spec, "roc_auc": float(skm.roc_auc_score(y, p)),
            "n": int(len(y)), "n_pneumonia": int(len(pos)), "n_normal": int(len(neg)), "ci95": ci,
            "roc_curve": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}


@dataclass(frozen=True)
class SiteProfile:
    """A site's operating point for one model, as saved and loaded (never written into the model's card)."""

    site: str
    model: str
    weights_sha256: str
    threshold: float
    rule: str
    required_sensitivity: float | None
    sensitivity: float
    specificity: float
    images: int
    images_pneumonia: int
    created: str
    kind: str = PROFILE_KIND
    note: str = ("Chosen on the site's own labelled images. It adapts the decision threshold to the site; it does not "
                 "change or validate the model.")

    @classmethod
    def from_point(cls, site: str, model: str, sha256: str, point: dict) -> SiteProfile:
        return cls(site=site, model=model, weights_sha256=sha256, threshold=point["threshold"], rule=point["rule"],
                   required_sensitivity=point["required_sensitivity"], sensitivity=point["sensitivity"],
                   specificity=point["specificity"], images=point["n"], images_pneumonia=point["n_pneumonia"],
                   created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1) + "\n").encode()


def profile_from_json(data: bytes, models: dict[str, str]) -> SiteProfile:
    """Read a saved profile and check it belongs to a shipped model with the same weights.

    Args:
        data: The profile file's bytes.
        models: Shipped model name -> weights sha256.

    Raises:
        ImageDecodeError: Not a profile, or for a model (or weights) this dashboard does not have.
    """
    try:
        d = json.loads(data.decode("utf-8"))
        if d.get("kind") != PROFILE_KIND:
            raise ValueError
        profile = SiteProfile(**d)
        threshold = float(profile.threshold)
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError):
        raise ImageDecodeError("This file is not a site operating-point profile saved by this dashboard.") from None
    if not 0 <= threshold <= 1:
        raise ImageDecodeError(f"The profile's threshold {threshold} is not between 0 and 1.")
    if profile.model not in models:
        raise ImageDecodeError(f"The profile is for the model '{profile.model}', which this dashboard does not have.")
    if models[profile.model] != profile.weights_sha256:
        raise ImageDecodeError(f"The profile was made for other weights of '{profile.model}' "
                               f"({profile.weights_sha256[:12]}…, shipped: {models[profile.model][:12]}…); "
                               "choose the operating point again on the site's images.")
    return profile

"""A one-page case report of one image (PDF or PNG), made in memory with matplotlib.

It holds what a colleague needs to see what the dashboard said: the X-ray, the recommended model's
heatmap over it with its colour scale, every model's probability, label and threshold, the guard's
verdict, the models' weight sha256 prefixes, the date and the not-a-medical-device notice. It holds
no patient identifier: not the file name (which may carry a name), not the DICOM header.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display; safe in a server thread

import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from core.cards import DISCLAIMER  # noqa: E402
from core.gradcam import overlay  # noqa: E402
from core.inference import BORDERLINE, BORDERLINE_NOTE, ImageReading, is_borderline, label_for  # noqa: E402
from core.lungs import draw_outline  # noqa: E402

__all__ = ["ReportModel", "case_report"]

FORMATS = {"pdf": "application/pdf", "png": "image/png"}


@dataclass(frozen=True)
class ReportModel:
    """A model as the report names it: its name, threshold in use and weights' sha256."""

    name: str
    threshold: float
    sha256: str
    threshold_source: str = "card"


def _plain(text: str) -> str:
    return text.replace("**", "")


def case_report(image: np.ndarray, reading: ImageReading, models: list[ReportModel], lead: str,
                target: str = "PNEUMONIA", by_evidence: bool = False, fmt: str = "pdf",
                when: dt.datetime | None = None) -> bytes:
    """The report's bytes.

    Args:
        image: The X-ray as shown (uint8 grayscale, any size: the original resolution is best).
        reading: What serving said about it (:func:`core.inference.score`).
        models: The models to list, in order; each must be in ``reading.diagnoses``.
        lead: The model whose heatmap is drawn (the recommended one).
        target: The class the heatmap explains.
        by_evidence: Heatmap scaled by the evidence rather than per image.
        fmt: ``"pdf"`` or ``"png"``.
        when: The report's time (default: now, UTC).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown report format {fmt!r}. Use one of: {', '.join(FORMATS)}")
    when = when or dt.datetime.now(dt.UTC)
    with plt.rc_context(_FONTS):
        return _draw(image, reading, models, lead, target, by_evidence, fmt, when)


# the PDF's text in a standard font: selectable, searchable and copyable in any reader
_FONTS = {"pdf.use14corefonts": True, "font.family": "sans-serif", "font.sans-serif": ["Helvetica", "DejaVu Sans"]}


def _draw(image, reading, models, lead, target, by_evidence, fmt, when) -> bytes:
    d = reading.diagnoses[lead]
    heat = overlay(image, d.heatmap(image.shape, target, by_evidence), alpha=0.4)
    if reading.lungs is not None:
        heat = draw_outline(heat, reading.lungs)
    fig = plt.figure(figsize=(8.27, 11.69))  # A4 portrait
    fig.text(0.06, 0.965, "Chest X-ray: model readings", fontsize=17, weight="bold")
    fig.text(0.06, 0.945, f"Report made {when:%Y-%m-%d %H:%M} UTC · no patient identifiers are included",
             fontsize=9, color="#555")
    for i, (picture, title) in enumerate([(np.repeat(image[..., None], 3, axis=-1), "X-ray"),
                                          (heat, f"{lead}: evidence for {target.lower()}\n"
                                           + ("scaled by the evidence" if by_evidence else "normalised per image")
                                           + (", lungs outlined" if reading.lungs is not None else ""))]):
        ax = fig.add_axes((0.06 + i * 0.46, 0.58, 0.42, 0.34))
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    bar = fig.add_axes((0.52, 0.565, 0.42, 0.012))
    fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=7)
    bar.set_xlabel("0 = no evidence, 1 = " + ("the strongest at P = 100 %" if by_evidence else
                                               "the strongest in this image"), fontsize=7)

    rows, borderline = [], False
    for m in models:
        dm = reading.diagnoses[m.name]
        share = reading.lung_share(m.name)
        near = is_borderline(dm.probability, m.threshold)
        borderline |= near
        rows.append([m.name + (" (recommended)" if m.name == lead else ""), f"{dm.probability:.1%}",
                     label_for(dm.probability, m.threshold) + (" *" if near else ""),
                     f"{m.threshold:.3f} ({m.threshold_source})",
                     "n/a" if share is None else f"{share:.0%}", m.sha256[:12]])
    ax = fig.add_axes((0.06, 0.34, 0.88, 0.16))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["model", "P(pneumonia)", "label", "threshold", "evidence in lungs",
                                               "weights sha256"], loc="upper left", cellLoc="left",
                     colWidths=[0.27, 0.13, 0.14, 0.16, 0.14, 0.16])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.5)

    if reading.ood is None:
        verdict = "Not checked."
    elif reading.flagged:
        verdict = "Flagged: " + _plain(reading.ood.warning) + " The readings above were shown because the user asked."
    else:
        verdict = "Passed: the image is like the training X-rays" + (
            " and has a plausible pair of lungs." if reading.lungs is not None else ".")
    fig.text(0.06, 0.31, "Out-of-distribution guard", fontsize=10, weight="bold")
    fig.text(0.06, 0.295, verdict, fontsize=8, wrap=True, va="top")
    fig.text(0.06, 0.24, "The recommended model leads by a rule written in every model card (highest validation ROC "
             "AUC). Grad-CAM shows where a model found evidence, not what the finding is."
             + (" * " + BORDERLINE_NOTE.format(margin=BORDERLINE) if borderline else ""),
             fontsize=8, wrap=True, va="top")
    fig.text(0.06, 0.06, _plain(DISCLAIMER), fontsize=8, wrap=True, color="#8a1c1c")
    buf = io.BytesIO()
    # no author or software path in the file; a title only
    fig.savefig(buf, format=fmt, dpi=150 if fmt == "png" else None, metadata={"Title": "Chest X-ray model readings"})
    plt.close(fig)
    return buf.getvalue()


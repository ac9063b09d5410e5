"""The case report: one page, in memory, with every model's reading and no patient identifier."""

import datetime as dt

import numpy as np
import pytest

from core.case_report import ReportModel, case_report
from core.inference import Diagnosis, ImageReading
from core.ood import OODResult
from tests.helpers import PAIR, xray_like


def _reading(flagged: bool = False) -> ImageReading:
    signed = np.zeros((7, 7), np.float32)
    signed[2:5, 1:3] = 1.0
    diagnoses = {"a": Diagnosis("a", 0.91, 0.5, signed), "b": Diagnosis("b", 0.12, 0.4, -signed)}
    return ImageReading(OODResult(9.0 if flagged else 1.0, 5.0), diagnoses, PAIR)


def test_the_pdf_report_names_every_model_and_no_file(tmp_path):
    image = xray_like(600, 500)
    models = [ReportModel("a", 0.5, "ab" * 32), ReportModel("b", 0.4, "cd" * 32, "set on screen")]
    pdf = case_report(image, _reading(), models, "a", when=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC))
    assert pdf.startswith(b"%PDF")
    text = b"".join(_streams(pdf))  # the text of the page
    assert b"91.0%" in text and b"12.0%" in text and b"abababababab" in text and b"cdcdcdcdcdcd" in text
    assert b"2026-01-02 03:04" in text and b"Not a medical device" in text
    assert b"set on screen" in text and b"Passed" in text
    assert b"Borderline" not in text  # 0.91 and 0.12 lie far from their thresholds
    near = _reading()
    near.diagnoses["b"] = Diagnosis("b", 0.41, 0.4, near.diagnoses["b"].signed_cam)  # 0.01 from its threshold
    assert b"Borderline" in b"".join(_streams(case_report(image, near, models, "a")))


def _streams(pdf: bytes) -> list[bytes]:
    """The decompressed content streams of a PDF: its text, as matplotlib writes it."""
    import zlib

    out = []
    for chunk in pdf.split(b"stream")[1:]:
        try:
            out.append(zlib.decompress(chunk.split(b"endstream")[0].strip(b"\r\n")))
        except zlib.error:
            continue
    return out


def test_the_png_report_and_a_flagged_image():
    import io

    from PIL import Image

    png = case_report(xray_like(300, 300), _reading(flagged=True), [ReportModel("a", 0.5, "ab" * 32)], "a", fmt="png")
    page = Image.open(io.BytesIO(png))
    assert page.format == "PNG" and page.size[1] > page.size[0]  # a portrait page
    with pytest.raises(ValueError, match="format"):
        case_report(xray_like(300, 300), _reading(), [ReportModel("a", 0.5, "ab" * 32)], "a", fmt="docx")

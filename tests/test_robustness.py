"""The bad-input matrix through the library, the CLI and the Diagnose page; DICOM handling; privacy."""

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.preprocessing import ImageDecodeError, decode_image, squash
from tests import inputs
from tests.helpers import ROOT

CASES = inputs.CASES


@pytest.fixture(scope="module")
def materialised():
    return {kind: (name, make()) for kind, (name, make, _) in CASES.items()}


@pytest.fixture(scope="module")
def guard():
    from core.ood import OODCheck

    try:
        return OODCheck()
    except FileNotFoundError:
        pytest.skip("no out-of-distribution guard under models/ood")


@pytest.mark.parametrize("kind", sorted(CASES))
def test_library(kind, materialised, guard):
    name, data = materialised[kind]
    expected = CASES[kind][2]
    if expected in ("ok", "ood"):
        gray = decode_image(data, name)
        assert gray.dtype == np.uint8 and gray.ndim == 2
        if expected == "ood":
            assert guard(squash(gray))[0].flagged
    else:
        with pytest.raises(ImageDecodeError, match=expected):
            decode_image(data, name)


# that at least 98 % of the official test X-rays pass the guard (and the scope check), as copies and as each served
# variant: tests/test_scope.py::test_pediatric_test_xrays_pass_the_checks_in_every_variant


def test_cli_matrix(materialised, tmp_path, shipped_models):
    paths = {}
    for kind, (name, data) in materialised.items():
        folder = tmp_path / kind
        folder.mkdir()
        paths[kind] = folder / name
        paths[kind].write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "core.predict", "--json", "--model", shipped_models[-1],
                           *map(str, paths.values())], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    by_file = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        by_file.setdefault(record["file"], []).append(record)
    for kind, path in paths.items():
        expected = CASES[kind][2]
        (record,) = by_file[str(path)]
        if expected == "ok":
            assert "probability" in record, (kind, record)
        elif expected == "ood":
            assert record["ood"] is True and record["warning"] and "probability" in record
        else:
            assert re.search(expected, record["error"]), (kind, record)
    for text in (proc.stdout, proc.stderr):
        assert inputs.SECRET_ID not in text and "Doe" not in text


def test_diagnose_page_matrix(materialised, shipped_models):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    uploads = [(f"{kind}__{name}", data, "application/octet-stream") for kind, (name, data) in materialised.items()]
    at.sidebar.selectbox(key="dx_model").set_value(shipped_models[-1])
    at.file_uploader(key="dx_upload").set_value(uploads)
    at.run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    table = next(d.value for d in at.dataframe if "status" in d.value.columns)
    for kind, (name, _) in materialised.items():
        expected, upload_name = CASES[kind][2], f"{kind}__{name}"
        assert upload_name in set(table["file"]), kind  # one row per file, refused files too
        row = table[table.file == upload_name].iloc[0]
        if expected == "ood":
            assert row.status.startswith("withheld") and row.get(f"{shipped_models[-1]}: P(pneumonia)", "—") == "—"
        elif expected != "ok":
            assert upload_name in errors and row.status.startswith("not read"), kind
    page = " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.error, *at.warning])
    assert inputs.SECRET_ID not in page and "Doe" not in page


def test_dicom_monochrome1_is_inverted():
    gray = decode_image(inputs.dicom(255 - inputs.BASE, photometric="MONOCHROME1"))
    expected = (inputs.BASE - inputs.BASE.min()) / (inputs.BASE.max() - inputs.BASE.min()) * 255
    assert np.abs(gray.astype(float) - expected).max() <= 1


def test_dicom_rescale_and_window():
    assert np.array_equal(decode_image(inputs.dicom_16bit_rescaled()), inputs.expected_16bit_rescaled())


def test_dicom_multiframe_takes_the_first_frame():
    gray = decode_image(inputs.dicom(np.stack([inputs.BASE, 255 - inputs.BASE]), frames=2))
    assert np.corrcoef(gray.ravel(), inputs.BASE.ravel())[0, 1] > 0.99


def test_dicom_summary_and_logs_hold_no_identifiers(caplog):
    from core.dicom import dicom_summary

    data = inputs.dicom()
    with caplog.at_level(logging.DEBUG):
        summary = dicom_summary(data)
        decode_image(data, "x.dcm")
    assert summary["modality"] == "DX" and summary["view position"] == "AP" and summary["size"] == "260 × 300 px"
    text = json.dumps(summary) + caplog.text
    assert inputs.SECRET_ID not in text and "Doe" not in text and "20200101" not in text


def test_dicom_compressed_rle_decodes():
    import io

    import pydicom
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(io.BytesIO(inputs.dicom()))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    gray = decode_image(buf.getvalue(), "rle.dcm")
    expected = (inputs.BASE - inputs.BASE.min()) / (inputs.BASE.max() - inputs.BASE.min()) * 255
    assert np.abs(gray.astype(float) - expected).max() <= 1


def test_diagnose_page_reads_a_real_xray_sent_as_dicom(shipped_models, samples_dir):
    """A chest X-ray exported as MONOCHROME1 DICOM is diagnosed like the original, without identifiers."""
    from core.inference import load_model
    from core.preprocessing import load_grayscale

    jpeg = (samples_dir / "person1314_virus_2269.jpeg").read_bytes()
    original = decode_image(jpeg)
    data = inputs.dicom(255 - original, photometric="MONOCHROME1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.file_uploader(key="dx_upload").set_value(("export.dcm", data, "application/dicom"))
    at.run()
    assert not at.exception and not at.error
    assert not [w for w in at.warning if "does not look like" in w.value or "No plausible" in w.value]
    assert any("modality: DX" in c.value and "view position: AP" in c.value for c in at.caption)
    shown = [m.value for m in at.metric if m.label == "P(pneumonia)"]
    expected = [f"{load_model(n).diagnose_gray(load_grayscale(jpeg))[0].probability:.1%}" for n in shipped_models]
    assert sorted(shown) == sorted(expected)  # the recommended model comes first
    page = " ".join(str(e.value) for e in [*at.markdown, *at.caption])
    assert inputs.SECRET_ID not in page and "Doe" not in page


def test_the_raw_values_of_a_dicom_keep_its_window_and_more_than_256_levels():
    """The viewer's window works on the DICOM's own values: its default window reproduces the 8-bit image the
    models read, and a narrow window separates values that 8 bits cannot."""
    from core.preprocessing import decode_full

    gray, _, raw = decode_full(inputs.dicom_16bit_rescaled())  # rescaled to HU, window 40 / 400
    hu = np.round((inputs.BASE.astype(np.float64) * 4 - 400 + 1024) / 2) * 2 - 1024
    assert raw is not None and np.array_equal(raw.values, hu.astype(np.float32))
    assert (raw.center, raw.width, raw.invert) == (40, 400, False) and raw.integral
    assert np.array_equal(raw.window(raw.center, raw.width), gray)

    stored = inputs.BASE.astype(np.uint16) * 16 + (np.arange(inputs.BASE.size).reshape(inputs.BASE.shape) % 16)
    gray, _, raw = decode_full(inputs.dicom(stored, bits=12, window=(2048, 4096)))
    assert np.array_equal(raw.window(raw.center, raw.width), gray)
    # two values 1 apart share one grey level in the 8-bit image, and are 20 levels apart in a 12-wide window
    v = int(stored[0, 0]) // 16 * 16 + 4
    a, b = np.argwhere(stored == v)[0], np.argwhere(stored == v + 1)[0]
    assert gray[tuple(a)] == gray[tuple(b)]
    narrow = raw.window(v + 0.5, 12)
    assert int(narrow[tuple(b)]) - int(narrow[tuple(a)]) >= 20


def test_the_raw_values_of_a_monochrome1_dicom_and_a_16_bit_png():
    from core.preprocessing import decode_full

    gray, _, raw = decode_full(inputs.dicom((inputs.BASE.astype(np.uint16) * 16), photometric="MONOCHROME1", bits=12))
    assert raw.invert and np.array_equal(raw.window(raw.center, raw.width), gray)
    assert raw.window(raw.center, raw.width)[inputs.BASE == inputs.BASE.max()].max() == 0  # brightest value is dark
    png16 = inputs.encode(inputs.BASE.astype(np.uint16) * 200, "PNG")
    gray, _, raw = decode_full(png16)
    assert raw is not None and raw.high == int(inputs.BASE.max()) * 200
    assert np.array_equal(raw.window(raw.center, raw.width), gray)  # the default window is the 8-bit image
    assert decode_full(inputs.encode(inputs.BASE, "PNG"))[2] is None  # an 8-bit file has nothing more to show


def test_the_viewer_windows_a_dicom_in_its_own_values(shipped_models, samples_dir):
    """A real X-ray sent as a 12-bit DICOM with a window of its own: the viewer's sliders are in its values."""
    original = decode_image((samples_dir / "person1314_virus_2269.jpeg").read_bytes())
    stored = original.astype(np.uint16) * 16 + 3
    data = inputs.dicom(stored, bits=12, window=(2000, 3000))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.file_uploader(key="dx_upload").set_value(("export.dcm", data, "application/dicom")).run()
    assert not at.exception
    level = next(s for s in at.slider if s.label.startswith("Window level"))
    width = next(s for s in at.slider if s.label.startswith("Window width"))
    assert (level.value, width.value) == (2000, 3000)
    assert (level.min, level.max) == (int(stored.min()), int(stored.max()))
    width.set_value(40).run()
    assert not at.exception
    assert any("not on an 8-bit copy" in c.value for c in at.caption)

"""Uploads stay in memory: a diagnosis writes no file anywhere we can see."""

import os
import tempfile
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests import inputs
from tests.conftest import ROOT, encode, xray_like

IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".git"}


def _files(roots) -> set[Path]:
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_PARTS and not d.startswith("pytest-of-")]
            found.update(Path(dirpath) / f for f in filenames)
    return found


def _watched():
    roots = [Path(tempfile.gettempdir()), ROOT, Path.home() / ".streamlit"]
    if Path("/dev/shm").is_dir():
        roots.append(Path("/dev/shm"))
    return [r for r in roots if r.exists()]


def test_a_diagnosis_writes_no_files(shipped_models):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()  # models load (and any one-off caches fill) before we look
    png = encode(xray_like(420, 400, seed=9), "PNG")
    before = _files(_watched())
    at.file_uploader(key="dx_upload").set_value([("private_patient.png", png, "image/png"),
                                                ("private_scan.dcm", inputs.dicom(), "application/dicom")])
    at.run()
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "P(pneumonia)" in d.value.columns)
    assert len(table) == 2 * len(shipped_models)
    created = _files(_watched()) - before
    assert not created, f"files appeared during a diagnosis: {sorted(map(str, created))[:10]}"

"""Uploads stay in memory: a diagnosis opens no file for writing, and leaves no file behind.

Two independent checks over the same diagnosis (one PNG, one DICOM, every model):
- an audit hook (PEP 578) records every file this process opens for writing, wherever it is;
- the app's own temp directory (a fresh one, set as ``TMPDIR`` for the run), the project and
  ``~/.streamlit`` are listed before and after. Other processes' files are not watched.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests import inputs
from tests.helpers import ROOT, encode, xray_like

IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".git"}
_RECORDING: list | None = None  # set while a diagnosis runs


def _record_writes(event: str, args: tuple) -> None:
    if _RECORDING is None or event != "open":
        return
    path, mode, flags = args
    if isinstance(mode, str):
        writing = any(c in mode for c in "wax+")
    else:
        writing = bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
    if writing:
        _RECORDING.append(str(path))


sys.addaudithook(_record_writes)  # hooks cannot be removed; this one is idle outside the test


def _files(roots) -> set[Path]:
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_PARTS]
            found.update(Path(dirpath) / f for f in filenames)
    return found


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temp directory for the app alone: whatever it writes there is its own."""
    path = tmp_path / "app-tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def test_a_diagnosis_writes_no_files(shipped_models, private_tmp):
    global _RECORDING
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()  # models load (and any one-off caches fill) before we look
    png = encode(xray_like(420, 400, seed=9), "PNG")
    watched = [private_tmp, ROOT, *[p for p in [Path.home() / ".streamlit"] if p.exists()]]
    before = _files(watched)
    at.file_uploader(key="dx_upload").set_value([("private_patient.png", png, "image/png"),
                                                ("private_scan.dcm", inputs.dicom(), "application/dicom")])
    _RECORDING = []
    try:
        at.run()
    finally:
        opened, _RECORDING = _RECORDING, None
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "file" in d.value.columns)
    assert list(table["file"]) == ["private_patient.png", "private_scan.dcm"]  # both read (one row per file)
    assert not opened, f"files opened for writing during a diagnosis: {opened[:10]}"
    created = _files(watched) - before
    assert not created, f"files appeared during a diagnosis: {sorted(map(str, created))[:10]}"


def test_the_write_recorder_sees_a_write(tmp_path):
    """The audit hook would catch a diagnosis that saved the upload (a check that the check works)."""
    global _RECORDING
    _RECORDING = []
    try:
        (tmp_path / "upload.png").write_bytes(b"x")
        os.close(os.open(tmp_path / "raw.bin", os.O_WRONLY | os.O_CREAT))
        (tmp_path / "upload.png").read_bytes()
    finally:
        opened, _RECORDING = _RECORDING, None
    assert opened == [str(tmp_path / "upload.png"), str(tmp_path / "raw.bin")]

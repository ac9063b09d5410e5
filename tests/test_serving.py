"""The one serving path (core.inference): reading uploads, scoring batches, and every caller using it."""

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core import inference
from core.errors import ImageDecodeError
from tests import inputs
from tests.helpers import ROOT, encode, xray_like


def test_read_upload_decodes_once_and_summarises_dicom_without_identifiers():
    png = inference.read_upload(encode(xray_like(400, 300), "PNG"), "a.png")
    assert png.gray.shape == (224, 224) and png.gray.dtype == np.uint8 and png.dicom is None
    dcm = inference.read_upload(inputs.dicom(), "b.dcm")
    assert dcm.gray.shape == (224, 224) and dcm.dicom["modality"] and dcm.dicom["size"]
    assert inputs.SECRET_NAME not in str(dcm) and inputs.SECRET_ID not in str(dcm.dicom)


def test_read_upload_refuses_with_a_message_for_a_person():
    with pytest.raises(ImageDecodeError, match="'big.png' is .* MB; the limit is 1 MB"):
        inference.read_upload(b"x" * (2 * 2**20), "big.png", max_bytes=2**20)
    with pytest.raises(ImageDecodeError, match="not an image we can read"):
        inference.read_upload(b"hello", "notes.png")
    with pytest.raises(ImageDecodeError, match="does not exist"):
        inference.read_file(ROOT / "no-such-file.png")


class _Guard:
    """Flags images whose mean is above 100 (a stand-in for the real guard)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, gray):
        from core.ood import OODResult

        self.calls += 1
        return [OODResult(float(g.mean()), 100.0) for g in gray]


def test_score_checks_and_scores_a_batch_in_order(shipped_models):
    model = inference.load_model(shipped_models[0])
    grays = [np.full((224, 224), 30, np.uint8), xray_like(224, 224, seed=1), np.full((224, 224), 200, np.uint8)]
    guard = _Guard()
    found = inference.score(grays, [model], guard)
    assert guard.calls == 1 and [r.flagged for r in found] == [False, False, True]
    alone = [model.diagnose_gray(g)[0].probability for g in grays]
    assert [r.diagnoses[model.name].probability for r in found] == pytest.approx(alone, abs=1e-6)
    assert inference.score([], [model], guard) == [] and guard.calls == 1
    only_check = inference.score(grays[:1], [], guard)
    assert only_check[0].diagnoses == {} and only_check[0].ood is not None
    assert inference.score(grays[:1], [model])[0].ood is None


@pytest.fixture
def score_calls(monkeypatch):
    """Every call of core.inference.score, with how many images and which models it got."""
    calls = []
    original = inference.score

    def counting(grays, models=(), guard=None, lungs=None, batch_size=32, stated=None):
        calls.append((len(grays), tuple(m.name for m in models), guard is not None))
        return original(grays, models, guard, lungs, batch_size, stated)

    monkeypatch.setattr(inference, "score", counting)
    st.cache_data.clear()  # cached overlays from earlier tests would hide the calls
    return calls


def _app(page=None):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_diagnose_goes_through_score(score_calls, shipped_models, samples_dir):
    at = _app()
    data = (samples_dir / "person1314_virus_2269.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", data, "image/jpeg")).run()
    assert not at.exception and score_calls == [(1, tuple(shipped_models), True)]


def test_compare_goes_through_score(score_calls, shipped_models, data_dir):
    _app("pages/compare.py")
    assert (1, (), True) in score_calls and (1, tuple(shipped_models), False) in score_calls


def test_misclassified_goes_through_score(score_calls, shipped_models, data_dir):
    at = _app("pages/misclassified.py")
    assert not at.exception
    assert score_calls and all(models == (at.selectbox(key="mc_model").value,) for _, models, _ in score_calls)
    assert max(n for n, _, _ in score_calls) > 1  # a page of cases in one batch, not one by one


def test_the_cli_goes_through_score(score_calls, shipped_models, tmp_path, capsys):
    from core.predict import main

    files = []
    for i in range(2):
        files.append(tmp_path / f"x{i}.png")
        files[-1].write_bytes(encode(xray_like(300, 260, seed=i), "PNG"))
    assert main(["--json", *map(str, files)]) == 0
    assert score_calls == [(2, tuple(shipped_models), True)]
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 * len(shipped_models)


def test_an_upload_keeps_its_original_resolution_for_viewing():
    from core.inference import read_upload

    upload = read_upload(encode(xray_like(900, 700), "PNG"), "big.png")
    assert upload.gray.shape == (224, 224) and upload.original.shape == (900, 700)

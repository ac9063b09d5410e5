"""The prediction CLI contract: JSON lines, exit codes, bad files among good ones."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, encode, xray_like


def run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "core.predict", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "good.png").write_bytes(encode(xray_like(400, 380), "PNG"))
    (d / "good2.jpg").write_bytes(encode(xray_like(300, 300, seed=2), "JPEG"))
    (d / "notes.txt").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    return d


def test_json_lines_for_good_and_bad_files(files, shipped_models, tmp_path):
    good, bad = files / "good.png", files / "notes.txt"
    proc = run_cli("--json", "--heatmap-dir", tmp_path / "maps", good, bad, files / "missing.png", files / "good2.jpg")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    scored = [r for r in records if "probability" in r]
    errors = [r for r in records if "error" in r]
    assert len(scored) == 2 * len(shipped_models)
    assert {r["file"] for r in errors} == {str(bad), str(files / "missing.png")}
    for r in scored:
        # generated pictures may be flagged by the out-of-distribution guard: two fields more
        assert set(r) - {"ood", "reason", "warning"} == {"file", "model", "probability", "label", "threshold", "lung_share"}
        assert r.get("ood", True) is True and ("ood" in r) == ("warning" in r)
        assert 0 <= r["probability"] <= 1 and r["model"] in shipped_models
        assert r["label"] == ("PNEUMONIA" if r["probability"] >= r["threshold"] else "NORMAL")
    assert len(list((tmp_path / "maps").glob("*.png"))) == 2 * len(shipped_models)


def test_real_xray_lines_have_exactly_the_contract_fields(shipped_models, samples_dir):
    proc = run_cli("--json", samples_dir / "IM-0027-0001.jpeg")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["model"] for r in records] == shipped_models
    assert all(set(r) == {"file", "model", "probability", "label", "threshold", "lung_share"} for r in records)


def test_an_entered_adult_age_withholds_files_that_state_none(shipped_models, samples_dir, tmp_path):
    from PIL import Image

    from tests import inputs

    child = np.asarray(Image.open(samples_dir / "IM-0027-0001.jpeg").convert("L").resize((224, 224)))
    (tmp_path / "four.dcm").write_bytes(inputs.dicom(child, age="004Y"))
    proc = run_cli("--json", "--age", "45", "--model", shipped_models[0], samples_dir / "IM-0027-0001.jpeg",
                   tmp_path / "four.dcm")
    assert proc.returncode == 0, proc.stderr
    jpeg, dicom = (json.loads(line) for line in proc.stdout.splitlines())
    assert jpeg["ood"] is True and jpeg["reason"] == "an adult's film, by the age entered"
    assert "entered as 45 years" in jpeg["warning"]
    assert "ood" not in dicom  # its header states 4 years, and the file's own word wins


def test_all_good_exits_zero_and_plain_text(files, shipped_models):
    proc = run_cli("--model", shipped_models[0], files / "good.png")
    assert proc.returncode == 0, proc.stderr
    assert "P(pneumonia)=" in proc.stdout


@pytest.mark.parametrize("args, message", [(["--model", "nope", "x.png"], "unknown model"), ([], "no files"),
                                           (["--age", "200", "x.png"], "not an age in years")])
def test_usage_errors_exit_two(args, message, shipped_models):
    proc = run_cli(*args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_matches_the_library(files, shipped_models):
    from core.inference import load_model

    name = shipped_models[-1]
    proc = run_cli("--json", "--model", name, files / "good.png")
    record = json.loads(proc.stdout.splitlines()[0])
    lib = load_model(name).diagnose_bytes((files / "good.png").read_bytes())
    assert record["probability"] == pytest.approx(lib.probability, abs=1e-5)
    assert np.isfinite(lib.signed_cam).all()

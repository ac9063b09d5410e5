"""A site's operating point: reading labelled uploads, choosing the threshold, the profile round trip."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import ImageDecodeError
from core.site import (
    SiteProfile,
    operating_point,
    predictive_values,
    profile_from_json,
    read_labelled_files,
    read_labelled_zip,
)


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_zip_is_read_by_its_folders_and_says_what_it_left_out():
    files, notes = read_labelled_zip(_zip({"site/NORMAL/a.png": b"1", "site/pneumonia/b.png": b"2",
                                           "readme.txt": b"x", "__MACOSX/NORMAL/._a.png": b"junk"}))
    assert sorted((f.name, f.label) for f in files) == [("site/NORMAL/a.png", 0), ("site/pneumonia/b.png", 1)]
    assert notes == ["readme.txt: not under a NORMAL/ or PNEUMONIA/ folder, left out"]
    with pytest.raises(ImageDecodeError, match="not a zip"):
        read_labelled_zip(b"plain bytes")
    with pytest.raises(ImageDecodeError, match="no files under"):
        read_labelled_zip(_zip({"other/a.png": b"1"}))


def test_files_are_labelled_by_a_csv():
    table = b"filename,label\na.png,NORMAL\nb.png,pneumonia\nc.png,maybe\nd.png,NORMAL\n"
    files, notes = read_labelled_files({"a.png": b"1", "b.png": b"2", "e.png": b"3"}, table)
    assert [(f.name, f.label) for f in files] == [("a.png", 0), ("b.png", 1)]
    assert any("c.png" in n and "neither" in n for n in notes) and any("e.png: not in the CSV" in n for n in notes)
    assert any("d.png: in the CSV but not uploaded" in n for n in notes)
    with pytest.raises(ImageDecodeError, match="header"):
        read_labelled_files({"a.png": b"1"}, b"name,class\na.png,NORMAL\n")


def test_the_operating_point_follows_the_rule_and_has_intervals():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    p = np.clip(np.r_[rng.normal(0.3, 0.15, 200), rng.normal(0.7, 0.15, 200)], 0, 1)
    youden = operating_point(y, p, n_resamples=200)
    assert 0.4 < youden["threshold"] < 0.6 and youden["sensitivity"] > 0.85 and youden["specificity"] > 0.85
    lo, hi = youden["ci95"]["threshold"]
    assert lo <= youden["threshold"] <= hi and hi - lo < 0.2
    strict = operating_point(y, p, "sensitivity", 0.99, n_resamples=200)
    assert strict["sensitivity"] >= 0.99 and strict["threshold"] < youden["threshold"]
    assert strict["specificity"] < youden["specificity"]
    with pytest.raises(ValueError, match="two of each class"):
        operating_point([1, 1, 1, 0], [0.9, 0.8, 0.7, 0.1])


def test_predictive_values_follow_bayes():
    pv = predictive_values(0.9, 0.8, 0.3)
    assert pv["ppv"] == pytest.approx(0.27 / (0.27 + 0.14)) and pv["npv"] == pytest.approx(0.56 / (0.56 + 0.03))
    assert predictive_values(0.0, 1.0, 0.5)["ppv"] is None  # nothing is called pneumonia


def test_a_profile_round_trips_and_refuses_other_weights():
    point = {"threshold": 0.61, "rule": "youden", "required_sensitivity": None, "sensitivity": 0.9,
             "specificity": 0.8, "n": 40, "n_pneumonia": 20}
    profile = SiteProfile.from_point("Clinic A", "finetuned", "ab" * 32, point)
    assert profile_from_json(profile.to_json(), {"finetuned": "ab" * 32}) == profile
    with pytest.raises(ImageDecodeError, match="other weights"):
        profile_from_json(profile.to_json(), {"finetuned": "cd" * 32})
    with pytest.raises(ImageDecodeError, match="does not have"):
        profile_from_json(profile.to_json(), {"transfer": "ab" * 32})
    with pytest.raises(ImageDecodeError, match="not a site operating-point profile"):
        profile_from_json(json.dumps({"threshold": 0.5}).encode(), {"finetuned": "ab" * 32})
    with pytest.raises(ImageDecodeError, match="not a site"):
        profile_from_json(b"\xff\xfe", {"finetuned": "ab" * 32})


def test_split_half_accuracy_chooses_on_one_half_of_the_patients_and_scores_the_other():
    from core.site import split_half_accuracy

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(100), 2)  # two images per patient
    y = np.repeat(rng.integers(0, 2, 100), 2)
    perfect = split_half_accuracy(y, np.where(y == 1, 0.9, 0.1), patients)
    assert len(perfect) == 20 and set(perfect) == {1.0}
    noise = split_half_accuracy(y, rng.random(200), patients, halvings=50)
    assert 0.35 < np.mean(noise) < 0.65  # a threshold chosen on noise does not carry to the other half


def test_the_site_page_quotes_what_split_half_accuracy_gives_on_the_test_set(shipped_models, data_dir):
    """The reference numbers on the Site page are the shipped finetuned and lungfocus models', measured by the
    function, beside their accuracy at the validation threshold (metrics.json)."""
    import csv

    from core.data import list_split
    from core.registry import load_metrics, models_dir
    from core.site import split_half_accuracy

    quoted = {"finetuned": "the fine-tuned model accuracy ", "lungfocus": "`lungfocus` "}
    if not set(quoted) <= set(shipped_models):
        pytest.skip("the Site page quotes the shipped finetuned and lungfocus models")
    patient = {s.name: s.patient for s in list_split(data_dir, "test")}
    page = (Path(__file__).resolve().parents[1] / "pages" / "site.py").read_text().replace('"\n        "', "")
    for name, words in quoted.items():
        with open(models_dir() / name / "test_predictions.csv") as f:
            rows = list(csv.DictReader(f))
        accs = split_half_accuracy([r["label"] == "PNEUMONIA" for r in rows], [float(r["probability"]) for r in rows],
                                   [patient[r["filename"]] for r in rows])
        at_card = load_metrics(name)["at_card_threshold"]["accuracy"]
        assert f"{words}{min(accs):.3f}–{max(accs):.3f} (mean {np.mean(accs):.3f}) against {at_card:.3f}" in page, name

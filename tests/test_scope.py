"""The scope check (core.scope): one-class on pediatric X-rays, statistics chosen on pediatric data alone;
adult films are withheld with the reason, and pediatric test X-rays keep passing in every variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.ood import OODResult
from core.scope import fit_scope


def _views(rng, n, shift_b=0.0, shift_a=0.0):
    return {"a": rng.normal(shift_a, 1, (n, 6)), "b": rng.normal(shift_b, 1, (n, 6))}


def test_a_statistic_that_moves_with_the_encoding_is_left_out_and_far_images_score_high():
    rng = np.random.default_rng(0)
    train = _views(rng, 2000)
    val = [_views(rng, 4000), _views(rng, 4000), _views(rng, 4000, shift_b=3.0)]  # "b" moves in the last variant
    model, choice = fit_scope(train, val)
    assert model.names == ["a"] and not choice["b"]["kept"] and choice["b"]["variant_rates_beyond_own_cutoff"][1] > 0.5
    inside, outside = model.score(_views(rng, 500)), model.score(_views(rng, 500, shift_a=3.0))
    assert np.mean(inside > model.cutoff) < 0.02 and np.mean(outside > model.cutoff) > 0.95
    with pytest.raises(ValueError, match="No statistic"):
        fit_scope(train, [val[0], _views(rng, 600, shift_a=3.0, shift_b=3.0)])


def test_an_out_of_scope_result_is_withheld_with_its_reason():
    ok = OODResult(1.0, 2.0, scope_score=1.0, scope_cutoff=2.0)
    adult = OODResult(1.0, 2.0, scope_score=3.0, scope_cutoff=2.0)
    assert not ok.flagged and ok.warning == "" and ok.reason == ""
    assert adult.flagged and "children aged one to five" in adult.warning and "adult" in adult.reason
    assert not OODResult(1.0, 2.0).flagged  # no scope check shipped: as before


@pytest.fixture(scope="module")
def check():
    from core.ood import OODCheck

    try:
        found = OODCheck()
    except FileNotFoundError:
        pytest.skip("no out-of-distribution guard under models/ood")
    if found.scope is None:
        pytest.skip("no scope check under models/ood (python -m core.scope_fit)")
    return found


def _adult_readings(check, data_dir):
    from core.inference import read_upload

    folder = data_dir.parent / "adult_samples"
    if not folder.is_dir():
        pytest.skip("adult samples (../shared/data/adult_samples) not present")
    files = sorted(folder.glob("*.png"))
    assert len(files) == 2
    return dict(zip([f.name for f in files], check(np.stack([read_upload(f.read_bytes(), f.name).gray for f in files])),
                    strict=True))


def test_an_adult_film_is_withheld_as_not_a_young_childs(check, data_dir):
    found = _adult_readings(check, data_dir)["adult_2.png"]
    assert found.out_of_scope and found.reason == "not a young child's film (an adult's?)"
    assert "children aged one to five" in found.warning


@pytest.mark.xfail(strict=True, reason="issue 14 part 6 not met: since checks v3 adult_1.png passes both checks (v6: "
                                       "guard 1.60 < 2.30, scope 2.66 < 3.07; docs/scope.md)")
def test_every_adult_film_is_withheld(check, data_dir):
    assert all(r.flagged for r in _adult_readings(check, data_dir).values())


def test_pediatric_test_xrays_pass_the_checks_in_every_variant(data_dir):
    """At least 98 % of the official test X-rays pass the guard and the scope check (where shipped), as their copies
    and as each served variant (the issue's bar)."""
    from core.augment import VARIANTS, served_variant
    from core.data import list_split, load_images
    from core.ood import OODCheck

    try:
        check = OODCheck()
    except FileNotFoundError:
        pytest.skip("no out-of-distribution guard under models/ood")

    gray = load_images(list_split(data_dir, "test"))
    for variant in (None, *VARIANTS):
        images = gray if variant is None else np.stack([served_variant(g, variant) for g in gray])
        passed = 1 - np.mean([r.flagged for i in range(0, len(images), 64) for r in check(images[i : i + 64])])
        assert passed >= 0.98, (variant, passed)


def test_refitting_the_guard_keeps_the_scope_checks_record(tmp_path):
    import json

    from core.guards import fit_guard

    rng = np.random.default_rng(0)
    (tmp_path / "card.json").write_text(json.dumps({"name": "ood", "scope": {"weights_sha256": "abc"}}))
    fit_guard(rng.normal(size=(200, 8)), rng.normal(size=(50, 8)), n_components=4).save(tmp_path, {"name": "ood"})
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["scope"] == {"weights_sha256": "abc"} and card["weights_file"] == "guard.npz"


def test_a_dicom_header_that_states_an_adults_age_withholds_the_film():
    """Part 6's one certain signal, where a file carries it: the header's PatientAge (DICOM "AS" form)."""
    from core.dicom import AGE_KEY, patient_age_years
    from core.inference import read_upload, score
    from core.ood import OODResult
    from tests import inputs

    assert [patient_age_years(v) for v in ("045Y", "003Y", "018M", "006W", "010D", "095Y", "", None, "45", "0X3Y")] \
        == [45.0, 3.0, 1.5, 0.11, 0.03, 90.0, None, None, None, None]
    adult, child = (read_upload(inputs.dicom(age=a), f"{a}.dcm") for a in ("045Y", "004Y"))
    undated = read_upload(inputs.dicom(), "plain.dcm")
    assert adult.stated_age == 45.0 and adult.dicom[AGE_KEY] == 45.0 and child.stated_age == 4.0
    assert undated.stated_age is None and AGE_KEY not in undated.dicom
    def passing_guard(batch):
        return [OODResult(score=1.0, cutoff=2.0) for _ in batch]

    uploads = [adult, child, undated]
    readings = score([u.gray for u in uploads], guard=passing_guard, stated=[u.stated for u in uploads])
    held = readings[0]
    assert held.flagged and held.ood.reason == "an adult's film, by its DICOM header"
    assert "45 years" in held.ood.warning and "children aged one to five" in held.ood.warning
    assert not readings[1].flagged and not readings[2].flagged
    assert score([adult.gray], stated=[adult.stated])[0].ood is None  # no guard asked for: nothing to add to


def test_the_cli_withholds_a_real_xray_whose_header_says_adult_by_age_or_by_size(data_dir, shipped_models, tmp_path):
    """The same pediatric test X-ray as four DICOM files: stated a 45-year-old's or a 4-year-old's; and with a pixel
    size by which its lungs span an adult's width (2 mm per pixel over 224 columns) or a child's (1 mm)."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from tests import inputs
    from tests.helpers import ROOT

    sample = sorted((data_dir / "test" / "NORMAL").glob("*.jpeg"))[0]
    pixels = np.asarray(Image.open(sample).convert("L"))
    files = {"045Y": inputs.dicom(pixels, age="045Y"), "004Y": inputs.dicom(pixels, age="004Y"),
             "2mm": inputs.dicom(pixels, spacing=(2.0, 2.0)), "1mm": inputs.dicom(pixels, imager_spacing=(1.0, 1.0))}
    for stem, data in files.items():
        (tmp_path / f"{stem}.dcm").write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "core.predict", "--json", "--model", "finetuned",
                           *(tmp_path / f"{stem}.dcm" for stem in files)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = {Path(r["file"]).stem: r for r in map(json.loads, proc.stdout.splitlines())}
    assert lines["045Y"]["ood"] is True and lines["045Y"]["reason"] == "an adult's film, by its DICOM header"
    assert not lines["004Y"].get("ood")  # the same pediatric X-ray, stated as a 4-year-old's, passes
    assert lines["2mm"]["ood"] is True and lines["2mm"]["reason"] == "an adult's size, by its DICOM pixel size"
    assert "PixelSpacing" in lines["2mm"]["warning"] and " cm across" in lines["2mm"]["warning"]
    assert not lines["1mm"].get("ood")  # 22.4 cm of image: a child's lungs


def test_the_header_pixel_size_gives_the_image_width_in_cm():
    from core.dicom import WIDTH_FROM_KEY, WIDTH_KEY, Stated, stated
    from core.inference import read_upload
    from tests import inputs

    def read(**header):
        return read_upload(inputs.dicom(**header), "film.dcm")

    calibrated = read(spacing=(0.2, 0.15), imager_spacing=(0.3, 0.3), age="004Y")
    cols = calibrated.dicom["size"].split(" ")[0]
    assert calibrated.dicom[WIDTH_KEY] == round(int(cols) * 0.15 / 10, 2)  # PixelSpacing first; its column spacing
    assert calibrated.stated == Stated(4.0, calibrated.dicom[WIDTH_KEY], "PixelSpacing")
    assert read(imager_spacing=(0.3, 0.25)).dicom[WIDTH_FROM_KEY] == "ImagerPixelSpacing"
    for implausible in ((0.0, 0.0), (-1.0, -1.0), (9.0, 9.0)):  # not believed: no width
        assert WIDTH_KEY not in read(spacing=implausible).dicom
    assert read(spacing=(0.0, 0.0), imager_spacing=(0.2, 0.2)).dicom[WIDTH_FROM_KEY] == "ImagerPixelSpacing"
    assert read().stated == Stated() and stated(None) is None
    # an entered age applies only where the header states none, capped at 90 like the header's
    assert calibrated.stated.with_entered_age(45) == calibrated.stated
    assert Stated().with_entered_age(97) == Stated(age_years=90.0, age_entered=True)
    assert Stated().with_entered_age(None) == Stated()


def test_lungs_an_adults_width_across_are_withheld_by_the_header_pixel_size():
    """Two lung-shaped blocks spanning 165 of 224 columns: 29.5 cm on a 40 cm image (withheld), 18.4 cm on 25 cm."""
    from core.dicom import Stated
    from core.inference import score
    from core.lungs import lung_span
    from core.ood import ADULT_LUNG_WIDTH_CM, stated_size_note

    mask = np.zeros((224, 224), bool)
    mask[40:190, 30:100] = mask[40:190, 125:195] = True
    assert lung_span(mask) == pytest.approx(165 / 224)
    stray = mask.copy()
    stray[5, 0] = True  # one stray pixel does not widen the lungs
    assert lung_span(stray) == pytest.approx(165 / 224) and lung_span(np.zeros((4, 4), bool)) is None
    assert stated_size_note(25.0, mask) is None and stated_size_note(None, mask) is None
    assert stated_size_note(40.0, None) is None
    exactly = ADULT_LUNG_WIDTH_CM / (165 / 224)
    assert stated_size_note(exactly * 1.001, mask) is not None and stated_size_note(exactly * 0.999, mask) is None

    class Lungs:  # the segmenter's interface, answering with the blocks (or nothing, for the second image)
        def masks(self, batch):
            return np.stack([mask, np.zeros_like(mask)])[: len(batch)]

    def passing_guard(batch):
        return [OODResult(score=1.0, cutoff=2.0) for _ in batch]

    grays = np.zeros((2, 224, 224), np.uint8)
    adult, child = Stated(width_cm=40.0, width_from="PixelSpacing"), Stated(width_cm=25.0)
    held, no_lungs = score(grays, guard=passing_guard, lungs=Lungs(), stated=[adult, adult])
    assert held.flagged and held.ood.reason == "an adult's size, by its DICOM pixel size"
    assert "29.5 cm across" in held.ood.warning and "(PixelSpacing)" in held.ood.warning
    # without a plausible pair of lungs there is nothing to measure: that is the message
    assert no_lungs.ood.size_note is None and no_lungs.ood.reason == "no plausible pair of lungs"
    assert not score(grays[:1], guard=passing_guard, lungs=Lungs(), stated=[child])[0].flagged
    assert not score(grays[:1], guard=passing_guard, lungs=Lungs(), stated=[None])[0].flagged
    assert not score(grays[:1], guard=passing_guard, lungs=Lungs())[0].flagged


def test_the_checks_read_the_input_their_card_names(tmp_path):
    """Checks v2 blur the image before their Lite0 pass: the extractor follows the spec, the check reads the spec from
    the guard's card, and a scope check fitted on other input than the guard reads is refused."""
    import json

    from core.guards import fit_guard
    from core.ood import OODCheck, feature_extractor, guard_spec
    from core.preprocessing import InputSpec, low_pass
    from core.registry import sha256_file
    from core.scope import ScopeModel
    from tests.helpers import xray_like

    gray = np.stack([xray_like(224, 224, seed=s) for s in range(3)])
    blurred = InputSpec(blur_sigma=2.0)
    np.testing.assert_allclose(feature_extractor(spec=blurred)(gray), feature_extractor()(low_pass(gray, 2.0)),
                               rtol=1e-4, atol=1e-4)

    rng = np.random.default_rng(0)
    fit_guard(rng.normal(size=(80, 8)), rng.normal(size=(20, 8)), n_components=4).save(
        tmp_path / "ood", {"name": "ood", "preprocessing": blurred.to_dict()})
    assert guard_spec(tmp_path) == blurred
    ScopeModel(["block4_add.std"], [np.zeros(40)], [np.ones(40)], [np.eye(40)], [1.0], 2.0).save(tmp_path / "ood" / "scope.npz")
    card = json.loads((tmp_path / "ood" / "card.json").read_text())
    card["scope"] = {"weights_sha256": sha256_file(tmp_path / "ood" / "scope.npz")}  # fitted before v2: plain input
    (tmp_path / "ood" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="refit it"):
        OODCheck(tmp_path)


def test_checks_v2_fit_on_blurred_views_and_serve_what_they_were_fitted_on(tmp_path, monkeypatch):
    """`python -m core.ood --encoding-views 1 --blur-sigma 2` then `python -m core.scope_fit --encoding-views 1` on tiny
    data: both cards record the blurred input and the views, and the check built from them runs."""
    import functools
    import json

    from core import ood, scope_fit
    from core.guards import KNNGuard, load_guard
    from core.preprocessing import InputSpec
    from tests.helpers import tiny_dataset

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    # five validation images cannot meet the 1 % variant rule; here the fit's plumbing is under test, not its rule
    monkeypatch.setattr(scope_fit, "fit_scope", functools.partial(scope_fit.fit_scope, max_variant_rate=1.0))
    data = tiny_dataset(tmp_path / "chest_xray", n=24)
    assert ood.main(["--data-dir", str(data), "--encoding-views", "1", "--blur-sigma", "2", "--out", str(tmp_path)]) == 0
    assert scope_fit.main(["--data-dir", str(data), "--encoding-views", "1", "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / "ood" / "card.json").read_text())
    assert card["encoding_views"] == 1 and card["preprocessing"]["blur_sigma"] == 2.0
    assert card["scope"]["encoding_views"] == 1 and card["scope"]["preprocessing"] == card["preprocessing"]
    check = ood.OODCheck(tmp_path)
    assert check.spec == InputSpec(blur_sigma=2.0) and len(check(np.zeros((2, 224, 224), np.uint8))) == 2
    # --validate measures them on the validation images and non-X-rays only, beside their files
    assert scope_fit.main(["--data-dir", str(data), "--validate", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ood" / "validation_report.json").read_text())
    assert set(result["validation"]) == {"copies", "jpeg_q50", "jpeg_q95", "up4_png", "up4_jpeg_q90"}
    assert result["non_xray_images"] == 25 and 0 <= result["non_xray_refused_by_guard"] <= result["non_xray_refused"] <= 1
    # --joint-cutoff (checks v3): both cut-offs times one factor, recorded; run again, the same; a scope refit undoes it
    separate = card["cutoff"], card["scope"]["cutoff"]
    assert scope_fit.main(["--data-dir", str(data), "--joint-cutoff", "--out", str(tmp_path)]) == 0
    joint = json.loads((tmp_path / "ood" / "card.json").read_text())
    record = joint["joint_cutoff"]
    assert record["separate_cutoffs"] == {"guard": separate[0], "scope": separate[1]}
    assert joint["cutoff"] == pytest.approx(record["scale"] * separate[0])
    assert joint["scope"]["cutoff"] == pytest.approx(record["scale"] * separate[1])
    check = ood.OODCheck(tmp_path)  # the rewritten files match their card's sha256
    assert (check.guard.cutoff, check.scope.cutoff) == (joint["cutoff"], joint["scope"]["cutoff"])
    assert scope_fit.main(["--data-dir", str(data), "--joint-cutoff", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "ood" / "card.json").read_text())["joint_cutoff"]["scale"] == pytest.approx(record["scale"])
    assert scope_fit.main(["--data-dir", str(data), "--encoding-views", "1", "--out", str(tmp_path)]) == 0
    refit = json.loads((tmp_path / "ood" / "card.json").read_text())
    assert "joint_cutoff" not in refit and refit["cutoff"] == separate[0] and load_guard(tmp_path).cutoff == separate[0]
    # checks v5: a nearest-neighbour guard refitted over a joint cut-off gives the scope check its own cut-off back
    assert scope_fit.main(["--data-dir", str(data), "--joint-cutoff", "--out", str(tmp_path)]) == 0
    assert ood.main(["--data-dir", str(data), "--encoding-views", "1", "--blur-sigma", "2", "--method", "knn",
                     "--out", str(tmp_path)]) == 0
    knn = json.loads((tmp_path / "ood" / "card.json").read_text())
    assert "joint_cutoff" not in knn and knn["scope"]["cutoff"] == pytest.approx(separate[1])
    assert knn["method"].startswith("distance to the 10th nearest training row")
    check = ood.OODCheck(tmp_path)  # both files match their card's sha256 again
    assert isinstance(check.guard, KNNGuard) and check.scope.cutoff == pytest.approx(separate[1])
    assert len(check(np.zeros((2, 224, 224), np.uint8))) == 2


def test_the_nearest_neighbour_guard_measures_distance_to_the_kth_training_row(tmp_path):
    """Checks v5: the score is the distance to the k-th nearest training row after scaling to unit length, so an
    image's brightness-like scale does not count, an image amid the training rows scores low and one away from all
    of them high; the cut-off passes 99.5 % of the validation rows; the file gives back the same scores."""
    from core.guards import KNNGuard, fit_knn_guard, load_guard

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 3
    train = np.concatenate([c + rng.normal(size=(300, 16)) * 0.3 for c in centres])
    val = np.concatenate([c + rng.normal(size=(100, 16)) * 0.3 for c in centres])
    guard = fit_knn_guard(train, val, k=10, n_components=16)
    assert isinstance(guard, KNNGuard) and guard.bank.dtype == np.float16 and guard.bank.shape == (600, 16)
    assert np.mean(guard.score(val) <= guard.cutoff) == pytest.approx(0.995, abs=0.005)
    between = (centres[0] + centres[1]) / 2  # inside a Gaussian fitted to both clusters, near neither
    assert guard.score(between)[0] > guard.cutoff > guard.score(centres[0])[0]
    np.testing.assert_allclose(guard.score(5 * val[:20]), guard.score(val[:20]), rtol=1e-4, atol=1e-4)
    exact = KNNGuard(guard.mean, guard.components, guard.bank, 1, guard.cutoff)
    assert exact.score(exact.bank[:1].astype(np.float32) @ exact.components + exact.mean)[0] < 0.05
    guard.save(tmp_path / "ood", {"name": "ood"})
    loaded = load_guard(tmp_path)
    assert isinstance(loaded, KNNGuard) and loaded.k == 10 and loaded.cutoff == guard.cutoff
    np.testing.assert_allclose(loaded.score(val), guard.score(val), rtol=1e-6)


def test_joint_scale_lets_the_pass_rate_through_both_checks():
    from core.scope_fit import joint_scale

    rng = np.random.default_rng(0)
    guard, scope = rng.gamma(4.0, size=4000), rng.gamma(6.0, size=4000)
    g_cut, s_cut = np.quantile(guard, 0.995), np.quantile(scope, 0.995)
    assert np.mean((guard > g_cut) | (scope > s_cut)) > 0.008  # two separate 99.5 % cut-offs withhold about 1 %
    c = joint_scale(guard, g_cut, scope, s_cut)
    assert c > 1 and np.mean((guard > c * g_cut) | (scope > c * s_cut)) == pytest.approx(0.005, abs=0.0005)


def test_the_checks_table_counts_both_checks_and_names_what_only_the_scope_check_refuses():
    from core.ood_report import guard_table

    result = {"cutoff": 2.0, "scope_cutoff": 3.0, "test_xrays": 4, "test_xrays_passing": 0.75,
              "test_xrays_passing_guard": 1.0, "non_xray_images": 3, "non_xray_refused": 2 / 3,
              "non_xray_refused_by_guard": 1 / 3, "non_xray_scores": {"photo:a": 1.5, "noise:b": 9.0, "photo:c": 1.0},
              "non_xray_scope_scores": {"photo:a": 10.0, "noise:b": 1.0, "photo:c": 2.0},
              "lowest_non_xray_score": 1.0, "highest_test_xray_score": 1.9}
    table = guard_table(result)
    assert "| 75.0 % (3 of 4) | 100.0 % (4 of 4) |" in table and "| 67 % (2 of 3) | 33 % (1 of 3) |" in table
    assert "refused by the scope check (cut-off 3.00): `photo:a` (guard 1.50, scope 10.00)." in table
    assert "passed by both checks (cut-off 3.00): `photo:c`" in table

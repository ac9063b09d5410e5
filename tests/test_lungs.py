"""Lung masks, explanation quality against them, and the invariance measurement."""

import numpy as np
import pytest

from core.augment import VARIANTS, encode_variant
from core.errors import DatasetNotFoundError
from core.invariance import compare, invariance_table, measure
from core.lungs import dice, explanation_quality, find_mask_dir, lung_energy, pointing_hit, template_index
from tests.helpers import encode, xray_like

MASK = np.zeros((224, 224), bool)
MASK[40:180, 20:100] = MASK[40:180, 124:204] = True


def test_dice_counts_overlap():
    assert dice(MASK, MASK) == 1.0 and dice(MASK, ~MASK) == 0.0
    assert dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    half = MASK.copy()
    half[:, :112] = False
    assert dice(half, MASK) == pytest.approx(2 * half.sum() / (half.sum() + MASK.sum()))
    assert dice(np.stack([MASK, half]), np.stack([MASK, MASK])).shape == (2,)


def test_energy_and_pointing_game():
    assert lung_energy(MASK.astype(float), MASK) == 1.0
    assert lung_energy(np.ones((224, 224)), MASK) == pytest.approx(MASK.mean())
    assert np.isnan(lung_energy(np.zeros((224, 224)), MASK))
    heat = np.zeros((224, 224))
    heat[100, 60] = 1
    assert pointing_hit(heat, MASK) == 1.0
    heat[10, 112] = 2
    assert pointing_hit(heat, MASK) == 0.0
    assert np.isnan(pointing_hit(np.zeros((224, 224)), MASK))


def test_template_index_is_one_for_one_map_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    same = np.repeat(rng.random((1, 32, 32)), 10, axis=0)
    assert template_index(same) == pytest.approx(1.0)
    assert abs(template_index(rng.random((200, 32, 32)))) < 0.05


def test_explanation_quality_skips_empty_maps_and_missing_masks():
    heats = np.stack([MASK.astype(np.float32), np.zeros((224, 224), np.float32), np.ones((224, 224), np.float32)])
    masks, present = np.stack([MASK, MASK, MASK]), np.array([True, True, False])
    q = explanation_quality(heats, masks, present)
    assert q["images"] == 1 and q["empty_maps"] == 1 and q["lung_energy_mean"] == 1.0 and q["pointing_game"] == 1.0


def test_mask_folder_setting_must_hold_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMONIA_MASKS_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="does not hold lung masks"):
        find_mask_dir()
    (tmp_path / "test").mkdir()
    assert find_mask_dir() == tmp_path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_is_the_same_picture_in_another_file(variant):
    from PIL import Image, ImageFilter

    from core.inference import read_upload

    gray = np.asarray(Image.fromarray(xray_like(224, 224, seed=2)).filter(ImageFilter.GaussianBlur(1.5)))
    data = encode_variant(gray, variant)
    assert data[:2] in (b"\xff\xd8", b"\x89P")  # JPEG or PNG bytes, made in memory
    back = read_upload(data, variant).gray
    assert back.shape == (224, 224) and np.abs(back.astype(int) - gray).mean() < 3
    if variant == "up4_png":  # fast PNG compression, still lossless: the file holds the 4x bicubic picture exactly
        import io

        big = np.asarray(Image.fromarray(gray).resize((896, 896), Image.BICUBIC))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), big)


class _Reading:
    def __init__(self, p, threshold=0.5):
        from core.inference import Diagnosis

        self.diagnoses = {"m": Diagnosis("m", p, threshold, np.zeros((7, 7)))}


def test_compare_measures_probability_change_and_label_flips():
    r = compare([_Reading(0.2), _Reading(0.6)], [_Reading(0.25), _Reading(0.4)], ["m"])["m"]
    assert r["mean_abs_dp"] == pytest.approx(0.125) and r["max_abs_dp"] == pytest.approx(0.2)
    assert r["label_agreement"] == 0.5 and r["labels_flipped"] == 1
    # the flipped image lay 0.1 from the threshold; the one that kept its label 0.3
    assert r["flipped_distance_to_threshold"] == pytest.approx({"median": 0.1, "max": 0.1})
    assert r["copies_near_threshold"] == {"0.01": 0, "0.02": 0}
    near = compare([_Reading(0.495), _Reading(0.515), _Reading(0.9)], [_Reading(0.5), _Reading(0.49), _Reading(0.3)],
                   ["m"])["m"]
    assert near["copies_near_threshold"] == {"0.01": 1, "0.02": 2} and near["labels_flipped"] == 3
    assert near["flipped_distance_to_threshold"] == pytest.approx({"median": 0.015, "max": 0.4})
    assert compare([_Reading(0.2)], [_Reading(0.3)], ["m"])["m"]["flipped_distance_to_threshold"] is None


def test_measure_runs_every_variant_through_the_upload_path(tmp_path, shipped_models):
    from core.inference import load_model

    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        (tmp_path / "d" / "test" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "d" / "test" / label / f"IM-{i}-{label}.jpeg").write_bytes(
                encode(xray_like(224, 224, seed=i + 5 * len(label)), "JPEG"))
    result = measure([load_model(shipped_models[0])], None, tmp_path / "d")
    assert result["images"] == 4 and set(result["variants"]) == set(VARIANTS)
    for row in result["variants"].values():
        m = row["models"][shipped_models[0]]
        assert 0 <= m["mean_abs_dp"] <= m["max_abs_dp"] <= 1 and 0 <= m["label_agreement"] <= 1
    assert "fullres" not in result and shipped_models[0] in invariance_table(result)


def test_re_measuring_one_model_keeps_the_others_rows_of_the_invariance_file():
    """`python -m core.evaluate --invariance --model NAME` replaces NAME's rows and the guard's shares only."""
    from core.evaluate import merge_invariance

    def run(models, withheld, files=("a.jpeg",)):
        rows = {m: {"mean_abs_dp": dp, "label_agreement": 1.0} for m, dp in models.items()}
        return {"images": 624, "split": "official test", "bars": {}, "copies": {"withheld": withheld},
                "variants": {"jpeg_q50": {"models": rows, "withheld": withheld}},
                "fullres": {"files": list(files), "models": rows, "withheld_originals": [False]}}

    earlier = run({"a": 0.1, "b": 0.2}, 0.01)
    merged = merge_invariance(earlier, run({"b": 0.05}, 0.02))
    assert merged["variants"]["jpeg_q50"]["models"] == {"a": {"mean_abs_dp": 0.1, "label_agreement": 1.0},
                                                        "b": {"mean_abs_dp": 0.05, "label_agreement": 1.0}}
    assert merged["fullres"]["models"]["a"]["mean_abs_dp"] == 0.1 and merged["fullres"]["models"]["b"]["mean_abs_dp"] == 0.05
    assert merged["variants"]["jpeg_q50"]["withheld"] == merged["copies"]["withheld"] == 0.02
    assert earlier["variants"]["jpeg_q50"]["models"]["b"]["mean_abs_dp"] == 0.2  # the earlier record is not changed
    other = run({"b": 0.05}, 0.02)
    other["images"] = 522  # another image set (e.g. validation): nothing of the earlier file is kept
    assert merge_invariance(earlier, other) == other


def test_stretch_maps_the_percentiles_to_the_full_range():
    from core.invariance import stretch

    ramp = np.tile(np.arange(40, 141, dtype=np.uint8), (10, 1))
    out = stretch(ramp)
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out[0].astype(int)) >= 0)
    flat = np.full((8, 8), 77, np.uint8)
    assert np.array_equal(stretch(flat), flat) and np.array_equal(stretch(np.stack([ramp, ramp]))[1], out)


def test_input_change_measures_each_treatment_and_the_features_move():
    """`python -m core.evaluate --input-change` (docs/lungs.md §12): JPEG 50 changes the input more than JPEG 95,
    and the feature move is the variant's mean feature distance over the copies' spread."""
    from core.invariance import TREATMENTS, input_change, input_change_table

    copies = np.stack([xray_like(224, 224, seed=s) for s in range(4)])
    calls = []

    def features(view):  # a linear stand-in for the backbone, so the expected move can be computed here
        calls.append(view)
        return view.reshape(len(view), -1)[:, ::97].astype(np.float64)

    r = input_change(copies, 3.0, variants=("jpeg_q50", "jpeg_q95"), features=features)
    assert r["images"] == 4 and set(r["variants"]) == {"jpeg_q50", "jpeg_q95"}
    for t in TREATMENTS:
        assert r["variants"]["jpeg_q50"][t]["input_change"] > r["variants"]["jpeg_q95"][t]["input_change"] > 0
    # the equalised copies come second (TREATMENTS' order), then each variant's three treatments
    f0, f1 = features(calls[1]), features(calls[3 + 1])
    spread = np.linalg.norm(f0 - f0.mean(axis=0), axis=1).mean()
    expected = np.linalg.norm(f1 - f0, axis=1).mean() / spread
    assert r["variants"]["jpeg_q50"]["equalised"]["feature_move"] == pytest.approx(expected)
    assert "feature move: equalised" in input_change_table(r)
    assert "feature_move" not in input_change(copies, 0, variants=("jpeg_q95",))["variants"]["jpeg_q95"]["equalised"]


def test_input_change_refuses_too_few_images(tmp_path, data_dir, capsys):
    from core.evaluate import main

    assert main(["--input-change", "--images", "1", "--models-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 2
    assert "--images needs at least 2" in capsys.readouterr().err and not list(tmp_path.iterdir())

"""The committed models: cards, integrity, and reproducible test-set artifacts."""

import csv
import json
import shutil

import numpy as np
import pytest

from core.evaluation import full_report
from core.registry import ModelIntegrityError, load_card, load_keras_model, models_dir, sha256_file

CARD_FIELDS = {"name", "kind", "backbone", "input_shape", "preprocessing", "labels", "threshold", "threshold_rule",
               "gradcam_layer", "config", "seed", "data", "val_metrics", "weights_sha256", "date", "hardware",
               "training_time_s"}


def _predictions(name):
    with open(models_dir() / name / "test_predictions.csv") as f:
        return list(csv.DictReader(f))


def test_every_model_ships_its_artifacts(shipped_models):
    assert set(shipped_models) == {"baseline", "transfer", "finetuned", "lungfocus"}
    for name in shipped_models:
        folder = models_dir() / name
        for artifact in ("model.keras", "card.json", "history.csv", "test_predictions.csv", "metrics.json"):
            assert (folder / artifact).exists(), f"{name} lacks {artifact}"
        card = load_card(name)
        assert CARD_FIELDS <= set(card.to_dict())
        assert card.weights_sha256 == sha256_file(folder / "model.keras")
        assert 0 < card.threshold < 1
        assert (folder / "model.keras").stat().st_size < 25 * 2**20


def test_tampered_weights_are_refused(shipped_models, tmp_path):
    name = shipped_models[0]
    copy = tmp_path / name
    shutil.copytree(models_dir() / name, copy)
    data = bytearray((copy / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.keras").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the sha256"):
        load_keras_model(name, tmp_path)


def test_metrics_json_follows_from_the_predictions(shipped_models):
    for name in shipped_models:
        rows = _predictions(name)
        y = np.array([r["label"] == "PNEUMONIA" for r in rows], int)
        p = np.array([float(r["probability"]) for r in rows])
        shipped = json.loads((models_dir() / name / "metrics.json").read_text())
        again = full_report(y, p, load_card(name).decision_threshold)
        assert len(rows) == shipped["n"]
        for key in ("roc_auc", "pr_auc"):
            assert again[key] == pytest.approx(shipped[key], abs=1e-9)
        assert again["at_card_threshold"] == shipped["at_card_threshold"]
        assert again["ci95"].keys() == shipped["ci95"].keys()
        for key, interval in shipped["ci95"].items():
            assert again["ci95"][key] == (pytest.approx(interval, abs=1e-9) if isinstance(interval, list) else interval)


def test_a_handful_of_test_images_reproduce_the_predictions(shipped_models, data_dir):
    from core.inference import load_model
    from core.preprocessing import load_grayscale

    for name in shipped_models:
        rows = _predictions(name)
        pick = [rows[i] for i in np.linspace(0, len(rows) - 1, 6).astype(int)]
        model = load_model(name)
        for r in pick:
            gray = load_grayscale((data_dir / "test" / r["label"] / r["filename"]).read_bytes())
            assert model.diagnose_gray(gray)[0].probability == pytest.approx(float(r["probability"]), abs=1e-5)


def test_evaluate_reproduces_the_shipped_metrics(shipped_models, data_dir, tmp_path):
    from core.evaluate import evaluate_model

    for name in shipped_models:
        shutil.copytree(models_dir() / name, tmp_path / name, ignore=shutil.ignore_patterns("metrics.json", "test_*"))
        report = evaluate_model(name, data_dir, tmp_path)
        shipped = json.loads((models_dir() / name / "metrics.json").read_text())
        assert report["roc_auc"] == pytest.approx(shipped["roc_auc"], abs=1e-6)
        assert report["at_card_threshold"]["confusion_matrix"] == shipped["at_card_threshold"]["confusion_matrix"]


def test_validation_summary_reproduces_the_card(shipped_models, data_dir):
    """`python -m core.evaluate --split val` re-measures what training wrote into the card."""
    from core.evaluate import validation_summary

    for name in shipped_models:
        card, again = load_card(name), validation_summary(name, data_dir)
        assert again["roc_auc"] == pytest.approx(card.val_metrics["roc_auc"], abs=1e-4)
        assert again["at_card_threshold"]["accuracy"] == pytest.approx(card.val_metrics["accuracy"], abs=1.5 / 522)
        assert 0 < again["pr_auc"] <= 1


def test_cards_record_the_recipes_that_reproduce_them(shipped_models):
    """`python -m core.train NAME` today trains what the card says (options added later keep their defaults)."""
    from core.config import Recipe, get_recipe

    for name in shipped_models:
        config = {**load_card(name).config}
        config["input_size"] = tuple(config["input_size"])
        config["soup_seeds"] = tuple(config.get("soup_seeds", ()))
        config["consistency_grid"] = tuple(config.get("consistency_grid", ()))
        assert Recipe(**config) == get_recipe(name), name


def test_metrics_record_where_the_maps_lie_against_the_true_lungs(shipped_models):
    """`python -m core.evaluate` (or `--explanations`) measures every model's maps against the test lung masks."""
    for name in shipped_models:
        e = json.loads((models_dir() / name / "metrics.json").read_text())["explanation"]
        assert e["images"] + e["empty_maps"] == 624, name
        for key in ("lung_energy_mean", "lung_area_mean", "pointing_game"):
            assert 0 <= e[key] <= 1, (name, key)
        assert -1 <= e["template_index"] <= 1 and e["lung_area_mean"] == pytest.approx(0.341, abs=0.001)


def test_the_invariance_measurement_covers_every_model_and_variant(shipped_models):
    from core.augment import VARIANTS
    from core.registry import invariance_file

    result = json.loads(invariance_file().read_text())
    assert result["images"] == 624 and set(result["variants"]) == set(VARIANTS)
    for row in result["variants"].values():
        assert set(row["models"]) == set(shipped_models)

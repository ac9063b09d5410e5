"""``python -m core.train_timing``: a recipe's training time on generated data, without the dataset."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from core.train_timing import main, synthetic_dataset, time_training


def test_the_generated_dataset_has_aligned_lung_masks(tmp_path):
    data, masks = synthetic_dataset(tmp_path, per_class=3)
    images = sorted(p.relative_to(data / "train").with_suffix("") for p in (data / "train").rglob("*.jpeg"))
    assert len(images) == 6 and images == sorted(p.relative_to(masks / "train").with_suffix("")
                                                 for p in (masks / "train").rglob("*.png"))
    mask = np.asarray(Image.open(masks / "train" / "NORMAL" / "IM-0000-0001.png")) > 0
    image = np.asarray(Image.open(data / "train" / "NORMAL" / "IM-0000-0001.jpeg"), np.float32)
    assert 0.15 < mask.mean() < 0.5 and image[mask].mean() > image[~mask].mean() + 60  # bright lungs on a dark frame


def test_a_two_stage_lung_focused_recipe_is_timed_from_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMONIA_CACHE", "kept")
    monkeypatch.delenv("PNEUMONIA_MASKS_DIR", raising=False)
    result = time_training("lungfocus", per_class=10, epochs=2, work=tmp_path)
    assert result["recipe"] == "lungfocus" and result["train_images"] == 18 and result["steps_per_epoch"] == 1
    assert len(result["epoch_s"]) == 2 and all(s > 0 for s in result["epoch_s"])
    assert result["ms_per_step"] == [1000 * s for s in result["epoch_s"]]
    assert result["augmentation_layers"] and result["augmentation_ms_per_batch"] > 0
    assert result["step_ms_fixed_batch"] > 0  # v25's recipe: its pair trainer's step, two views
    assert result["backend"] == "tensorflow"
    assert os.environ["PNEUMONIA_CACHE"] == "kept" and "PNEUMONIA_MASKS_DIR" not in os.environ  # given back


def test_the_cli_prints_one_json_line(capsys):
    assert main(["--recipe", "baseline", "--per-class", "10", "--epochs", "1", "--no-augment"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["recipe"] == "baseline" and len(result["epoch_s"]) == 1
    assert result["augmentation_layers"] is False and result["augmentation_ms_per_batch"] is None


def test_too_few_images_for_a_validation_split_is_refused_with_a_reason(capsys):
    with pytest.raises(SystemExit):
        main(["--recipe", "baseline", "--per-class", "4"])
    assert "at least 10 images per class, not 4" in capsys.readouterr().err


def test_a_frozen_backbone_head_reports_the_whole_run_only(tmp_path):
    result = time_training("transfer", per_class=10, epochs=2, work=tmp_path)
    assert result["epoch_s"] is None and result["ms_per_step"] is None and result["step_ms_fixed_batch"] is None
    assert result["total_s"] > 0


def test_a_two_stage_recipe_without_a_shipped_stand_in_is_refused_with_a_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--recipe", "lungfocus", "--per-class", "10", "--models-dir", str(tmp_path)])
    assert "no model 'lungfocus'" in capsys.readouterr().err


def test_a_recipe_on_pairs_of_views_times_its_pair_trainer(monkeypatch):
    from core import train_timing
    from core.config import get_recipe
    from core.models import build_model

    calls = []
    real = train_timing.pair_trainer
    monkeypatch.setattr(train_timing, "pair_trainer", lambda model, spec: calls.append(spec) or real(model, spec))
    pairs = get_recipe("baseline").with_overrides(input_size=(64, 64), batch_size=4, consistency_weight=1.0, dropout=0.0)
    assert train_timing.time_step(build_model("baseline", None, (64, 64), dropout=0.0), pairs, repeats=1) > 0
    assert len(calls) == 1 and calls[0].size == (64, 64)
    plain = pairs.with_overrides(consistency_weight=0.0)
    assert train_timing.time_step(build_model("baseline", None, (64, 64), dropout=0.0), plain, repeats=1) > 0
    assert len(calls) == 1


def test_a_kept_recipe_is_timed_from_the_model_of_its_current_name(tmp_path):
    """'lungfocus_v23' (kept when v25 replaced it) has no model of its own: the shipped 'lungfocus', of the same build,
    stands in for its stage 1; a name without a version does not fall back."""
    from core.train_timing import stand_in_for

    (tmp_path / "lungfocus").mkdir()
    (tmp_path / "lungfocus" / "model.keras").write_bytes(b"")
    assert stand_in_for("lungfocus_v23", "lungfocus_v22", tmp_path) == tmp_path / "lungfocus"
    assert stand_in_for("lungfocus", "lungfocus_v22", tmp_path) == tmp_path / "lungfocus"
    with pytest.raises(ValueError, match="no model 'finetuned' in"):
        stand_in_for("finetuned", "transfer", tmp_path)
    (tmp_path / "lungfocus_v23").mkdir()
    (tmp_path / "lungfocus_v23" / "model.keras").write_bytes(b"")
    assert stand_in_for("lungfocus_v23", "lungfocus_v22", tmp_path) == tmp_path / "lungfocus_v23"  # its own first

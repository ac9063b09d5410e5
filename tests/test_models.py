"""Builders: output shapes, fixed layer names and which layers train."""

import keras
import numpy as np
import pytest

from core.models import GRADCAM_LAYERS, augmentation, baseline, build_model, input_spec_for, set_trainable_top


@pytest.mark.parametrize("kind, backbone", [("baseline", None), ("transfer", "efficientnet_lite0"),
                                            ("finetuned", "efficientnet_lite0"), ("transfer", "resnet50")])
def test_builders_output_and_names(kind, backbone):
    model = build_model(kind, backbone, (224, 224), weights=None)
    spec = input_spec_for(kind, backbone)
    assert model.input.shape[1:] == (224, 224, spec.channels)
    assert model.output.shape[1:] == (1,)
    for name in (GRADCAM_LAYERS[backbone or "baseline"], "avg_pool", "head_dropout", "logit", "prediction"):
        model.get_layer(name)
    x = np.zeros((2, 224, 224, spec.channels), np.float32)
    p = keras.ops.convert_to_numpy(model(x, training=False))
    assert p.shape == (2, 1) and np.all((p >= 0) & (p <= 1))


def test_transfer_trains_only_the_head():
    model = build_model("transfer", "efficientnet_lite0", weights=None)
    assert [w.path for w in model.trainable_weights] == ["logit/kernel", "logit/bias"]


def test_finetuned_unfreezes_the_top_layers_but_not_batchnorm():
    model = build_model("finetuned", "efficientnet_lite0", weights=None, trainable_top_layers=41)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert {"top_conv", "block15_project_conv", "block11_project_conv", "logit"} <= trainable
    assert "block10_project_conv" not in trainable and "stem_conv" not in trainable
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in trainable)


def test_set_trainable_top_counts_backbone_layers():
    model = build_model("transfer", "efficientnet_lite0", weights=None)
    assert len(set_trainable_top(model, 10)) == 10
    assert set_trainable_top(model, 0) == []


def test_baseline_is_a_small_cnn_from_scratch():
    model = baseline()
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "MaxPooling2D"} <= kinds
    assert model.count_params() < 500_000


def test_augmentation_only_changes_training_inputs():
    spec = input_spec_for("transfer", "efficientnet_lite0")
    aug = augmentation(spec)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    assert np.allclose(keras.ops.convert_to_numpy(aug(x, training=False)), x)
    assert not np.allclose(keras.ops.convert_to_numpy(aug(x, training=True)), x)

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


def test_lung_cell_pooling_averages_the_lung_cells_only():
    from core.models import LungCellPooling

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 7, 7, 5)).astype(np.float32)
    lungs = np.zeros((2, 224, 224, 1), np.float32)
    lungs[0, :, :96] = 1.0  # image 0: the left three cells of each row are lung
    pool = LungCellPooling()
    got = keras.ops.convert_to_numpy(pool([features, lungs]))
    w0 = np.full((7, 7), 1e-3)
    w0[:, :3] += 1.0
    assert np.allclose(got[0], (features[0] * w0[..., None]).sum(axis=(0, 1)) / w0.sum(), atol=1e-5)
    # no lungs at all: the plain average over the whole map
    assert np.allclose(got[1], features[1].mean(axis=(0, 1)), atol=1e-5)
    # a cell that is half lung gets no weight, three quarters lung half the weight (continuous)
    lungs[1, :, :] = 0.0
    lungs[1, :32, :16] = 1.0   # cell (0, 0): half lung
    lungs[1, 32:64, :24] = 1.0  # cell (1, 0): three quarters lung
    w = keras.ops.convert_to_numpy(pool.cell_weights(features, lungs))[1, ..., 0]
    assert w[0, 0] == pytest.approx(1e-3) and w[1, 0] == pytest.approx(0.5 + 1e-3) and w[3, 3] == pytest.approx(1e-3)


def test_a_lung_pooled_model_finds_its_lungs_in_its_own_pass_and_its_map_decomposes_the_logit():
    """The lungpool builder: one input, the decoder on the backbone's own taps; HiResCAM on top_activation sums,
    over the cells, to the logit (minus the bias), and a cell outside the lungs carries next to nothing."""
    from core.gradcam import GradCam
    from core.models import lungpool
    from core.segmenter import shipped_decoder

    model = lungpool(weights=None, decoder=shipped_decoder())
    assert len(model.inputs) == 1 and model.get_layer("avg_pool").__class__.__name__ == "LungCellPooling"
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]  # the dense head only
    x = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype(np.float32)
    prob, signed = GradCam(model, "top_activation", method="hirescam")(x)
    bias = float(model.get_layer("logit").get_weights()[1][0])
    logit = np.log(prob / (1 - prob))
    assert np.allclose(signed.sum(axis=(1, 2)) + bias, logit, atol=1e-3)
    probe = keras.Model(model.inputs, model.get_layer("avg_pool").input)  # [top_activation, P(lung)]
    features, lungs = (keras.ops.convert_to_numpy(t) for t in probe(x))
    w = keras.ops.convert_to_numpy(model.get_layer("avg_pool").cell_weights(features, lungs))[..., 0]
    contribution = features @ model.get_layer("logit").get_weights()[0][:, 0]
    assert np.allclose(signed, w / w.sum(axis=(1, 2), keepdims=True) * contribution, atol=1e-4)


def test_fine_tuning_a_lung_pooled_model_leaves_its_lung_decoder_and_the_taps_frozen():
    from core.segmenter import TAPS

    model = build_model("lungpool", "efficientnet_lite0", weights=None, trainable_top_layers=41)
    assert not model.get_layer("lung_decoder").trainable
    assert not any(w.trainable for w in model.get_layer("lung_decoder").weights)
    assert model.get_layer("top_conv").trainable and model.get_layer("logit").trainable
    for name in TAPS:  # the layers whose outputs the decoder reads are far below the top 41
        assert not model.get_layer(name).trainable
    body = [layer for layer in model.layers if layer.weights and layer.trainable]
    assert 0 < len(body) <= 42

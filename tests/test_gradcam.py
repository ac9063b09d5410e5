"""Grad-CAM properties on a tiny in-memory CNN, and equality with keras.io's recipe."""

import keras
import numpy as np
import pytest

from core.bench import reference_gradcam
from core.gradcam import (
    GradCam,
    border_share,
    central_share,
    class_map,
    colourise,
    normalise,
    overlay,
    upsample,
)
from core.models import baseline
from tests.helpers import xray_like


@keras.saving.register_keras_serializable(package="tests")
class CallCounter(keras.layers.Layer):
    """Identity layer that counts how many times the model body runs."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(3)
    model = baseline((64, 64), dropout=0.5)
    # give the head a non-trivial slope so both signs appear in the map
    k, b = model.get_layer("logit").get_weights()
    model.get_layer("logit").set_weights([np.random.default_rng(1).normal(0, 3, k.shape).astype("float32"), b])
    return model


def _batch(n=2):
    return np.stack([xray_like(64, 64, seed=i) for i in range(n)])[..., None].astype(np.float32) / 255.0


def test_probability_matches_the_model(tiny):
    x = _batch(3)
    prob, signed = GradCam(tiny, "last_conv")(x)
    assert np.allclose(prob, tiny.predict(x, verbose=0)[:, 0], atol=1e-5)
    assert signed.shape == (3, 4, 4)


def test_heatmap_properties(tiny):
    x = _batch(1)
    before = x.copy()
    _, signed = GradCam(tiny, "last_conv")(x)
    for target in ("PNEUMONIA", "NORMAL"):
        heat = normalise(upsample(class_map(signed[0], target), (64, 64)))
        assert heat.shape == (64, 64)
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert np.array_equal(x, before)


def test_normal_map_is_the_flipped_gradient(tiny):
    _, signed = GradCam(tiny, "last_conv")(_batch(1))
    assert np.array_equal(class_map(signed, "NORMAL"), np.maximum(-signed, 0))
    assert np.array_equal(class_map(signed), class_map(signed, "PNEUMONIA"))
    with pytest.raises(ValueError, match="Unknown class"):
        class_map(signed, "CAT")


def test_single_image_equals_batch_entry(tiny):
    x = _batch(2)
    cam = GradCam(tiny, "last_conv")
    _, both = cam(x)
    _, one = cam(x[1])
    assert np.allclose(both[1], one[0], atol=1e-5)


def test_fast_path_equals_keras_io_recipe(tiny):
    x = _batch(1)
    _, signed = GradCam(tiny, "last_conv")(x)
    ours = normalise(class_map(signed[0]))
    ref = reference_gradcam(tiny, x, "last_conv")
    assert ref.max() > 0 and ours.max() == 1.0
    assert np.abs(ours - ref).max() < 1e-4


def test_one_forward_pass_per_call():
    inputs = keras.Input((32, 32, 1))
    counter = CallCounter(name="counter")
    x = counter(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid", name="prediction")(logit))
    cam = GradCam(model, "last_conv")
    cam.warm_up()
    start = float(counter.calls.numpy())
    cam(np.zeros((1, 32, 32, 1), np.float32))
    assert float(counter.calls.numpy()) - start == 1.0


def test_no_retracing_for_new_inputs(tiny):
    cam = GradCam(tiny, "last_conv")
    for n in (1, 1, 3, 5):
        cam(np.random.default_rng(n).random((n, 64, 64, 1)).astype(np.float32))
    assert cam._run.experimental_get_tracing_count() == 1


def test_normalise_handles_flat_and_nan():
    assert np.array_equal(normalise(np.zeros((3, 3))), np.zeros((3, 3)))
    assert np.isfinite(normalise(np.array([[np.nan, 1.0], [2.0, np.inf]]))).all()


def test_overlay_shape_and_dtype():
    gray = xray_like(50, 40)
    heat = np.linspace(0, 1, 20).reshape(4, 5)
    out = overlay(gray, heat, alpha=0.5)
    assert out.shape == (50, 40, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(gray, upsample(heat, (50, 40)), alpha=0.0)[..., 0], gray)
    assert colourise(np.array([[0.0, 1.0]])).shape == (1, 2, 3)


def test_shipped_models_fast_path_equals_keras_io_recipe(shipped_models, data_dir):
    """The serving heatmap equals the tutorial recipe's within 1e-4 on real X-rays."""
    from core.data import list_split
    from core.inference import load_model
    from core.preprocessing import load_grayscale, to_model_input

    samples = list_split(data_dir, "test")
    picks = [samples[0], samples[-1]]  # one NORMAL, one PNEUMONIA
    compared = 0
    for name in shipped_models:
        model = load_model(name)
        for s in picks:
            gray = load_grayscale(s.path.read_bytes())
            d = model.diagnose_gray(gray)[0]
            ref = reference_gradcam(model.keras_model, to_model_input(gray, model.spec)[None], model.card.gradcam_layer,
                                    method=model.card.map_method)
            ours = normalise(class_map(d.signed_cam, "PNEUMONIA"))
            if ref.max() > 0 or ours.max() > 0:  # an all-negative map is 0/0 = NaN in the recipe
                assert np.abs(ours - np.nan_to_num(ref)).max() < 1e-4, (name, s.name)
                compared += 1
    assert compared >= len(shipped_models)


def test_central_share():
    assert central_share(np.ones((6, 9))) == pytest.approx(1 / 3)
    centre = np.zeros((6, 9))
    centre[:, 3:6] = 1
    assert central_share(centre) == 1.0
    assert np.isnan(central_share(np.zeros((4, 4))))


def test_border_share():
    uniform = np.ones((100, 100))
    assert border_share(uniform) == pytest.approx(1 - 0.88 * 0.84)
    inner = np.zeros((100, 100))
    inner[50:60, 40:60] = 1
    assert border_share(inner) == 0.0
    assert np.isnan(border_share(np.zeros((5, 5))))


def test_maps_fail_the_model_randomisation_check_as_they_should(shipped_models, data_dir):
    """Adebayo et al.'s sanity check: re-initialise the head and the maps must change (they depend on the model)."""
    from scipy.stats import spearmanr

    from core.data import list_split, load_images
    from core.inference import load_model
    from core.preprocessing import to_model_input

    model = load_model(shipped_models[-1])
    gray = load_images(list_split(data_dir, "test")[::16])
    before = [d.heatmap((224, 224), "PNEUMONIA") for d in model.diagnose_gray(gray)]
    rng = np.random.default_rng(0)
    logit = model.keras_model.get_layer("logit")
    kernel, bias = logit.get_weights()
    logit.set_weights([rng.normal(0, kernel.std() + 1e-3, kernel.shape).astype(kernel.dtype), bias])
    randomised = GradCam(model.keras_model, model.card.gradcam_layer)
    _, signed = randomised(to_model_input(gray, model.spec))
    after = [normalise(upsample(class_map(s, "PNEUMONIA"), (224, 224))) for s in signed]
    rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(before, after, strict=True) if a.max() > 0 and b.max() > 0]
    assert len(rho) > 10 and np.nanmean(rho) < 0.5, np.nanmean(rho)


def test_a_map_scaled_by_the_evidence_keeps_weak_findings_faint():
    from core.gradcam import colour_bar, colourise
    from core.inference import Diagnosis

    signed = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    weak, strong = (Diagnosis("m", p, 0.5, signed) for p in (0.09, 0.98))
    assert weak.heatmap((4, 4)).max() == strong.heatmap((4, 4)).max() == 1.0  # per image: both look as hot
    assert weak.heatmap((4, 4), by_evidence=True).max() == pytest.approx(0.09)
    assert strong.heatmap((4, 4), by_evidence=True).max() == pytest.approx(0.98)
    assert weak.heatmap((4, 4), "NORMAL", by_evidence=True).max() == pytest.approx(0.91)
    bar = colour_bar(100, 5)
    assert bar.shape == (5, 100, 3) and (bar[0, 0] == colourise(np.zeros(1))[0]).all()
    assert (bar[0, -1] == colourise(np.ones(1))[0]).all()


def test_hirescam_equals_gradcam_before_a_pooled_linear_head_and_not_deeper(tiny):
    """HiResCAM sums gradient x activation per cell; where the head is global average pooling and a dense layer
    the gradient is the same at every cell, so it must equal Grad-CAM there, and differ at an earlier layer."""
    x = _batch(3)
    for layer, same in (("last_conv", True), ("conv3", False)):
        p1, grad = GradCam(tiny, layer)(x)
        p2, hires = GradCam(tiny, layer, method="hirescam")(x)
        assert np.allclose(p1, p2)
        assert np.allclose(grad, hires, rtol=1e-4, atol=1e-6) == same, layer
    with pytest.raises(ValueError, match="Unknown map method"):
        GradCam(tiny, "last_conv", method="gradcam++")

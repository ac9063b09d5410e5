"""The Lite0 ImageNet conversion is exact enough to classify photos; loading is safe."""

import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from core.backbones import BackboneWeightsUnavailable, efficientnet_lite0, resnet50
from core.torch_legacy import UnsafeCheckpointError, read_legacy_state_dict

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def lite0_top():
    return efficientnet_lite0(weights="imagenet", include_top=True)


def _top2(model, rgb):
    x = (np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BILINEAR), np.float32) - 127.0) / 128.0
    return set(np.argsort(model(x[None], training=False).numpy()[0])[::-1][:2].tolist())


def test_lite0_knows_a_cat_and_an_espresso(lite0_top):
    skdata = pytest.importorskip("skimage.data")
    assert _top2(lite0_top, skdata.chelsea()) & CATS
    assert _top2(lite0_top, skdata.coffee()) & COFFEE


def test_lite0_layout():
    model = efficientnet_lite0(weights=None)
    assert model.output.shape[1:] == (7, 7, 1280)
    assert model.get_layer("top_activation") is model.layers[-1]
    assert len(model.layers) == 141


def _legacy_file(path, tree):
    """Write a legacy-format checkpoint whose main pickle is ``tree`` (no storages)."""
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(tree)
        pickle.dump([], f, protocol=2)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_reader_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    _legacy_file(path, pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        read_legacy_state_dict(path)


def test_reader_refuses_non_checkpoints(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps("hello") + struct.pack("<q", 3))
    with pytest.raises(UnsafeCheckpointError):
        read_legacy_state_dict(path)


def test_resnet50_builds_without_weights():
    model = resnet50(weights=None)
    assert model.get_layer("conv5_block3_out").output.shape[1:] == (7, 7, 2048)


def test_resnet50_says_clearly_when_weights_cannot_be_downloaded(monkeypatch, tmp_path):
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", offline)
    with pytest.raises(BackboneWeightsUnavailable, match="could not be downloaded"):
        resnet50(weights="imagenet")

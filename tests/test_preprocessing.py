"""Decoding every accepted format, refusing the rest, and the one preprocessing path."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.preprocessing import (
    ImageDecodeError,
    InputSpec,
    decode_image,
    equalize,
    load_grayscale,
    model_view,
    preprocess,
    squash,
    to_model_input,
)
from tests.helpers import encode, xray_like

BASE = xray_like(300, 260)


def _rgb():
    return np.repeat(BASE[..., None], 3, axis=-1)


def _png16():
    return encode((BASE.astype(np.uint16) * 257), "PNG")


def _rgba():
    a = np.dstack([_rgb(), np.full(BASE.shape, 255, np.uint8)])
    return encode(a, "PNG")


def _palette():
    buf = io.BytesIO()
    Image.fromarray(BASE).convert("P").save(buf, format="PNG")
    return buf.getvalue()


def _exif_rotated():
    # stored sideways (260 x 300 on disk) with Orientation = 6 (rotate 90 CW to view)
    img = Image.fromarray(np.rot90(BASE, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


ACCEPTED = {
    "jpeg": lambda: encode(BASE, "JPEG", quality=95),
    "png": lambda: encode(BASE, "PNG"),
    "png-rgb": lambda: encode(_rgb(), "PNG"),
    "png-16bit": _png16,
    "png-rgba": _rgba,
    "png-palette": _palette,
    "bmp": lambda: encode(BASE, "BMP"),
    "tiff": lambda: encode(BASE, "TIFF"),
    "jpeg-exif-rotated": _exif_rotated,
}


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_accepted_formats_decode_to_the_same_picture(kind):
    gray = decode_image(ACCEPTED[kind](), f"x.{kind}")
    assert gray.dtype == np.uint8 and gray.shape == BASE.shape
    tolerance = 12 if "jpeg" in kind else 2
    assert np.abs(gray.astype(int) - BASE.astype(int)).mean() < tolerance


def _bomb_png(w=30000, h=30000):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def _animated_gif():
    frames = [Image.fromarray(BASE), Image.fromarray(255 - BASE)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


REFUSED = {
    "empty": (lambda: b"", "empty"),
    "text": (lambda: b"just some notes, not an image\n" * 10, "not an image"),
    "truncated-jpeg": (lambda: encode(BASE, "JPEG")[:600], "damaged or truncated"),
    "corrupt-png": (lambda: encode(BASE, "PNG")[:60] + b"\x00" * 200, "damaged|not an image"),
    "bomb-png": (_bomb_png, "megapixels"),
    "tiny-1x1": (lambda: encode(np.zeros((1, 1), np.uint8), "PNG"), "only 1 x 1"),
    "tiny-16x16": (lambda: encode(xray_like(16, 16), "PNG"), "only 16 x 16"),
    "extreme-aspect": (lambda: encode(xray_like(100, 4000), "PNG"), "elongated"),
    "animated-gif": (_animated_gif, "animated"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_inputs_raise_one_specific_error(kind):
    make, message = REFUSED[kind]
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(make(), "upload.bin")


def test_squash_matches_the_dataset_resize(samples_dir, data_dir):
    """A full-resolution original squashed by us is the dataset's own 224 x 224 copy."""
    name = "person1314_virus_2269.jpeg"
    ours = load_grayscale((samples_dir / name).read_bytes()).astype(int)
    theirs = np.asarray(Image.open(data_dir / "train" / "PNEUMONIA" / name).convert("L")).astype(int)
    assert ours.shape == (224, 224)
    assert np.abs(ours - theirs).mean() < 2.5  # JPEG re-encoding noise only; nearest gives ~3-4


def test_to_model_input_follows_the_spec_and_keeps_input():
    gray = squash(BASE)
    before = gray.copy()
    lite = to_model_input(gray, InputSpec(channels=3, mean=127.0, std=128.0))
    base = to_model_input(gray, InputSpec(size=(64, 64), channels=1, mean=0.0, std=255.0))
    assert lite.shape == (224, 224, 3) and lite.dtype == np.float32
    assert np.allclose(lite[..., 0], (gray - 127.0) / 128.0)
    assert base.shape == (64, 64, 1) and 0 <= base.min() and base.max() <= 1
    assert np.array_equal(gray, before)


def test_preprocess_is_decode_squash_normalise():
    spec = InputSpec()
    data = encode(BASE, "PNG")
    assert np.array_equal(preprocess(data, spec), to_model_input(squash(BASE), spec))


def test_equalize_flattens_the_histogram_and_ignores_exposure():
    rng = np.random.default_rng(3)
    gray = np.clip(rng.normal(90, 20, (224, 224)), 0, 127).astype(np.uint8)  # dark, low contrast
    before = gray.copy()
    out = equalize(gray)
    assert out.dtype == np.uint8 and out.shape == gray.shape and np.array_equal(gray, before)
    assert out.min() == 0 and out.max() == 255
    # the cumulative histogram of the output is close to a straight line
    cdf = np.cumsum(np.bincount(out.ravel(), minlength=256)) / out.size
    assert np.abs(cdf - np.linspace(0, 1, 256)).max() < 0.05
    # brighter, higher-contrast exposure of the same picture (an increasing map): same output
    assert np.array_equal(equalize(gray * 2 + 1), out)
    # each image of a batch on its own; a flat image stays as it is
    flat = np.full((224, 224), 77, np.uint8)
    batch = equalize(np.stack([gray, flat]))
    assert np.array_equal(batch[0], out) and np.array_equal(batch[1], flat)


def test_to_model_input_equalizes_only_when_the_spec_says_so():
    gray = squash(BASE) // 2
    plain, eq = InputSpec(), InputSpec(equalize=True)
    assert np.allclose(to_model_input(gray, plain)[..., 0], (gray - 127.0) / 128.0)
    assert np.allclose(to_model_input(gray, eq)[..., 0], (equalize(gray) - 127.0) / 128.0)
    # what the Diagnose page shows as the model's view
    assert np.array_equal(model_view(BASE, plain), squash(BASE))
    assert np.array_equal(model_view(BASE, eq), equalize(squash(BASE)))
    # a card written before the option existed means no equalisation
    card = {"preprocessing": {k: v for k, v in plain.to_dict().items() if k != "equalize"}}
    assert InputSpec.from_card(card).equalize is False


@pytest.mark.parametrize("spec", [InputSpec(size=(128, 96), channels=1, mean=0.0, std=255.0),
                                  InputSpec(equalize=True),
                                  InputSpec(equalize=True, blur_sigma=2.0),
                                  InputSpec(channels=3, mean=(103.939, 116.779, 123.68), std=1.0)])
def test_spec_round_trips_through_a_card(spec):
    import json

    card = json.loads(json.dumps({"preprocessing": spec.to_dict()}))
    assert InputSpec.from_card(card) == spec


def test_resnet50_input_matches_keras_preprocess_input():
    from keras.applications.resnet50 import preprocess_input

    from core.models import input_spec_for

    gray = squash(BASE)
    ours = to_model_input(gray, input_spec_for("finetuned", "resnet50"))
    theirs = preprocess_input(np.repeat(gray[..., None], 3, axis=-1).astype(np.float32))
    assert np.allclose(ours, theirs, atol=1e-4)


def test_random_bytes_never_escape_as_other_errors():
    """Fuzz: mangled real files raise ImageDecodeError or decode; nothing else."""
    rng = np.random.default_rng(0)
    seeds = [encode(BASE, "PNG"), encode(BASE, "JPEG"), encode(BASE, "BMP"), encode(BASE, "TIFF"), encode(BASE, "GIF")]
    for i in range(150):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.integers(1, 20)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        if i % 3 == 0:
            data = data[: rng.integers(1, len(data))]
        try:
            gray = decode_image(bytes(data), "fuzz.bin")
        except ImageDecodeError:
            continue
        assert gray.dtype == np.uint8 and gray.ndim == 2


def test_a_lung_focused_input_keeps_the_lungs_and_a_margin_only():
    from core.preprocessing import InputSpec, keep_lungs
    from tests.helpers import PAIR

    view = np.full((2, 224, 224), 200, np.uint8)
    kept = keep_lungs(view, np.stack([PAIR, PAIR]), [3, 11])
    assert (kept[:, PAIR] == 200).all()  # the lungs themselves are untouched
    assert kept[0, 40:190, 14].max() == 0 and kept[1, 40:190, 14].min() == 200  # 11 px left of the left lung
    assert kept[0, 40:190, 22].min() == 200  # 3 px: inside the margin
    assert kept[0, 5, 5] == 0 and view.min() == 200  # a corner is blanked; the input is not modified
    assert keep_lungs(view[0], np.zeros((224, 224), bool), 7).max() == 0  # no lungs found: nothing to see
    spec = InputSpec(equalize=True, lung_margin=7)
    assert InputSpec.from_card({"preprocessing": spec.to_dict()}) == spec
    assert "lung_margin" not in InputSpec().to_dict()  # cards of models that see the whole image are unchanged
    with pytest.raises(ValueError, match="shape"):
        keep_lungs(view, PAIR[None], 7)


def test_a_blurred_input_is_low_passed_before_equalisation_and_only_when_the_spec_says_so():
    from scipy import ndimage

    from core.preprocessing import low_pass

    gray = squash(BASE)
    spec = InputSpec(equalize=True, blur_sigma=2.0)
    blurred = np.clip(np.rint(ndimage.gaussian_filter(gray.astype(np.float32), 2.0)), 0, 255).astype(np.uint8)
    assert np.array_equal(low_pass(gray, 2.0), blurred)
    assert np.array_equal(model_view(gray, spec), equalize(blurred))
    # batches blur each image on its own; the input is not modified
    before = gray.copy()
    assert np.array_equal(model_view(np.stack([gray, gray[::-1]]), spec)[1], equalize(low_pass(gray[::-1], 2.0)))
    assert np.array_equal(gray, before)
    # fine detail is what it removes: a one-pixel checkerboard is flattened, a broad gradient is kept
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    assert low_pass(checker, 2.0).std() < 2 and low_pass(checker, 2.0).mean() == pytest.approx(127.5, abs=1)
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    assert np.abs(low_pass(ramp, 2.0)[:, 8:-8].astype(int) - ramp[:, 8:-8]).max() <= 1
    # a spec without blur writes no key (cards written before it existed stay as they are)
    assert "blur_sigma" not in InputSpec(equalize=True).to_dict() and spec.to_dict()["blur_sigma"] == 2.0

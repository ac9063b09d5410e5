"""Turn any uploaded or dataset image into a model input: one path for everything.

``decode_image`` reads bytes (JPEG, PNG incl. 16-bit/RGBA/palette, BMP, TIFF, GIF; DICOM
through :mod:`core.dicom`) into a 2-D uint8 grayscale array, applying EXIF orientation.
``load_grayscale`` then squashes it to 224 x 224 exactly as the dataset's images were made
(PIL bilinear on the grayscale image, aspect ratio not kept), and ``to_model_input``
normalises it the way the model card says (histogram-equalising it first where the card asks).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from core.dicom import is_dicom, read_dicom
from core.errors import ImageDecodeError
from core.rawimage import RawImage

__all__ = [
    "ImageDecodeError",
    "InputSpec",
    "decode_image",
    "decode_upload",
    "load_grayscale",
    "squash",
    "equalize",
    "low_pass",
    "model_view",
    "to_model_input",
    "keep_lungs",
    "apply_window",
    "fit_within",
    "preprocess",
    "DATASET_SIZE",
    "MAX_PIXELS",
    "MIN_SIDE",
    "MAX_ASPECT",
]

DATASET_SIZE = (224, 224)
MAX_PIXELS = 80_000_000  # an 8000 x 8000 scan fits; a decompression bomb does not
MIN_SIDE = 64
MAX_ASPECT = 4.0


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input, as written in its card (``card["preprocessing"]``).

    The model input is ``(x - mean) / std`` of the 0-255 grayscale image resized to ``size``
    (histogram-equalised first when ``equalize``) and repeated to ``channels`` channels;
    ``mean`` and ``std`` are one number or one per channel (e.g. ResNet50's "caffe" BGR means).
    """

    size: tuple[int, int] = DATASET_SIZE
    channels: int = 3
    mean: float | tuple[float, ...] = 127.0
    std: float | tuple[float, ...] = 128.0
    resize: str = "bilinear, aspect ratio not kept (as the dataset images)"
    colour: str = "grayscale repeated to every channel"
    equalize: bool = False
    notes: list[str] = field(default_factory=list)
    # > 0: the model sees only the lungs: pixels farther than this many pixels outside the lung mask are
    # set to 0 after equalisation (a lung-focused model; serving takes the mask from the lung segmenter)
    lung_margin: int = 0
    # > 0: a fixed Gaussian low-pass (sigma in pixels of the 224 x 224 image) before equalisation, so that
    # a file's fine JPEG and resampling artefacts carry no signal (train and serve alike)
    blur_sigma: float = 0.0

    @classmethod
    def from_card(cls, card) -> InputSpec:
        """From a model card (:class:`core.cards.ModelCard` or its JSON dict)."""
        p = dict(card["preprocessing"] if isinstance(card, dict) else card.preprocessing)
        p["size"] = tuple(p["size"])
        for key in ("mean", "std"):
            if isinstance(p.get(key), list):
                p[key] = tuple(p[key])
        return cls(**p)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("lung_margin", "blur_sigma"):
            if not d[key]:
                del d[key]  # cards written before they existed stay as they are
        d["size"] = list(self.size)
        for key in ("mean", "std"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @property
    def value_range(self) -> tuple[float, float]:
        """Range of model inputs for pixel values 0..255 (over all channels)."""
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        return float(np.min((0 - mean) / std)), float(np.max((255 - mean) / std))


def _refuse(message: str) -> ImageDecodeError:
    return ImageDecodeError(message)


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _high_bit_range(arr: np.ndarray) -> tuple[float, float]:
    """(offset, full scale) of a high-bit-depth image: the smallest 2**k - 1 range (8, 10, 12, 14 or 16 bits)
    that holds the data, shifted up when it has negative values."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        raise _refuse("This image is a single flat colour: there is no X-ray to read in it.")
    offset = min(lo, 0.0)
    return offset, float(2 ** max(8, int(np.ceil(np.log2(hi - offset + 1)))) - 1)


def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    if img.mode in HIGH_BIT_MODES:
        # High bit depth: scale by the smallest 2**k - 1 range that holds the data, so contrast is kept
        # as an 8-bit export of it would have it.
        arr = np.asarray(img, dtype=np.float64)
        offset, scale = _high_bit_range(arr)
        return np.round((arr - offset) / scale * 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode_image(data: bytes, filename: str | None = None) -> np.ndarray:
    """Decode an uploaded file to a 2-D uint8 grayscale array.

    Args:
        data: The file's bytes.
        filename: Its name, used only in messages.

    Returns:
        ``(H, W)`` uint8 array, EXIF orientation applied, colour converted to luminance.

    Raises:
        ImageDecodeError: The bytes are not an image we can read as an X-ray.
    """
    return decode_upload(data, filename)[0]


def decode_upload(data: bytes, filename: str | None = None) -> tuple[np.ndarray, dict | None]:
    """As :func:`decode_image`, and for a DICOM file also its safe header summary
    (:func:`core.dicom.dicom_summary`; ``None`` for other formats). The file is parsed once."""
    return decode_full(data, filename)[:2]


def decode_full(data: bytes, filename: str | None = None) -> tuple[np.ndarray, dict | None, RawImage | None]:
    """As :func:`decode_upload`, and the image's values before any display window where the file holds more
    than 8 bits (grayscale DICOM, 16-bit PNG or TIFF; else ``None``), for a viewer's window/level."""
    name = f"'{filename}'" if filename else "This file"
    if not data:
        raise _refuse(f"{name} is empty (0 bytes).")
    if is_dicom(data):
        try:
            arr, summary, raw = read_dicom(data, filename)
        except ImageDecodeError:
            raise
        except Exception as exc:  # untrusted input: any decoder failure is the file's fault
            raise _refuse(f"{name} is a DICOM file whose image cannot be decoded ({type(exc).__name__}).") from None
        _check_geometry(arr, name)
        return arr, summary, raw
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise _refuse(
                    f"{name} claims {width} x {height} pixels, more than the "
                    f"{MAX_PIXELS // 1_000_000} megapixels we accept."
                )
            if getattr(img, "n_frames", 1) > 1 and img.format == "GIF":
                raise _refuse(f"{name} is an animated image; upload a single still X-ray.")
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_uint8_gray(img)
            raw = _raw_of(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse(
            f"{name} claims more pixels than the {MAX_PIXELS // 1_000_000} megapixels we accept "
            "(it may be a decompression bomb)."
        ) from None
    except UnidentifiedImageError:
        raise _refuse(
            f"{name} is not an image we can read. Upload a JPEG, PNG, BMP, TIFF or DICOM X-ray."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _refuse(f"{name} looks damaged or truncated and cannot be decoded ({exc}).") from None
    except Exception as exc:  # untrusted input: decoders raise odd types (struct.error, IndexError…)
        raise _refuse(f"{name} looks damaged and cannot be decoded ({type(exc).__name__}).") from None
    _check_geometry(arr, name)
    return arr, None, raw


def _raw_of(img: Image.Image) -> RawImage | None:
    """A high-bit-depth image's own values, its default window the one :func:`_to_uint8_gray` shows it with."""
    if img.mode not in HIGH_BIT_MODES:
        return None
    values = np.asarray(img, dtype=np.float32)
    offset, scale = _high_bit_range(values)
    return RawImage(values, offset + scale / 2 + 0.5, scale + 1)  # exactly the 8-bit mapping


def _check_geometry(arr: np.ndarray, name: str) -> None:
    h, w = arr.shape
    if min(h, w) < MIN_SIDE:
        raise _refuse(f"{name} is only {w} x {h} pixels; an X-ray needs at least {MIN_SIDE} per side.")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise _refuse(f"{name} is {w} x {h} pixels, far too elongated to be a chest X-ray.")


def squash(gray: np.ndarray, size: tuple[int, int] = DATASET_SIZE) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size`` (H, W) as the dataset was made: PIL bilinear."""
    if gray.shape == tuple(size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size[1], size[0]), Image.BILINEAR))


def load_grayscale(data: bytes, size: tuple[int, int] = DATASET_SIZE, filename: str | None = None) -> np.ndarray:
    """Decode bytes and squash to the dataset's 224 x 224 grayscale format."""
    return squash(decode_image(data, filename), size)


def equalize(gray: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of uint8 image(s) ``(H, W)`` or ``(N, H, W)``, each on its own.

    The classic mapping (as OpenCV's ``equalizeHist``): grey level ``v`` becomes
    ``round(255 * (cdf(v) - cdf_min) / (n - cdf_min))``, so any increasing change of exposure or
    contrast maps to the same output. An image with a single grey level is returned unchanged.
    Returns a new uint8 array; the input is not modified.
    """
    gray = np.asarray(gray, dtype=np.uint8)
    if gray.ndim == 3:
        return np.stack([equalize(g) for g in gray]) if len(gray) else gray.copy()
    cdf = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    cdf_min, n = cdf[np.flatnonzero(cdf)[0]], cdf[-1]
    if n == cdf_min:
        return gray.copy()
    lut = np.round((cdf - cdf_min) * 255.0 / (n - cdf_min)).clip(0, 255).astype(np.uint8)
    return lut[gray]


def model_view(gray: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The uint8 picture(s) a model sees before normalisation: squashed, equalised if its card says so.

    Takes ``(H, W)`` or ``(N, H, W)``; the input array is not modified.
    """
    gray = np.asarray(gray)
    if gray.shape[-2:] != tuple(spec.size):
        gray = squash(gray, spec.size) if gray.ndim == 2 else np.stack([squash(g, spec.size) for g in gray])
    if spec.blur_sigma:
        gray = low_pass(gray, spec.blur_sigma)
    return equalize(gray) if spec.equalize else gray


def low_pass(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of uint8 image(s) ``(H, W)`` or ``(N, H, W)``, each on its own (reflected edges), rounded
    back to uint8; a new array."""
    gray = np.asarray(gray)
    sigmas = (sigma, sigma) if gray.ndim == 2 else (0, sigma, sigma)
    out = ndimage.gaussian_filter(gray.astype(np.float32), sigmas)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def keep_lungs(view: np.ndarray, lungs: np.ndarray, margin) -> np.ndarray:
    """Image(s) ``(H, W)`` or ``(N, H, W)`` with every pixel farther than ``margin`` pixels (Euclidean; one
    number, or one per image) outside the boolean lung mask(s) set to 0; a new array."""
    view, lungs = np.asarray(view), np.asarray(lungs, bool)
    if view.ndim == 2:
        return keep_lungs(view[None], lungs[None], margin)[0]
    if lungs.shape != view.shape:
        raise ValueError(f"{len(lungs)} lung mask(s) of shape {lungs.shape[1:]} for {len(view)} image(s) of shape "
                         f"{view.shape[1:]}")
    margins = np.broadcast_to(np.asarray(margin, np.float64), (len(view),))
    out = view.copy()
    for img, mask, m in zip(out, lungs, margins, strict=True):
        # distance of every pixel to the nearest lung pixel (all pixels are "outside" an empty mask)
        far = ndimage.distance_transform_edt(~mask) > m if mask.any() else np.ones(mask.shape, bool)
        img[far] = 0
    return out


def to_model_input(gray: np.ndarray, spec: InputSpec, lungs: np.ndarray | None = None, margin=None) -> np.ndarray:
    """Normalise uint8 grayscale image(s) ``(H, W)`` or ``(N, H, W)`` for a model.

    A lung-focused spec (``lung_margin`` > 0) needs the lung mask of each image, ``lungs``; ``margin``
    overrides the spec's margin (training draws one per image).

    Returns float32 ``(..., H, W, C)``; the input array is not modified.
    """
    view = model_view(gray, spec)
    if spec.lung_margin:
        if lungs is None:
            raise ValueError("This model looks only at the lungs: it needs each image's lung mask.")
        view = keep_lungs(view, lungs, spec.lung_margin if margin is None else margin)
    x = np.repeat(view.astype(np.float32)[..., None], spec.channels, axis=-1)
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def preprocess(data: bytes, spec: InputSpec, filename: str | None = None) -> np.ndarray:
    """Bytes to one model input ``(H, W, C)``, in one call (a convenience for scripts and tests; the
    serving path, :mod:`core.inference`, decodes once and batches :func:`to_model_input`)."""
    return to_model_input(load_grayscale(data, filename=filename), spec)


def apply_window(gray: np.ndarray, level: float, width: float) -> np.ndarray:
    """A display window on a uint8 image, as a radiology viewer's window/level: grey levels from
    ``level - width / 2`` to ``level + width / 2`` are stretched to 0-255, the rest clipped (uint8)."""
    width = max(float(width), 1.0)
    low = float(level) - width / 2
    return np.clip((np.asarray(gray, np.float32) - low) * (255.0 / width), 0, 255).round().astype(np.uint8)


def fit_within(gray: np.ndarray, max_side: int = 1600) -> np.ndarray:
    """The image scaled down (Lanczos, aspect ratio kept) so that its longer side is at most ``max_side``;
    unchanged when it already fits. uint8 stays uint8; other 2-D arrays (a file's own values,
    :class:`core.rawimage.RawImage`) are resized as float32. For display only."""
    h, w = gray.shape[:2]
    if max(h, w) <= max_side:
        return gray
    scale = max_side / max(h, w)
    img = Image.fromarray(gray) if gray.dtype == np.uint8 else Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS))

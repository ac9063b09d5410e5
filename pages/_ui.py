"""UI helpers shared by the pages: cached loaders, session readings and small widgets. UI only:
every decision is in ``core``, every upload is scored through :func:`core.inference.score`."""

from __future__ import annotations

import gc
import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

import pages
from core import LABELS, data, inference, registry
from core.cards import DISCLAIMER, ModelCard
from core.data import find_data_dir
from core.dicom import Stated
from core.errors import DatasetNotFoundError, ImageDecodeError
from core.evaluation import bootstrap_ci
from core.gradcam import overlay
from core.inference import ImageReading, LoadedModel, Upload
from core.ood import OODCheck, OODResult
from core.segmenter import LungSegmenter

__all__ = [
    "keep_compiled_models", "ensure_app", "DISCLAIMER", "LABELS", "get_model", "get_ood", "get_lungs", "withheld_unless_asked",
    "read_uploads", "map_name", "session_readings", "one_reading", "content_key", "model_names", "card", "metrics", "predictions",
    "metric_intervals", "history", "weights_size_mb", "all_predictions", "data_dir", "test_image",
    "test_overlays", "identical_test_images", "sample_xrays", "site_scores", "site_profile", "ms_per_image", "model_colour", "MODEL_COLOURS", "png_bytes", "no_models_stop", "no_data_hint", "label_badge",
    "threshold_slider",
]

def _clean_without_keras() -> None:
    """Streamlit's after-run cleanup without its Keras reset: close matplotlib figures."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def keep_compiled_models() -> None:
    """Stop Streamlit from clearing the Keras session after every script run (idempotent).

    Streamlit's script runner calls ``keras.backend.clear_session()`` after each run
    (``streamlit.runtime.scriptrunner.script_runner._clean_problem_modules``), which empties TensorFlow's kernel
    cache: every cached model's compiled call is then instantiated again on the next run, about 0.4 s each, five
    per upload (docs/speed.md). The dashboard builds its models once and caches them (``st.cache_resource``) and
    never builds one per run, so it has no use for that reset. Matplotlib figures are still closed after each run,
    as Streamlit does."""
    from streamlit.runtime.scriptrunner import script_runner

    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = _clean_without_keras


keep_compiled_models()


def ensure_app(page_file: str) -> None:
    """Call first on every page (with ``__file__``): route a cold deep link through ``app.py``,
    which then opens this page again under the app's navigation (see :mod:`pages`)."""
    if not pages.NAVIGATION_DECLARED:
        st.switch_page("app.py", query_params={"goto": Path(page_file).stem})


@st.cache_resource(show_spinner="Loading model…")
def get_model(name: str) -> LoadedModel:
    """A shipped model, loaded once per server process and shared (never mutated); with the lung
    segmenter attached where the model's own pass can find the lungs."""
    return _long_lived(inference.load_model(name, lungs=get_lungs()))


def _long_lived(component):
    """``component``, with everything allocated so far moved out of the garbage collector's sight
    (:func:`gc.freeze`, no collection first: that would add a full scan to each load). The models' Python
    objects live as long as the server, and scanning them in a full collection cost about 0.4 s in the
    middle of a diagnosis."""
    gc.freeze()
    return component


def _if_shipped(component):
    try:
        return component()
    except FileNotFoundError:
        return None


@st.cache_resource(show_spinner="Loading the out-of-distribution guard…")
def get_ood() -> OODCheck | None:
    """The out-of-distribution guard, or ``None`` when it is not shipped."""
    return _long_lived(_if_shipped(OODCheck))


@st.cache_resource(show_spinner="Loading the lung segmenter…")
def get_lungs() -> LungSegmenter | None:
    """The lung segmenter, or ``None`` when it is not shipped."""
    return _long_lived(_if_shipped(LungSegmenter))


def withheld_unless_asked(check: OODResult | None, key: str) -> bool:
    """For an out-of-distribution image: show the warning and a "show anyway" box.

    Returns True while the diagnosis stays withheld.
    """
    if check is None or not check.flagged:
        return False
    asked = bool(st.session_state.get(key, False))
    st.warning(check.warning + (" The output below is shown because you asked for it: do not rely on it."
                                if asked else " The diagnosis is withheld."))
    return not st.checkbox("Show the models' output anyway", key=key)


def content_key(name: str, data: bytes | np.ndarray) -> str:
    """A session key for a file or image: its name and the sha256 of its content."""
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return f"{name}\0{hashlib.sha256(raw).hexdigest()}"


def _slot(slot: str, keys) -> dict:
    """This session's memory under ``slot``, with entries for keys no longer given forgotten."""
    held = st.session_state.setdefault(slot, {})
    for stale in set(held) - set(keys):
        del held[stale]
    return held


def read_uploads(slot: str, files: dict[str, bytes], max_bytes: int | None = None,
                 progress=None) -> dict[str, Upload | str]:
    """Each file (key -> bytes) read once while it stays in ``slot``: an :class:`Upload`, or the
    message saying why it cannot be used. Session memory only, never disk."""
    held = _slot(slot, files)
    todo = [k for k in files if k not in held]
    for i, key in enumerate(todo):
        try:
            held[key] = inference.read_upload(files[key], key.split("\0")[0], max_bytes)
        except ImageDecodeError as exc:
            held[key] = str(exc)
        if progress:
            progress(i + 1, len(todo))
    return {k: held[k] for k in files}


def session_readings(slot: str, images: dict[str, np.ndarray], names=(), check: bool = False,
                     stated: dict[str, Stated | None] | None = None) -> dict[str, ImageReading]:
    """The guard's check and the lungs (when ``check``) and each named model's diagnosis of each image
    (key -> 224 x 224 gray), computed once while the image stays in ``slot``.

    ``stated``: what is stated about each image (``Upload.stated``, perhaps with an entered age): the check withholds
    a film stated to be an adult's, or whose lungs are an adult's width by its header's pixel size. Kept in this
    session's memory (never on disk), so moving a widget redraws the page without scoring again; images no longer given are forgotten. What is missing is scored in one
    :func:`core.inference.score` call per set of missing pieces.
    """
    held = _slot(slot, images)
    groups: dict[tuple[bool, tuple[str, ...]], list[str]] = {}
    for key in images:
        entry = held.setdefault(key, {"scores": {}})
        need = (check and "ood" not in entry, tuple(n for n in names if n not in entry["scores"]))
        if need[0] or need[1]:
            groups.setdefault(need, []).append(key)
    for (need_check, need_models), keys in groups.items():
        found = inference.score([images[k] for k in keys], [get_model(n) for n in need_models],
                                get_ood() if need_check else None, get_lungs() if need_check else None,
                                stated=[(stated or {}).get(k) for k in keys] if need_check else None)
        for key, reading in zip(keys, found, strict=True):
            if need_check:
                held[key]["ood"], held[key]["lungs"] = reading.ood, reading.lungs
            held[key]["scores"].update(reading.diagnoses)
    return {k: ImageReading(held[k].get("ood"), {n: held[k]["scores"][n] for n in names}, held[k].get("lungs"))
            for k in images}


def one_reading(slot: str, gray: np.ndarray, names=(), check: bool = False,
                stated: Stated | None = None) -> ImageReading:
    """:func:`session_readings` of one image (the slot holds only it)."""
    key = content_key(slot if stated is None else f"{slot} {stated}", gray)  # the same pixels, another header
    return session_readings(slot, {key: gray}, names, check, {key: stated})[key]


@st.cache_data(show_spinner=False)
def model_names() -> list[str]:
    return registry.available_models()


@st.cache_data(show_spinner=False)
def card(name: str) -> ModelCard:
    return registry.load_card(name)


def map_name(name: str) -> str:
    """What a model's heatmap is, for captions: its card's map method."""
    return card(name).map_name


@st.cache_data(show_spinner=False)
def metrics(name: str) -> dict | None:
    return registry.load_metrics(name)


@st.cache_data(show_spinner=False)
def predictions(name: str) -> pd.DataFrame | None:
    return registry.load_predictions(name)


@st.cache_data(show_spinner=False, max_entries=512)
def metric_intervals(name: str, threshold: float) -> dict:
    """Bootstrap 95 % intervals of the test metrics at ``threshold`` (the ROC AUC's is in ``metrics.json``)."""
    df = predictions(name)
    return bootstrap_ci(df.y, df.probability, threshold, curves=False)


@st.cache_data(show_spinner=False)
def history(name: str) -> pd.DataFrame | None:
    return registry.load_history(name)


@st.cache_data(show_spinner=False)
def weights_size_mb(name: str) -> float:
    return registry.model_files(name).weights.stat().st_size / 2**20


@st.cache_data(show_spinner=False)
def all_predictions() -> pd.DataFrame | None:
    """One row per test image, a probability column per model."""
    frames = []
    for name in model_names():
        df = predictions(name)
        if df is not None:
            frames.append(df.set_index(["filename", "label"])["probability"].rename(name))
    return pd.concat(frames, axis=1).reset_index() if frames else None


def data_dir():
    """The dataset folder, or ``None`` when it is absent or the setting points nowhere useful."""
    try:
        return find_data_dir(required=False)
    except DatasetNotFoundError:
        return None


@st.cache_data(show_spinner=False, max_entries=256)
def test_image(filename: str, label: str) -> np.ndarray | None:
    """A test image as 224 x 224 grayscale, or ``None`` when the dataset is not here."""
    root = data_dir()
    path = root / "test" / label / filename if root else None
    if path is None or not path.exists():
        return None
    return inference.read_upload(path.read_bytes(), filename).gray


@st.cache_data(show_spinner="Scoring your images…", max_entries=4)
def site_scores(name: str, files: tuple[tuple[str, bytes], ...]) -> list[float | str]:
    """P(pneumonia) of each of a site's files with one model, through the serving path (guard included); for
    a file that cannot be read or that the guard withholds, why it is left out. Kept in memory only."""
    model, guard, lungs = get_model(name), get_ood(), get_lungs()
    out: list[float | str] = [""] * len(files)
    grays, where = [], []
    for i, (filename, content) in enumerate(files):
        try:
            grays.append(inference.read_upload(content, filename).gray)
            where.append(i)
        except ImageDecodeError as exc:
            out[i] = f"not read: {exc}"
    readings = []
    for start in range(0, len(grays), 32):
        readings += inference.score(grays[start : start + 32], [model], guard, lungs)
    for i, reading in zip(where, readings, strict=True):
        out[i] = ("withheld by the guard: " + reading.ood.warning) if reading.flagged \
            else reading.diagnoses[name].probability
    return out


def site_profile(name: str):
    """The site operating-point profile in use for a model in this session (pages/site.py), or ``None``."""
    return st.session_state.get("site_profiles", {}).get(name)


@st.cache_data(show_spinner=False)
def sample_xrays(folder: str) -> dict[str, str]:
    """The sample originals in ``folder``, each named with its true label and the split its copy is in."""
    root = data_dir()
    where = {s.name: (split, s) for split in ("train", "test") for s in (data.list_split(root, split) if root else [])}
    out = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() not in (".jpeg", ".jpg", ".png"):
            continue
        split, s = where.get(p.name, (None, None))
        out[p.name] = (f"{p.name}: truly {LABELS[s.label]}, {'training' if split == 'train' else 'test'} split"
                       if s else f"{p.name}: not in the dataset found here")
    return out


@st.cache_data(show_spinner=False)
def identical_test_images() -> dict[str, list[str]]:
    """Test images that are pixel for pixel another test image, with the others' names ({} without the data)."""
    root = data_dir()
    return data.identical_images(data.list_split(root, "test")) if root else {}


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=64)
def test_overlays(name: str, cases: tuple[tuple[str, str], ...]) -> list[np.ndarray | None]:
    """Grad-CAM overlays (explaining each image's predicted class) of test images ``(filename, label)``
    with one model, scored in one batch; ``None`` for an image that is not here."""
    grays = [test_image(f, label) for f, label in cases]
    present = [i for i, g in enumerate(grays) if g is not None]
    found = inference.score([grays[i] for i in present], [get_model(name)])
    out: list[np.ndarray | None] = [None] * len(cases)
    for i, reading in zip(present, found, strict=True):
        d = reading.diagnoses[name]
        out[i] = overlay(grays[i], d.heatmap(grays[i].shape, d.label))
    return out


@st.cache_data(show_spinner=False)
def ms_per_image(name: str, repeats: int = 7) -> float:
    """Median time of one diagnosis (probability + Grad-CAM) on this server."""
    model = get_model(name)
    gray = np.full((224, 224), 128, np.uint8)
    model.diagnose_gray(gray)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.diagnose_gray(gray)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def no_models_stop() -> list[str]:
    names = model_names()
    if not names:
        st.error("No trained models found under `models/`. Train them with `python -m core.train …` "
                 "or restore the repository's `models/` folder.")
        st.stop()
    return names


def no_data_hint() -> None:
    st.info(
        "The test images are not on this server, so pictures are not shown. Point the app at the "
        "dataset with `PNEUMONIA_DATA_DIR=/path/to/chest_xray streamlit run app.py` "
        "(Kaggle's *chest-xray-pneumonia* download); tables and numbers still work."
    )


def label_badge(label: str) -> str:
    colour = "#b5443a" if label == "PNEUMONIA" else "#2e7d4f"
    return f"<span style='color:{colour};font-weight:600'>{label}</span>"



# one clearly different colour per model, wherever models share a plot
MODEL_COLOURS = {"baseline": "#7f7f7f", "transfer": "#e08a1e", "finetuned": "#1f5fa8", "lungfocus": "#2a9d55"}


def model_colour(name: str) -> str:
    """The model's colour in every plot."""
    return MODEL_COLOURS.get(name, "#8e44ad")


def threshold_slider(label: str, start: float, key: str, **kwargs) -> float:
    """A decision-threshold slider (0 to 1 in steps of 0.001) that starts at ``start``, a card's or a site's threshold.
    While it stays there, the exact ``start`` is returned, so labels and metrics match the card's, the CLI's and
    ``metrics.json``; the slider shows only three decimals."""
    shown = round(start, 3)
    value = st.slider(label, 0.0, 1.0, shown, 0.001, format="%.3f", key=key, **kwargs)
    return start if value == shown else value


def raw_window_sliders(raw, key: str) -> tuple[float, float]:
    """Window level and width sliders in a file's own values (:class:`core.rawimage.RawImage`), starting at the
    file's own window; returns (level, width)."""
    lo, hi = raw.low, raw.high
    span = max(hi - lo, 1.0)
    if raw.integral:
        lo, hi, span = int(lo), int(hi), int(span)
        centre, width, step, top = int(round(min(max(raw.center, lo), hi))), int(round(min(max(raw.width, 1), 2 * span))), 1, 2 * span
    else:
        step = span / 1000
        centre, width, top = float(min(max(raw.center, lo), hi)), float(min(max(raw.width, step), 2 * span)), 2 * span
    unit = "HU" if raw.units == "HU" else "file values"
    level = st.slider(f"Window level (centre, {unit})", lo, hi, centre, step=step, key=f"{key}_level")
    width = st.slider(f"Window width ({unit})", step, top, width, step=step, key=f"{key}_width")
    st.caption(f"The window works on the file's own values ({lo:g} to {hi:g}), not on an 8-bit copy; it starts at "
               "the file's own window.")
    return level, width


if __name__ == "__main__":  # opened as a page (a cold server's /ui): this module is no page, go to the app
    st.switch_page("app.py")

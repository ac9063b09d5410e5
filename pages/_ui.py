"""UI helpers shared by the pages: cached loaders and small widgets. UI only; logic is in core."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core import LABELS
from core.data import DatasetNotFoundError, find_data_dir
from core.registry import available_models, models_dir

# Set by app.py when it declares the navigation. Until some session has run app.py, Streamlit
# serves a deep link (say /compare) the old way, straight from the pages/ folder, without our
# navigation or page config; ensure_app() sends such a first visitor through app.py.
NAVIGATION_DECLARED = False


def ensure_app(page_file: str) -> None:
    """Call first on every page (with ``__file__``): route a cold deep link through ``app.py``,
    which then opens this page again under the app's navigation."""
    if not NAVIGATION_DECLARED:
        from pathlib import Path

        st.switch_page("app.py", query_params={"goto": Path(page_file).stem})


DISCLAIMER = (
    "Research and teaching tool for pediatric AP chest X-rays from one centre. "
    "**Not a medical device**: it must not be used to diagnose or treat patients."
)


@st.cache_resource(show_spinner="Loading model…")
def get_model(name: str):
    """A shipped model, loaded once per server process and shared (never mutated)."""
    from core.inference import load_model

    return load_model(name)


@st.cache_resource(show_spinner="Loading the out-of-distribution guard…")
def get_ood():
    """The out-of-distribution guard, or ``None`` when it is not shipped."""
    from core.inference import OODCheck

    try:
        return OODCheck()
    except FileNotFoundError:
        return None


def withheld_unless_asked(check, key: str) -> bool:
    """For an out-of-distribution image: show the warning and a "show anyway" box.

    Returns True while the diagnosis stays withheld (``check`` is an OODResult or None).
    """
    if check is None or not check.flagged:
        return False
    st.warning(check.warning + " The diagnosis is withheld.")
    return not st.checkbox("Show the models' output anyway", key=key)


def one_image_readings(gray: np.ndarray, slot: str, names=(), check: bool = False):
    """The guard's check and each model's diagnosis of one image, each computed once while it stays on screen.

    Kept in this session's memory under ``slot`` (one image per slot, never on disk), so moving a widget
    redraws the page without scoring the image again. Only what is asked for is computed: the guard's
    check when ``check``, a diagnosis for each of ``names``. Returns ``(OODResult or None, {name: Diagnosis})``.
    """
    key = f"{gray.shape}\0{gray.dtype}\0{hashlib.sha256(np.ascontiguousarray(gray).tobytes()).hexdigest()}"
    held = st.session_state.get(slot)
    if held is None or held["key"] != key:
        held = st.session_state[slot] = {"key": key, "scores": {}}
    if check and "ood" not in held:
        guard = get_ood()
        held["ood"] = guard(gray)[0] if guard else None
    for name in names:
        if name not in held["scores"]:
            held["scores"][name] = get_model(name).diagnose_gray(gray)[0]
    return held.get("ood"), {name: held["scores"][name] for name in names}


@st.cache_data(show_spinner=False)
def model_names() -> list[str]:
    return available_models()


@st.cache_data(show_spinner=False)
def card(name: str) -> dict:
    from core.registry import load_card

    return load_card(name)


@st.cache_data(show_spinner=False)
def metrics(name: str) -> dict | None:
    path = models_dir() / name / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


@st.cache_data(show_spinner=False)
def predictions(name: str) -> pd.DataFrame | None:
    path = models_dir() / name / "test_predictions.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    df["y"] = (df["label"] == "PNEUMONIA").astype(int)
    return df


@st.cache_data(show_spinner=False, max_entries=512)
def metric_intervals(name: str, threshold: float) -> dict:
    """Bootstrap 95 % intervals of the test metrics at ``threshold`` (the ROC AUC's is in ``metrics.json``)."""
    from core.evaluation import bootstrap_ci

    df = predictions(name)
    return bootstrap_ci(df.y, df.probability, threshold, curves=False)


@st.cache_data(show_spinner=False)
def history(name: str) -> pd.DataFrame | None:
    path = models_dir() / name / "history.csv"
    return pd.read_csv(path) if path.exists() else None


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
    from core.preprocessing import load_grayscale

    root = data_dir()
    path = root / "test" / label / filename if root else None
    if path is None or not path.exists():
        return None
    return load_grayscale(path.read_bytes())


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


__all__ = [
    "NAVIGATION_DECLARED", "ensure_app", "DISCLAIMER", "LABELS", "get_model", "get_ood", "withheld_unless_asked", "one_image_readings", "model_names", "card", "metrics", "predictions", "metric_intervals", "history",
    "all_predictions", "data_dir", "test_image", "ms_per_image", "png_bytes", "no_models_stop", "no_data_hint",
    "label_badge",
]

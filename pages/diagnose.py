"""Diagnose: upload X-rays, read P(pneumonia) per model, see and download the Grad-CAM overlay."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import streamlit as st

from core.dicom import dicom_summary, is_dicom
from core.gradcam import overlay
from core.inference import label_for
from core.preprocessing import ImageDecodeError, load_grayscale, model_view
from pages import _ui as ui

ui.ensure_app(__file__)

CLASS_CHOICES = {"Evidence for pneumonia": "PNEUMONIA", "Evidence for normal": "NORMAL"}

st.title("Diagnose a chest X-ray")
st.caption(ui.DISCLAIMER)
names = ui.no_models_stop()

with st.sidebar:
    st.subheader("Settings")
    choice = st.selectbox("Model", ["All models", *names], key="dx_model")
    selected = names if choice == "All models" else [choice]
    thresholds = {}
    with st.expander("Decision thresholds", expanded=False):
        st.caption("Start at each model's card threshold (chosen on validation data); changes apply to this view only.")
        for name in selected:
            thresholds[name] = st.slider(name, 0.0, 1.0, float(ui.card(name)["threshold"]), 0.01, key=f"dx_thr_{name}")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="dx_alpha")
    target = CLASS_CHOICES[st.radio("Grad-CAM explains", list(CLASS_CHOICES), key="dx_target")]

# No extension filter: every file reaches the decoder, which recognises content (not names) and
# answers anything it cannot use with a specific message.
uploads = st.file_uploader("Upload X-rays (JPEG, PNG, BMP, TIFF or DICOM)", accept_multiple_files=True,
                           key="dx_upload")
files: list[tuple[str, bytes]] = [(u.name, u.getvalue()) for u in uploads or []]

root = ui.data_dir()
sample_dir = root.parent / "samples_fullres" if root else None
if sample_dir and sample_dir.is_dir():
    samples = sorted(p.name for p in sample_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    sample = st.selectbox("…or try a sample X-ray from the dataset", ["—", *samples], key="dx_sample")
    if sample != "—":
        files.append((sample, (sample_dir / sample).read_bytes()))

# the same name twice (two folders, one file name) must not merge two patients' results
seen: dict[str, int] = {}
for i, (filename, data) in enumerate(files):
    seen[filename] = seen.get(filename, 0) + 1
    if seen[filename] > 1:
        files[i] = (f"{filename} ({seen[filename]})", data)

if not files:
    st.info("Upload one or more chest X-rays to see each model's probability of pneumonia and its Grad-CAM.")
    st.stop()

limit_mb = st.get_option("server.maxUploadSize")
models = {name: ui.get_model(name) for name in selected}
guard = ui.get_ood()
# Each file is decoded, checked and scored once per session, not again on every widget change.
# The readings live in this session's memory only (never on disk) and only while the file is here.
readings = st.session_state.setdefault("dx_readings", {})
keys = {filename: f"{filename}\0{hashlib.sha256(data).hexdigest()}" for filename, data in files}
for stale in set(readings) - set(keys.values()):
    del readings[stale]
todo = [(f, data) for f, data in files if keys[f] not in readings]
progress = st.progress(0.0, text="Reading files…") if len(todo) > 1 else None
for i, (filename, data) in enumerate(todo):
    entry = {"scores": {}}
    try:
        if len(data) > limit_mb * 2**20:
            raise ImageDecodeError(f"'{filename}' is {len(data) / 2**20:.0f} MB; the limit is {limit_mb} MB.")
        entry["gray"] = load_grayscale(data, filename=filename)
        if is_dicom(data):
            entry["dicom"] = dicom_summary(data)
    except ImageDecodeError as exc:
        entry["error"] = str(exc)
    readings[keys[filename]] = entry
    if progress:
        progress.progress((i + 1) / (len(todo) + len(models)), text=f"Read {i + 1} of {len(todo)} files")
usable = [f for f, _ in files if "gray" in readings[keys[f]]]
unchecked = [f for f in usable if "ood" not in readings[keys[f]]]
if guard is not None and unchecked:
    for f, check in zip(unchecked, guard(np.stack([readings[keys[f]]["gray"] for f in unchecked])), strict=True):
        readings[keys[f]]["ood"] = check
for j, (name, model) in enumerate(models.items()):
    unscored = [f for f in usable if name not in readings[keys[f]]["scores"]]
    if unscored:  # one batched call per model for the files it has not seen
        for f, d in zip(unscored, model.diagnose_gray(np.stack([readings[keys[f]]["gray"] for f in unscored])),
                        strict=True):
            readings[keys[f]]["scores"][name] = d
    if progress:
        progress.progress((len(todo) + j + 1) / (len(todo) + len(models)), text=f"Scored with {name}")
if progress:
    progress.empty()
errors = {f: readings[keys[f]]["error"] for f, _ in files if "error" in readings[keys[f]]}
dicom_info = {f: readings[keys[f]]["dicom"] for f in usable if "dicom" in readings[keys[f]]}
flagged = {f: readings[keys[f]]["ood"] for f in usable if getattr(readings[keys[f]].get("ood"), "flagged", False)}
results = [(f, readings[keys[f]]["gray"], readings[keys[f]]["scores"][name]) for f in usable for name in models]

for filename, message in errors.items():
    st.error(f"**{filename}** was not scored: {message}")
if not results:
    st.stop()

if len(files) > 1:
    def withheld(f: str) -> bool:
        return f in flagged and not st.session_state.get(f"dx_ood_{f}", False)

    table = pd.DataFrame([
        {"file": f, "model": d.model, "P(pneumonia)": None if withheld(f) else round(d.probability, 4),
         "threshold": thresholds[d.model],
         "label": "withheld: not like an X-ray" if withheld(f) else label_for(d.probability, thresholds[d.model])}
        for f, _, d in results
    ])
    st.subheader("All files")
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download table (CSV)", table.to_csv(index=False).encode(), "diagnoses.csv", "text/csv",
                       key="dx_csv")
    shown = st.selectbox("Show details for", list(dict.fromkeys(f for f, _, _ in results)), key="dx_detail")
else:
    shown = results[0][0]

st.subheader(shown)
if shown in dicom_info:
    st.caption(" · ".join(f"{k}: {v}" for k, v in dicom_info[shown].items()))
if ui.withheld_unless_asked(flagged.get(shown), key=f"dx_ood_{shown}"):
    st.stop()
for filename, gray, d in [r for r in results if r[0] == shown]:
    label = label_for(d.probability, thresholds[d.model])
    heat = overlay(gray, d.heatmap(gray.shape, target), alpha=alpha)
    info, original, explained = st.columns(3)
    with info:
        st.markdown(f"**{d.model}**")
        st.metric("P(pneumonia)", f"{d.probability:.1%}")
        st.markdown(f"Label: {ui.label_badge(label)} at threshold {thresholds[d.model]:.2f}", unsafe_allow_html=True)
        st.download_button("Download overlay (PNG)", ui.png_bytes(heat),
                           f"{filename.rsplit('.', 1)[0]}_{d.model}_gradcam.png", "image/png", key=f"dx_png_{d.model}")
    spec = models[d.model].spec
    original.image(model_view(gray, spec), clamp=True, width="stretch",
                   caption="Input as the model sees it (224 × 224" + (", histogram-equalised)" if spec.equalize else ")"))
    explained.image(heat, caption=f"Grad-CAM: evidence for {target.lower()}", width="stretch")

"""Diagnose: upload X-rays, read P(pneumonia) per model, see and download the Grad-CAM overlay."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.cards import recommended
from core.case_report import ReportModel, case_report
from core.gradcam import colour_bar, overlay
from core.inference import BORDERLINE, BORDERLINE_NOTE, is_borderline, label_for
from core.lungs import EVIDENCE_OUTSIDE_WARNING, draw_outline
from core.preprocessing import apply_window, fit_within, model_view
from pages import _ui as ui

ui.ensure_app(__file__)

CLASS_CHOICES = {"Evidence for pneumonia": "PNEUMONIA", "Evidence for normal": "NORMAL"}
# the first is the default: a map that a model barely believes in stays faint, so that a 0.5 % image does not show a
# red hot spot that reads like a finding; normalised per image shows where a model looked, however weakly
SCALES = {"Scaled by the evidence": "1 = the strongest evidence in this image at a probability of 100 %; a weak finding "
                                    "stays faint",
          "Normalised per image": "1 = the strongest evidence in this image, whatever the probability"}
SCALE_HELP = ("Scaled by the evidence (the default): the map times the model's probability of the class it explains "
              "(how strongly it believes it), so weak and strong findings look different. Normalised per image: every "
              "map is stretched to its own maximum, so a 9 % image can look as hot as a 98 % one (where the model "
              "looked, for teaching how it behaves).")

st.title("Diagnose a chest X-ray")
st.caption(ui.DISCLAIMER)
names = ui.no_models_stop()

with st.sidebar:
    st.subheader("Settings")
    choice = st.selectbox("Model", ["All models", *names], key="dx_model")
    selected = names if choice == "All models" else [choice]
    thresholds = {}
    with st.expander("Decision thresholds", expanded=False):
        st.caption("Start at each model's card threshold (chosen on validation data; shown to 3 decimals, used exactly "
                   "until you move it, as the command line and the test metrics use it); changes apply "
                   "to this view only.")
        for name in selected:
            site = ui.site_profile(name)
            start = site.threshold if site is not None else ui.card(name).decision_threshold
            thresholds[name] = ui.threshold_slider(name + (f" (site '{site.site}')" if site else ""), start,
                                                   f"dx_thr_{name}" + (f"_site_{site.created}" if site else ""))
        if any(ui.site_profile(n) for n in selected):
            st.caption("A site operating point is in use (loaded on the Site operating point page); the model cards "
                       "are unchanged.")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="dx_alpha")
    target = CLASS_CHOICES[st.radio("Grad-CAM explains", list(CLASS_CHOICES), key="dx_target")]
    by_evidence = st.radio("Heatmap scale", list(SCALES), key="dx_scale", help=SCALE_HELP) == "Scaled by the evidence"
    show_lungs = st.toggle("Lung outline", value=True, key="dx_lungs",
                           help="The lungs the segmenter found, drawn over the input and the heatmaps.")

# No extension filter: every file reaches the decoder, which recognises content (not names) and
# answers anything it cannot use with a specific message.
uploads = st.file_uploader("Upload X-rays (JPEG, PNG, BMP, TIFF or DICOM)", accept_multiple_files=True,
                           key="dx_upload")
files: list[tuple[str, bytes]] = [(u.name, u.getvalue()) for u in uploads or []]
entered_age = st.number_input(
    "Patient's age in years, where the file does not state it (optional)", min_value=0.0, max_value=120.0,
    value=None, step=1.0, format="%g", key="dx_age",
    help="The models were trained on chest X-rays of children aged one to five: a film you say is of someone 18 or "
         "older is withheld like an adult's DICOM. Applies to every uploaded file without an age in its header (JPEG "
         "and PNG never have one); kept in this session only.")
uploaded = len(files)  # the sample below, if any, is a child's film from the dataset: no age applies to it

root = ui.data_dir()
sample_dir = root.parent / "samples_fullres" if root else None
if sample_dir and sample_dir.is_dir():
    samples = ui.sample_xrays(str(sample_dir))
    sample = st.selectbox("…or try a full-resolution original from the dataset (its true label and split given)",
                          ["—", *samples], format_func=lambda n: samples.get(n, n), key="dx_sample",
                          help="Originals of dataset images. A training-split image was seen by the models (as its "
                               "224 × 224 copy) while they learned: it shows how they behave, not how well.")
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

# Each file is read, checked and scored once per session, not again on every widget change; the
# readings live in this session's memory only (never on disk) and only while the file is here.
keys = {filename: ui.content_key(filename, data) for filename, data in files}
progress = st.progress(0.0, text="Reading files…") if len(files) > 1 else None
read = ui.read_uploads("dx_uploads", {keys[f]: data for f, data in files},
                       st.get_option("server.maxUploadSize") * 2**20,
                       progress and (lambda done, total: progress.progress(done / (total + 1),
                                                                           text=f"Read {done} of {total} files")))
usable = [f for f, _ in files if not isinstance(read[keys[f]], str)]
if progress:
    progress.progress(len(files) / (len(files) + 1), text="Scoring…")
# an adult's age (in the DICOM header, else as entered), or a pixel size by which the lungs are an adult's width,
# withholds the film like any other out-of-scope image; a reading is kept per file and what is stated about it
order = {f: i for i, (f, _) in enumerate(files)}
facts = {f: read[keys[f]].stated.with_entered_age(entered_age if order[f] < uploaded else None) for f in usable}
rkeys = {f: f"{keys[f]}\0{facts[f]}" for f in usable}
readings = ui.session_readings("dx_readings", {rkeys[f]: read[keys[f]].gray for f in usable}, selected, check=True,
                               stated={rkeys[f]: facts[f] for f in usable})
if progress:
    progress.empty()
errors = {f: read[keys[f]] for f, _ in files if isinstance(read[keys[f]], str)}
flagged = {f: readings[rkeys[f]].ood for f in usable if readings[rkeys[f]].flagged}
results = [(f, read[keys[f]].gray, readings[rkeys[f]].diagnoses[name]) for f in usable for name in selected]

for filename, message in errors.items():
    st.error(f"**{filename}** was not scored: {message}")
if not results:
    st.stop()

if len(files) > 1:
    def withheld(f: str) -> bool:
        return f in flagged and not st.session_state.get(f"dx_ood_{f}", False)

    def row(f: str) -> dict:
        """One row per file: every model's probability and label, or why there is none."""
        out = {"file": f}
        if f in errors:
            return {**out, "status": f"not read: {errors[f]}"}
        if withheld(f):
            return {**out, "status": "withheld: " + flagged[f].reason}
        out["status"] = "scored" + (" (shown although unusual)" if f in flagged else "")
        for name in selected:
            d = readings[rkeys[f]].diagnoses[name]
            out[f"{name}: P(pneumonia)"] = f"{d.probability:.3f}"
            out[f"{name}: label at {thresholds[name]:.3f}"] = label_for(d.probability, thresholds[name])
        return out

    table = pd.DataFrame([row(f) for f, _ in files]).fillna("—")
    st.subheader("All files")
    st.dataframe(table, hide_index=True, width="stretch", height=36 * (min(len(table), 16) + 1) + 2, key="dx_table")
    st.download_button("Download table (CSV)", table.to_csv(index=False).encode(), "diagnoses.csv", "text/csv",
                       key="dx_csv")
    choices = list(dict.fromkeys(f for f, _, _ in results))
    first = next((i for i, f in enumerate(choices) if not withheld(f)), 0)  # start on a file with a result
    shown = st.selectbox("Show details for", choices, index=first, key="dx_detail")
else:
    shown = results[0][0]

st.subheader(shown)
dicom = read[keys[shown]].dicom
if dicom:
    st.caption(" · ".join(f"{k}: {v}" for k, v in dicom.items()))
if ui.withheld_unless_asked(flagged.get(shown), key=f"dx_ood_{shown}"):
    st.stop()
reading = readings[rkeys[shown]]
lungs = reading.lungs if show_lungs else None


def outlined(rgb):
    return draw_outline(rgb, lungs) if lungs is not None else rgb


lead = recommended([ui.card(n) for n in names])
rows = sorted([r for r in results if r[0] == shown], key=lambda r: r[2].model != lead)  # the recommended model first
said = {d.model: label_for(d.probability, thresholds[d.model]) for _, _, d in rows}
if lead in said and len(said) > 1:
    agree = [n for n in said if n != lead and said[n] == said[lead]]
    differ = [f"{n} says {said[n]} (P = {next(d for _, _, d in rows if d.model == n).probability:.0%})"
              for n in said if n != lead and said[n] != said[lead]]
    text = f"**{lead}**, the recommended model, says **{said[lead]}**"
    lead_p = next(d.probability for _, _, d in rows if d.model == lead)
    text += f" (borderline: within {BORDERLINE:.2f} of its threshold)" if is_borderline(lead_p, thresholds[lead]) else ""
    if not differ:
        text += f"; {' and '.join(agree)} {'agrees' if len(agree) == 1 else 'agree'}: all models agree."
    else:
        text += (f"; {' and '.join(agree)} {'agrees' if len(agree) == 1 else 'agree'}" if agree else "")
        text += f". The models disagree: {'; '.join(differ)}. Read the X-ray yourself before trusting any of them."
    (st.warning if differ else st.info)(text, icon=":material/groups:")
    st.caption(f"Why this model leads: {ui.card(lead).recommendation['rule']}")

# The viewer: the X-ray at its own resolution (zoom and pan in the figure), a display window, and one model's map
st.markdown("**Viewer**: the X-ray at its own resolution. Drag to zoom, double-click to reset; the window changes "
            "only the display.")
view_col, control_col = st.columns([3, 1])
source_image = read[keys[shown]].original
source_image = source_image if source_image is not None else rows[0][1]
file_size = f"{source_image.shape[1]} × {source_image.shape[0]}"
source_image = fit_within(source_image)  # a very large scan is shown at most 1600 pixels wide or high
raw = read[keys[shown]].raw  # DICOM or a 16-bit file: the window works on the file's own values
raw = replace(raw, values=fit_within(raw.values)) if raw is not None else None
with control_col:
    over = st.selectbox("Heatmap over the X-ray", ["none", *[r[2].model for r in rows]], index=1, key="dx_view_model")
    if raw is None:
        level = st.slider("Window level (centre)", 0, 255, 128, key="dx_view_level")
        width = st.slider("Window width", 1, 255, 255, key="dx_view_width")
    else:
        level, width = ui.raw_window_sliders(raw, key=f"dx_view_raw_{keys[shown]}")
    lead_spec = ui.get_model(rows[0][2].model).spec
    st.image(outlined(np.repeat(model_view(rows[0][1], lead_spec)[..., None], 3, axis=-1)), width="stretch",
             caption="Input as the models see it (224 × 224"
                     + (", histogram-equalised for the Lite0 models)" if lead_spec.equalize else ")")
                     + (", lungs outlined" if lungs is not None else ""))
shown_gray = apply_window(source_image, level, width) if raw is None else raw.window(level, width)
if over == "none":
    picture = np.repeat(shown_gray[..., None], 3, axis=-1)
else:
    d_over = next(r[2] for r in rows if r[2].model == over)
    picture = overlay(shown_gray, d_over.heatmap(shown_gray.shape, target, by_evidence), alpha=alpha)
picture = draw_outline(picture, lungs) if lungs is not None else picture
figure = px.imshow(picture, binary_string=True)
aspect = source_image.shape[0] / source_image.shape[1]
figure.update_layout(height=int(min(760, 800 * aspect)) + 30, margin={"l": 0, "r": 0, "t": 30, "b": 0}, dragmode="zoom",
                     title={"text": (f"{over}: evidence for {target.lower()}" if over != "none" else "X-ray")
                            + f" · file {file_size}"
                            + (f", shown at {source_image.shape[1]} × {source_image.shape[0]}"
                               if file_size != f"{source_image.shape[1]} × {source_image.shape[0]}" else ""),
                            "font": {"size": 13}})
figure.update_xaxes(visible=False)
figure.update_yaxes(visible=False)
view_col.plotly_chart(figure, key="dx_viewer", config={"scrollZoom": True, "displaylogo": False})

for filename, gray, d in rows:
    label = label_for(d.probability, thresholds[d.model])
    heat = outlined(overlay(gray, d.heatmap(gray.shape, target, by_evidence), alpha=alpha))
    share = reading.lung_share(d.model)
    info, explained = st.columns([3, 2])
    with info:
        st.markdown(f"**{d.model}**" + (" · recommended" if d.model == lead else ""))
        st.metric("P(pneumonia)", f"{d.probability:.1%}")
        site = ui.site_profile(d.model)
        st.markdown(f"Label: {ui.label_badge(label)} at threshold {thresholds[d.model]:.3f}"
                    + (f" (site '{site.site}')" if site is not None and thresholds[d.model] == site.threshold
                       else ""), unsafe_allow_html=True)
        if is_borderline(d.probability, thresholds[d.model]):
            st.caption(BORDERLINE_NOTE.format(margin=BORDERLINE))
        if share is not None:
            st.caption(f"{share:.0%} of the evidence for pneumonia lies inside the lungs found.")
            if share < 0.5:
                st.warning(EVIDENCE_OUTSIDE_WARNING.format(outside=1 - share))
        source = read[keys[filename]].original
        full = source if source is not None else gray

        def full_overlay(d=d, full=full) -> bytes:  # made when clicked, at the original's own resolution
            rgb = overlay(full, d.heatmap(full.shape, target, by_evidence), alpha=alpha)
            return ui.png_bytes(draw_outline(rgb, lungs) if lungs is not None else rgb)

        st.download_button(f"Download overlay (PNG, {full.shape[1]} × {full.shape[0]})", full_overlay,
                           f"{filename.rsplit('.', 1)[0]}_{d.model}_gradcam.png", "image/png", key=f"dx_png_{d.model}",
                           help="The heatmap over the X-ray at the file's own resolution, with the lung outline "
                                "when it is shown.")
    p_target = d.probability if target == "PNEUMONIA" else 1 - d.probability
    explained.image(heat, width="stretch",
                    caption=f"{ui.map_name(d.model)}: evidence for {target.lower()} (explains P({target.lower()}) = {p_target:.1%}; "
                            + ("scaled by it)" if by_evidence else "normalised per image)"))

def report(fmt: str) -> bytes:  # made when clicked
    source = read[keys[shown]].original
    def origin(n: str) -> str:
        site = ui.site_profile(n)
        if site is not None and thresholds[n] == site.threshold:
            return f"site '{site.site}'"
        return "card" if thresholds[n] == ui.card(n).decision_threshold else "set on screen"

    models = [ReportModel(n, thresholds[n], ui.card(n).weights_sha256, origin(n)) for n in [r[2].model for r in rows]]
    return case_report(source if source is not None else rows[0][1], reading, models, rows[0][2].model, target,
                       by_evidence, fmt)


st.markdown("**Case report** of this image: the X-ray, the leading model's heatmap with its scale, every model's "
            "reading and threshold, the guard's verdict, the models' weight checksums, the date and the notice; "
            "no file name or other patient identifier.")
pdf, png, _ = st.columns([1, 1, 2])
pdf.download_button("Case report (PDF)", lambda: report("pdf"), "case_report.pdf", "application/pdf", key="dx_report_pdf")
png.download_button("Case report (PNG)", lambda: report("png"), "case_report.png", "image/png", key="dx_report_png")

scale = next(k for k in SCALES if (k == "Scaled by the evidence") == by_evidence)
bar, legend = st.columns([1, 2])
bar.image(colour_bar(), width="stretch")
bar.markdown("<div style='display:flex;justify-content:space-between;font-size:0.8rem'><span>0: none</span>"
             "<span>0.5</span><span>1</span></div>", unsafe_allow_html=True)
legend.caption(f"Heatmap colours ({scale.lower()}): {SCALES[scale]}. Blue: no evidence for the class explained; red: "
               "the most. Grad-CAM shows where the model found evidence, not what the finding is.")

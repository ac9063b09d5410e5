"""Compare models: one table, overlaid ROC curves, one image through every model, disagreements."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import ImageDecodeError
from core.evaluation import interval_text
from core.gradcam import overlay
from core.inference import BORDERLINE, is_borderline, label_for, read_upload
from pages import _ui as ui

ui.ensure_app(__file__)

# explanation quality against the true lung masks (metrics.json "explanation"), column -> key
EXPLANATION = {"lung energy": "lung_energy_mean", "pointing game": "pointing_game",
               "template index": "template_index"}

st.title("Compare models")
names = ui.no_models_stop()

rows = []
for name in names:
    report, card = ui.metrics(name), ui.card(name)
    m = report["at_card_threshold"] if report else {}
    ci = (report or {}).get("ci95", {})
    rows.append({
        "model": name,
        "backbone": card.backbone or "none (from scratch)",
        "threshold": card.decision_threshold,
        "accuracy": m.get("accuracy"),
        "sensitivity": m.get("sensitivity"),
        "specificity": m.get("specificity"),
        "precision": m.get("precision"),
        "F1": m.get("f1"),
        "accuracy 95 % CI": interval_text(ci.get("accuracy")),
        "ROC AUC": report["roc_auc"] if report else None,
        "ROC AUC 95 % CI": interval_text(ci.get("roc_auc")),
        "PR AUC": report["pr_auc"] if report else None,
        "parameters": card.parameters,
        "file size (MB)": ui.weights_size_mb(name),
        "ms per image": ui.ms_per_image(name),
        **{label: (report or {}).get("explanation", {}).get(key) for label, key in EXPLANATION.items()},
    })
# models as columns, measures as rows: every number stays visible at laptop widths, however many measures
table = pd.DataFrame(rows).set_index("model").T
higher = ["accuracy", "sensitivity", "specificity", "precision", "F1", "ROC AUC", "PR AUC", "lung energy",
          "pointing game"]
lower = ["parameters", "file size (MB)", "ms per image", "template index"]
formats = {**dict.fromkeys(higher + ["threshold", "template index"], "{:.3f}"), "parameters": "{:,.0f}",
           "file size (MB)": "{:.1f}", "ms per image": "{:.0f}"}


def _cell(value, row: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    return formats[row].format(value) if row in formats else str(value)


def _best(row: pd.Series) -> list[str]:
    """Highlight the best model in a row where higher (or lower) is better."""
    if row.name not in higher + lower:
        return [""] * len(row)
    values = pd.to_numeric(row, errors="coerce")
    if values.isna().all():
        return [""] * len(row)
    best = values.max() if row.name in higher else values.min()
    return ["background-color: #cfe8d8" if v == best else "" for v in values]


shown = pd.DataFrame({c: [_cell(table.at[r, c], r) for r in table.index] for c in table.columns}, index=table.index)
st.dataframe(shown.style.apply(lambda r: _best(table.loc[r.name]), axis=1), width="stretch",
             height=35 * (len(table) + 1) + 3, key="cmp_table")
st.caption("Test-set metrics at each model's card threshold (chosen on validation), with 95 % bootstrap intervals "
           "(test images resampled within each class). ms per image: median time of one diagnosis (probability + "
           "Grad-CAM) on this server. Lung energy: share of the pneumonia map inside the true lung masks "
           "(the lungs cover about a third of the image); pointing game: share of images whose map peaks inside "
           "the lungs; template index: how much every image gets the same map (1 = always). Best value per column "
           "highlighted in each row.")

fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance")])
for name in names:
    report = ui.metrics(name)
    if report:
        fig.add_trace(go.Scatter(x=report["roc_curve"]["fpr"], y=report["roc_curve"]["tpr"], mode="lines",
                                 name=f"{name} (AUC {report['roc_auc']:.3f})", line={"color": ui.model_colour(name)}))
fig.update_layout(title="ROC curves on the official test set", xaxis_title="False-positive rate (1 − specificity)",
                  yaxis_title="True-positive rate (sensitivity)", height=460)
st.plotly_chart(fig, key="cmp_roc")

st.header("One image through every model")
both = ui.all_predictions()
source = st.radio("Image", ["Test image by file name", "Upload"], horizontal=True, key="cmp_source")
gray, caption, facts = None, "", None
if source == "Upload":
    upload = st.file_uploader("X-ray (JPEG, PNG, BMP, TIFF or DICOM)", key="cmp_upload")
    entered_age = st.number_input("Patient's age in years, where the file does not state it (optional)", 0.0, 120.0,
                                  None, 1.0, format="%g", key="cmp_age",
                                  help="18 or more withholds the film: the models were trained on children aged one "
                                       "to five.")
    if upload is not None:
        try:
            read = read_upload(upload.getvalue(), upload.name)
            gray, caption, facts = read.gray, upload.name, read.stated.with_entered_age(entered_age)
        except ImageDecodeError as exc:
            st.error(str(exc))
elif both is not None:
    pick = st.selectbox("Test file", both.filename + " (" + both.label + ")", key="cmp_file")
    row = both.iloc[list(both.filename + " (" + both.label + ")").index(pick)]
    gray, caption = ui.test_image(row.filename, row.label), f"{row.filename}: truly {row.label}"
    if gray is None:
        ui.no_data_hint()
# checked first; scored by the models only once the user may see it
if gray is not None and ui.withheld_unless_asked(ui.one_reading("cmp_reading", gray, check=True, stated=facts).ood, key="cmp_ood"):
    gray = None
if gray is not None:
    scores = ui.one_reading("cmp_reading", gray, names, check=True, stated=facts).diagnoses
    st.caption(caption)
    cols = st.columns(len(names))
    for col, name in zip(cols, names, strict=False):
        d = scores[name]
        col.markdown(f"**{name}**: P(pneumonia) = {d.probability:.1%} → {ui.label_badge(d.label)}",
                     unsafe_allow_html=True)
        if is_borderline(d.probability, d.threshold):
            col.caption(f"Borderline: within {BORDERLINE:.2f} of the threshold ({d.threshold:.3f}).")
        col.image(overlay(gray, d.heatmap(gray.shape, "PNEUMONIA")),
                  caption=f"{ui.map_name(name)}, evidence for pneumonia, normalised per image", width="stretch")

st.header("Where the models disagree")
if both is None:
    st.info("No test predictions yet: run `python -m core.evaluate --model all`.")
    st.stop()
labels = pd.DataFrame({n: [label_for(p, ui.card(n).decision_threshold) for p in both[n]] for n in names})
disagree = both[labels.nunique(axis=1) > 1].copy()
for n in names:
    disagree[f"{n} label"] = labels.loc[disagree.index, n]
st.write(f"{len(disagree)} of {len(both)} test images get different labels from the models (at card thresholds).")
# P(pneumonia) as the other pages show it (a percentage); the values stay numbers, so the columns sort
st.dataframe(disagree, hide_index=True, width="stretch", key="cmp_disagree",
             column_config={n: st.column_config.NumberColumn(f"{n}: P(pneumonia)", format="percent") for n in names})
if len(disagree):
    pick = st.selectbox("Look at", disagree.filename, key="cmp_disagree_pick")
    row = disagree[disagree.filename == pick].iloc[0]
    gray = ui.test_image(row.filename, row.label)
    if gray is None:
        ui.no_data_hint()
    else:
        cols = st.columns(len(names) + 1)
        cols[0].image(gray, caption=f"{row.filename}: truly {row.label}", width="stretch")
        scores = ui.one_reading("cmp_disagree_reading", gray, names).diagnoses
        for col, name in zip(cols[1:], names, strict=False):
            d = scores[name]
            col.image(overlay(gray, d.heatmap(gray.shape, d.label)),
                      caption=f"{name}: {d.probability:.1%} → {d.label}", width="stretch")

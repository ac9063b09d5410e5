"""Test metrics: ROC / PR curves, confusion matrix and report at an adjustable threshold."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.calibration import apply_temperature, expected_calibration_error
from core.evaluation import calibration_bins, classification_rows, interval_text, metrics_at
from pages import _ui as ui

ui.ensure_app(__file__)

st.title("Test-set metrics")
names = ui.no_models_stop()
name = st.selectbox("Model", names, index=len(names) - 1, key="tm_model")
df, report, card = ui.predictions(name), ui.metrics(name), ui.card(name)
if df is None or report is None:
    st.warning(f"No test predictions for '{name}'. Run `python -m core.evaluate --model {name}`.")
    st.stop()

st.caption(f"Official test split: {len(df)} images ({int(df.y.sum())} pneumonia, {int((1 - df.y).sum())} normal). "
           f"Card threshold {card.decision_threshold:.3f}, chosen to {card.threshold_rule}.")
threshold = ui.threshold_slider("Decision threshold on P(pneumonia)", card.decision_threshold, f"tm_threshold_{name}")
m = metrics_at(df.y, df.probability, threshold)
cm = m["confusion_matrix"]
cols = st.columns(5)
for col, key in zip(cols, ["accuracy", "sensitivity", "specificity", "precision", "f1"], strict=False):
    col.metric(key.capitalize() if key != "f1" else "F1", "n/a" if m[key] is None else f"{m[key]:.3f}",
               help="Undefined: no image is called pneumonia at this threshold." if m[key] is None else None)
ci = ui.metric_intervals(name, threshold)
auc_ci = report.get("ci95", {}).get("roc_auc")
st.caption(
    "95 % intervals for another test set of the same make-up (bootstrap: the test images resampled within each "
    f"class {ci['resamples']} times): "
    + " · ".join(f"{k} {interval_text(ci[k])}" for k in ("accuracy", "sensitivity", "specificity"))
    + (f" · ROC AUC {interval_text(auc_ci)}" if auc_ci else "")
    + ". They show the test set's sampling noise only, not how much another training run would differ.",
)

left, right = st.columns(2)
with left:
    fpr, tpr = report["roc_curve"]["fpr"], report["roc_curve"]["tpr"]
    op_fpr = cm["fp"] / max(cm["fp"] + cm["tn"], 1)
    fig = go.Figure([go.Scatter(x=fpr, y=tpr, mode="lines", name=f"ROC (AUC {report['roc_auc']:.3f})"),
                     go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"),
                     go.Scatter(x=[op_fpr], y=[m["sensitivity"]], mode="markers", marker={"size": 12, "color": "#b5443a"},
                                name=f"threshold {threshold:.3f}")])
    fig.update_layout(title="ROC curve", xaxis_title="False-positive rate (1 − specificity)",
                      yaxis_title="True-positive rate (sensitivity)", height=420)
    st.plotly_chart(fig, key="tm_roc")
with right:
    pr = report["pr_curve"]
    marker = [] if m["precision"] is None else [  # no point where precision is undefined
        go.Scatter(x=[m["sensitivity"]], y=[m["precision"]], mode="markers", marker={"size": 12, "color": "#b5443a"},
                   name=f"threshold {threshold:.3f}")]
    fig = go.Figure([go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=f"PR (AP {report['pr_auc']:.3f})"),
                     *marker])
    fig.update_layout(title="Precision–recall curve", xaxis_title="Recall (sensitivity)", yaxis_title="Precision",
                      height=420)
    st.plotly_chart(fig, key="tm_pr")

left, right = st.columns(2)
with left:
    st.subheader("Confusion matrix")
    matrix = pd.DataFrame([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]],
                          index=["true NORMAL", "true PNEUMONIA"], columns=["predicted NORMAL", "predicted PNEUMONIA"])
    st.dataframe(matrix.style.background_gradient(cmap="Blues", axis=None), key="tm_cm_table", width="stretch")
with right:
    st.subheader("Classification report")
    rows = classification_rows(df.y, df.probability, threshold)

    def cell(row: dict, key: str) -> str:  # blank: not part of that row; n/a: undefined (no image called that class)
        if key not in row:
            return ""
        return "n/a" if row[key] is None else str(row[key]) if key == "support" else f"{row[key]:.3f}"

    st.dataframe(pd.DataFrame([{k: cell(r, k) for k in ("precision", "recall", "f1-score", "support")} for r in rows],
                              index=[r["class"] for r in rows]), width="stretch")

left, right = st.columns(2)
with left:
    fig = px.histogram(df, x="probability", color="label", nbins=40, barmode="overlay", opacity=0.65,
                       color_discrete_map={"NORMAL": "#2e7d4f", "PNEUMONIA": "#b5443a"})
    fig.add_vline(x=threshold, line_dash="dash", annotation_text="threshold")
    fig.update_layout(title="Predicted probabilities by true class", xaxis_title="P(pneumonia)",
                      yaxis_title="Number of test images", height=380)
    st.plotly_chart(fig, key="tm_hist")
with right:
    # the probabilities shown are calibrated (temperature scaling fitted on validation); the model's own, before it
    raw = apply_temperature(df.probability, 1 / card.temperature)
    curves = [("calibrated (shown)", df.probability, ui.model_colour(name))]
    if card.calibration:
        curves.insert(0, ("before calibration", raw, "#b0b0b0"))
    fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                                name="perfectly calibrated")])
    for title, prob, colour in curves:
        bins = pd.DataFrame(calibration_bins(df.y, prob)).dropna()
        fig.add_trace(go.Scatter(x=bins.mean_predicted, y=bins.observed_rate, mode="lines+markers",
                                 name=f"{title}: ECE {expected_calibration_error(df.y, prob):.3f}",
                                 line={"color": colour}, text=bins["count"],
                                 hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>n=%{text}"))
    fig.update_layout(title="Reliability (calibration) curve", xaxis_title="Mean predicted P(pneumonia)",
                      yaxis_title="Observed fraction with pneumonia", height=380)
    st.plotly_chart(fig, key="tm_calibration")
    cal = card.calibration
    st.caption((f"Temperature scaling, T = {cal['temperature']:.2f}, fitted on {cal['fitted_on']} (validation ECE "
                f"{cal['val_ece_before']:.3f} → {cal['val_ece_after']:.3f}); on this test set, expected calibration "
                f"error {expected_calibration_error(df.y, raw):.3f} before → "
                f"{expected_calibration_error(df.y, df.probability):.3f} after. " if cal else "No calibration in this "
                "model's card. ")
               + f"Brier score {report['brier']:.3f}. Label smoothing (0.1) keeps the model's own probabilities away "
                 "from 0 and 1 by design; the test set is shifted from the validation data, so calibration fitted "
                 "there need not hold here.")


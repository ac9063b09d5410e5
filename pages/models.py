"""Model cards in readable form: recipe, threshold, data, training curves, intended use."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.config import WISE_FT_ALPHA_FIXED, Recipe, trains_head_only
from pages import _ui as ui

ui.ensure_app(__file__)

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]

st.title("Model cards")
st.caption(ui.DISCLAIMER)
names = ui.no_models_stop()


def metric_table(rows: list[tuple[str, float, dict]]) -> None:
    """Validation and test metrics as one small table (metric tiles cut the numbers in a narrow column)."""
    # measures as rows, data as columns: narrow enough for the right-hand column at laptop widths
    lines = ["| measure | " + " | ".join(title for title, _, _ in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    lines += ["| ROC AUC | " + " | ".join(f"{auc:.3f}" for _, auc, _ in rows) + " |"]
    lines += [f"| {key} | " + " | ".join(f"{m[key]:.3f}" for _, _, m in rows) + " |"
              for key in ("accuracy", "sensitivity", "specificity")]
    st.markdown("\n".join(lines))
    st.caption("At the card threshold, which was chosen on the validation data.")


def epochs_text(card) -> str:
    soup = card.soup
    if not soup:
        return f"{card.epochs_run} run, best at {card.best_epoch}"
    runs = ", ".join(f"seed {m['seed']}: best at {m['best_epoch']} of {m['epochs_run']}" for m in soup["members"])
    return f"{len(soup['members'])} run{'s' if len(soup['members']) > 1 else ''} ({runs})"


def soup_text(soup: dict) -> str:
    aucs = ", ".join(f"{m['val_roc_auc']:.3f}" for m in soup["members"])
    return (f"the {soup['rule']}; the runs differ only in their training seed (same start, same validation split). "
            f"Validation ROC AUC of the runs: {aucs}; of their averaged outputs: {soup['output_ensemble_val_roc_auc']:.3f}")


def wise_text(wise: dict) -> str:
    curve = ", ".join(f"α = {a}: {auc:.3f}" for a, auc in wise["val_roc_auc_by_alpha"].items())
    chosen = wise.get("alpha_choice", WISE_FT_ALPHA_FIXED)  # cards written before the record said it
    return (f"{1 - wise['alpha']:g} × `{wise['start']}` (the start) + {wise['alpha']:g} × the fine-tuned weights, "
            f"every weight (WiSE-FT; α {chosen}). Validation ROC AUC by α: {curve}")


def consistency_text(record: dict) -> str:
    grid = ", ".join(f"λ = {g['lambda']:g}: {g['val_roc_auc']:.4f}" for g in record["grid"])
    return (f"{record['penalty']}; λ = {record['lambda']:g}, {record['rule']}. Validation ROC AUC by λ: {grid}")


def pairs_text(weight: float) -> str:
    """v25: a fine-tuning stage trained on pairs of views of each image (``consistency_weight`` in the card's config)."""
    return (f"trained on two views of each image, each re-encoded on its own and both augmented alike; the loss adds "
            f"λ × the mean squared gap between their logits, λ = {weight:g}, fixed before training (docs/lungs.md §23); "
            "no head dropout in that stage, so that the gap is the encoding's")


def augmentation_text(cfg: dict) -> str:
    if not cfg["augment"]:
        return "off"
    parts = [f"rotation ±{cfg['rotation_deg']:g}°", f"shift {cfg['shift']:g}", f"zoom {cfg['zoom']:g}",
             f"brightness {cfg['brightness']:g}"]
    if cfg.get("contrast"):
        parts.append(f"contrast {cfg['contrast']:g}")
    if cfg.get("central_erasing"):
        parts.append(f"central third blanked in {cfg['central_erasing']:.0%} of images")
    return ", ".join(parts)


def calibration_text(cal: dict | None) -> str:
    if not cal:
        return "none: probabilities as the model gives them"
    return (f"temperature scaling, T = {cal['temperature']:.2f}, fitted on {cal['fitted_on']}; validation ECE "
            f"{cal['val_ece_before']:.3f} → {cal['val_ece_after']:.3f}, log-loss {cal['val_log_loss_before']:.3f} → "
            f"{cal['val_log_loss_after']:.3f}")


def encoding_text(card) -> str:
    """How the model saw other encodings of its training images: per epoch at random, or as fixed views for a head
    trained on a frozen backbone's features."""
    cfg = card.config
    if not cfg.get("encoding_augment"):
        return ""
    if trains_head_only(card.kind, cfg.get("trainable_top_layers", 0)):
        return f"; trained on each image and {cfg.get('encoded_views', Recipe.encoded_views)} re-encoded views of it (resampling, blur, noise, JPEG)"
    return "; every image re-encoded at random (resampling, blur, noise, JPEG)"


def input_text(card) -> str:
    pre, shape = card.preprocessing, card.input_shape
    text = f"{shape[0]} × {shape[1]} × {shape[2]}, "
    text += f"blurred (Gaussian, σ {pre['blur_sigma']:g} px), then " if pre.get("blur_sigma") else ""
    text += "histogram-equalised, then " if pre.get("equalize") else ""
    text += f"(pixel − {pre['mean']}) / {pre['std']}"
    if pre.get("lung_margin"):
        text += f"; only the lungs (and {pre['lung_margin']} pixels around them) are seen, the rest is blanked"
    return text


for tab, name in zip(st.tabs(names), names, strict=False):
    card = ui.card(name)
    cfg, data = card.config, card.data
    # a recipe of one seed records its run as a soup of one, which averages nothing
    averaged = card.soup and len(card.soup["members"]) > 1
    mix_rows = f"| Weight average | {soup_text(card.soup)} |\n" if averaged else ""
    mix_rows += f"| Mixed with its start | {wise_text(card.wise_ft)} |\n" if card.wise_ft else ""
    mix_rows += f"| Same answer under re-encoding | {consistency_text(card.consistency)} |\n" if card.consistency else ""
    if cfg.get("consistency_weight"):
        mix_rows += f"| Same answer under re-encoding | {pairs_text(cfg['consistency_weight'])} |\n"
    with tab:
        left, right = st.columns([3, 2])
        with left:
            st.subheader(name)
            st.warning(f"**Intended use.** {card.intended_use}\n\n**Limitations.**\n"
                       + "\n".join(f"- {limit}" for limit in card.limitations))
            for note in card.notes:
                st.write(note)
            st.markdown(f"""
| setting | value |
|---|---|
| Kind | {card.kind} |
| Backbone | {card.backbone or 'none: trained from scratch'} |
| Input | {input_text(card)} |
| Parameters | {card.parameters:,} |
| Decision threshold | {card.decision_threshold:.3f} on the probability shown ({card.threshold:.4f} on the model's own output): {card.threshold_rule} |
| Calibration | {calibration_text(card.calibration)} |
| Heatmap | {card.map_name} on `{card.gradcam_layer}` |
| Optimiser | Adam, learning rate {cfg['learning_rate']:g}; BCE, label smoothing {cfg['label_smoothing']} |
| Regularisation | dropout {cfg['dropout']}; class weights {'on' if cfg['class_weights'] else 'off'}; augmentation {augmentation_text(cfg)}{encoding_text(card)} |
| Trainable backbone layers | {cfg['trainable_top_layers'] or 'none (frozen or n/a)'} |
| Data | {data['train_images']} train / {data['val_images']} validation images ({data['train_patients']} / {data['val_patients']} patients); {data['split']}; fingerprint `{data['fingerprint']}` |
| Epochs | {epochs_text(card)} |
{mix_rows}| Training | {card.training_time_s / 60:.1f} min on {card.hardware}, {card.date[:10]} |
| Weights | `{card.weights_file}`, sha256 `{card.weights_sha256[:16]}…` |
""")
        with right:
            report = ui.metrics(name)
            rows = [("validation", card.val_metrics["roc_auc"], card.val_metrics)]  # (column title, ROC AUC, metrics)
            if report:
                rows.append(("official test", report["roc_auc"], report["at_card_threshold"]))
            metric_table(rows)
            if report:
                cam = report.get("gradcam", {})
                if cam.get("central_third_share_mean") is not None:
                    st.caption(f"Grad-CAM on test images called pneumonia: {cam['central_third_share_mean']:.0%} of the "
                               "evidence lies in the central third of the width (mediastinum and heart; a uniform map "
                               f"puts 33 % there) and {cam.get('border_share_mean') or 0:.0%} on the top and side "
                               "borders (shoulders, corners, labels; uniform: 26 %).")
                lungs = report.get("explanation")
                if lungs and lungs.get("lung_energy_mean") is not None:
                    st.caption(f"Against the true lung masks of the {lungs['images']} test images: "
                               f"{lungs['lung_energy_mean']:.0%} of the map's energy lies inside the lungs (the lungs "
                               f"cover {lungs['lung_area_mean']:.0%} of the image); its maximum falls inside them in "
                               f"{lungs['pointing_game']:.0%} of images; template index {lungs['template_index']:.2f} "
                               "(1 = the same map for every image).")
        hist = ui.history(name)
        if hist is not None and len(hist):
            runs = list(hist.groupby("member_seed")) if "member_seed" in hist else [(None, hist)]
            cols = st.columns(2)
            # a recipe trained on pairs of views (v25) adds the gap between their logits to its training loss
            loss_title = ("Loss (BCE with label smoothing + the weighted logit gap between two encodings)"
                          if "consistency_loss" in hist else "Loss (BCE with label smoothing)")
            for col, metric, title in [(cols[0], "loss", loss_title), (cols[1], "auc", "ROC AUC")]:
                if metric not in hist:
                    continue
                # one colour per run, dotted = training, solid = validation; the legend below the plot has room for all
                fig = go.Figure([go.Scatter(x=run.epoch, y=run[col_name], name=part if seed is None else f"{part}, seed {seed}",
                                            line={"dash": "dot" if part == "train" else "solid",
                                                  "color": PALETTE[i % len(PALETTE)]}, legendgroup=str(seed))
                                 for i, (seed, run) in enumerate(runs)
                                 for part, col_name in [("train", metric), ("validation", f"val_{metric}")]])
                fig.update_layout(title=title, xaxis_title="Epoch", yaxis_title=metric, height=360 + 22 * len(runs),
                                  legend={"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0})
                col.plotly_chart(fig, key=f"mdl_{name}_{metric}")

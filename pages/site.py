"""Site operating point: choose a model's threshold on a site's own labelled X-rays, save it, load it back."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.errors import ImageDecodeError
from core.evaluation import interval_text
from core.site import (
    SiteProfile,
    operating_point,
    predictive_values,
    profile_from_json,
    read_labelled_files,
    read_labelled_zip,
)
from pages import _ui as ui

ui.ensure_app(__file__)

st.title("Site operating point")
st.caption(ui.DISCLAIMER)
names = ui.no_models_stop()
st.markdown(
    "A model's card threshold was chosen on the training hospital's validation images. Your site's X-rays and "
    "case mix may call for another one. Upload your own **labelled** X-rays, pick a model and a rule, and get the "
    "threshold chosen on them, with bootstrap intervals and the PPV and NPV to expect at your prevalence. Save it "
    "as a small profile and load it back: the Diagnose page then uses it for that model, labelled as your site's; "
    "the model's card is never changed.")
st.info("**What a profile can and cannot do.** It moves the decision threshold only: it does not retrain, change or "
        "validate the model, and it cannot fix a model that ranks your images badly (look at the ROC AUC). It is as "
        "good as your labels and as stable as your number of images allow (see the intervals). For reference, on the "
        "official test set, choosing the threshold (Youden's J) on one patient-disjoint half and scoring the other "
        "half (20 random halvings, `core.site.split_half_accuracy`) gave the fine-tuned model accuracy 0.815–0.853 "
        "(mean 0.838) against 0.833 at its validation threshold, and `lungfocus` 0.845–0.899 (mean 0.884) against "
        "0.867 at its own: a threshold chosen on about 300 of a site's images can gain or lose a few points, and "
        "is worth having where the site's images truly differ from the training hospital's.",
        icon=":material/info:")

profiles: dict[str, SiteProfile] = st.session_state.setdefault("site_profiles", {})
shas = {n: ui.card(n).weights_sha256 for n in names}

st.header("Load a saved profile")
saved = st.file_uploader("Profile (JSON)", type=None, key="site_profile_upload")
if saved is not None:
    try:
        profile = profile_from_json(saved.getvalue(), shas)
    except ImageDecodeError as exc:
        st.error(str(exc))
    else:
        if profiles.get(profile.model) != profile:
            profiles[profile.model] = profile
        st.success(f"Using site '{profile.site}' for {profile.model}: threshold {profile.threshold:.3f} "
                   f"(card: {ui.card(profile.model).decision_threshold:.3f}).")
for model, profile in list(profiles.items()):
    left, right = st.columns([4, 1])
    left.markdown(f"**{model}**: site '{profile.site}' threshold **{profile.threshold:.3f}** ({profile.rule}, "
                  f"{profile.images} images), in use on Diagnose.")
    if right.button("Stop using it", key=f"site_drop_{model}"):
        del profiles[model]
        st.rerun()

st.header("Choose an operating point on your images")
source = st.radio("Your labelled images", ["A zip with NORMAL/ and PNEUMONIA/ folders", "Image files and a CSV"],
                  key="site_source")
files, notes = [], []
try:
    if source.startswith("A zip"):
        archive = st.file_uploader("Zip", key="site_zip")
        if archive is not None:
            files, notes = read_labelled_zip(archive.getvalue())
    else:
        images = st.file_uploader("X-rays", accept_multiple_files=True, key="site_files")
        table = st.file_uploader("CSV with columns filename,label (NORMAL or PNEUMONIA)", key="site_csv")
        if images and table is not None:
            files, notes = read_labelled_files({f.name: f.getvalue() for f in images}, table.getvalue())
except ImageDecodeError as exc:
    st.error(str(exc))
if not files:
    st.stop()

left, right = st.columns(2)
model = left.selectbox("Model", names, index=len(names) - 1, key="site_model")
rule = right.radio("Rule", ["Youden's J (sensitivity + specificity − 1)", "A sensitivity I require"],
                   key="site_rule")
required = right.slider("Required sensitivity", 0.50, 1.00, 0.95, 0.01, key="site_sens") if rule.startswith("A") else None
site_name = left.text_input("Site name (goes into the profile)", "my site", max_chars=60, key="site_name")
prevalence = right.slider("Prevalence of pneumonia among your patients", 0.01, 0.99, 0.30, 0.01, key="site_prev")

scored = ui.site_scores(model, tuple((f.name, f.data) for f in files))
y = [f.label for f, s in zip(files, scored, strict=True) if isinstance(s, float)]
p = [s for s in scored if isinstance(s, float)]
left_out = [f"{f.name}: {s}" for f, s in zip(files, scored, strict=True) if isinstance(s, str)] + notes
st.write(f"{len(p)} of {len(files)} images scored ({sum(y)} PNEUMONIA, {len(y) - sum(y)} NORMAL).")
if left_out:
    with st.expander(f"{len(left_out)} files left out, and why"):
        st.write("\n".join(f"- {n}" for n in left_out))
try:
    point = operating_point(y, p, "youden" if required is None else "sensitivity", required or 0.95)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

ci = point["ci95"]
cols = st.columns(4)
cols[0].metric("Threshold", f"{point['threshold']:.3f}", help=f"95 % interval {interval_text(ci['threshold'])}; card "
               f"threshold {ui.card(model).decision_threshold:.3f}")
cols[1].metric("Sensitivity", f"{point['sensitivity']:.3f}", help=f"95 % interval {interval_text(ci['sensitivity'])}")
cols[2].metric("Specificity", f"{point['specificity']:.3f}", help=f"95 % interval {interval_text(ci['specificity'])}")
cols[3].metric("ROC AUC", f"{point['roc_auc']:.3f}", help=f"95 % interval {interval_text(ci['roc_auc'])}")
pv = predictive_values(point["sensitivity"], point["specificity"], prevalence)
fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
st.markdown(
    f"95 % bootstrap intervals (images resampled within each class, the threshold chosen again each time): threshold "
    f"{interval_text(ci['threshold'])}, sensitivity {interval_text(ci['sensitivity'])}, specificity "
    f"{interval_text(ci['specificity'])}, ROC AUC {interval_text(ci['roc_auc'])}.  \n"
    f"At a prevalence of {prevalence:.0%}: expected **PPV {fmt(pv['ppv'])}** (of the X-rays called pneumonia, the "
    f"share that have it) and **NPV {fmt(pv['npv'])}** (of those called normal, the share that are).")
fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"),
                 go.Scatter(x=point["roc_curve"]["fpr"], y=point["roc_curve"]["tpr"], mode="lines",
                            line={"color": ui.model_colour(model)}, name=f"{model} on your images"),
                 go.Scatter(x=[1 - point["specificity"]], y=[point["sensitivity"]], mode="markers",
                            marker={"size": 12, "color": "#b5443a"}, name=f"operating point {point['threshold']:.3f}")])
fig.update_layout(title="ROC curve on your images", xaxis_title="False-positive rate (1 − specificity)",
                  yaxis_title="True-positive rate (sensitivity)", height=420)
st.plotly_chart(fig, key="site_roc")

profile = SiteProfile.from_point(site_name.strip() or "my site", model, shas[model], point)
left, right = st.columns(2)
left.download_button("Download this operating point (JSON profile)", profile.to_json(),
                     f"site_profile_{model}.json", "application/json", key="site_download")
if right.button("Use it now on Diagnose", key="site_use"):
    profiles[model] = profile
    st.rerun()

"""Misclassified cases: false positives and false negatives, most confident first."""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui

ui.ensure_app(__file__)

PER_PAGE = 12

st.title("Misclassified test cases")
names = ui.no_models_stop()
name = st.selectbox("Model", names, index=len(names) - 1, key="mc_model")
df, card = ui.predictions(name), ui.card(name)
if df is None:
    st.warning(f"No test predictions for '{name}'. Run `python -m core.evaluate --model {name}`.")
    st.stop()
threshold = ui.threshold_slider("Decision threshold", card.decision_threshold, f"mc_threshold_{name}",
                                help="Starts at the card threshold (chosen on validation data); changes apply to this "
                                     "view only.")
others = ui.all_predictions()
twins = ui.identical_test_images()
fp = df[(df.y == 0) & (df.probability >= threshold)].sort_values("probability", ascending=False)
fn = df[(df.y == 1) & (df.probability < threshold)].sort_values("probability", ascending=True)
at = "its card threshold" if threshold == card.decision_threshold else "the threshold"
st.markdown(f"At {at} **{threshold:.3f}**, `{name}` gets **{len(fp)} false positives** and "
            f"**{len(fn)} false negatives** out of {len(df)} test images.")
show_cam = st.toggle("Show Grad-CAM overlay", value=True, key="mc_cam")
have_images = ui.data_dir() is not None
if not have_images:
    ui.no_data_hint()


def gallery(cases, kind: str) -> None:
    if cases.empty:
        st.success(f"No {kind}.")
        return
    pages = (len(cases) - 1) // PER_PAGE + 1
    key = f"mc_page_{kind}_{name}"
    if st.session_state.get(key, 1) > pages:  # fewer pages after the threshold moved
        st.session_state[key] = pages
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=key) if pages > 1 else 1
    chunk = cases.iloc[(page - 1) * PER_PAGE : page * PER_PAGE]
    if not have_images:
        st.dataframe(chunk[["filename", "label", "probability"]], hide_index=True, width="stretch")
        return
    shown = tuple(zip(chunk.filename, chunk.label, strict=True))
    pictures = ui.test_overlays(name, shown) if show_cam else [ui.test_image(f, label) for f, label in shown]
    cols = st.columns(4)
    for i, (row, picture) in enumerate(zip(chunk.itertuples(), pictures, strict=True)):
        with cols[i % 4]:
            if picture is None:
                st.write(f"{row.filename}: image not found")
                continue
            st.image(picture, width="stretch")
            st.markdown(f"**{row.filename}**  \ntrue {ui.label_badge(row.label)} · P(pneumonia) {row.probability:.1%}",
                        unsafe_allow_html=True)
            if others is not None:
                said = others[others.filename == row.filename].iloc[0]
                st.caption(" · ".join(f"{n}: {said[n]:.0%}" for n in names if n != name))
            if twins.get(row.filename):
                st.caption(f"Pixel for pixel the same image as {', '.join(twins[row.filename])} in the test set "
                           "(the dataset holds it twice under two names).")
    if pages > 1:  # the same pager at the bottom, where the reader's eye ends up
        left, mid, right = st.columns([1, 2, 1])
        left.button("← Previous page", key=f"{key}_prev", disabled=page <= 1, on_click=_turn, args=(key, -1, pages))
        mid.caption(f"Page {page} of {pages} · cases {(page - 1) * PER_PAGE + 1}–{min(page * PER_PAGE, len(cases))} "
                    f"of {len(cases)}")
        right.button("Next page →", key=f"{key}_next", disabled=page >= pages, on_click=_turn, args=(key, 1, pages))


def _turn(key: str, step: int, pages: int) -> None:
    st.session_state[key] = min(max(st.session_state.get(key, 1) + step, 1), pages)


tab_fp, tab_fn = st.tabs([f"False positives ({len(fp)})", f"False negatives ({len(fn)})"])
with tab_fp:
    st.caption("Truly NORMAL, called PNEUMONIA; most confident first. Overlays explain the predicted class, each "
               "normalised per image (where the model looked).")
    gallery(fp, "false positives")
with tab_fn:
    st.caption("Truly PNEUMONIA, called NORMAL; most confident first.")
    gallery(fn, "false negatives")

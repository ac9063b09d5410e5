"""Pneumonia X-ray dashboard: ``streamlit run app.py``."""

import streamlit as st

from pages import _ui

st.set_page_config(page_title="Pediatric pneumonia X-ray explorer", page_icon=":material/radiology:", layout="wide")

pages = [
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", default=True),
    st.Page("pages/test_metrics.py", title="Test metrics", icon=":material/monitoring:"),
    st.Page("pages/compare.py", title="Compare models", icon=":material/compare:"),
    st.Page("pages/misclassified.py", title="Misclassified cases", icon=":material/search:"),
    st.Page("pages/models.py", title="Models", icon=":material/description:"),
]
page = st.navigation(pages)
_ui.NAVIGATION_DECLARED = True
goto = st.query_params.get("goto")  # set by pages/_ui.ensure_app for a cold deep link
if goto:
    del st.query_params["goto"]
    target = next((p for p in pages if p.url_path == goto), None)
    if target is not None and target.url_path != page.url_path:
        st.switch_page(target)
page.run()

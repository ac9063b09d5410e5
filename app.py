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
page.run()

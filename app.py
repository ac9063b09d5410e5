"""Pneumonia X-ray dashboard: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="Pediatric pneumonia X-ray explorer", page_icon="🩻", layout="wide")

pages = [
    st.Page("pages/diagnose.py", title="Diagnose", icon="🩻", default=True),
    st.Page("pages/test_metrics.py", title="Test metrics", icon="📈"),
    st.Page("pages/compare.py", title="Compare models", icon="⚖️"),
    st.Page("pages/misclassified.py", title="Misclassified cases", icon="🔍"),
    st.Page("pages/models.py", title="Models", icon="🗂️"),
]
st.navigation(pages).run()

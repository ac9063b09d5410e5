"""Pneumonia X-ray dashboard: ``streamlit run app.py``."""

import sys

import streamlit as st

import pages

st.set_page_config(page_title="Pediatric pneumonia X-ray explorer", page_icon=":material/radiology:", layout="wide")

diagnose = st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", url_path="diagnose")
pages_shown = [
    diagnose,
    st.Page("pages/test_metrics.py", title="Test metrics", icon=":material/monitoring:"),
    st.Page("pages/compare.py", title="Compare models", icon=":material/compare:"),
    st.Page("pages/misclassified.py", title="Misclassified cases", icon=":material/search:"),
    st.Page("pages/models.py", title="Models", icon=":material/description:"),
    st.Page("pages/site.py", title="Site operating point", icon=":material/tune:", url_path="site"),
]
# Every page has its own address (a bookmark, a link in a message); the root opens Diagnose.
home = st.Page(lambda: st.switch_page(diagnose), title="Start", url_path="start", default=True, visibility="hidden")
# The menu is drawn here, not by Streamlit: with client.showSidebarNavigation off (.streamlit/config.toml),
# a freshly started server never lists the pages/ folder's files before this script has run.
page = st.navigation([home, *pages_shown], position="hidden")
pages.NAVIGATION_DECLARED = True
with st.sidebar:
    for p in pages_shown:
        st.page_link(p)
    st.divider()
goto = st.query_params.get("goto")  # set by pages/_ui.ensure_app for a cold deep link
if goto:
    del st.query_params["goto"]
    target = next((p for p in pages_shown if p.url_path == goto), None)
    if target is not None and target.url_path != page.url_path:
        st.switch_page(target)
if "pages._ui" not in sys.modules:  # the first visit to this server loads TensorFlow and the models
    with st.spinner("Starting up: loading TensorFlow and the models (the first visit to a new server only)…"):
        import pages._ui  # noqa: F401
page.run()

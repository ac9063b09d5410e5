"""The dashboard's pages (UI only; the work is in ``core``).

``NAVIGATION_DECLARED`` is set by ``app.py`` once it has declared the navigation. Until some session has
run ``app.py``, Streamlit serves a deep link (say /compare) the old way, straight from this folder,
without the app's navigation or page config; ``pages._ui.ensure_app`` sends such a visitor through
``app.py``. It lives here, not in ``_ui``, so that ``app.py`` can set it before TensorFlow is imported.
"""

NAVIGATION_DECLARED = False

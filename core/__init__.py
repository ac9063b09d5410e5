"""Pneumonia X-ray classification core: data, preprocessing, models, Grad-CAM, evaluation.

This package never imports Streamlit; the dashboard in ``pages/`` calls it.
"""

import os

# Quieten TensorFlow's C++ start-up chatter before any module imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LABELS = ("NORMAL", "PNEUMONIA")

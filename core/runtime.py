"""Where the code runs: compiled calls, the cache folder, and a description of the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import keras

__all__ = ["compiled_forward", "cache_dir", "hardware", "cpu_name"]


def compiled_forward(model: keras.Model):
    """``model`` as a compiled TensorFlow function of a float32 batch, fixed signature (no
    retracing), without autograph (which would write generated sources to the temp dir)."""
    import tensorflow as tf  # serving runs on TensorFlow; training must not need it (JAX backend)

    shape = tuple(model.inputs[0].shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)], autograph=False)
    def forward(x):
        return model(x, training=False)

    return forward


def cache_dir() -> Path:
    """Folder for converted weights and training runs: ``$PNEUMONIA_CACHE`` or ``~/.cache/pneumonia-xray``."""
    path = Path(os.environ.get("PNEUMONIA_CACHE", Path.home() / ".cache" / "pneumonia-xray"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def hardware() -> str:
    """A short description of where this process runs (CPU model, cores, accelerator, Keras backend)."""
    backend = keras.backend.backend()
    device = "CPU"
    try:
        if backend == "jax":
            import jax

            device = str(jax.devices()[0].device_kind)
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            device = f"{len(gpus)} GPU" if gpus else "CPU"
    except Exception:  # device probing is informational only
        pass
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {device}, Keras {keras.__version__} on {backend}"


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

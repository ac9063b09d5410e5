"""Model building and training are backend-agnostic Keras 3: the same code trains on JAX."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import keras
    from core.config import get_recipe
    from core.training import train
    from tests.helpers import tiny_dataset
    tmp = Path(sys.argv[1])
    data = tiny_dataset(tmp / "chest_xray", n=12)
    recipe = get_recipe("baseline").with_overrides(input_size=(64, 64), epochs=2, batch_size=8, val_fraction=0.25)
    folder = train(recipe, data, out_root=tmp / "models")
    card = json.loads((folder / "card.json").read_text())
    print(json.dumps({"backend": keras.backend.backend(), "hardware": card["hardware"],
                      "epochs": card["epochs_run"]}))
""")


def test_training_runs_on_the_jax_backend(tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed (pip install -r requirements-dev.txt)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PNEUMONIA_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and "on jax" in result["hardware"] and result["epochs"] == 2

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
    # v25's pair trainer: two views, one gap, on JAX too
    import numpy as np
    from core.batches import Batches
    from core.models import build_model, compile_for, input_spec_for, pair_trainer
    spec = input_spec_for("baseline", None, (64, 64))
    trainer = pair_trainer(build_model("baseline", None, (64, 64), dropout=0.0), spec)
    compile_for(trainer, recipe.with_overrides(consistency_weight=1.0, dropout=0.0), pairs=True)
    gray = np.random.default_rng(0).integers(0, 256, (16, 224, 224), dtype=np.uint8)
    fit = trainer.fit(Batches(gray, np.arange(16) % 2, spec, 8, encoding=True, pairs=True), epochs=1, verbose=0)
    print(json.dumps({"backend": keras.backend.backend(), "hardware": card["hardware"],
                      "epochs": card["epochs_run"], "gap": fit.history["consistency_loss"][0]}))
""")


def test_training_runs_on_the_jax_backend(tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed (pip install -r requirements-dev.txt)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PNEUMONIA_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and "on jax" in result["hardware"] and result["epochs"] == 2
    assert result["gap"] > 0  # two encodings of one image gave two answers, and the loss saw it

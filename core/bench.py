"""``python -m core.bench [--repeats N] [--out FILE] [--dashboard]``: how fast is a diagnosis?

Measures in one process on this machine, after warm-up, medians and p95 over repeated runs:
1. bare compiled forward pass, one image, per model;
2. our diagnose path (decode -> preprocess -> probability + Grad-CAM -> heatmap), one image, and each of its steps;
3. the reference recipe (keras.io's Grad-CAM tutorial: ``model.predict``, then an eager
   grad-model under ``GradientTape``) on the same model and image;
4. scoring the 624 test images: our batched path vs a bare batched forward;
5. resident memory after 20 and after 200 diagnoses;
6. optionally (``--dashboard``) dashboard cold start to first result in headless Chromium.
Prints a table with ratios and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import keras
import numpy as np

from core.browser import BrowserUnavailable, cold_start
from core.data import find_data_dir, list_split, load_images
from core.inference import load_model, read_upload
from core.preprocessing import low_pass, to_model_input
from core.registry import available_models, benchmark_file
from core.runtime import compiled_forward, hardware
from core.segmenter import LungSegmenter

__all__ = ["timeit", "rss_mb", "reference_gradcam", "bench_model", "path_breakdown", "STEPS", "memory_growth", "BARS",
           "bar_status", "speed_table",
           "main"]


def timeit(fn, repeats: int, warmup: int = 3) -> dict:
    """Median and p95 wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "runs": repeats}


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux /proc; else peak RSS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_gradcam(model, img_array, last_conv_layer_name, pred_index=None, method: str = "gradcam"):
    """keras.io's Grad-CAM tutorial recipe, as written there (TensorFlow, eager).

    Kept as the reference the fast path is tested and benchmarked against; the caller
    first runs ``model.predict`` as the tutorial does. ``method="hirescam"`` makes the one change
    HiResCAM makes (Draelos & Carin 2020): gradient times activation per cell, not the mean gradient.
    """
    import tensorflow as tf  # the recipe is TensorFlow's

    grad_model = keras.models.Model(
        model.inputs, [model.get_layer(last_conv_layer_name).output, model.output]
    )
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        if pred_index is None:
            pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    if method == "hirescam":
        heatmap = tf.reduce_sum(grads[0] * last_conv_layer_output[0], axis=-1)
    else:
        pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
        last_conv_layer_output = last_conv_layer_output[0]
        heatmap = last_conv_layer_output @ pooled_grads[..., tf.newaxis]
        heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def bench_model(name: str, image_bytes: bytes, test_gray: np.ndarray, repeats: int,
                lungs: LungSegmenter | None = None) -> dict:
    """Bare forward, our diagnosis (with the lungs, where the model's pass can give them) and the reference
    recipe on one image; the test set batched."""
    loaded = load_model(name, lungs=lungs)
    model, spec = loaded.keras_model, loaded.spec
    x = to_model_input(read_upload(image_bytes).gray, spec)[None]
    forward = compiled_forward(model)

    def ours():  # the upload path, with the lungs where this model's own call can give them
        d = loaded.diagnose_gray(read_upload(image_bytes).gray, lungs=True)[0]
        return d.heatmap((224, 224), d.label)

    def reference():  # as the tutorial: predict, then the eager grad-model recipe
        model.predict(x, verbose=0)
        return reference_gradcam(model, x, loaded.card.gradcam_layer, method=loaded.card.map_method)

    row = {
        "lungs_in_pass": loaded.gives_lungs,
        "bare_forward": timeit(lambda: forward(x).numpy(), repeats),
        "ours_diagnose": timeit(ours, repeats),
        "reference_recipe": timeit(reference, max(5, repeats // 5)),
    }
    batches = [to_model_input(test_gray[i : i + 32], spec) for i in range(0, len(test_gray), 32)]
    row["test_set_bare_s"] = timeit(lambda: [forward(b).numpy() for b in batches], 3, warmup=1)["median_ms"] / 1000
    row["test_set_ours_s"] = timeit(lambda: loaded.diagnose_gray(test_gray, batch_size=32, lungs=True), 3,
                                    warmup=1)["median_ms"] / 1000
    row["breakdown"] = path_breakdown(loaded, image_bytes, repeats, row["ours_diagnose"]["median_ms"])
    row["ours_over_bare"] = row["ours_diagnose"]["median_ms"] / row["bare_forward"]["median_ms"]
    row["reference_over_ours"] = row["reference_recipe"]["median_ms"] / row["ours_diagnose"]["median_ms"]
    row["test_set_ours_over_bare"] = row["test_set_ours_s"] / row["test_set_bare_s"]
    return row


STEPS = ("read_upload", "lungs", "model_input", "compiled_call", "heatmap")


def path_breakdown(loaded, image_bytes: bytes, repeats: int, diagnose_ms: float) -> dict:
    """Median milliseconds of each step of one diagnosis (the "ours" of :func:`bench_model`, whose median is
    ``diagnose_ms``): reading the file, the lungs (a model that needs them first), the model input (its blur alone
    beside it), the compiled call (probability, map, and the lungs where the pass gives them), the heatmap; ``rest``
    is the whole diagnosis minus those steps (the Python between them, and timing noise)."""
    gray, spec = read_upload(image_bytes).gray, loaded.spec
    masks = loaded.segmenter.masks(gray[None]) if loaded.needs_lungs else None
    x = to_model_input(gray[None], spec, masks)
    call = loaded.explainer.with_head if loaded.gives_lungs else loaded.explainer
    d = loaded.diagnose_gray(gray, lungs=True)[0]
    steps = {
        "read_upload": lambda: read_upload(image_bytes),
        "lungs": (lambda: loaded.segmenter.masks(gray[None])) if loaded.needs_lungs else None,
        "model_input": lambda: to_model_input(gray[None], spec, masks),
        "blur": (lambda: low_pass(gray, spec.blur_sigma)) if spec.blur_sigma else None,
        "compiled_call": lambda: call(x),
        "heatmap": lambda: d.heatmap((224, 224), d.label),
    }
    out = {k: timeit(fn, repeats)["median_ms"] for k, fn in steps.items() if fn is not None}
    out["diagnose"] = diagnose_ms
    out["rest"] = out["diagnose"] - sum(out.get(k, 0.0) for k in STEPS)
    return out


def memory_growth(name: str, image_bytes: bytes) -> dict:
    """Resident memory after 20 and after 200 diagnoses of one image."""
    loaded = load_model(name)
    for _ in range(20):
        loaded.diagnose_bytes(image_bytes).heatmap((224, 224))
    after_20 = rss_mb()
    for _ in range(180):
        loaded.diagnose_bytes(image_bytes).heatmap((224, 224))
    after_200 = rss_mb()
    return {"model": name, "rss_after_20_mb": after_20, "rss_after_200_mb": after_200,
            "growth": after_200 / after_20 - 1}


BARS = (("diagnose ≥ 5× faster than the reference", lambda r: r["reference_over_ours"] >= 5),
        ("diagnose ≤ 1.3× the bare forward pass", lambda r: r["ours_over_bare"] <= 1.3),
        ("test set ≤ 1.2× the bare batched pass", lambda r: r["test_set_ours_over_bare"] <= 1.2))


def bar_status(result: dict) -> list[tuple[str, bool, list[str]]]:
    """Each speed bar, whether every model meets it, and the models that miss it."""
    out = []
    for text, meets in BARS:
        missed = [name for name, r in result["models"].items() if not meets(r)]
        out.append((text, not missed, missed))
    return out


def speed_table(result: dict) -> str:
    """A benchmark result as the Markdown table (and memory and dashboard lines) of ``docs/speed.md``."""
    lines = ["| model | lungs in the same call | bare forward (ms) | ours: diagnose (ms) | reference recipe (ms) "
             "| ours / bare | reference / ours | test set bare (s) | test set ours (s) | ours / bare |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        lines.append(
            f"| {name} | {'yes' if r.get('lungs_in_pass') else 'no'} | "
            f"{r['bare_forward']['median_ms']:.1f} (p95 {r['bare_forward']['p95_ms']:.1f}) | "
            f"{r['ours_diagnose']['median_ms']:.1f} (p95 {r['ours_diagnose']['p95_ms']:.1f}) | "
            f"{r['reference_recipe']['median_ms']:.1f} (p95 {r['reference_recipe']['p95_ms']:.1f}) | "
            f"{r['ours_over_bare']:.2f}× | {r['reference_over_ours']:.1f}× | {r['test_set_bare_s']:.2f} | "
            f"{r['test_set_ours_s']:.2f} | {r['test_set_ours_over_bare']:.2f}× |")
    if all("breakdown" in r for r in result["models"].values()):
        lines += ["", "Where one diagnosis spends its time (medians, ms; `rest`: the Python between the steps, and "
                  "noise):",
                  "", "| model | read the file | lungs first | model input (its blur) | compiled call | heatmap | rest "
                  "| diagnosis |", "|---|---|---|---|---|---|---|---|"]
        for name, r in result["models"].items():
            b = r["breakdown"]
            lines.append(f"| {name} | {b['read_upload']:.2f} | " + (f"{b['lungs']:.2f}" if "lungs" in b else "—")
                         + f" | {b['model_input']:.2f}" + (f" ({b['blur']:.2f})" if "blur" in b else "")
                         + f" | {b['compiled_call']:.2f} | {b['heatmap']:.2f} | {b['rest']:.2f} "
                           f"| {b['diagnose']:.2f} |")
    m = result["memory"]
    lines.append("")
    lines.append("- Bars: " + "; ".join(f"{text}: {'holds' if ok else 'missed'} ({', '.join(names) or 'every model'})"
                                         for text, ok, names in bar_status(result)) + ".")
    if "lungs_alone" in result:
        lines.append(f"- The lung segmenter on its own (for a model whose pass cannot give the lungs): "
                     f"{result['lungs_alone']['median_ms']:.1f} ms (p95 {result['lungs_alone']['p95_ms']:.1f}).")
    lines.append(f"- Resident memory ({m['model']}): {m['rss_after_20_mb']:.0f} MiB after 20 diagnoses, "
                 f"{m['rss_after_200_mb']:.0f} MiB after 200 ({100 * m['growth']:+.1f} %).")
    d = result.get("dashboard", {})
    if "cold_start_to_first_result_s" in d:
        lines.append(f"- Dashboard cold start (server start, Chromium start, page load, TensorFlow and the models "
                     f"loading) to the first result: {d['cold_start_to_first_result_s']} s; server start "
                     f"{d['server_start_s']} s, first upload to result {d['first_upload_to_result_s']} s.")
    elif d:
        lines.append(f"- Dashboard cold start not measured: {d.get('error', 'unknown reason')}.")
    lines.append(f"- Machine: {result['machine']}; image `{result['image']}`.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=benchmark_file())
    parser.add_argument("--dashboard", action="store_true", help="also time dashboard cold start (browser)")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    samples = list_split(find_data_dir(args.data_dir), "test")
    image_bytes = samples[0].path.read_bytes()
    test_gray = load_images(samples)
    result = {"machine": hardware(),
              "image": samples[0].name, "models": {}}
    try:
        lungs = LungSegmenter()
    except FileNotFoundError:
        lungs = None
    for name in available_models():
        result["models"][name] = bench_model(name, image_bytes, test_gray, args.repeats, lungs)
    if lungs is not None:
        result["lungs_alone"] = timeit(lambda: lungs.masks(test_gray[:1]), args.repeats)
    result["memory"] = memory_growth(available_models()[-1], image_bytes)
    if args.dashboard:
        try:
            result["dashboard"] = cold_start(samples[0].path, len(result["models"]))
        except (BrowserUnavailable, RuntimeError) as exc:
            result["dashboard"] = {"error": str(exc)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(speed_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and memory properties of the serving path (ratios with wide margins; see core.bench)."""

import numpy as np

from core.bench import memory_growth, rss_mb, timeit


def test_timeit_reports_median_and_p95():
    r = timeit(lambda: sum(range(1000)), repeats=20, warmup=1)
    assert r["runs"] == 20 and 0 < r["median_ms"] <= r["p95_ms"]


def test_memory_stays_flat_over_200_diagnoses(shipped_models, samples_dir):
    r = memory_growth(shipped_models[-1], (samples_dir / "IM-0061-0001.jpeg").read_bytes())
    assert r["rss_after_20_mb"] > 0 and abs(r["growth"]) <= 0.05, r


def test_diagnosis_is_much_faster_than_the_keras_io_recipe(shipped_models, data_dir):
    from core.bench import bench_model
    from core.data import list_split, load_images

    samples = list_split(data_dir, "test")
    row = bench_model(shipped_models[-1], samples[0].path.read_bytes(), load_images(samples[:64]), repeats=10)
    assert row["reference_over_ours"] >= 5, row
    assert row["ours_over_bare"] < 2.0, row  # the bar is 1.3 on a quiet machine; CI may be busy
    assert np.isfinite(rss_mb())

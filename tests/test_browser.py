"""Real browser: start `streamlit run app.py`, upload an X-ray in headless Chromium, read the result."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts" / "browser"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server():
    """Start `streamlit run app.py` on a free loopback port; return (process, url) once healthy."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    pytest.fail("streamlit did not start within 120 s")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server():
    proc, url = start_server()
    yield url
    stop_server(proc)


def new_driver():
    """A headless Debian Chromium driven by chromedriver (skips when they are not installed)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,1300"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = new_driver()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def xrays(data_dir):
    """Real X-ray files to upload: a full-resolution original first, then official test images.

    Generated pictures would be (rightly) refused by the out-of-distribution guard.
    """
    from core.data import list_split

    sample = data_dir.parent / "samples_fullres" / "person1597_bacteria_4189.jpeg"
    tests = [s.path for s in list_split(data_dir, "test")[::70]]
    return ([sample] if sample.exists() else []) + tests


def upload_and_wait(driver, url, path, n_models, timeout=240, load=True):
    """Open Diagnose, upload ``path``, wait for every model's overlay; return (seconds, shown values)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    if load:
        driver.get(url)
    file_input = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
    name = os.path.basename(path)
    started = time.perf_counter()
    file_input.send_keys(str(path))
    wait.until(lambda d: len(d.find_elements(By.XPATH, f"//h3[contains(., '{name}')]")) == 1
               and len(d.find_elements(By.XPATH, "//*[contains(text(), 'Grad-CAM: evidence')]")) >= n_models
               and not d.find_elements(By.CSS_SELECTOR, "[data-stale='true']"))
    elapsed = time.perf_counter() - started
    values = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stMetricValue']")]
    return elapsed, values


def test_upload_on_diagnose_shows_probability_and_heatmap(server, browser, shipped_models, xrays):
    from selenium.webdriver.common.by import By

    elapsed, metrics = upload_and_wait(browser, server, xrays[0], len(shipped_models))
    assert len(metrics) == len(shipped_models) and all(m.endswith("%") for m in metrics)
    images = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, [data-testid='stFullScreenFrame'] img")
    assert len(images) >= 2 * len(shipped_models)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException'], [data-testid='stAlertContentError']")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "diagnose_upload.png"))
    (ARTIFACTS / "diagnose_upload_seconds.txt").write_text(f"first upload (models loading): {elapsed:.2f}\n")

    # models are cached now: a second X-ray, in a fresh page, must come back quickly
    warm, _ = upload_and_wait(browser, server, xrays[1], len(shipped_models))
    with open(ARTIFACTS / "diagnose_upload_seconds.txt", "a") as f:
        f.write(f"second upload (models cached): {warm:.2f}\n")
    assert warm <= 4.0, f"upload to result took {warm:.1f} s with models cached"


def _expected_values(paths, names):
    from core.inference import load_model

    models = [load_model(n) for n in names]
    return {str(p): [f"{m.diagnose_bytes(p.read_bytes()).probability:.1%}" for m in models] for p in paths}


def test_eight_concurrent_sessions(server, shipped_models, xrays):
    """8 browsers upload at once; every one gets the result a lone session gets."""
    from concurrent.futures import ThreadPoolExecutor

    paths = (xrays * 8)[:8]
    expected = _expected_values(paths, shipped_models)
    drivers = [new_driver() for _ in paths]
    try:
        for d in drivers:
            d.get(server)

        def one(i):
            return upload_and_wait(drivers[i], server, paths[i], len(shipped_models), timeout=400, load=False)

        with ThreadPoolExecutor(len(drivers)) as pool:
            results = list(pool.map(one, range(len(drivers))))
    finally:
        for d in drivers:
            d.quit()
    for path, (_, values) in zip(paths, results):
        assert values == expected[str(path)], (path, values, expected[str(path)])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "concurrent_sessions_seconds.txt").write_text(
        "\n".join(f"{p.name}: {s:.2f}" for p, (s, _) in zip(paths, results)) + "\n")


@pytest.mark.slow
def test_cold_start_to_first_result(shipped_models, xrays):
    """Server start to the first diagnosis in a browser (used by `python -m core.bench --dashboard`)."""
    import json

    started = time.perf_counter()
    proc, url = start_server()
    server_up = time.perf_counter() - started
    driver = new_driver()
    try:
        upload_s, values = upload_and_wait(driver, url, xrays[0], len(shipped_models))
    finally:
        driver.quit()
        stop_server(proc)
    total = time.perf_counter() - started
    assert len(values) == len(shipped_models)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "cold_start_seconds.json").write_text(json.dumps(
        {"server_start_s": round(server_up, 2), "first_upload_to_result_s": round(upload_s, 2),
         "cold_start_to_first_result_s": round(total, 2)}) + "\n")


def test_cold_deep_link_gets_the_app_navigation(shipped_models):
    """A fresh server whose first visitor opens /compare gets that page under our navigation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proc, url = start_server()
    driver = new_driver()
    try:
        driver.get(f"{url}/compare")
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.XPATH, "//h1"))
        nav = [a.text.splitlines()[-1] for a in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a")]
        assert {"Diagnose", "Test metrics", "Compare models", "Misclassified cases", "Models"} <= set(nav), nav
        assert "ui" not in nav and "app" not in nav
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.XPATH, "//h1[contains(., 'Compare models')]"))
        assert driver.current_url.rstrip("/").endswith("/compare")
    finally:
        driver.quit()
        stop_server(proc)

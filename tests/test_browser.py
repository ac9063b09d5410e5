"""Real browser: start `streamlit run app.py`, upload an X-ray in headless Chromium, read the result."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, encode, xray_like

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts" / "browser"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
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

    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _upload_file(tmp_path, data_dir_or_none):
    if data_dir_or_none is not None:
        sample = data_dir_or_none.parent / "samples_fullres" / "person1597_bacteria_4189.jpeg"
        if sample.exists():
            return sample
    path = tmp_path / "generated_chest.png"
    path.write_bytes(encode(xray_like(600, 520), "PNG"))
    return path


def test_upload_on_diagnose_shows_probability_and_heatmap(server, browser, shipped_models, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from core.data import find_data_dir

    upload = _upload_file(tmp_path, find_data_dir(required=False))
    browser.get(server)
    wait = WebDriverWait(browser, 180)
    file_input = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
    started = time.perf_counter()
    file_input.send_keys(str(upload))
    wait.until(lambda d: len(d.find_elements(By.XPATH, "//*[contains(text(), 'Grad-CAM: evidence')]"))
               >= len(shipped_models))
    elapsed = time.perf_counter() - started
    metrics = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stMetricValue']")
    assert len(metrics) == len(shipped_models) and all(m.text.endswith("%") for m in metrics)
    images = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, [data-testid='stFullScreenFrame'] img")
    assert len(images) >= 2 * len(shipped_models)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException'], [data-testid='stAlertContentError']")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "diagnose_upload.png"))
    (ARTIFACTS / "diagnose_upload_seconds.txt").write_text(f"{elapsed:.2f}\n")

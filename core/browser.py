"""Drive the dashboard in a real headless Chromium: start a server, upload an X-ray, read the result.

Used by ``python -m core.bench --dashboard`` and by the browser tests. Needs selenium
(``requirements-dev.txt``) and Debian's ``chromium`` and ``chromium-driver``;
:class:`BrowserUnavailable` says which is missing. Every server started here is stopped
(its whole process group, killed if it does not stop) whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["APP_DIR", "BrowserUnavailable", "dashboard_server", "chromium", "upload_and_wait", "cold_start"]

APP_DIR = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")


class BrowserUnavailable(RuntimeError):
    """selenium, Chromium or ChromeDriver is not installed here."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and anything it started: SIGTERM to its process group, SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def dashboard_server(timeout: float = 120, env: dict | None = None) -> Iterator[str]:
    """``streamlit run app.py`` on a free loopback port; yields its URL once healthy, stops it on exit.

    Raises:
        RuntimeError: The server did not answer its health check within ``timeout`` seconds.
    """
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true"],
        cwd=APP_DIR, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"streamlit did not start within {timeout:.0f} s") from None
                time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


def chromium(width: int = 1500, height: int = 1300, download_dir: Path | None = None):
    """A headless Debian Chromium driven by chromedriver.

    Raises:
        BrowserUnavailable: selenium, chromium or chromedriver is missing (with how to install it).
    """
    try:
        from selenium import webdriver  # a development dependency
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install -r requirements-dev.txt)") from None
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        raise BrowserUnavailable("Debian's chromium and chromium-driver are not installed "
                                 "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    if download_dir is not None:  # where clicked downloads land, without asking
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def upload_and_wait(driver, url: str, path, n_models: int, timeout: float = 240, load: bool = True):
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
               and len(d.find_elements(By.XPATH, "//*[contains(text(), 'CAM: evidence')]")) >= n_models
               and len(d.find_elements(By.CSS_SELECTOR, "[data-testid='stMetricValue']")) >= n_models
               and not d.find_elements(By.CSS_SELECTOR, "[data-stale='true']"))
    elapsed = time.perf_counter() - started
    values = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stMetricValue']")]
    return elapsed, values


def cold_start(xray: Path, n_models: int) -> dict:
    """Seconds from starting a server to the first diagnosis of ``xray`` in a browser started after it
    (Chromium's start, page load, TensorFlow and the models loading all count)."""
    started = time.perf_counter()
    with dashboard_server() as url:
        server_up = time.perf_counter() - started
        driver = chromium()
        try:
            upload_s, values = upload_and_wait(driver, url, xray, n_models)
            total = time.perf_counter() - started
        finally:
            driver.quit()
    if len(values) != n_models:
        raise RuntimeError(f"expected {n_models} probabilities on the page, saw {values}")
    return {"server_start_s": round(server_up, 2), "first_upload_to_result_s": round(upload_s, 2),
            "cold_start_to_first_result_s": round(total, 2)}

"""Real browser: start `streamlit run app.py`, upload an X-ray in headless Chromium, read the result.

The server and browser harness is :mod:`core.browser` (also used by ``python -m core.bench
--dashboard``); every server started here is stopped whatever happens. Timing limits are ``slow``.
"""

import json
import time

import pytest

from core.browser import BrowserUnavailable, chromium, cold_start, dashboard_server, upload_and_wait
from tests.helpers import ROOT

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts" / "browser"


def new_driver(download_dir=None):
    """A headless Chromium, or a skip saying what is not installed."""
    try:
        return chromium(download_dir=download_dir)
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    driver = new_driver(downloads)  # before any server: a skip must not leave one running
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(browser):
    with dashboard_server() as url:
        yield url


@pytest.fixture(scope="module")
def xrays(data_dir):
    """Real X-ray files to upload: a full-resolution original first, then official test images.

    Generated pictures would be (rightly) refused by the out-of-distribution guard.
    """
    from core.data import list_split

    sample = data_dir.parent / "samples_fullres" / "person1597_bacteria_4189.jpeg"
    tests = [s.path for s in list_split(data_dir, "test")[::70]]
    return ([sample] if sample.exists() else []) + tests


def test_upload_on_diagnose_shows_probability_and_heatmap(server, browser, shipped_models, xrays):
    from selenium.webdriver.common.by import By

    elapsed, metrics = upload_and_wait(browser, server, xrays[0], len(shipped_models))
    assert len(metrics) == len(shipped_models) and all(m.endswith("%") for m in metrics)
    images = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, [data-testid='stFullScreenFrame'] img")
    assert len(images) >= len(shipped_models) + 2  # every map, the input as the models see it, the colour bar
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException'], [data-testid='stAlertContentError']")
    # the viewer: the X-ray at its own size in a zoomable figure
    from PIL import Image

    w, h = Image.open(xrays[0]).size
    viewer = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stPlotlyChart']")
    assert viewer and f"file {w} × {h}" in viewer[0].text
    assert viewer[0].find_elements(By.CSS_SELECTOR, ".modebar-btn[data-title*='Zoom']")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "diagnose_upload.png"))
    (ARTIFACTS / "diagnose_upload_seconds.txt").write_text(f"first upload (models loading): {elapsed:.2f}\n")

    # models are cached now: a second X-ray, in a fresh page, gets its result too
    warm, values = upload_and_wait(browser, server, xrays[1], len(shipped_models))
    assert len(values) == len(shipped_models)
    with open(ARTIFACTS / "diagnose_upload_seconds.txt", "a") as f:
        f.write(f"second upload (models cached): {warm:.2f}\n")


def test_the_case_report_downloads_as_a_pdf(server, browser, shipped_models, xrays, downloads):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    upload_and_wait(browser, server, xrays[0], len(shipped_models))
    button = WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.XPATH, "//button[contains(., 'Case report (PDF)')]"))[0]
    browser.execute_script("arguments[0].scrollIntoView();", button)
    button.click()
    report = downloads / "case_report.pdf"
    WebDriverWait(browser, 120).until(lambda d: report.exists() and not list(downloads.glob("*.crdownload")))
    data = report.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 10_000
    assert xrays[0].stem.encode() not in data  # no file name (it may carry a patient's name)


def test_a_site_profile_downloads_and_loads_back(server, browser, shipped_models, data_dir, downloads, tmp_path):
    import zipfile

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from core.data import list_split

    test = list_split(data_dir, "test")
    archive = tmp_path / "site.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for s in [s for s in test if s.label == 0][:8] + [s for s in test if s.label == 1][:8]:
            z.write(s.path, f"{'PNEUMONIA' if s.label else 'NORMAL'}/{s.name}")
    wait = WebDriverWait(browser, 180)
    browser.get(f"{server}/site")
    inputs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']")
                        if len(d.find_elements(By.CSS_SELECTOR, "input[type='file']")) == 2 else False)
    inputs[1].send_keys(str(archive))  # the zip (the first input takes a saved profile)
    button = wait.until(lambda d: d.find_elements(By.XPATH, "//button[contains(., 'Download this operating point')]"))[0]
    shown = browser.find_element(By.CSS_SELECTOR, "[data-testid='stMetricValue']").text
    browser.execute_script("arguments[0].scrollIntoView();", button)
    button.click()
    saved = next(iter(wait.until(lambda d: list(downloads.glob("site_profile_*.json")))))
    wait.until(lambda d: not list(downloads.glob("*.crdownload")))
    browser.get(f"{server}/site")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))[0].send_keys(str(saved))
    note = wait.until(lambda d: d.find_elements(By.XPATH, "//*[contains(text(), 'Using site')]"))[0].text
    assert f"threshold {shown}" in note


def test_the_models_page_fits_a_1366_pixel_screen(server, shipped_models):
    """Every metric on the Models page reads in full at 1366 px (metric tiles used to cut them to '0.9…')."""
    import re

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = new_driver()
    try:
        driver.set_window_size(1366, 900)
        driver.get(f"{server}/models")
        table = WebDriverWait(driver, 120).until(
            lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "table") if "ROC AUC" in t.text])[0]
        cells = [c for c in table.find_elements(By.CSS_SELECTOR, "td") if re.fullmatch(r"[\d.…]+", c.text)]
        assert len(cells) >= 8 and all(re.fullmatch(r"\d\.\d{3}", c.text) for c in cells), [c.text for c in cells]
        right_edge = driver.execute_script("return document.documentElement.clientWidth")
        assert all(c.rect["x"] + c.rect["width"] <= right_edge for c in cells)  # nothing runs off the screen
    finally:
        driver.quit()


@pytest.mark.slow
def test_warm_upload_is_quick(server, browser, shipped_models, xrays):
    """With the models cached, upload to result within 2 s (issue 14's bar; a timing limit: slow, needs a quiet
    machine). The time goes to artifacts/browser/warm_upload_seconds.txt."""
    upload_and_wait(browser, server, xrays[0], len(shipped_models))
    warm, _ = upload_and_wait(browser, server, xrays[1], len(shipped_models))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "warm_upload_seconds.txt").write_text(f"{warm:.2f}\n")
    assert warm <= 2.0, f"upload to result took {warm:.1f} s with models cached"


def _expected_values(paths, names):
    """Each file's probabilities as the Diagnose page lists them: the recommended model first, then the others."""
    from core.cards import recommended
    from core.inference import load_model
    from core.registry import load_card

    lead = recommended([load_card(n) for n in names])
    models = [load_model(n) for n in sorted(names, key=lambda n: n != lead)]
    return {str(p): [f"{m.diagnose_bytes(p.read_bytes()).probability:.1%}" for m in models] for p in paths}


@pytest.mark.slow
def test_eight_concurrent_sessions(server, shipped_models, xrays):
    """8 browsers upload at once; every one gets the result a lone session gets."""
    from concurrent.futures import ThreadPoolExecutor

    paths = (xrays * 8)[:8]
    expected = _expected_values(paths, shipped_models)
    drivers = []
    try:
        drivers += [new_driver() for _ in paths]
        for d in drivers:
            d.get(server)

        def one(i):
            return upload_and_wait(drivers[i], server, paths[i], len(shipped_models), timeout=400, load=False)

        with ThreadPoolExecutor(len(drivers)) as pool:
            results = list(pool.map(one, range(len(drivers))))
    finally:
        for d in drivers:
            d.quit()
    for path, (_, values) in zip(paths, results, strict=True):
        assert values == expected[str(path)], (path, values, expected[str(path)])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "concurrent_sessions_seconds.txt").write_text(
        "\n".join(f"{p.name}: {s:.2f}" for p, (s, _) in zip(paths, results, strict=True)) + "\n")


@pytest.mark.slow
def test_cold_start_to_first_result(browser, shipped_models, xrays):
    """Server start to the first diagnosis in a new browser (what `python -m core.bench --dashboard` reports)."""
    result = cold_start(xrays[0], len(shipped_models))
    assert 0 < result["server_start_s"] <= result["cold_start_to_first_result_s"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "cold_start_seconds.json").write_text(json.dumps(result) + "\n")


def test_cold_deep_links_get_the_app_and_its_menu(shipped_models):
    """A fresh server: its first visitor opens /ui (a helper module, no page) and lands on Diagnose; the menu
    never lists the pages/ folder's files (app, ui) even while the first visit loads; /diagnose and
    /compare open their pages under the app's menu."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def menu(d) -> list[str]:
        return [a.text.splitlines()[-1] for a in d.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebar'] a")]

    def title(d, text: str) -> bool:
        return bool(d.find_elements(By.XPATH, f"//h1[contains(., '{text}')]"))

    driver = new_driver()  # skips before any server starts when there is no browser
    try:
        with dashboard_server() as url:
            driver.get(f"{url}/ui")
            seen = set()

            def loaded(d):
                seen.update(menu(d))
                seen.update(n.text for n in d.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a"))
                return title(d, "Diagnose a chest X-ray") and len(menu(d)) == 6

            WebDriverWait(driver, 120, poll_frequency=0.2).until(loaded)
            assert not seen & {"app", "ui", "_ui"}, seen
            assert menu(driver) == ["Diagnose", "Test metrics", "Compare models", "Misclassified cases", "Models",
                                    "Site operating point"]
            for path, text in [("/diagnose", "Diagnose a chest X-ray"), ("/compare", "Compare models"),
                               ("/site", "Site operating point"),
                               ("/", "Diagnose a chest X-ray")]:
                driver.get(url + path)
                WebDriverWait(driver, 120).until(lambda d, text=text: title(d, text))
                assert "Page not found" not in driver.page_source
                assert driver.current_url.rstrip("/").endswith(path.rstrip("/") or "/diagnose")
    finally:
        driver.quit()


def test_a_server_is_stopped_even_when_the_block_fails():
    """The harness stops its server (and the whole process group) when the code using it raises."""
    seen = {}
    with pytest.raises(RuntimeError, match="boom"), dashboard_server() as url:
        seen["url"] = url
        raise RuntimeError("boom")
    import urllib.request

    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{seen['url']}/_stcore/health", timeout=2)

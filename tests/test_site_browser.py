"""The atlas site in a real browser: headless Chromium driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; the
test is skipped, with the reason, when any of them is missing. A tiny atlas is
served from 127.0.0.1 by http.server in a thread (and opened from file:// too); every
image must have loaded, a layer page and a filter page open by clicking, and the
arrow keys move between filters. Screenshots go to the test's temp folder.
"""
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from jaxviz import atlas as atlas_mod


def _find(*names):
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome")
DRIVER = _find("chromedriver", "chromium-driver")
try:
    import selenium  # noqa: F401

    SELENIUM = True
except ImportError:
    SELENIUM = False

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and SELENIUM),
    reason="the browser test needs chromium and chromedriver (apt-get install -y chromium chromium-driver) "
    "and selenium (pip install selenium); missing: "
    + ", ".join(n for n, ok in (("chromium", CHROMIUM), ("chromedriver", DRIVER), ("selenium", SELENIUM)) if not ok),
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    argv = ["--layers", "block1_conv1,block1_conv2", "--filters", "0-3", "--size", "16", "--steps", "2",
            "--chunk", "4", "--batch", "2", "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _all_images_loaded(driver):
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    return driver.execute_script(
        "var imgs = Array.from(document.images);"
        "return [imgs.length, imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)];"
    )


def _path(driver):
    return driver.current_url.split("://", 1)[1].split("/", 1)[1] if "://" in driver.current_url else driver.current_url


def test_site_in_headless_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server + "/index.html")
    n, broken = _all_images_loaded(d)
    assert n == 8 and broken == []
    assert d.save_screenshot(str(tmp_path / "index.png"))

    # a layer page, by clicking its name
    d.find_element(By.LINK_TEXT, "block1_conv2").click()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv2/index.html"))
    n, broken = _all_images_loaded(d)
    assert n == 4 and broken == []
    assert d.save_screenshot(str(tmp_path / "layer.png"))

    # a filter page, by clicking its image
    d.find_element(By.CSS_SELECTOR, "a[href='f001.html'] img").click()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv2/f001.html"))
    n, broken = _all_images_loaded(d)
    assert n == 1 and broken == []
    assert d.find_element(By.ID, "filter-index").text == "1"
    assert "final activation" in d.find_element(By.TAG_NAME, "dl").text
    assert d.save_screenshot(str(tmp_path / "filter.png"))

    # the arrow keys: next, previous, next across the layer boundary, up to the layer
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv2/f002.html"))
    assert d.find_element(By.ID, "filter-index").text == "2"
    ActionChains(d).send_keys(Keys.ARROW_LEFT).perform()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv2/f001.html"))
    d.get(server + "/block1_conv1/f003.html")
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv2/f000.html"))
    ActionChains(d).send_keys(Keys.ESCAPE).perform()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv2/index.html"))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["filter.png", "index.png", "layer.png"]


def test_site_from_the_file_system(site, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(Path(site, "block1_conv1", "f000.html").as_uri())
    n, broken = _all_images_loaded(d)
    assert n == 1 and broken == []
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
    _wait(d, lambda d: d.current_url.endswith("/block1_conv1/f001.html"))
    d.get(Path(site, "index.html").as_uri())
    n, broken = _all_images_loaded(d)
    assert n == 8 and broken == []

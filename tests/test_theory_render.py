"""The headline theorem on the built docs site's Theory landing page, rendered in headless Chromium.

Builds nothing: it reads a site that `oilwater docs` (`oilwater_jax.docs.build_docs`) already built, from
`$OILWATER_SITE` or the default `_site/` at the project root, and is skipped when there is none (or no Chromium).
Accepts either maths renderer (KaTeX's `span.katex` or MathML's `math`), so it survives a switch between them.
"""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("OILWATER_SITE", ROOT / "_site"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.browser
MATH = "span.katex, math"


@pytest.fixture(scope="module")
def index_url():
    page = SITE / "theory" / "index.html"
    if not page.is_file(): pytest.skip(f"no built site at {SITE} (run `oilwater docs` first)")
    if "the-headline-theorem" not in page.read_text(): pytest.fail(f"{page} has no 'The headline theorem' section")
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK): pytest.skip(f"{exe} is not installed: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SITE)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver, f"http://127.0.0.1:{httpd.server_address[1]}/theory/index.html"
    driver.quit()
    httpd.shutdown(); httpd.server_close()


def test_headline_theorem_rendered(index_url):
    "The first section of the Theory page states Theorem 0 in a block quote, with rendered maths and links to its proofs."
    check_headline(*index_url)


def check_headline(driver, url: str):
    "The checks of the headline theorem on a served Theory page (also used by `test_docs_site` on the site it builds)."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    sec = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "section#the-headline-theorem"))
    WebDriverWait(driver, 30).until(lambda d: sec.find_elements(By.CSS_SELECTOR, f"blockquote {MATH.replace(', ', ', blockquote ')}"))
    first = driver.find_elements(By.CSS_SELECTOR, "main section.level2")[0]
    assert first.get_attribute("id") == "the-headline-theorem", "the headline theorem is not the page's first section"
    quote = sec.find_element(By.TAG_NAME, "blockquote")
    assert quote.is_displayed() and "Theorem 0" in quote.text and "if and only if" in quote.text
    maths = quote.find_elements(By.CSS_SELECTOR, MATH)
    assert maths and any(m.is_displayed() for m in maths)
    unrendered = [s.text[:60] for s in sec.find_elements(By.CSS_SELECTOR, "span.math") if not s.find_elements(By.CSS_SELECTOR, MATH)]
    assert not unrendered, f"maths left as source in the headline theorem: {unrendered[:3]}"
    assert not sec.find_elements(By.CSS_SELECTOR, ".katex-error"), "KaTeX could not render part of the theorem"
    links = {a.get_attribute("href").rsplit("/", 1)[-1] for a in quote.find_elements(By.TAG_NAME, "a")}
    assert {"01_dominance.html", "02_linear_model.html", "04_twin_worlds.html", "05_removal.html", "07_aggregation.html"} <= links
    proof_links = {a.get_attribute("href").rsplit("/", 1)[-1] for a in sec.find_elements(By.CSS_SELECTOR, "p a")}
    assert "03_duality.html" in proof_links

"""The documentation site, built offline and opened in headless Chromium: pages render with their content, maths with KaTeX.

Builds the site from a temporary copy of the project (so a missing home page, theory page or tables page can be filled
in without touching the repository), serves it on 127.0.0.1, and checks the rendered DOM, not just HTTP status.
Screenshots go to `$OILWATER_SCREENSHOTS` (default: a pytest temporary folder).
Needs Debian's `chromium` and `chromium-driver`; skipped, saying so, when they are missing.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.browser

HOME_TEXT = "temporary home page for the docs test"
THEORY_MD = r"""---
title: Group DRO as a two-player game
---

Group DRO minimises the worst expected loss over the groups $g \in \mathcal{G}$:

$$
\min_\theta \max_{q \in \Delta} \sum_{g} q_g \, \mathbb{E}_{(x,y) \sim P_g}\big[\ell(\theta; x, y)\big].
$$
"""
TABLES_MD = """---
title: Reproduced tables
---

## Table 2: JTT on Waterbirds

| Method | Defense | Worst-group accuracy (ours) | Paper |
|---|---|---|---|
| JTT | none | 85.1 | 86.7 |
"""


def _project_copy(dest: Path) -> Path:
    "A copy of the project's docs sources, with a home, theory and tables page added only where the repo has none."
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "_proc", "_docs", "_site")
    shutil.copy(ROOT / "pyproject.toml", dest)
    for d in ("nbs", "oilwater_jax", "theory"):
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, dest / d, ignore=ignore)
    nbs = dest / "nbs"
    if not (nbs / "index.ipynb").exists():
        md = lambda s: {"cell_type": "markdown", "metadata": {}, "source": s}
        cells = [md("# oilwater-jax\n> Group robustness and poisoning defenses in JAX."), md(f"A {HOME_TEXT}.")]
        (nbs / "index.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (dest / "theory").mkdir(exist_ok=True)
    if not any("$" in p.read_text() for p in (dest / "theory").glob("*.md")):
        (dest / "theory" / "zz_docs_test_math.md").write_text(THEORY_MD)
    if not (nbs / "tables.md").exists():
        (nbs / "tables.md").write_text(TABLES_MD)
    return dest


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    "The whole site, built once from a copy of the project."
    pytest.importorskip("smalldocs")
    from oilwater_jax.docs import build_docs

    project = _project_copy(tmp_path_factory.mktemp("project"))
    return build_docs(tmp_path_factory.mktemp("built") / "site", project=project, n_workers=2)


@pytest.fixture(scope="session")
def server(site):
    "The site served on 127.0.0.1 at an ephemeral port, in a thread; shut down at the end."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    "Headless Debian Chromium through Debian's chromedriver, with a fresh profile and no background network."
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            pytest.skip(f"{exe} is not installed: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
              "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    "Where screenshots go: `$OILWATER_SCREENSHOTS`, else a pytest temporary folder."
    d = Path(os.environ["OILWATER_SCREENSHOTS"]) if os.environ.get("OILWATER_SCREENSHOTS") else tmp_path_factory.mktemp("screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open(browser, url: str):
    "Load a page and wait until its deferred scripts (search, KaTeX auto-render) have run."
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return browser


def _main_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "main").text


def _external_requests(browser, origin: str) -> list[str]:
    "Every resource the page loaded from anywhere but our server (the site must work offline)."
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in urls if not u.startswith(origin) and not u.startswith("data:")]


def test_home_page(browser, server, shots):
    from selenium.webdriver.common.by import By

    b = _open(browser, server + "/index.html")
    b.save_screenshot(str(shots / "home.png"))
    assert "oilwater-jax" in b.find_element(By.CSS_SELECTOR, "nav.navbar").text
    if (ROOT / "nbs" / "index.ipynb").exists():
        assert len(_main_text(b)) > 100, _main_text(b)
    else:
        assert HOME_TEXT in _main_text(b)
    sidebar = b.find_element(By.ID, "quarto-sidebar").get_attribute("textContent")
    for section in ("Home", "API", "Theory", "Reproduced tables"):
        assert section in sidebar, f"{section!r} missing from the sidebar: {sidebar!r}"
    assert _external_requests(b, server) == []


def test_api_page_show_doc(browser, server, shots):
    from selenium.webdriver.common.by import By

    b = _open(browser, server + "/core.html")
    heading = b.find_element(By.ID, "groupdataset")
    b.execute_script("window.scrollTo({top: arguments[0].getBoundingClientRect().top + window.scrollY - 80, behavior: 'instant'})", heading)
    b.save_screenshot(str(shots / "api_core.png"))
    assert heading.is_displayed() and heading.text == "GroupDataset"
    text = _main_text(b)
    assert "Images with labels, spurious attributes" in text  # the docstring, from show_doc
    assert "def GroupDataset(" in text  # the signature block
    assert "check_choice" in text and "OilwaterError" in text
    assert _external_requests(b, server) == []


def test_tables_page(browser, server, shots):
    from selenium.webdriver.common.by import By

    b = _open(browser, server + "/tables.html")
    b.save_screenshot(str(shots / "tables.png"))
    tables = b.find_elements(By.CSS_SELECTOR, "main table")
    assert tables and tables[0].is_displayed()
    rows = tables[0].find_elements(By.CSS_SELECTOR, "tr")
    assert len(rows) >= 2 and rows[1].text.strip(), [r.text for r in rows]
    assert "Reproduced tables" in b.title


def test_theory_pages_math(browser, server, shots, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pages = sorted(p for p in (site / "theory").glob("*.html") if p.name != "index.html" and 'class="math' in p.read_text())
    assert pages, "no theory page with maths was built"
    for n, page in enumerate(pages):
        b = _open(browser, f"{server}/{page.relative_to(site).as_posix()}")
        WebDriverWait(b, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "span.katex"))
        if n == 0:
            b.save_screenshot(str(shots / "theory.png"))
            assert b.find_elements(By.CSS_SELECTOR, ".katex-display"), "display maths did not render"
        assert any(k.is_displayed() for k in b.find_elements(By.CSS_SELECTOR, "span.katex"))
        errors = [e.get_attribute("title") or e.text for e in b.find_elements(By.CSS_SELECTOR, ".katex-error")]
        assert not errors, f"{page.name}: KaTeX could not render {errors[:3]}"
        assert _external_requests(b, server) == [], "maths must render offline (KaTeX vendored into site_libs/katex)"
    index = _open(browser, server + "/theory/index.html")
    assert index.find_elements(By.CSS_SELECTOR, "main li a"), "the Theory landing page lists no pages"

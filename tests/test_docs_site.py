"""The documentation site, built offline and opened in headless Chromium: pages render with their content, maths as MathML.

Builds the site from a temporary copy of the project (so a missing home page, theory page or tables page can be filled
in without touching the repository), serves it on 127.0.0.1, and checks the rendered DOM, not just HTTP status.
Screenshots go to `$OILWATER_SCREENSHOTS` (default: a pytest temporary folder).
Needs Debian's `chromium` and `chromium-driver`; skipped, saying so, when they are missing.
"""
from __future__ import annotations

import functools
import hashlib
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
    shutil.copy(ROOT / "README.md", dest)
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


BUILD: dict = {}


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    "The whole site, built once from a copy of the project, with a fresh cache and an `npm` on PATH that only records calls."
    pytest.importorskip("smalldocs")
    from oilwater_jax.docs import build_docs

    project = _project_copy(tmp_path_factory.mktemp("project"))
    fake_bin, marker = tmp_path_factory.mktemp("bin"), tmp_path_factory.mktemp("npm") / "called"
    (fake_bin / "npm").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n"); (fake_bin / "npm").chmod(0o755)
    readme = hashlib.sha256((project / "README.md").read_bytes()).hexdigest()
    saved = {k: os.environ.get(k) for k in ("PATH", "OILWATER_CACHE")}
    os.environ["PATH"] = f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["OILWATER_CACHE"] = str(tmp_path_factory.mktemp("fresh-cache"))
    try: site = build_docs(tmp_path_factory.mktemp("built") / "site", project=project, n_workers=2)
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    BUILD.update(npm_called=marker.exists(), readme_same=hashlib.sha256((project / "README.md").read_bytes()).hexdigest() == readme)
    return site


def test_build_is_offline_and_leaves_the_readme(site):
    assert BUILD["npm_called"] is False, "the docs build ran npm"
    assert BUILD["readme_same"], "the docs build changed README.md"
    import re
    loads = [p.name for p in site.rglob("*.html")
             if re.search(r'<(script|link)\b[^>]*katex', p.read_text(encoding="utf-8"), re.I)]
    assert loads == [], f"pages still load KaTeX: {loads}"
    assert not (site / "site_libs" / "katex").exists()


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
              "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
              "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"):  # no network: only our server answers
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
    if (ROOT / "nbs" / "index.ipynb").exists():  # the two-line `>` description, whole (it was cut at the line break)
        desc = b.find_element(By.CSS_SELECTOR, ".description").text
        assert "Like Oil and Water" in desc and desc.rstrip(".").endswith("(arXiv 2504.02142)"), desc
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

    pages = sorted(p for p in (site / "theory").glob("*.html") if p.name != "index.html" and 'class="math' in p.read_text())
    assert pages, "no theory page with maths was built"
    for n, page in enumerate(pages):
        html = page.read_text()
        assert "\\(" not in html and "\\[" not in html, f"{page.name}: TeX left unconverted"
        b = _open(browser, f"{server}/{page.relative_to(site).as_posix()}")
        formulas = b.find_elements(By.CSS_SELECTOR, "span.math > math")
        assert formulas, f"{page.name}: no MathML"
        sizes = b.execute_script("return [...document.querySelectorAll('span.math > math')].map("
                                 "m => {const r = m.getBoundingClientRect(); return [r.width, r.height, m.getAttribute('display')]})")
        assert all(w > 0 and h > 0 for w, h, _ in sizes), f"{page.name}: a formula has no size: {sizes[:5]}"
        if n == 0:
            b.save_screenshot(str(shots / "theory.png"))
            blocks = [(w, h) for w, h, d in sizes if d == "block"]
            assert blocks and max(h for _, h in blocks) > 20, "display maths did not render as a block"
            # MathML laid out by the browser: a fraction or sub/superscript is taller than a line of plain text
            assert max(h for _, h, _ in sizes) > 1.2 * b.execute_script(
                "return parseFloat(getComputedStyle(document.querySelector('main p')).fontSize)")
        assert _external_requests(b, server) == [], "maths must render offline"


def test_theory_index_states_the_headline_theorem(browser, server, site):
    "The Theory landing page of the built site opens with the boxed headline theorem, its maths rendered as MathML."
    from test_theory_render import check_headline

    assert "the-headline-theorem" in (site / "theory" / "index.html").read_text()
    check_headline(browser, f"{server}/theory/index.html")


def test_tutorial_page_shows_its_outputs(browser, server, shots, site):
    from selenium.webdriver.common.by import By

    page = site / "tutorials" / "erm_baseline.html"
    assert page.exists(), sorted(p.name for p in (site / "tutorials").iterdir())
    b = _open(browser, f"{server}/tutorials/erm_baseline.html")
    imgs = [i for i in b.find_elements(By.CSS_SELECTOR, "main img")
            if b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 100]
    assert imgs, "the walkthrough's figure (the groups of the data) is not on its page"
    imgs[0].location_once_scrolled_into_view
    b.save_screenshot(str(shots / "tutorial.png"))
    text = _main_text(b)
    assert "2 cells (2 missing) under preset 'smoke'" in text or "ran 2 (2 ok, 0 failed)" in text, text[:2000]
    tables = [t.text for t in b.find_elements(By.CSS_SELECTOR, "main table")]
    assert any("ERM" in t and "Seeds" in t for t in tables), "the walkthrough's tables are not on its page"
    assert _external_requests(b, server) == []

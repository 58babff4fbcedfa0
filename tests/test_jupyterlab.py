"The tutorials open in JupyterLab without being marked modified (issue: a new user's first hour)."
import json, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

import pytest

from oilwater_jax.docs import TUTORIALS_GLOB, kernel_metadata, stamp_kernel_metadata

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "nbs").glob(TUTORIALS_GLOB))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def test_stamped_tutorials_carry_the_kernel_metadata_jupyterlab_writes(tmp_path):
    "Committed tutorials are nbdev-clean (display name = kernel name, no language_info); stamping gives JupyterLab's values."
    assert len(TUTORIALS) >= 3
    want = kernel_metadata()
    for p in TUTORIALS:
        committed = json.loads(p.read_text(encoding="utf-8"))["metadata"]
        assert committed["kernelspec"]["display_name"] == "python3" and "language_info" not in committed, p.name  # nbdev-clean's form
        copy = tmp_path / p.name
        shutil.copy(p, copy)
        assert stamp_kernel_metadata([copy]) == [copy] and stamp_kernel_metadata([copy]) == []   # written once, then equal
        meta = json.loads(copy.read_text(encoding="utf-8"))["metadata"]
        assert meta["kernelspec"] == want["kernelspec"] and meta["language_info"] == want["language_info"], p.name
        assert json.loads(copy.read_text(encoding="utf-8"))["cells"] == json.loads(p.read_text(encoding="utf-8"))["cells"]


def _free_port() -> int:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return port


def _open_in_jupyterlab(nb_path: Path, browser, work: Path) -> tuple[bool, list[str], str]:
    "Serve `nb_path` with JupyterLab on 127.0.0.1, open it, wait for the idle kernel: (idle, dirty tab names, dialog text)."
    from selenium.webdriver.common.by import By
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "cfg"), "JUPYTER_RUNTIME_DIR": str(work / "rt"),
           "JUPYTER_DATA_DIR": str(work / "data"), "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(work / "ws")}
    exe = Path(sys.executable).parent / "jupyter-lab"
    log = open(work / "server.log", "w")
    server = subprocess.Popen([str(exe), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                               "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={nb_path.parent}",
                               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try: socket.create_connection(("127.0.0.1", port), 1).close(); break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail(f"JupyterLab did not start: {(work / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        browser.get(f"http://127.0.0.1:{port}/lab/tree/{nb_path.name}")
        idle, dialog, deadline = False, "", time.time() + 90
        while time.time() < deadline and not idle:
            time.sleep(0.5)
            dialogs = browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog")
            if dialogs: dialog = dialogs[0].text; break
            idle = browser.execute_script("const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                                          "return e !== null && e.getAttribute('data-status') === 'idle';")
        time.sleep(3)  # the kernel's info reply arrives with the idle status; the metadata writes follow it
        dirty = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tab.jp-mod-dirty")]
        return idle, dirty, dialog
    finally:
        server.terminate()
        try: server.wait(15)
        except subprocess.TimeoutExpired: server.kill(); server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK): pytest.skip(f"{exe} is not installed: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    pytest.importorskip("jupyterlab")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--window-size=1280,1000",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-jl')}",
              "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"):  # only the local server answers
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_tutorial_opens_unmodified_in_jupyterlab(browser, tmp_path):
    "A stamped tutorial opens with its kernel, no 'Select Kernel' dialog and no modified mark; the committed nbdev-clean one is marked."
    src = TUTORIALS[0]
    (tmp_path / "stamped").mkdir(); (tmp_path / "cleaned").mkdir()
    stamped = tmp_path / "stamped" / src.name
    shutil.copy(src, stamped)
    stamp_kernel_metadata([stamped])   # the one local step the README names (the committed notebooks are nbdev-clean)
    idle, dirty, dialog = _open_in_jupyterlab(stamped, browser, tmp_path / "stamped")
    assert idle and not dialog and dirty == [], (idle, dirty, dialog)
    cleaned = tmp_path / "cleaned" / src.name   # the detector can fail: the committed, nbdev-clean notebook is marked
    shutil.copy(src, cleaned)
    idle, dirty, dialog = _open_in_jupyterlab(cleaned, browser, tmp_path / "cleaned")
    assert idle and dirty == [src.name], (idle, dirty, dialog)

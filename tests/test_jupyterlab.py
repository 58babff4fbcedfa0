"The tutorials open in JupyterLab without being marked modified (issue: a new user's first hour)."
import json, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

import pytest

from oilwater_jax.docs import KERNEL_NAME, TUTORIALS_GLOB, kernel_metadata, stamp_kernel_metadata

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "nbs").glob(TUTORIALS_GLOB))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


NOTEBOOKS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def test_committed_notebooks_carry_the_metadata_jupyterlab_writes():
    "Every notebook names the project kernel and stores the `language_info` its kernel reports (all but the version, which is the reference Python's)."
    want = kernel_metadata()
    assert want["kernelspec"] == {"display_name": KERNEL_NAME, "language": "python", "name": KERNEL_NAME}  # installed, display name = name
    assert len(NOTEBOOKS) >= 20 and len(TUTORIALS) >= 3
    versions = set()
    for p in NOTEBOOKS:
        meta = json.loads(p.read_text(encoding="utf-8"))["metadata"]
        assert meta.get("kernelspec") == want["kernelspec"], p
        info = dict(meta.get("language_info", {}))
        versions.add(info.pop("version", None))
        assert info == {k: v for k, v in want["language_info"].items() if k != "version"}, p
    assert len(versions) == 1 and None not in versions, versions   # stamped once, under one interpreter


def test_nbdev_clean_leaves_the_stamp_alone():
    "The project's nbdev configuration keeps `language_info`, and the kernel's display name is already its name."
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    keys = get_config(path=ROOT).get("allowed_metadata_keys")
    assert list(keys) == ["language_info"], keys
    for p in TUTORIALS:
        nb = json.loads(p.read_text(encoding="utf-8"))
        before = json.loads(json.dumps(nb["metadata"]))
        clean_nb(nb, allowed_metadata_keys=keys)
        assert nb["metadata"] == before, p.name
        default = json.loads(p.read_text(encoding="utf-8"))
        clean_nb(default)   # nbdev's default keys drop it: the configuration is what keeps it
        assert "language_info" not in default["metadata"]


def test_the_package_installs_its_kernel():
    "pyproject's data-files put the kernelspec where Jupyter finds it, and it runs this environment's Python."
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert Path(spec.resource_dir).resolve() == (Path(sys.prefix) / "share/jupyter/kernels" / KERNEL_NAME).resolve()
    assert spec.argv[:3] == ["python", "-m", "ipykernel_launcher"]   # jupyter_client swaps "python" for sys.executable
    shipped = json.loads((ROOT / "jupyter/kernels" / KERNEL_NAME / "kernel.json").read_text())
    assert shipped["display_name"] == spec.display_name == KERNEL_NAME


def test_stamp_writes_this_environments_values(tmp_path):
    "On another Python the one local step stamps a copy with this kernel's values, once."
    want = kernel_metadata()
    copy = tmp_path / TUTORIALS[0].name
    nb = json.loads(TUTORIALS[0].read_text(encoding="utf-8"))
    nb["metadata"]["language_info"]["version"] = "3.0.0"   # as if stamped under another interpreter
    copy.write_text(json.dumps(nb))
    assert stamp_kernel_metadata([copy]) == [copy] and stamp_kernel_metadata([copy]) == []
    meta = json.loads(copy.read_text(encoding="utf-8"))["metadata"]
    assert meta["kernelspec"] == want["kernelspec"] and meta["language_info"]["version"] == PYTHON
    assert json.loads(copy.read_text(encoding="utf-8"))["cells"] == nb["cells"]


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
    "The committed tutorial opens with its kernel, no 'Select Kernel' dialog and no modified mark; nbdev's default form is marked."
    src = TUTORIALS[0]
    (tmp_path / "committed").mkdir(); (tmp_path / "default").mkdir()
    committed = tmp_path / "committed" / src.name
    shutil.copy(src, committed)
    restamped = stamp_kernel_metadata([committed])   # empty on the reference Python: the file is opened as committed
    assert restamped == [] or json.loads(src.read_text())["metadata"]["language_info"]["version"] != PYTHON
    idle, dirty, dialog = _open_in_jupyterlab(committed, browser, tmp_path / "committed")
    assert idle and not dialog and dirty == [], (idle, dirty, dialog)
    default = tmp_path / "default" / src.name   # the detector can fail: nbdev-clean's default form is marked
    nb = json.loads(src.read_text(encoding="utf-8"))
    nb["metadata"] = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    default.write_text(json.dumps(nb))
    idle, dirty, dialog = _open_in_jupyterlab(default, browser, tmp_path / "default")
    assert idle and dirty == [src.name], (idle, dirty, dialog)

"""The widgets in a real browser: JupyterLab from the venv, Chromium from the OS, driven by Playwright.

JupyterLab serves a scratch directory on 127.0.0.1 (its kernels see the ci run through ``DTE_RUN_DIR``); Chromium
(``apt-get install chromium``; Playwright downloads no browser) opens:

1. the executed, signed notebook 11 the course wrote: trusted, so the inspector is drawn from the widget state
   papermill saved, not shown as its text line;
2. notebook 04's setup, filter and review cells: a click on *Accept* lands in ``corpus/review.jsonl``;
3. notebook 11's setup and inspector cells: a moved temperature slider and a click on *Generate* give answers
   generated at the new temperature.

The cells are the notebooks' own (picked by cell id, so added cells do not shift them). Notebook 04's filter cell
rewrites ``corpus/``, so the kernels see the ci run through a scratch run directory whose ``corpus/`` is a copy and
everything else links to the ci run. Screenshots land in the test's tmp directory (printed).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from dte_lib import config

pytestmark = pytest.mark.course

NB04, NB11 = "04_month1_expand", "11_months10_12_refine"
# cell ids: setup, filter, diversity report (defines `clean`), review widget
CELLS_04 = ("c3c0bda4", "5eb530c1", "fd06a20e", "c7cfcc92")
CELLS_11 = ("05ffcb69", "33b9b5c8")  # setup, inspector
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trimmed(stem: str, ids: tuple[str, ...], dest: Path) -> Path:
    """The notebook's parameters cell plus the cells with these ids, in notebook order, no outputs."""
    nb = nbformat.read(config.NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4)
    missing = set(ids) - {c.get("id") for c in nb.cells}
    assert not missing, f"{stem}: cells {missing} are gone; update the ids in {Path(__file__).name}"
    nb.cells = [c for c in nb.cells
                if c.get("id") in ids or "parameters" in c.get("metadata", {}).get("tags", [])]
    path = dest / f"{stem}.ipynb"
    nbformat.write(nb, path)
    return path


def _scratch_run(ci_run: Path, dest: Path) -> Path:
    """A run directory that reads the ci run: corpus/ copied (notebook 04 rewrites it), the rest linked."""
    dest.mkdir()
    for p in ci_run.iterdir():
        if p.name == "corpus":
            shutil.copytree(p, dest / "corpus", ignore=shutil.ignore_patterns("review.jsonl"))
        elif not p.name.startswith("."):
            (dest / p.name).symlink_to(p)
    return dest


@pytest.fixture()
def lab(ci_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # `make test` ran .ci/install-browser, which installs it where it can
        why = "no chromium on PATH: install it with `sudo apt-get install chromium` (or run .ci/install-browser)"
        if os.environ.get("DTE_REQUIRE_BROWSER", "") not in ("", "0"):  # .ci/run: the browser test must run
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path / "lab"
    root.mkdir()
    run_dir = _scratch_run(ci_run, tmp_path / "run")
    shutil.copy(ci_run / "notebooks" / f"{NB11}.ipynb", root / f"{NB11}-executed.ipynb")
    _trimmed(NB04, CELLS_04, root)
    _trimmed(NB11, CELLS_11, root)
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no toast over the outputs
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "DTE_PRESET": "ci", "DTE_RUN_DIR": str(run_dir), "PYTHONPATH": str(config.REPO_ROOT),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # this test's own JupyterLab settings and workspaces; the notary's key and database stay the user's,
           # the ones `dte course run` signed with
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()}")
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield {"page": page, "base": base, "token": token, "run_dir": run_dir, "out": tmp_path,
                   "errors": errors}
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started (its own session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _open(lab, name: str):
    page = lab["page"]
    page.goto(f"{lab['base']}/lab/tree/{name}?reset&token={lab['token']}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=TIMEOUT_MS)
    return page


def _run_all(page) -> None:
    # "Run All Cells" before the kernel is connected runs nothing: wait for it to say Idle
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=TIMEOUT_MS)
    page.locator(".jp-NotebookPanel .jp-Cell").first.click()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()


def _shot(lab, name: str) -> None:
    path = lab["out"] / f"{name}.png"
    lab["page"].screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_widgets_work_in_a_real_browser(lab):
    page = _open(lab, f"{NB11}-executed.ipynb")
    # signed by the course runner: trusted, so the saved widget state is drawn, not the text line
    saved = page.get_by_role("button", name="Generate").first
    saved.wait_for(timeout=TIMEOUT_MS)
    assert page.get_by_text("[generation inspector:").count() == 0
    saved.scroll_into_view_if_needed()
    _shot(lab, "11-executed-signed")

    # the reviewer: a click on Accept is on disk at once
    page = _open(lab, f"{NB04}.ipynb")
    _run_all(page)
    accept = page.get_by_role("button", name="Accept")
    accept.wait_for(timeout=TIMEOUT_MS)
    card = page.locator(".widget-html", has_text="filter flags").first
    first_id = card.locator("b").first.inner_text()
    accept.click()
    review = lab["run_dir"] / "corpus" / "review.jsonl"
    deadline = time.time() + 30
    while not (review.exists() and review.read_text().strip()) and time.time() < deadline:
        time.sleep(0.5)
    decisions = [json.loads(line) for line in review.read_text().splitlines()]
    assert [(d["id"], d["decision"]) for d in decisions] == [(first_id, "accept")]
    page.get_by_text("1 / ").first.wait_for(timeout=10_000)  # the status line counts it
    _shot(lab, "04-reviewer")

    # the inspector: move the temperature slider, add the teacher, press Generate
    page = _open(lab, f"{NB11}.ipynb")
    _run_all(page)
    generate = page.get_by_role("button", name="Generate")
    generate.wait_for(timeout=TIMEOUT_MS)
    page.locator(".widget-html td").first.wait_for(timeout=TIMEOUT_MS)  # the cell's own generate() is done
    slider = page.locator(".widget-slider", has_text="temperature")
    readout = slider.locator(".widget-readout")
    before = float(readout.inner_text())
    slider.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    after = float(readout.inner_text())
    assert after == pytest.approx(before + 0.1)
    pick = page.locator(".widget-select-multiple select")
    options = pick.locator("option").all_inner_texts()
    chosen = [o for o in options if o.startswith("final") or o == "teacher"]  # the course's final model
    assert "teacher" in chosen, f"the ci run's teacher is not offered: {options}"
    pick.select_option(chosen)
    # the slider's value and the selection reach the kernel as comm messages that the frontend may throttle; under
    # load a click can overtake them and the answers come back at the old settings (seen in CI with a 2 s pause).
    # So: pause, click, and if no answer at the new settings has appeared, click again (at most 3 clicks); the
    # assertion is unchanged — answers from every chosen source, generated at the new temperature
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    out = page.locator(".widget-html", has_text=f"temperature {after:g}")
    for attempt in range(3):
        page.wait_for_timeout(2000)
        generate.click()
        try:
            out.locator("td").nth(len(chosen) - 1).wait_for(timeout=TIMEOUT_MS if attempt == 2 else 45_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    cells = out.locator("td").all_inner_texts()
    unbroken = [c.replace("\xa0", " ") for c in chosen]  # the select draws a label's spaces as no-break spaces
    assert [c.splitlines()[0] for c in cells] == unbroken
    teacher_answer = cells[chosen.index("teacher")].splitlines()[1]
    assert teacher_answer.strip() and teacher_answer != "(empty)"
    out.scroll_into_view_if_needed()
    _shot(lab, "11-inspector")
    assert not lab["errors"], lab["errors"]

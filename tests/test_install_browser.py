"""`.ci/install-browser`, which `make test` runs first (and `.ci/run` through it): every branch, each run for real
against a PATH holding stand-ins for the OS's `id`, `sudo` and `apt-get` (they record how they were called), so
no package is installed here. The real install was measured on a fresh Debian 12 machine (see README, Tests).
Run it: ``pytest tests/test_install_browser.py``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dte_lib import config

SCRIPT = config.REPO_ROOT / ".ci" / "install-browser"


def _tool(bindir: Path, name: str, body: str) -> None:
    p = bindir / name
    p.write_text(f"#!{shutil.which('bash')}\n{body}\n")
    p.chmod(0o755)


def run(tmp_path: Path, uid: int, *, apt: str | None = "ok", sudo: bool = False, chromium: bool = False
        ) -> tuple[subprocess.CompletedProcess, list[str]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    for real in ("bash", "tail"):
        (bindir / real).symlink_to(shutil.which(real))
    _tool(bindir, "id", f"echo {uid}")
    if apt is not None:  # "ok" or "fail"
        _tool(bindir, "apt-get", f'echo "apt-get $*" >> {log}\n'
              + ('echo "E: Unable to locate package chromium" >&2; exit 100' if apt == "fail" else
                 'echo "debconf: delaying package configuration" >&2; exit 0'))
    if sudo:
        _tool(bindir, "sudo", f'[ "$1" = -n ] && shift\necho "sudo $*" >> {log}\n[ $# -eq 0 ] || "$@"')
    if chromium:
        _tool(bindir, "chromium", "exit 0")
    r = subprocess.run([str(bindir / "bash"), str(SCRIPT)], capture_output=True, text=True,
                       env={"PATH": str(bindir)}, timeout=60)
    return r, log.read_text().splitlines() if log.exists() else []


def test_nothing_to_do_when_chromium_is_there(tmp_path):
    r, calls = run(tmp_path, 0, chromium=True)
    assert r.returncode == 0 and r.stdout == r.stderr == "" and calls == []


def test_root_installs_it_with_apt_get_in_one_line(tmp_path):
    r, calls = run(tmp_path, 0)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == ["installing Chromium for the browser test (apt-get, first time, ~1 min)..."]
    assert calls == ["apt-get update -qq", "apt-get install -y -qq chromium"]  # apt's chatter stays hidden


def test_passwordless_sudo_is_used(tmp_path):
    r, calls = run(tmp_path, 1000, sudo=True)
    assert r.returncode == 0 and "installing Chromium" in r.stdout
    assert calls[-2:] == ["sudo apt-get install -y -qq chromium", "apt-get install -y -qq chromium"]


@pytest.mark.parametrize("apt,expect", [(None, "package manager"), ("ok", "sudo apt-get install chromium")])
def test_without_root_or_apt_one_line_says_what_to_run_and_the_suite_goes_on(tmp_path, apt, expect):
    r, calls = run(tmp_path, 1000, apt=apt)
    assert r.returncode == 0 and r.stderr == "" and calls == []
    assert len(r.stdout.splitlines()) == 1 and expect in r.stdout and "will be skipped" in r.stdout


def test_a_failed_install_shows_apt_and_the_command_and_the_suite_goes_on(tmp_path):
    r, calls = run(tmp_path, 0, apt="fail")
    assert r.returncode == 0 and calls == ["apt-get update -qq"]
    assert "Unable to locate package" in r.stdout and r.stdout.splitlines()[-1].startswith("could not install")


def test_make_test_and_ci_run_both_go_through_it():
    makefile = (config.REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: ", 1)[1].split("\n\n", 1)[0]
    assert recipe.splitlines()[1].strip() == "@.ci/install-browser"  # before the suite
    ci = (config.REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci  # one place installs it

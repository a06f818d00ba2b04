"""The library on the laptops learners have (issue 26): macOS and Windows, stood in for on Linux — honestly.

No macOS or Windows machine runs these tests, so what can be checked here is checked two ways:

- **Same figures on Linux.** ``dte_lib.envinfo`` reads memory through ``psutil`` (and ``getrusage`` for the peak);
  on Linux those readings are compared with the ``/proc`` files and ``ru_maxrss × 1024`` the library used before,
  so notebook 05's figures (peak resident set growth = peak − resident set after setup) are unchanged.
- **Another OS, stood in for.** A child Python starts with a ``sitecustomize`` that makes ``import fcntl`` and
  ``import resource`` in ``dte_lib`` code fail (an ``__import__`` guard raising ImportError, as on Windows), points
  the library's one ``/proc`` access point (``envinfo.PROC``) at a missing directory, and turns any ``/proc`` file
  a ``dte_lib`` frame opens into FileNotFoundError (an audit hook). Libraries keep their own Linux paths
  (``psutil`` itself imports ``resource`` and reads ``/proc`` here; on macOS and Windows it uses those systems'
  APIs — it is the portable layer). In that child every ``dte_lib`` module imports, the run log and the teacher's
  cache lock work, and notebook 05's training measurement (in its own child under the same rules, with
  ``resource`` back as on macOS) returns sane figures. What this cannot show: Windows' msvcrt locks or macOS's
  ``ru_maxrss`` in bytes (its unit is unit-tested instead).
"""
from __future__ import annotations

import ast
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dte_lib import envinfo, infra, planner

REPO = Path(__file__).resolve().parent.parent
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with Linux's /proc")


# ---------------------------------------------------------------------------------------------- same figures on Linux
def _statm_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@linux
def test_memory_readings_equal_the_proc_files_and_ru_maxrss_on_linux():
    with open("/proc/meminfo") as fh:
        mem_total_kib = next(int(x.split()[1]) for x in fh if x.startswith("MemTotal:"))
    assert envinfo.total_memory_bytes() == mem_total_kib * 1024
    assert planner.device_memory_bytes("cpu") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    before, now, after = _statm_rss(), envinfo.rss_bytes(), _statm_rss()
    assert min(before, after) - (1 << 20) <= now <= max(before, after) + (1 << 20)  # same pages, read 3 times
    lo = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = envinfo.peak_rss_bytes()
    hi = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert lo <= peak <= hi  # the same counter, in bytes (Linux reports kilobytes)
    assert peak >= now - (1 << 20)  # (the kernel folds per-thread RSS counts into the peak lazily: ~100s of KiB)


@linux
def test_cpu_flags_and_device_report_match_proc_cpuinfo_on_linux():
    with open("/proc/cpuinfo") as fh:
        line = next((x for x in fh if x.startswith("flags")), "")
    assert envinfo.cpu_flags() == set(line.split(":", 1)[1].split())
    dev = infra.detect_device()
    if dev["device"] == "cpu":  # the strings notebook 05 tested before, on the same line
        assert dev["avx512"] == (" avx512f " in f" {line} ")
        assert dev["bf16"] == (" avx512_bf16 " in f" {line} " or " amx_bf16 " in f" {line} ")


def test_ru_maxrss_unit_is_bytes_on_macos_and_kilobytes_elsewhere():
    assert envinfo.maxrss_unit("darwin") == 1
    assert envinfo.maxrss_unit("linux") == envinfo.maxrss_unit("freebsd14") == 1024


def test_only_envinfo_touches_os_specific_apis():
    """One access point: no other module imports fcntl/resource, reads /proc or calls os.sysconf; and no module
    imports a POSIX-only module at its top level (envinfo imports ``resource`` inside the function that needs it)."""
    posix_only = {"fcntl", "resource", "termios", "pwd", "grp"}
    offenders: dict[tuple[str, int], str] = {}
    for path in sorted((REPO / "dte_lib").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if node in tree.body:  # top level: a function may import what it needs where it runs
                for n in set(names) & posix_only:
                    offenders[rel, node.lineno] = f"{rel}:{node.lineno} imports {n} at import time"
            if rel == "dte_lib/envinfo.py":
                continue
            for n in set(names) & {"fcntl", "resource"}:
                offenders.setdefault((rel, node.lineno), f"{rel}:{node.lineno} imports {n} (use dte_lib.envinfo)")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/proc"):
                offenders[rel, node.lineno] = f"{rel}:{node.lineno} reads {node.value!r} (use dte_lib.envinfo)"
            if isinstance(node, ast.Attribute) and node.attr in ("sysconf", "getrusage", "flock"):
                offenders[rel, node.lineno] = f"{rel}:{node.lineno} calls {node.attr} (use dte_lib.envinfo / filelock)"
    offenders = sorted(offenders.values())
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------------------------------------- another OS
SITECUSTOMIZE = '''
"""Stand in for an OS without fcntl/resource and /proc (see tests/test_portability.py)."""
import builtins, os, sys
from pathlib import Path

BLOCKED = set(filter(None, os.environ.get("DTE_STANDIN_BLOCK", "").split(",")))
DTE = os.path.join(os.environ["DTE_STANDIN_REPO"], "dte_lib") + os.sep
STDLIB = os.path.dirname(os.__file__) + os.sep
real_import = builtins.__import__


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``import fcntl`` in a dte_lib module raises ImportError, as on Windows — even when a library imported it
    first (a finder on sys.meta_path is not asked for a module already in sys.modules). Libraries keep their own
    Linux paths (psutil imports resource here; on macOS and Windows it takes those systems' APIs)."""
    if level == 0 and name.partition(".")[0] in BLOCKED and (globals or {}).get("__name__", "").startswith("dte_lib"):
        raise ImportError(f"No module named {name!r} (standing in for another OS)", name=name)
    return real_import(name, globals, locals, fromlist, level)


def called_from_dte_lib(frame):
    """Is the first frame outside the standard library (pathlib, io) a dte_lib module's?"""
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith("<frozen") or name.startswith(STDLIB)):
            return name.startswith(DTE)
        frame = frame.f_back
    return False


def no_proc(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and \\
            os.fsdecode(args[0]).startswith("/proc") and called_from_dte_lib(sys._getframe(1)):
        raise FileNotFoundError(2, "No such file or directory (standing in for another OS)", os.fsdecode(args[0]))


builtins.__import__ = guarded_import
sys.addaudithook(no_proc)
from dte_lib import envinfo  # noqa: E402
envinfo.PROC = Path("/nonexistent-proc")
Path(os.environ["DTE_STANDIN_MARKS"], str(os.getpid())).write_text(",".join(sorted(BLOCKED)))
'''

STANDIN_RUN = r'''
import importlib, json, os, pkgutil, sys, warnings
from pathlib import Path
import sitecustomize
REPO = Path(os.environ["DTE_STANDIN_REPO"])
out = {}
for name in ("fcntl", "resource"):  # what a dte_lib module that imported it would get, and an open of /proc
    try:
        exec(compile(f"import {name}", str(REPO / "dte_lib" / "probe.py"), "exec"), {"__name__": "dte_lib.probe"})
        out[name] = "importable"
    except ImportError:
        out[name] = "blocked"
try:
    exec(compile("open('/proc/self/statm').read()", str(REPO / "dte_lib" / "probe.py"), "exec"), {})
    out["proc"] = "readable"
except FileNotFoundError:
    out["proc"] = "missing"
import dte_lib
failed = {}
names = []
for m in pkgutil.walk_packages(dte_lib.__path__, "dte_lib.", onerror=lambda n: failed.setdefault(n, "walk")):
    if m.name.rsplit(".", 1)[-1] == "__main__":  # running the CLI is not importing a module
        continue
    names.append(m.name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(m.name)
    except Exception as e:
        failed[m.name] = f"{type(e).__name__}: {e}"
out["modules"], out["failed"] = names, failed

# run time: fcntl stays missing (Windows); resource comes back (macOS has it; Windows' peak comes from psutil)
sitecustomize.BLOCKED.discard("resource")
os.environ["DTE_STANDIN_BLOCK"] = "fcntl"
from filelock import FileLock, Timeout
from dte_lib import envinfo, infra, runlog, teacher
tmp = Path(sys.argv[1])
runlog.record(tmp / "run", "05_month2_infrastructure", {"x": 1.5})
runlog.record(tmp / "run", "06_month3_progressive", {"y": 2})
out["metrics"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                  for k, v in runlog.load(tmp / "run").items()}
lock_path = tmp / "cache" / ".SmolLM2.lock"
with teacher._file_lock(lock_path):
    try:
        FileLock(lock_path, timeout=0.2).acquire()
        out["second_holder"] = "got it"
    except Timeout:
        out["second_holder"] = "timed out"
with FileLock(lock_path, timeout=0.2):
    out["after_release"] = "acquired"
out["device"] = infra.detect_device()
bc = infra.BenchCfg(n_layer=1, n_embd=64, vocab_size=256, context=64, batch=4, steps=2, warmup=1, threads=1)
out["bench"] = infra.measure_training_subprocess(bc, timeout=240)
out["estimated_extra_bytes"] = out["bench"]["estimated_extra_bytes"]
print(json.dumps(out, default=str))
'''


def test_library_works_without_fcntl_resource_or_proc(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "DTE_STANDIN_BLOCK": "fcntl,resource",
           "DTE_STANDIN_REPO": str(REPO), "DTE_STANDIN_MARKS": str(marks)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(STANDIN_RUN), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fcntl"] == out["resource"] == "blocked" and out["proc"] == "missing"  # the stand-in was in force
    # every module, the server package's too, imports with fcntl and resource missing
    assert "dte_lib.server.app" in out["modules"] and "dte_lib.runlog" in out["modules"]
    assert len(out["modules"]) >= 40, out["modules"]
    assert out["failed"] == {}, out["failed"]
    assert out["metrics"] == {"05_month2_infrastructure": {"x": 1.5}, "06_month3_progressive": {"y": 2}}
    assert out["second_holder"] == "timed out" and out["after_release"] == "acquired"
    dev = out["device"]
    assert dev["memory_gib"] == round(envinfo.total_memory_bytes() / 2**30, 1) > 0  # psutil, not /proc/meminfo
    assert dev["avx512"] is False and dev["bf16"] is False and dev["cpu_model"]  # flags unknown without /proc
    # notebook 05's measurement ran in its own child under the same rules (its mark says fcntl was blocked)
    assert sorted(p.read_text() for p in marks.iterdir()) == ["fcntl", "fcntl,resource"]
    r = out["bench"]
    assert r["tokens_per_s"] > 0 and r["params"] == planner.param_count(infra.BenchCfg(**r["bench"]).shape())
    # peak resident set growth: positive, and within 20x of the formula (allocator slack dominates a tiny model)
    assert 0 < r["peak_extra_bytes"] < 20 * out["estimated_extra_bytes"], (r["peak_extra_bytes"],
                                                                            out["estimated_extra_bytes"])

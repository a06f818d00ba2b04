"""Shared fixtures. The ci-preset course is executed once per test session (across xdist workers, under a file
lock) and reused until a notebook, the library or the data changes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from dte_lib import config

REPO = config.REPO_ROOT


def _fingerprint() -> str:
    h = hashlib.sha256()
    for pattern in ("notebooks/*.ipynb", "dte_lib/**/*.py", "data/**/*"):
        for p in sorted(REPO.glob(pattern)):
            if p.is_file():
                h.update(str(p.relative_to(REPO)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def ci_run() -> Path:
    """The run directory of a complete ci-preset course run (papermill), built at most once per change."""
    run_dir = Path(os.environ.get("DTE_CI_RUN") or REPO / "outputs" / "runs" / "ci-test").resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint()
    with FileLock(run_dir.parent / f".{run_dir.name}.lock"):
        stamp = run_dir / "fingerprint.json"
        if stamp.exists():
            prev = json.loads(stamp.read_text())
            if prev["fingerprint"] == fp:
                if prev["error"]:
                    pytest.fail(f"the ci course run failed (cached for this code): {prev['error']}")
                return run_dir
        from dte_lib import course
        shutil.rmtree(run_dir, ignore_errors=True)
        error = None
        try:
            course.run("ci", run_dir=run_dir, progress=False)
        except course.CourseError as e:
            error = str(e)
        run_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"fingerprint": fp, "error": error}))
        if error:
            pytest.fail(f"the ci course run failed: {error}")
    return run_dir


@pytest.fixture(scope="session")
def ci_metrics(ci_run: Path) -> dict:
    from dte_lib import runlog
    return runlog.load(ci_run)

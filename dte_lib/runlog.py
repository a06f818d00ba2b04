"""A run's shared record: ``metrics.json`` (key figures per notebook) and ``figures/*.png``.

Each notebook ends with ``runlog.record(RUN_DIR, "03_week1_eval", {...})``; the course runner turns the file into
``report.md`` and the tests assert on the values. Writes are atomic and locked (``filelock``, on every OS), so two
notebooks executed at once (nbval under xdist) never lose each other's figures.

Run it: ``python -m dte_lib.runlog outputs/runs/demo`` prints a run's metrics.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from .data import atomic_write_text

METRICS_FILE = "metrics.json"


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(run_dir / ".metrics.lock"):  # flock on Linux and macOS, msvcrt on Windows
        yield


def _clean(value: Any) -> Any:
    """Make numpy/torch scalars, paths and NaN JSON-safe (NaN becomes null, so the file stays valid JSON)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def record(run_dir: str | os.PathLike, notebook: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` into ``metrics.json`` under ``notebook``.

    Returns None on purpose: it is a notebook's last call, and a returned dict would be echoed into the saved
    notebook. Read the entry back with :func:`load`.
    """
    run_dir = Path(run_dir)
    with _locked(run_dir):
        data = load(run_dir)
        entry = data.setdefault(notebook, {})
        entry.update(_clean(figures))
        entry["_recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_text(run_dir / METRICS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def figure_path(run_dir: str | os.PathLike, name: str) -> Path:
    """Where :func:`save_figure` writes figure ``name``."""
    return Path(run_dir) / "figures" / f"{name}.png"


def save_figure(fig: Any, run_dir: str | os.PathLike, name: str, notebook: str | None = None) -> None:
    """Save a matplotlib figure as ``figures/<name>.png`` and list it under the notebook in metrics.json.

    Returns None (a cell ending in it shows the figure, not a path); :func:`figure_path` says where it went.
    """
    run_dir = Path(run_dir)
    path = figure_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    if notebook:
        with _locked(run_dir):
            data = load(run_dir)
            figs = data.setdefault(notebook, {}).setdefault("_figures", [])
            rel = str(path.relative_to(run_dir))
            if rel not in figs:
                figs.append(rel)
            atomic_write_text(run_dir / METRICS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    print(json.dumps(load(sys.argv[1]), indent=2))

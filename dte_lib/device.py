"""Where a model runs: one device setting (``auto | cpu | cuda | mps``) for every module that runs a model.

``resolve("auto")`` picks CUDA when present, then Apple's MPS, else the CPU. ``autocast(device, precision)`` is the
one mixed-precision context the trainer, the metrics and the server use: on CUDA ``precision="auto"`` means bf16
where the GPU supports it (Ampere and later) and fp16 otherwise; on the CPU it means fp32, because bf16 autocast is
only faster on CPUs with AVX512-BF16 (notebook 05 measures it per machine). ``python -m dte_lib.device`` prints
what ``auto`` resolves to here.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a setting; a clear error for one this machine does not have."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind not in CHOICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(CHOICES)} (a CUDA index such as cuda:1 works too)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU here — use --device auto or cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but this machine has no Apple GPU — use --device auto or cpu")
    return torch.device(name)


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for a device and a precision setting (``auto | fp32 | bf16 | fp16``); None = no autocast."""
    dev = resolve(device)
    p = (precision or "auto").lower()
    if p == "fp32":
        return None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        return torch.float16
    if p != "auto":
        raise ValueError(f"precision {precision!r} is not one of auto, fp32, bf16, fp16")
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None  # CPU and MPS: fp32 unless asked


def autocast(device: str | torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for the device and precision, or a no-op context when the answer is fp32."""
    dev = resolve(device)
    dtype = autocast_dtype(dev, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dev = resolve(args[0] if args else "auto")
    print(f"device: {dev}; autocast dtype (precision auto): {autocast_dtype(dev)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

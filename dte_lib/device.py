"""Where a model runs: one device setting (``auto | cpu | cuda | mps``) for every module that runs a model.

``resolve("auto")`` picks CUDA when present, then Apple's MPS, else the CPU. ``autocast(device, precision)`` is the
one mixed-precision context the trainer, the metrics and the server use: on CUDA ``precision="auto"`` means bf16
where the GPU supports it (Ampere and later) and fp16 otherwise; on the CPU it means fp32, because bf16 autocast is
only faster on CPUs with AVX512-BF16 (notebook 05 measures it per machine). ``python -m dte_lib.device`` prints
what ``auto`` resolves to here.

What else a module needs to run on an accelerator lives here too, so every module does it the same way:
:func:`configure` (TF32 matmuls on CUDA), :func:`to_device` (pinned-memory, non-blocking batch copies),
:func:`model_device` (where a model's weights are: inference helpers put their inputs there),
:func:`grad_scaler` (a ``GradScaler`` exactly when the autocast dtype is fp16) and :func:`fused_adamw` (the fused
AdamW kernel on CUDA). On the CPU each of them is a no-op, so CPU runs are bit-identical to what they were.

On Apple's GPU (``mps``) ``precision="auto"`` trains in fp32 (bf16 or fp16 autocast only when asked for), and
:func:`configure` says so in one line. A phase that cannot use the device it was given calls :func:`cpu_fallback`,
which says in one line that it runs on the CPU and why (notebook 05's measurements, the distributed trainer on
MPS, the sentence embedder). No Apple hardware has run this code yet: the MPS paths are read, not verified.
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
        # native bf16 only (Ampere and later): torch's default also says yes for a V100/T4 that merely emulates it
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return None  # CPU and MPS: fp32 unless asked


def autocast(device: str | torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for the device and precision, or a no-op context when the answer is fp32."""
    dev = resolve(device)
    dtype = autocast_dtype(dev, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def configure(device: str | torch.device) -> torch.device:
    """Resolve ``device`` and set what runs faster there: on CUDA, TF32 tensor cores for fp32 matmuls and
    convolutions (10-bit mantissa inputs, fp32 accumulate — what large-model trainers use). Nothing on the CPU; on
    MPS one line stating the precision."""
    dev = resolve(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if dev.index is not None:
            torch.cuda.set_device(dev)
    elif dev.type == "mps":
        print("training on the Apple GPU (mps): precision auto is fp32 there (no autocast; "
              "train.precision bf16 or fp16 asks for autocast)")
    return dev


def cpu_fallback(device: str | torch.device, what: str, why: str) -> torch.device:
    """The CPU, for a phase that does not run on ``device``'s accelerator; when that is not the CPU, one line says
    so and why."""
    dev = resolve(device)
    if dev.type != "cpu":
        print(f"{what}: on the CPU, not {dev.type} — {why}")
    return torch.device("cpu")


def model_device(model: Any) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    """A batch of CPU tensors on ``device``: unchanged on the CPU; on CUDA copied from pinned (page-locked) memory
    with ``non_blocking=True``, so the copy overlaps the GPU's work on the step before."""
    dev = device if isinstance(device, torch.device) else resolve(device)
    if dev.type == "cpu":
        return batch
    pin = dev.type == "cuda"
    return {k: (v.pin_memory() if pin and v.device.type == "cpu" else v).to(dev, non_blocking=pin)
            for k, v in batch.items()}


def grad_scaler(device: str | torch.device, precision: str = "auto"):
    """``torch.amp.GradScaler`` when the autocast dtype is fp16 (its small exponent range underflows gradients
    without loss scaling), else None: bf16 and fp32 need none."""
    dev = resolve(device)
    if autocast_dtype(dev, precision) is not torch.float16:
        return None
    return torch.amp.GradScaler(dev.type)


def fused_adamw(device: str | torch.device) -> dict[str, bool]:
    """Keyword arguments for ``torch.optim.AdamW``: ``fused=True`` on CUDA (one kernel for every parameter's
    update instead of several per tensor), nothing elsewhere (the CPU keeps torch's default implementation)."""
    return {"fused": True} if resolve(device).type == "cuda" else {}


def add_argument(parser: Any) -> None:
    """The ``--device`` option every model-running command shares (default: the preset's ``device``)."""
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (default: the preset's)")


def cli_resolve(choice: str | None, prog: str) -> torch.device:
    """:func:`resolve` for a command line: a device this machine lacks exits with one line naming the fix."""
    try:
        return resolve(choice)
    except ValueError as e:
        raise SystemExit(f"{prog}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dev = resolve(args[0] if args else "auto")
    print(f"device: {dev}; autocast dtype (precision auto): {autocast_dtype(dev)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

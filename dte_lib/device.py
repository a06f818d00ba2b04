"""Where a model runs: one device setting (``auto | cpu | cuda | mps``) for every module that runs a model.

``resolve("auto")`` picks CUDA when present, then Apple's MPS, else the CPU. ``autocast(device, precision)`` is the
one mixed-precision context the trainer, the metrics, the teacher's fine-tune and the server use: on CUDA
``precision="auto"`` means bf16 where the GPU supports it (Ampere and later) and fp16 otherwise; on the CPU it means
bf16 where the CPU computes it natively (AVX512-BF16 or AMX) **and** a short measured check says it is faster here
(:func:`cpu_bf16_check`, cached per machine), fp32 everywhere else — on an AVX2-only CPU bf16 is emulated and several
times slower. On Apple's MPS ``auto`` stays fp32. ``python -m dte_lib.device`` prints what ``auto`` resolves to here
and why (notebook 05 shows the check).

Why bf16 is safe where it is native: it keeps fp32's 8-bit exponent (no overflow, no loss scaling) and drops the
mantissa to 7 bits; matmuls accumulate in fp32. Measured on SmolLM2-135M: +0.004 nats on a persona sentence.

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
import json
import os
import sys
import time
from typing import Any

import torch

CHOICES = ("auto", "cpu", "cuda", "mps")
BF16_MIN_SPEEDUP = 1.15  # the CPU check's bf16/fp32 speed ratio below which "auto" keeps fp32 (not worth the rounding)
# the check's shape: one MLP projection of SmolLM2-135M (576 -> 1536) over 256 tokens, forward and backward
_CHECK_SHAPE = (256, 576, 1536)
_CHECKED: dict[str, dict[str, Any]] = {}  # this process's answer, per cache file


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


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16), from torch's own CPU probe (every OS)."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is None:
        return False
    try:
        c = caps()
    except Exception:  # an unusual CPU torch cannot describe: assume emulated bf16
        return False
    return bool(c.get("avx512_bf16") or c.get("amx_bf16"))


def _cpu_name() -> str:
    caps = getattr(torch.cpu, "get_capabilities", None)
    try:
        return str(caps().get("cpu_name", "")) if caps else ""
    except Exception:
        return ""


def _linear_pass(x, w, dtype: torch.dtype | None) -> float:
    """Seconds of one forward + backward of ``linear(x, w)`` under autocast to ``dtype`` (None = fp32)."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y = torch.nn.functional.linear(x, w)
    y.float().sum().backward()
    x.grad = w.grad = None
    return time.perf_counter() - t0


def _time_bf16_vs_fp32(pairs: int = 15) -> tuple[float, float, float]:
    """(fp32 s, bf16 s, speed-up) of the check's linear layer, fastest pass of each: fp32 and bf16 passes
    alternate, so a neighbour's burst of load hits both alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core speed is the hardware's answer; one thread also suffers least from neighbours
    try:
        return _time_passes(pairs)
    finally:
        torch.set_num_threads(threads)


def _time_passes(pairs: int) -> tuple[float, float, float]:
    n, k, m = _CHECK_SHAPE
    # the first caller may be inside no_grad or inference_mode (a validation loss asking for its precision)
    with torch.inference_mode(False), torch.enable_grad():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, k, generator=g, requires_grad=True)
        w = torch.randn(m, k, generator=g, requires_grad=True)
        for dtype in (None, torch.bfloat16, None, torch.bfloat16):  # warm-up: oneDNN picks and caches its kernels
            _linear_pass(x, w, dtype)
        f32, b16 = [], []
        for _ in range(pairs):
            f32.append(_linear_pass(x, w, None))
            b16.append(_linear_pass(x, w, torch.bfloat16))
    # the fastest pass of each is the one that had the cores to itself: on a shared machine the minimum estimates the
    # machine's speed, a median or mean its neighbours' load
    return min(f32), min(b16), min(f32) / min(b16)


def cpu_bf16_check(refresh: bool = False) -> dict[str, Any]:
    """Is bf16 autocast faster than fp32 on this CPU? Measured once per machine (CPU model and torch version), on one
    thread, and cached in ``config.cache_dir()/cpu_bf16.json``; ``refresh=True`` measures again.

    Returns ``{"native", "faster", "speedup", "fp32_ms", "bf16_ms", "cpu", "torch", "shape"}``. A CPU without native
    bf16 is not timed (``speedup`` None): emulated bf16 is known to be several times slower. One thread and the
    fastest of 15 alternating passes make the answer hold on a busy machine (measured here at a load of 5.6 on 2
    cores: 1.97x, 2.29x, 1.98x; a two-thread median under the same load read 0.84x-1.0x).
    """
    from .config import cache_dir
    path = cache_dir() / "cpu_bf16.json"
    if not refresh and str(path) in _CHECKED:  # autocast() asks once per training step: no file read each time
        return _CHECKED[str(path)]
    key = {"cpu": _cpu_name(), "torch": torch.__version__, "shape": list(_CHECK_SHAPE)}
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if all(cached.get(k) == v for k, v in key.items()):
                _CHECKED[str(path)] = cached
                return cached
        except (OSError, ValueError):
            pass
    native = cpu_bf16_native()
    result: dict[str, Any] = {**key, "native": native, "faster": False, "speedup": None, "fp32_ms": None,
                              "bf16_ms": None}
    if native:
        fp32, bf16, speedup = _time_bf16_vs_fp32()
        result.update(fp32_ms=round(fp32 * 1e3, 3), bf16_ms=round(bf16 * 1e3, 3), speedup=round(speedup, 3),
                      faster=speedup >= BF16_MIN_SPEEDUP)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the check is measured again by the next process
        pass
    _CHECKED[str(path)] = result
    return result


def precision_note(device: str | torch.device, precision: str = "auto") -> str:
    """One line saying what ``precision`` resolves to on ``device`` and why (what notebooks and logs print)."""
    dev = resolve(device)
    dtype = autocast_dtype(dev, precision)
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if (precision or "auto").lower() != "auto":
        return f"precision {precision} on {dev.type}: {name} (set explicitly)"
    if dev.type == "cpu":
        c = cpu_bf16_check()
        if not c["native"]:
            return ("precision auto on cpu: fp32 (this CPU has no native bf16: AVX512-BF16 or AMX; emulated bf16 "
                    "is slower)")
        verdict = "bf16" if c["faster"] else f"fp32 (below the {BF16_MIN_SPEEDUP}x bar)"
        return (f"precision auto on cpu: {verdict} — native bf16, measured {c['speedup']:.2f}x fp32's speed on a "
                f"{'x'.join(map(str, c['shape']))} linear layer, forward + backward, one core")
    if dev.type == "mps":
        return "precision auto on mps: fp32 (bf16/fp16 autocast on Apple's GPU is not measured by this course)"
    return f"precision auto on {dev.type}: {name}"


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
    if dev.type == "cpu" and cpu_bf16_check()["faster"]:
        return torch.bfloat16  # native bf16, measured faster on this machine
    return None  # MPS, and CPUs without (fast) native bf16: fp32 unless asked


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
    print(f"device: {dev}; {precision_note(dev, 'auto')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

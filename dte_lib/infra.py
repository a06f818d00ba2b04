"""Infrastructure check: what is this machine, how fast does it multiply matrices, how fast does the course's trainer
actually train on it (tokens/s, peak memory), what model FLOP utilisation (MFU) that is, and how long each roadmap
phase would take here and on named GPUs.

Explained in notebook 05 (month 2: infrastructure). Run it: ``dte infra`` (or ``python -m dte_lib.infra``) prints
the device, the matmul rate and a short training measurement; ``python -m dte_lib.infra bench --json ...`` is the
child process :func:`measure_training_subprocess` starts so peak memory is the training's own.

Definitions:

- **matmul FLOP/s** — ``2·n³`` floating-point operations per ``n×n @ n×n`` product divided by its wall time (median
  of several). It is the ceiling a dense transformer can approach on this device: the "peak" in MFU here.
- **MFU** — model FLOP utilisation (Chowdhery et al. 2022): ``tokens/s × training FLOPs per token / peak FLOP/s``,
  with FLOPs per token from :func:`dte_lib.planner.flops_per_token` (recomputation, padding, data loading all count
  against it; that is the point).
- **peak memory (CPU)** — the training process's peak resident set (:func:`dte_lib.envinfo.peak_rss_bytes`:
  ``ru_maxrss`` on Linux and macOS, the peak working set on Windows) minus its resident set after the model,
  optimizer and batch were built: gradients, AdamW states, activations and allocator slack. On CUDA,
  ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from . import envinfo, planner


def detect_device() -> dict[str, Any]:
    """The device torch will use, with what matters for training speed (bf16 support, threads, memory). The CPU's
    AVX-512 / bf16 flags come from ``/proc/cpuinfo`` on Linux; elsewhere they read as absent."""
    import torch
    info = envinfo.device_info()
    if info["device"] == "mps":
        from .device import cpu_fallback
        cpu_fallback("mps", "notebook 05's measurements (matmul rate, training step, peak memory)",
                     "they time the course trainer on CPU tensors, and peak memory is this process's resident set")
    info["memory_gib"] = envinfo._memory_gib()
    info["cpu_count"] = os.cpu_count()
    if info["device"] == "cuda":
        info["bf16"] = torch.cuda.is_bf16_supported()
    else:
        flags = envinfo.cpu_flags()  # empty off Linux: the flags are then reported as absent
        info["avx512"] = "avx512f" in flags
        info["bf16"] = "avx512_bf16" in flags or "amx_bf16" in flags
        info["cpu_model"] = envinfo.cpu_model()
    return info


def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def measure_matmul(n: int = 1024, dtype: str = "float32", device: str | None = None, repeats: int = 5,
                   inner: int = 3) -> dict[str, Any]:
    """Median FLOP/s of an ``n×n`` matmul in ``dtype`` over ``repeats`` timings of ``inner`` products each."""
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    a @ b  # warm-up: the first call picks kernels and faults in memory
    _sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        rates.append(2.0 * n ** 3 * inner / (time.perf_counter() - t0))
    return {"n": n, "dtype": dtype, "device": device, "threads": torch.get_num_threads(),
            "flops_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


@dataclass
class BenchCfg:
    """One training-speed measurement: model shape, batch and steps."""
    n_layer: int = 2  # blocks of the measured model
    n_embd: int = 128  # width
    vocab_size: int = 2048  # vocabulary (the LM head costs d·V per token: it matters at small widths)
    context: int = 256  # tokens per sequence
    batch: int = 8  # sequences per step
    steps: int = 6  # timed optimizer steps (after warm-up)
    warmup: int = 2  # untimed steps first (allocations, kernel choice)
    bf16: bool = False  # torch.autocast to bf16 (CPU with AVX512-BF16, or GPU)
    threads: int = 0  # torch threads; 0 keeps torch's default
    trainer: bool = True  # time dte_lib.progressive's own train_step (else a plain Hugging Face step)

    def shape(self) -> planner.ModelShape:
        return planner.gpt2(self.n_layer, self.n_embd, self.vocab_size, self.context,
                            n_head=max(1, self.n_embd // 64))


class _VocabOnly:
    """What the trainer asks of a tokenizer to build its model (size and EOS id); the timed step never tokenises."""

    def __init__(self, n: int):
        self.n, self.eos_token_id = n, 0

    def __len__(self) -> int:
        return self.n


def _course_trainer(bc: BenchCfg, out_dir: str):
    """The course's ProgressiveTrainer at ``bc``'s shape on random packed blocks, ready to call ``train_step``."""
    import dataclasses
    import datasets
    import torch
    from . import config, progressive
    tc = dataclasses.replace(config.TrainCfg(), vocab_size=bc.vocab_size, block_size=bc.context, d_model=bc.n_embd,
                             n_head=max(1, bc.n_embd // 64), depths=str(bc.n_layer), batch_size=bc.batch,
                             precision="bf16" if bc.bf16 else "fp32", final_tokens=0, dropout=0.0,
                             tokens_per_stage=bc.batch * bc.context * (bc.warmup + bc.steps))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, bc.vocab_size, (bc.batch * (bc.warmup + bc.steps + 1), bc.context), generator=g).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    trainer = progressive.ProgressiveTrainer(tc, _VocabOnly(bc.vocab_size), ds, ds, out_dir, progress=False,
                                             tensorboard=False)
    trainer._resume_or_start()
    trainer._enter_stage(trainer.stages[0])
    return trainer


def measure_training(bc: BenchCfg, device: str | None = None) -> dict[str, Any]:
    """Train a fresh GPT-2 of ``bc``'s shape for ``bc.steps`` AdamW steps on random tokens; tokens/s and memory.

    With ``bc.trainer`` (the default) each step is the course's own ``ProgressiveTrainer.train_step`` (forward,
    next-token loss, backward, gradient clipping, AdamW with its parameter groups) on packed random blocks — so the
    rate is what a phase's time estimate should use. Without it, a plain Hugging Face step (``labels=input_ids``,
    backward, AdamW) for comparison or for a machine where the course's trainer is not installed.
    """
    if bc.trainer:
        return _measure_course_trainer(bc)
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if bc.threads:
        torch.set_num_threads(bc.threads)
    torch.manual_seed(0)
    m = bc.shape()
    cfg = GPT2Config(n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.n_head, vocab_size=m.vocab_size,
                     n_positions=m.n_positions, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the course trains without dropout
    if device == "cpu":  # fault in torch's code pages and thread pools first, so RSS growth is tensors
        tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=1, vocab_size=64, n_positions=32,
                                          bos_token_id=0, eos_token_id=0, pad_token_id=0))
        _train_step(tiny, torch.optim.AdamW(tiny.parameters()), torch.zeros(2, 32, dtype=torch.long), bc.bf16,
                    device)
        del tiny
    model = GPT2LMHeadModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, m.vocab_size, (bc.batch, bc.context), device=device)
    rss0 = envinfo.rss_bytes() if device == "cpu" else 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, losses = [], []
    for i in range(bc.warmup + bc.steps):
        t0 = time.perf_counter()
        loss = _train_step(model, opt, x, bc.bf16, device)
        if i >= bc.warmup:
            times.append(time.perf_counter() - t0)
            losses.append(loss)
    saved = saved_activation_bytes(model, x, bc.bf16, device)
    step = statistics.median(times)
    tokens = bc.batch * bc.context
    out = {"bench": asdict(bc), "device": device, "threads": torch.get_num_threads(), "step": "plain HF",
           "params": sum(p.numel() for p in model.parameters()), "step_s": step, "tokens_per_s": tokens / step,
           "flops_per_token": planner.flops_per_token(m, bc.context), "loss_first": losses[0],
           "loss_last": losses[-1]}
    out["achieved_flops_per_s"] = out["tokens_per_s"] * out["flops_per_token"]
    if device == "cuda":
        out["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        out["peak_extra_bytes"] = envinfo.peak_rss_bytes() - rss0
    out["saved_activation_bytes"] = saved
    out["gradient_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["adamw_state_bytes"] = sum(t.numel() * t.element_size() for st in opt.state.values()
                                   for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    est = planner.memory_bytes(m, bc.batch, bc.context, act_bytes=2 if bc.bf16 else 4)
    out["estimated_extra_bytes"] = est["gradients"] + est["adamw_states"] + est["activations"]
    out["estimated_activation_bytes"] = est["activations"]
    return out


def _measure_course_trainer(bc: BenchCfg) -> dict[str, Any]:
    import tempfile
    import torch
    if bc.threads:
        torch.set_num_threads(bc.threads)
    m = bc.shape()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = _course_trainer(BenchCfg(n_layer=1, n_embd=64, vocab_size=64, context=32, batch=2, steps=1, warmup=0,
                                        bf16=bc.bf16), tmp + "/warm")
        tiny.train_step(tiny.loader.next_batch(), 1e-3)  # fault in torch's code pages first: RSS growth = tensors
        del tiny
        trainer = _course_trainer(bc, tmp + "/run")
        batches = [trainer.loader.next_batch() for _ in range(bc.warmup + bc.steps)]
        rss0 = envinfo.rss_bytes()
        times, losses = [], []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            out = trainer.train_step(batch, trainer.tc.lr)
            if i >= bc.warmup:
                times.append(time.perf_counter() - t0)
                losses.append(out["loss"])
        peak = envinfo.peak_rss_bytes() - rss0
        model, opt = trainer.model, trainer.opt
        saved = saved_activation_bytes(model, batches[0]["input_ids"], bc.bf16, "cpu")
    step = statistics.median(times)
    out = {"bench": asdict(bc), "device": "cpu", "threads": torch.get_num_threads(), "step": "course trainer",
           "params": sum(p.numel() for p in model.parameters()), "step_s": step,
           "tokens_per_s": bc.batch * bc.context / step, "flops_per_token": planner.flops_per_token(m, bc.context),
           "loss_first": losses[0], "loss_last": losses[-1], "peak_extra_bytes": peak,
           "saved_activation_bytes": saved,
           "gradient_bytes": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
           "adamw_state_bytes": sum(t.numel() * t.element_size() for st in opt.state.values()
                                    for t in st.values() if torch.is_tensor(t) and t.dim() > 0)}
    out["achieved_flops_per_s"] = out["tokens_per_s"] * out["flops_per_token"]
    est = planner.memory_bytes(m, bc.batch, bc.context, act_bytes=2 if bc.bf16 else 4)
    out["estimated_extra_bytes"] = est["gradients"] + est["adamw_states"] + est["activations"]
    out["estimated_activation_bytes"] = est["activations"]
    return out


def _train_step(model, opt, x, bf16: bool, device: str) -> float:
    import torch
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    return float(loss.detach())


def saved_activation_bytes(model, x, bf16: bool = False, device: str = "cpu") -> int:
    """Bytes autograd saves for backward in one forward pass (the quantity the activation formula estimates).

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: each saved tensor's storage once, parameters (and
    their bf16 casts' sources) left out because they are weights, not activations.
    """
    import torch
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.data_ptr() != 0:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
    del loss
    return sum(seen.values())


def measure_training_subprocess(bc: BenchCfg, timeout: float = 300) -> dict[str, Any]:
    """:func:`measure_training` in a fresh Python so the peak resident set is this training's alone."""
    args = [sys.executable, "-m", "dte_lib.infra", "bench", "--json"]
    for k, v in asdict(bc).items():
        if isinstance(v, bool):
            args += [f"--{k}" if v else f"--no-{k}"]
        else:
            args += [f"--{k}", str(v)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(planner_root()), os.environ.get("PYTHONPATH")]))})
    if proc.returncode != 0:
        raise RuntimeError(f"training benchmark failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def planner_root():
    from .config import REPO_ROOT
    return REPO_ROOT


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_per_s: float) -> float:
    """Model FLOP utilisation: useful training FLOP/s over the device's peak."""
    return tokens_per_s * flops_per_token / peak_flops_per_s


def measurement_table(runs: dict[str, dict[str, Any]], peak_flops_per_s: float) -> list[dict[str, Any]]:
    """One row per measured training run (notebook 05): speed, MFU against the matmul peak, and each memory figure
    beside its formula, in MiB."""
    mib = 2 ** 20
    return [{"precision": name, "params": r["params"], "tokens/s": r["tokens_per_s"],
             "MFU vs matmul peak": mfu(r["tokens_per_s"], r["flops_per_token"], peak_flops_per_s),
             "grads+AdamW MiB": (r["gradient_bytes"] + r["adamw_state_bytes"]) / mib,
             "formula 12 B/param MiB": 12 * r["params"] / mib,
             "saved activations MiB": r["saved_activation_bytes"] / mib,
             "formula activations MiB": r["estimated_activation_bytes"] / mib,
             "peak RSS growth MiB": r["peak_extra_bytes"] / mib,
             "formula total MiB": r["estimated_extra_bytes"] / mib} for name, r in runs.items()]


def formula_ratios(run: dict[str, Any]) -> dict[str, float]:
    """Measured over formula for one run: saved activations, and peak resident growth over the formula's total."""
    return {"activations": run["saved_activation_bytes"] / run["estimated_activation_bytes"],
            "peak_rss": run["peak_extra_bytes"] / run["estimated_extra_bytes"]}


def project_phases(rows: Sequence[dict[str, Any]], achieved_flops_per_s: float, gpus: dict[str, planner.Gpu],
                   utilisation: float, machine: str = "this machine") -> list[dict[str, Any]]:
    """Hours per phase (rows from :func:`planner.phase_table`) on this machine at its *measured* training rate and
    on each GPU at ``utilisation`` of its published peak."""
    out = []
    for r in rows:
        flops = r["pflops"] * 1e15
        row = {"phase": r["phase"], "pflops": r["pflops"], machine: flops / achieved_flops_per_s / 3600}
        for g in gpus.values():
            row[g.name] = planner.gpu_hours(flops, g.peak_bf16_tflops, utilisation)
        out.append(row)
    return out


def plot_projection(rows: Sequence[dict[str, Any]], title: str = "hours per roadmap phase"):
    """Grouped bars (log scale): each phase's hours on each machine."""
    import matplotlib.pyplot as plt
    machines = [k for k in rows[0] if k not in ("phase", "pflops")]
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.8 / len(machines)
    for j, mname in enumerate(machines):
        ax.bar([i + j * w for i in range(len(rows))], [r[mname] for r in rows], w, label=mname)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(rows))], [r["phase"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("hours (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dte infra", description="device, matmul FLOP/s and training throughput")
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("bench", help="one training measurement (what measure_training_subprocess runs)")
    for k, v in asdict(BenchCfg()).items():
        if isinstance(v, bool):
            b.add_argument(f"--{k}", action=argparse.BooleanOptionalAction, default=v)
        else:
            b.add_argument(f"--{k}", type=type(v), default=v)
    b.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        bc = BenchCfg(**{k: getattr(args, k) for k in asdict(BenchCfg())})
        res = measure_training(bc)
        print(json.dumps(res) if args.json else json.dumps(res, indent=2))
        return 0
    print(json.dumps(detect_device(), indent=2))
    mm = measure_matmul()
    print(f"matmul fp32 n=1024: {mm['flops_per_s'] / 1e9:.1f} GFLOP/s")
    res = measure_training(BenchCfg())
    print(f"training {res['tokens_per_s']:.0f} tokens/s, MFU {mfu(res['tokens_per_s'], res['flops_per_token'], mm['flops_per_s']):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

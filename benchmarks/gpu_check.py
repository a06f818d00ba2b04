"""One-command check of the course's trainer on a GPU: CPU/GPU agreement, tokens/s and MFU, memory vs the planner,
and FSDP2 under torchrun with nccl. Prints a markdown block for benchmarks/RESULTS-gpu.md.

    PYTHONPATH=. python benchmarks/gpu_check.py            # on a GPU machine (<= 10 minutes on one GPU)
    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run  # every code path on the CPU in < 60 s (tiny, gloo)

What it runs (every step is the course's own ``ProgressiveTrainer.train_step``, on random packed blocks):

(a) **agreement** — a tiny GPT-2 trains ``--parity-steps`` steps from one seed on the CPU (fp32) and on the GPU:
    fp32 (TF32 matmuls), fp32 with 2-way gradient accumulation + activation checkpointing, and the preset-style
    ``precision=auto`` (bf16 autocast). Each run's per-step losses are compared with the CPU's. Tolerances:
    ``FP32_TOL`` absolute for the fp32 runs (TF32 rounds matmul inputs to a 10-bit mantissa, ~1e-3 relative per
    product; over a few AdamW steps that moves a loss of ~6 nats by well under 1e-2) and ``BF16_TOL`` for bf16
    autocast (8-bit mantissa). A missing all-reduce, a batch on the wrong device or a wrong accumulation scale moves
    the loss by far more (>0.1 within 5 steps at lr 3e-3).
(b) **throughput** — tokens/s and MFU (PaLM FLOPs per token, dte_lib.planner, over the GPU's datasheet dense bf16
    peak, ``planner.DATASHEET_PEAKS``) for the 12- and 24-layer GPT-2 shapes (width 768, vocabulary 50,257,
    context 1024) at the micro-batch the planner picks for this GPU, bf16 autocast, eager; the 12-layer shape again
    with ``train.compile`` (compile time reported apart) and the 24-layer one with activation checkpointing.
(c) **memory** — ``torch.cuda.max_memory_allocated`` of each (b) run against ``planner.plan_batch``'s estimate.
(d) **FSDP2** — with >= 2 GPUs: ``torchrun`` of ``dte_lib.distributed`` (ci preset shapes, ``--strategy fsdp``,
    ``--device cuda``, bf16 mixed precision) on up to 8 GPUs under nccl, against one process on one GPU.

``--dry-run`` runs all of it on the CPU with tiny shapes: "GPU" runs use the CPU, (d) is 2 gloo ranks; numbers in
the dry-run block only show that every path runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dte_lib import config, planner, progressive  # noqa: E402
from dte_lib import device as device_mod  # noqa: E402

FP32_TOL = 1e-2  # nats, absolute, per step: CPU fp32 vs GPU fp32 (TF32) — see the module docstring
BF16_TOL = 5e-2  # nats, absolute, per step: CPU fp32 vs GPU bf16 autocast


class _Vocab:
    """What the trainer asks of a tokenizer to build its model: its size and the EOS id."""

    def __init__(self, n: int):
        self.n, self.eos_token_id = n, 0

    def __len__(self) -> int:
        return self.n


@dataclasses.dataclass
class Shape:
    name: str
    n_layer: int
    d_model: int
    vocab: int
    context: int

    def planner_shape(self) -> planner.ModelShape:
        return planner.gpt2(self.n_layer, self.d_model, self.vocab, self.context, n_head=max(1, self.d_model // 64))


def make_trainer(shape: Shape, batch: int, steps: int, device: Any, out_dir: Path, seed: int = 0,
                 **train: Any) -> tuple[progressive.ProgressiveTrainer, list[dict[str, torch.Tensor]]]:
    """The course's trainer at ``shape`` on random blocks (same seed, same blocks on every device) and its batches."""
    import datasets
    tc = dataclasses.replace(config.TrainCfg(), vocab_size=shape.vocab, block_size=shape.context,
                             d_model=shape.d_model, n_head=max(1, shape.d_model // 64), depths=str(shape.n_layer),
                             batch_size=batch, final_tokens=0, dropout=0.0, lr=3e-3, warmup_steps=1,
                             tokens_per_stage=batch * shape.context * steps, **train)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, shape.vocab, (batch * (steps + 1), shape.context), generator=g).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    tr = progressive.ProgressiveTrainer(tc, _Vocab(shape.vocab), ds, ds, out_dir, seed=seed, progress=False,
                                        tensorboard=False, device=device)
    tr._resume_or_start()
    tr._enter_stage(tr.stages[0])
    return tr, [tr.loader.next_batch() for _ in range(steps)]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------------------------------------- (a) agreement
def check_agreement(gpu: torch.device, steps: int, tmp: Path) -> dict[str, Any]:
    shape = Shape("tiny", 2, 64, 512, 64)
    label = str(gpu) if gpu.type == "cuda" else "cpu-as-device"
    auto = device_mod.autocast_dtype(gpu, "auto")
    runs = {f"{label} fp32": (gpu, {"precision": "fp32"}),
            f"{label} fp32, accum 2 + activation ckpt": (gpu, {"precision": "fp32", "grad_accum": 2,
                                                               "activation_checkpointing": True}),
            f"{label} precision auto ({str(auto).replace('torch.', '') if auto else 'fp32'})":
                (gpu, {"precision": "auto"})}
    if gpu.type == "cpu":  # dry run: also run the bf16-autocast and fp16 + GradScaler code paths on the CPU
        runs["cpu bf16 autocast"] = ("cpu", {"precision": "bf16"})
    ref_tr, ref_batches = make_trainer(shape, 8, steps, "cpu", tmp / "ref", precision="fp32")
    ref = [ref_tr.train_step(b, ref_tr.tc.lr)["loss"] for b in ref_batches]
    rows = []
    for i, (name, (dev, kw)) in enumerate(runs.items()):
        tr, batches = make_trainer(shape, 8, steps, dev, tmp / f"agree-{i}", **kw)
        if next(tr.model.parameters()).device.type != torch.device(dev).type:
            raise RuntimeError(f"{name}: the model is on {next(tr.model.parameters()).device}, not {dev}")
        ls = [tr.train_step(b, tr.tc.lr)["loss"] for b in batches]
        diff = max(abs(a - b) for a, b in zip(ref, ls))
        tol = FP32_TOL if device_mod.autocast_dtype(dev, kw["precision"]) is None else BF16_TOL
        rows.append({"run": name, "max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol,
                     "first_loss": ls[0], "last_loss": ls[-1]})
    return {"steps": steps, "cpu_losses": ref, "rows": rows, "ok": all(r["ok"] for r in rows)}


# ---------------------------------------------------------------------------------------------- (b)+(c) speed
def measure(shape: Shape, dev: torch.device, micro: int, steps: int, warmup: int, tmp: Path, peak_tflops: float | None,
            **train: Any) -> dict[str, Any]:
    if dev.type == "cuda":
        gc.collect()  # the previous run's trainer, so that its memory is not counted as this one's base
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    tr, batches = make_trainer(shape, micro, warmup + steps, dev, tmp / f"{shape.name}-{len(os.listdir(tmp))}",
                               precision="auto", **train)
    t_warm = time.perf_counter()
    times, losses = [], []
    for i, b in enumerate(batches):
        _sync(dev)
        t0 = time.perf_counter()
        out = tr.train_step(b, tr.tc.lr)
        _sync(dev)
        if i == warmup - 1:
            t_warm = time.perf_counter() - t_warm
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(out["loss"])
    step_s = statistics.median(times)
    tokens_per_s = micro * shape.context / step_s
    m = shape.planner_shape()
    fpt = planner.flops_per_token(m, shape.context)
    act = 2 if device_mod.autocast_dtype(dev, "auto") else 4
    est = planner.plan_batch(m, micro, shape.context, 1e30, act_bytes=act,
                             checkpointing=train.get("activation_checkpointing", False))["estimated_bytes"]
    row = {"shape": shape.name, "layers": shape.n_layer, "params_M": planner.param_count(m) / 1e6,
           "micro_batch": micro, "variant": ", ".join(k for k, v in train.items() if v) or "eager",
           "warmup_s": t_warm, "step_s": step_s, "tokens_per_s": tokens_per_s,
           "tflops": tokens_per_s * fpt / 1e12, "mfu": tokens_per_s * fpt / (peak_tflops * 1e12) if peak_tflops
           else None, "predicted_gib": est / planner.GIB, "loss_last": losses[-1]}
    if dev.type == "cuda":  # the training's own peak: weights, gradients, AdamW states, activations, workspaces
        row["peak_gib"] = (torch.cuda.max_memory_allocated(dev) - base) / planner.GIB
    return row


def measure_or_halve(shape: Shape, dev: torch.device, micro: int, *args: Any, **kw: Any) -> dict[str, Any]:
    """:func:`measure`; if the planner's micro-batch runs out of memory, record that and retry at half of it."""
    while True:
        try:
            return measure(shape, dev, micro, *args, **kw)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"{shape.name}: out of memory at micro-batch {micro} (planner's choice was too large)",
                  file=sys.stderr)
            if micro == 1:
                raise
            micro //= 2


def check_speed(gpu: torch.device, dry: bool, tmp: Path, compile_: bool) -> dict[str, Any]:
    if gpu.type == "cuda":
        name = torch.cuda.get_device_name(gpu)
        peak = planner.datasheet_peak(name)
        mem = planner.device_memory_bytes(gpu)
    else:
        name, peak, mem = platform.processor() or "cpu", None, 4 * planner.GIB
    shapes = ([Shape("12L", 2, 64, 512, 64), Shape("24L", 3, 64, 512, 64)] if dry else
              [Shape("12L", 12, 768, 50_257, 1024), Shape("24L", 24, 768, 50_257, 1024)])
    steps, warmup = (2, 1) if dry else (10, 3)
    rows = []
    for sh in shapes:
        plan = planner.plan_batch(sh.planner_shape(), 64, sh.context, mem)
        micro = 4 if dry else plan["micro_batch"]
        pk = peak[0] if peak else None
        rows.append(measure_or_halve(sh, gpu, micro, steps, warmup, tmp, pk))
        rows[-1]["planned_micro_batch"] = micro
        if sh.name == "12L" and compile_:
            rows.append(measure_or_halve(sh, gpu, rows[-1]["micro_batch"], steps, warmup, tmp, pk, compile=True))
        if sh.name == "24L":
            rows.append(measure_or_halve(sh, gpu, rows[-1]["micro_batch"], steps, warmup, tmp, pk,
                                         activation_checkpointing=True))
    return {"device_name": name, "peak_tflops": peak[0] if peak else None, "peak_source": peak[1] if peak else
            "not in planner.DATASHEET_PEAKS", "memory_gib": mem / planner.GIB, "rows": rows}


# ---------------------------------------------------------------------------------------------- (d) FSDP2
def check_fsdp(gpu: torch.device, tmp: Path) -> dict[str, Any]:
    from dte_lib import distributed as D
    count = min(torch.cuda.device_count(), 8) if gpu.type == "cuda" else 2
    if count < 2:
        return {"skipped": f"{count} GPU: FSDP2 needs at least 2"}
    n = 2 ** (count.bit_length() - 1)  # a power of two, so it divides the global batch
    # ci shapes, a growth 1 -> 2 layers, global batch 16 in 2 micro-batches per rank, activation checkpointing:
    # sharding, mixed precision, accumulation without gradient sync, recomputation and growth under FSDP2 at once
    sets = {"train.depths": "1,2", "train.batch_size": "16", "train.tokens_per_stage": "2048",
            "train.final_tokens": "0", "train.log_every": "1", "train.val_every": "0", "train.ckpt_every": "0",
            "train.grad_accum": "2", "train.activation_checkpointing": "true", "train.wandb": "off",
            "train.precision": "auto" if gpu.type == "cuda" else "fp32"}
    base = ["--preset", "ci", "--run-dir", str(tmp / "dist-run"), "--no-progress", "--device", gpu.type]
    for k, v in sets.items():
        base += ["--set", k, v]
    # the one-process reference first, in this process (cuda:0): it also fits the tokenizer and fills the
    # tokenised cache in the run directory, which the ranks then read instead of redoing it
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the markdown block
        D.main(base + ["--out-dir", str(tmp / "single")])
    t0 = time.perf_counter()
    D.run_torchrun(n, base + ["--out-dir", str(tmp / "fsdp"), "--strategy", "fsdp"], timeout=300)
    t_fsdp = time.perf_counter() - t0
    fsdp, single = D.read_run(tmp / "fsdp"), D.read_run(tmp / "single")
    diff = max(abs(a - b) for a, b in zip(fsdp["losses"], single["losses"]))
    tol = BF16_TOL if gpu.type == "cuda" else FP32_TOL
    return {"world_size": fsdp["world_size"], "backend": fsdp["backend"], "device": fsdp.get("device"),
            "strategy": fsdp["strategy"], "steps": fsdp["steps"], "seconds": t_fsdp,
            "max_abs_loss_diff_vs_one_process": diff, "tolerance": tol, "ok": diff <= tol,
            "val_loss": fsdp["val_loss"]}


# ---------------------------------------------------------------------------------------------- report
def _f(v: Any, fmt: str = ".3g") -> str:
    return "—" if v is None else format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def markdown(res: dict[str, Any]) -> str:
    a, s, d = res["agreement"], res["speed"], res["fsdp"]
    lines = [f"### gpu_check {'(DRY RUN on the CPU: paths only, numbers meaningless)' if res['dry_run'] else ''}",
             "", f"- device: **{s['device_name']}** ({_f(s['memory_gib'], '.1f')} GiB), torch {res['torch']}, "
             f"CUDA {res['cuda']}, {res['n_gpus']} GPU(s); datasheet peak {_f(s['peak_tflops'])} TFLOP/s "
             f"({s['peak_source']})", f"- date {res['date']}, wall time {res['wall_s']:.0f} s, load {res['load']}",
             "", f"**(a) CPU vs device, {a['steps']} steps, same seed** (CPU fp32 losses "
             f"{', '.join(_f(x, '.4f') for x in a['cpu_losses'])})", "",
             "| run | max abs loss diff vs CPU | tolerance | ok |", "|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['max_abs_diff']:.2e} | {r['tolerance']:g} | {'yes' if r['ok'] else 'NO'} |"
              for r in a["rows"]]
    lines += ["", "**(b) throughput and (c) memory** (bf16 autocast where supported, global batch 64 → planner's "
              "micro-batch)", "",
              "| shape | params | micro-batch | variant | step s | tokens/s | TFLOP/s | MFU | peak GiB | "
              "planner GiB | warm-up s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['shape']} ({r['layers']} layers) | {r['params_M']:.1f}M | {r['micro_batch']} | "
                     f"{r['variant']} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | "
                     f"{_f(r['mfu'], '.1%')} | {_f(r.get('peak_gib'), '.1f')} | {r['predicted_gib']:.1f} | "
                     f"{r['warmup_s']:.1f} |")
    lines += ["", "**(d) FSDP2 under torchrun** (global batch 16, 2 micro-batches per rank, activation checkpointing, growth "
              "1 → 2 layers)", ""]
    if "skipped" in d:
        lines.append(f"skipped: {d['skipped']}")
    else:
        lines.append(f"{d['world_size']} ranks, backend {d['backend']}, device {d['device']}, {d['steps']} steps in "
                     f"{d['seconds']:.0f} s; max |loss diff| vs one process {d['max_abs_loss_diff_vs_one_process']:.2e}"
                     f" (tolerance {d['tolerance']:g}): {'ok' if d['ok'] else 'FAILED'}")
    lines.append("")
    lines.append(f"overall: {'PASS' if res['ok'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every path on the CPU with tiny shapes (< 60 s)")
    ap.add_argument("--parity-steps", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.dry_run:
        gpu = torch.device("cpu")
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        import functools
        torch.compile = functools.partial(torch.compile, backend="eager")  # graph capture only: no C++ build
    else:
        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA GPU here — run it on a GPU machine, or use --dry-run",
                  file=sys.stderr)
            return 2
        gpu = device_mod.configure("cuda:0")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        res: dict[str, Any] = {"dry_run": args.dry_run, "torch": torch.__version__, "cuda": torch.version.cuda,
                               "n_gpus": torch.cuda.device_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                           time.gmtime()),
                               "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
        print(f"(a) agreement ... [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        res["agreement"] = check_agreement(gpu, 3 if args.dry_run else args.parity_steps, tmp)
        print(f"(b, c) throughput and memory ... [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        res["speed"] = check_speed(gpu, args.dry_run, tmp, compile_=not args.no_compile)
        print(f"(d) FSDP2 ... [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        res["fsdp"] = check_fsdp(gpu, tmp)
        print(f"done [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        res["wall_s"] = time.perf_counter() - t0
        res["ok"] = res["agreement"]["ok"] and res["fsdp"].get("ok", True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print(markdown(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

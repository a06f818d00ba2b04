"""The course's progressive trainer under ``torchrun``: DDP, or FSDP2 (``fully_shard``) for models that do not fit
one device. Not a second trainer — :class:`dte_lib.progressive.ProgressiveTrainer` does every step; this module
starts the process group, prepares data once, and hands the trainer a ``wrap_model`` callable.

Explained in notebook 12 (months 13–18: scaling). Run it (2 processes on one machine, CPU, gloo):

    torchrun --standalone --nproc_per_node=2 -m dte_lib.distributed --preset ci --out-dir outputs/dist

Definitions:

- **world size W / rank r** — how many processes train together and which one this is. ``torchrun`` starts them
  and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` for each.
- **backend** — the library that moves tensors between processes: ``gloo`` on CPU, ``nccl`` between NVIDIA GPUs.
  It follows the preset's ``device`` (``--device``): on CUDA each rank trains on ``cuda:LOCAL_RANK`` and talks nccl;
  on the CPU, gloo. ``DTE_DIST_BACKEND`` overrides the choice.
- **mixed precision under FSDP2** — on a GPU, ``fully_shard`` gets a ``MixedPrecisionPolicy``: parameters are
  all-gathered in bf16 (fp16 where the GPU lacks bf16) for compute, gradients reduce-scattered in fp32, and the
  sharded fp32 master weights are what AdamW updates and checkpoints hold.
- **DDP** (DistributedDataParallel) — every rank holds the whole model; each computes gradients on its slice of the
  global batch; an all-reduce averages them, so every rank takes the same AdamW step. The global batch is the
  preset's ``train.batch_size`` at every W (``PackedLoader`` gives rank r its r-th slice), so a run at W=2 follows
  the same trajectory as a run at W=1 up to floating-point summation order — the test checks that.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``) — each rank stores 1/W of every parameter, gradient and AdamW
  state (ZeRO-3); layers are all-gathered just before use and freed after. Memory per device for parameter state
  drops from 16·N bytes to 16·N/W (see ``planner.memory_bytes(..., shards=W)``), for more communication.
- **rank-0 I/O** — only rank 0 logs and writes checkpoints; checkpoints hold the *unwrapped, full* state dict and
  the optimizer state by parameter name, so a checkpoint written at one W resumes at any other.

Multi-node (two machines with 8 GPUs each; run the same command on both, with the first one's address):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 \\
        --rdzv_id=dte-scale -m dte_lib.distributed --preset full --out-dir /shared/dte

``--rdzv_endpoint`` is where the ranks meet (any reachable host:port, usually node 0); ``--rdzv_id`` names the job so
two jobs on one cluster do not meet each other; ``--out-dir`` must be a filesystem every node sees (rank 0 writes,
every rank reads on resume). :func:`launch_command` builds these command lines.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import progressive

STRATEGIES = ("ddp", "fsdp")


class StopTraining(Exception):
    """Raised from the trainer's ``on_step`` hook to stop after a step (simulates an interrupted job)."""


# ---------------------------------------------------------------------------------------------- process group
def init(backend: str | None = None, device: Any = "cpu") -> dict[str, Any]:
    """Join the process group torchrun set up (no-op for a plain ``python`` run); returns rank, world, device.

    ``device`` is the preset's setting: CUDA means this rank trains on ``cuda:LOCAL_RANK`` with the nccl backend;
    anything else trains on the CPU with gloo (``backend`` or ``$DTE_DIST_BACKEND`` override the backend)."""
    import torch
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend, device = placement(device, local, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    return {"rank": rank, "world_size": world, "local_rank": local, "device": str(device),
            "backend": dist.get_backend() if dist.is_initialized() else None}


def placement(device: Any, local_rank: int, backend: str | None = None) -> tuple[str, Any]:
    """(backend, torch device) for one rank: ``nccl`` and ``cuda:LOCAL_RANK`` when the setting resolves to CUDA,
    else ``gloo`` and the CPU; ``backend`` or ``$DTE_DIST_BACKEND`` override the backend."""
    import torch
    from .device import cpu_fallback, resolve
    dev = resolve(device)
    on_gpu = dev.type == "cuda"
    if dev.type == "mps" and local_rank == 0:
        cpu_fallback(dev, "the distributed trainer", "torch.distributed has no Apple GPU backend (gloo works on CPU "
                     "tensors); the one-process trainer uses mps")
    backend = backend or os.environ.get("DTE_DIST_BACKEND") or ("nccl" if on_gpu else "gloo")
    return backend, torch.device("cuda", local_rank) if on_gpu or backend == "nccl" else torch.device("cpu")


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- wrapping
def wrapper(strategy: str) -> Callable | None:
    """The ``wrap_model`` callable the trainer applies at every stage (after each growth): DDP or FSDP2."""
    import torch.distributed as dist
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {STRATEGIES}")
    if not (dist.is_available() and dist.is_initialized()):
        return None  # one process: nothing to wrap

    if strategy == "ddp":
        def wrap(module):
            from torch.nn.parallel import DistributedDataParallel as DDP
            from .device import model_device
            # DDP broadcasts rank 0's weights at construction, so every rank starts each stage identical
            dev = model_device(module)
            return DDP(module, device_ids=[dev] if dev.type == "cuda" else None)
        return wrap

    return shard_fsdp2


def shard_fsdp2(module, mp_policy: Any = None):
    """FSDP2 in place: each block its own shard group (all-gathered one at a time in forward and backward, freed
    after), then the root (embeddings, final norm, tied head). A module already sharded is returned as it is.
    ``mp_policy`` is a ``MixedPrecisionPolicy`` (see :func:`mixed_precision`) or None for fp32 throughout."""
    from torch.distributed.fsdp import FSDPModule, fully_shard
    kw = {"mp_policy": mp_policy} if mp_policy is not None else {}
    if not isinstance(module, FSDPModule):
        for block in module.transformer.h:
            fully_shard(block, **kw)
        fully_shard(module, **kw)
    return module


def mixed_precision(device: Any, precision: str) -> Any:
    """FSDP2's ``MixedPrecisionPolicy`` for a device and ``train.precision``: compute (all-gathered parameters) in
    the autocast dtype, gradients reduced in fp32; None where training is fp32 (the CPU, or precision fp32)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from .device import autocast_dtype
    dtype = autocast_dtype(device, precision)
    if dtype is None or torch.device(device).type == "cpu":
        return None
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


class _NamedStates:
    """Just enough of an optimizer for ``checkpoint.optimizer_state_by_name``: full moments keyed by name."""

    def __init__(self, states: dict[str, dict[str, Any]]):
        import torch
        keys = {name: torch.empty(0) for name in states}
        self.param_groups = [{"names": list(states), "params": list(keys.values())}]
        self.state = {keys[name]: st for name, st in states.items()}


class FSDPTrainer(progressive.ProgressiveTrainer):
    """The progressive trainer with FSDP2: identical steps; only three things change, because the parameters are
    sharded DTensors — growth and export gather the full model first (:meth:`full_model`, every rank takes part),
    checkpoints gather the full model and optimizer moments so rank 0 writes the same files as one process would,
    and moments loaded from a checkpoint are re-sharded like their parameters."""

    def __init__(self, *args, **kwargs):
        kwargs["wrap_model"] = self._shard
        super().__init__(*args, **kwargs)

    def _param_shards(self) -> int:
        return progressive._world_size()

    def _shard(self, module):
        from torch.distributed.tensor import DTensor, distribute_tensor
        module = shard_fsdp2(module, mixed_precision(self.device, self.tc.precision))
        params = dict(module.named_parameters())
        for name, st in self._carry.items():  # full tensors from a checkpoint -> shards matching the parameter
            p = params.get(name)
            if not isinstance(p, DTensor):
                continue
            for k, v in st.items():
                if not isinstance(v, DTensor) and v.ndim > 0 and tuple(v.shape) == tuple(p.shape):
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
        return module

    def full_model(self):
        from torch.distributed.fsdp import FSDPModule
        from transformers import GPT2LMHeadModel
        if not isinstance(self.model, FSDPModule):
            return self.model
        state = full_state_dict(self.model)  # collective: all-gathers every shard
        full = GPT2LMHeadModel(self.model.config)
        full.load_state_dict(state)
        full.generation_config = self.model.generation_config
        return full

    def _save_state(self) -> None:
        from torch.distributed.fsdp import FSDPModule
        from . import checkpoint as ckpt
        if not isinstance(self.model, FSDPModule):
            return super()._save_state()
        full = self.full_model()
        states = {name: {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in st.items()}
                  for name, st in ckpt.optimizer_state_by_name(self.opt).items()}
        if not self.main:
            return None
        model, opt = self.model, self.opt
        self.model, self.opt = full, _NamedStates(states)
        try:
            return super()._save_state()
        finally:
            self.model, self.opt = model, opt


# ---------------------------------------------------------------------------------------------- training
def train(cfg, run_dir: str | Path, out_dir: str | Path, strategy: str = "ddp", progress: bool = True,
          stop_after_step: int | None = None) -> dict[str, Any]:
    """Run (or resume) the progressive trainer in this process group; returns a summary (rank 0 writes it).
    Each rank trains on the device :func:`init` chose from ``cfg.device`` (``cuda:LOCAL_RANK`` + nccl on GPUs)."""
    import torch
    info = init(device=cfg.device)
    rank, world = info["rank"], info["world_size"]
    if world == 1:
        torch.set_num_threads(cfg.threads)
    # rank 0 fits the tokenizer and fills the tokenised cache; the others then read both from disk
    prep = None
    if rank == 0:
        prep = progressive.prepare(cfg, run_dir)
    barrier()
    if rank != 0:
        prep = progressive.prepare(cfg, run_dir)

    def on_step(step: int) -> None:
        if stop_after_step is not None and step >= stop_after_step:
            raise StopTraining(step)

    common = dict(seed=cfg.seed, progress=progress and rank == 0, tensorboard=rank == 0, on_step=on_step,
                  device=info["device"])
    if strategy == "fsdp" and world > 1:
        trainer = FSDPTrainer(cfg.train, prep["tokenizer"], prep["train"], prep["val"], out_dir, **common)
    else:
        trainer = progressive.ProgressiveTrainer(cfg.train, prep["tokenizer"], prep["train"], prep["val"], out_dir,
                                                 wrap_model=wrapper(strategy), **common)
    start_tokens = _saved_tokens(Path(out_dir))
    t0 = time.perf_counter()
    stopped = None
    try:
        history = trainer.run()
    except StopTraining as e:
        stopped = int(e.args[0])
        history = progressive.read_history(out_dir)
    seconds = time.perf_counter() - t0
    barrier()
    summary = {"world_size": world, "strategy": strategy if world > 1 else "single", "backend": info["backend"],
               "device": info["device"],
               "steps": trainer.global_step, "tokens": trainer.tokens, "seconds": seconds,
               "tokens_per_s": (trainer.tokens - start_tokens) / max(seconds, 1e-9), "resumed_from_tokens": start_tokens,
               "stopped_at": stopped, "val_loss": next((r["val_loss"] for r in reversed(history)
                                                        if r.get("event") == "stage_end"), None)}
    if rank == 0:
        (Path(out_dir) / "dist_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _saved_tokens(out_dir: Path) -> int:
    """Tokens already trained according to the latest checkpoint (0 for a fresh run): tokens/s counts only ours."""
    from . import checkpoint as ckpt
    path = ckpt.latest(out_dir / "train" / "state")
    return json.loads((path / "state.json").read_text())["tokens"] if path else 0


def full_state_dict(model) -> dict[str, Any]:
    """The model's full (unsharded) state dict on every rank: plain ``state_dict()`` for DDP or one process,
    an all-gather of each DTensor for FSDP2 (collective: call it on every rank)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return out


# ---------------------------------------------------------------------------------------------- launching
def torchrun_bin() -> str:
    """The ``torchrun`` next to this Python (the venv's), so the children import this checkout's packages."""
    cand = Path(sys.executable).with_name("torchrun")
    return str(cand) if cand.exists() else "torchrun"


def launch_command(nproc: int, args: Sequence[str], nnodes: int = 1, rdzv_endpoint: str | None = None,
                   rdzv_id: str = "dte-scale", executable: str | None = None) -> list[str]:
    """The torchrun command line: ``--standalone`` on one machine, c10d rendezvous across ``nnodes`` machines.
    ``executable`` defaults to this venv's torchrun (pass "torchrun" to print a portable command)."""
    cmd = [executable or torchrun_bin()]
    if nnodes == 1:
        cmd += ["--standalone", f"--nproc_per_node={nproc}"]
    else:
        if not rdzv_endpoint:
            raise ValueError("multi-node needs rdzv_endpoint=HOST:PORT of a machine every node can reach")
        cmd += [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    return cmd + ["-m", "dte_lib.distributed", *args]


def run_torchrun(nproc: int, args: Sequence[str], timeout: float = 300, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """Start ``torchrun --standalone --nproc_per_node=nproc -m dte_lib.distributed ARGS`` and wait (bounded)."""
    from .config import REPO_ROOT
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    proc = subprocess.run(launch_command(nproc, args), capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_single(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The same entry point as one plain process (world size 1): the reference the distributed run must match."""
    from .config import REPO_ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "dte_lib.distributed", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"single-process run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def compare_checkpoints(dir_a: str | Path, dir_b: str | Path) -> dict[str, float]:
    """Largest absolute and relative weight difference between two HF model directories (safetensors)."""
    from safetensors.torch import load_file
    a = load_file(str(Path(dir_a) / "model.safetensors"))
    b = load_file(str(Path(dir_b) / "model.safetensors"))
    if a.keys() != b.keys():
        raise ValueError(f"{dir_a} and {dir_b} hold different tensors")
    max_abs = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    scale = max(float(a[k].float().abs().max()) for k in a)
    return {"max_abs": max_abs, "max_rel_to_largest_weight": max_abs / scale, "tensors": len(a)}


def demo_args(cfg, run_dir: str | Path, out_dir: str | Path, strategy: str | None = None) -> list[str]:
    """Arguments for notebook 12's run: the preset's trainer with ``scale.dist_depths`` and ``scale.dist_steps``
    optimizer steps split over the stages, no final phase, fp32 (so one process and W processes can be compared
    tightly: bf16 autocast would add its own rounding differences)."""
    from .config import as_list
    depths = as_list(cfg.scale.dist_depths)
    per_stage = max(1, cfg.scale.dist_steps // len(depths)) * cfg.train.batch_size * cfg.train.block_size
    sets = {"train.depths": ",".join(map(str, depths)), "train.tokens_per_stage": str(per_stage),
            "train.final_tokens": "0", "train.precision": "fp32", "train.log_every": "1", "train.val_every": "0"}
    args = ["--preset", cfg.name, "--run-dir", str(run_dir), "--out-dir", str(out_dir), "--no-progress"]
    for k, v in sets.items():
        args += ["--set", k, v]
    return args + (["--strategy", strategy] if strategy else [])


def read_run(out_dir: str | Path) -> dict[str, Any]:
    """A finished run's summary and its per-step global-batch losses."""
    out_dir = Path(out_dir)
    rows = progressive.read_history(out_dir)
    return {**json.loads((out_dir / "dist_summary.json").read_text()),
            "losses": [r["loss"] for r in rows if "loss" in r and "event" not in r],
            "growth_steps": [r["step"] for r in rows if r.get("event") == "growth"]}


def plot_runs(runs: dict[str, dict[str, Any]], title: str = "one process vs torchrun, same global batch"):
    """Loss per step of each run (they should lie on top of each other) and their difference."""
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = list(runs)
    for name, style in zip(names, ("-", "--", ":")):
        ax.plot(range(1, len(runs[name]["losses"]) + 1), runs[name]["losses"], style, label=name)
    for g in runs[names[0]].get("growth_steps", []):
        ax.axvline(g, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (global batch)")
    ax.legend()
    ax.grid(alpha=0.3)
    ref = runs[names[0]]["losses"]
    for name in names[1:]:
        bx.semilogy(range(1, len(ref) + 1), [abs(a - b) + 1e-12 for a, b in zip(ref, runs[name]["losses"])],
                    label=f"|{names[0]} - {name}|")
    bx.set_xlabel("optimizer step")
    bx.set_ylabel("absolute loss difference")
    bx.legend()
    bx.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- CLI
def _parse_overrides(preset: str | None, pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``--set KEY VALUE`` pairs as typed values: a string field keeps the text ("2" stays "2" for depths)."""
    from . import config
    base = config.load(preset)
    out = {}
    for key, text in pairs:
        target = base
        for part in key.split("."):
            target = getattr(target, part, None)
        if isinstance(target, str):
            out[key] = text
            continue
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    ap = argparse.ArgumentParser(prog="python -m dte_lib.distributed",
                                 description="the progressive trainer under torchrun (DDP or FSDP2)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--run-dir", default=None, help="where the tokenizer and tokenised cache live")
    ap.add_argument("--out-dir", required=True, help="train/, checkpoints/, tb/ and dist_summary.json go here")
    ap.add_argument("--strategy", default=None, help="ddp | fsdp (default: the preset's scale.strategy)")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="override a preset field, e.g. --set train.precision fp32")
    ap.add_argument("--stop-after-step", type=int, default=None,
                    help="stop after this global step (after its checkpoint, if one is due): simulates a crash")
    ap.add_argument("--no-progress", action="store_true")
    from . import device as device_mod
    device_mod.add_argument(ap)
    args = ap.parse_args(argv)
    cfg, run_dir = config.setup(args.preset, args.run_dir, _parse_overrides(args.preset, args.set))
    cfg.device = args.device or cfg.device
    device_mod.cli_resolve(cfg.device, "python -m dte_lib.distributed")
    try:
        summary = train(cfg, run_dir, args.out_dir, args.strategy or cfg.scale.strategy,
                        progress=not args.no_progress, stop_after_step=args.stop_after_step)
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

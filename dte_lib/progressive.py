"""ProgressiveTrainer: grow a GPT-2 from 1 layer to N in stages, resumable at any step.

Definitions:
- a *stage* = (depth, token budget, trainable policy, learning rate, kind). ``grow`` stages first grow the model to
  their depth with the growth operator (dte_lib.model.grow); ``joint`` stages train every layer at the current
  depth (the roadmap's "joint fine-tuning every 4 layers"); the ``final`` stage is the end-to-end phase.
- each stage has its own learning-rate schedule: a linear (re-)warmup, then warmup–stable–decay (WSD) or cosine.
  A new stage builds a new AdamW: parameters that existed before keep their moments (matched by name), new ones
  start fresh — which is why the short re-warm matters.
- *FLOPs* are counted every step from the current trainable pattern (dte_lib.model.flops_per_token), so runs with
  frozen layers are compared with full training at equal compute.
- validation loss is recorded just before and just after every growth: ``zero_init`` shows Δ = 0, ``roadmap``
  and ``stack`` show what growing costs.

Files (under ``out_dir``, the run directory for the course's main run): ``train/state/`` (dte_lib.checkpoint),
``train/history.jsonl`` (one row per logged step, growth or stage end), ``checkpoints/<stage>/`` and
``checkpoints/final/`` (HF model directories with the tokenizer), ``tb/`` (TensorBoard).

Distillation: ``teacher_targets`` (the teacher's recorded top-k per token, dte_lib.distill) with
``train.distill_weight`` α > 0 makes the step's loss (1 − α)·CE + α·T²·KL (``distill`` in the history).

Hooks: ``aux_loss(model, batch, outputs) -> {name: tensor}`` adds named losses (logged by name);
``aux_wants_hidden=True`` asks the model for hidden states; ``wrap_model(module) -> module`` wraps for DDP/FSDP
(re-applied after each growth); under ``torch.distributed`` the loader shards by rank and only rank 0 writes.

Devices (``device=``, dte_lib.device): model, validation blocks and every batch live there. On CUDA the step runs
under autocast (``train.precision``: ``auto`` = bf16 where the GPU has it, fp16 + ``GradScaler`` where not) with
TF32 matmuls, fused AdamW and pinned, non-blocking batch copies; ``train.compile`` wraps the forward in
``torch.compile``; ``train.activation_checkpointing`` recomputes each block in the backward. ``train.grad_accum``
splits the global batch into micro-batches (each micro-batch's loss is weighted by its share of the batch's scored
tokens, so the summed gradient is the whole batch's; aux losses are averaged over micro-batches); 0 asks the
planner's memory model for the GPU found. On the CPU all of these are off and a step is what it always was.
Checkpoints are device-independent: tensors are written from the CPU and loaded onto the trainer's device.

Explained in notebooks 06 (a short run) and 07 (layers 1–4).
Run it: ``python -m dte_lib.progressive --preset ci --run-dir outputs/runs/ci`` (resumes if state exists).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import device as device_mod
from . import distill
from . import model as M
from . import packing
from . import tokenizer as toklib
from .schedule import Stage, build_schedule  # noqa: F401 - re-exported: progressive.Stage, progressive.build_schedule


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str, decay_frac: float,
          min_frac: float) -> float:
    """Learning rate at ``step`` (0-based) of a stage of ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * min_frac
    if schedule == "cosine":
        t = (step - warmup) / max(total - warmup, 1)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if schedule != "wsd":
        raise ValueError(f"unknown schedule {schedule!r}: wsd or cosine")
    decay_start = int(total * (1 - decay_frac))
    if step < decay_start:
        return peak
    t = (step - decay_start + 1) / max(total - decay_start, 1)
    return peak + (floor - peak) * min(t, 1.0)


def _world_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _is_main() -> bool:
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class ProgressiveTrainer:
    """Runs a schedule of stages; every piece of state it needs to continue lives in ``out_dir/train/state``."""

    def __init__(self, tc, tok, train_ds, val_ds, out_dir: str | Path, seed: int = 0,
                 stages: Sequence[Stage] | None = None, aux_loss: Callable | None = None,
                 aux_wants_hidden: bool = False, wrap_model: Callable | None = None, progress: bool = True,
                 tensorboard: bool = True, on_step: Callable[[int], None] | None = None,
                 on_mismatch: str = "error", data_seed: int | None = None,
                 init_model: Callable[[], Any] | None = None, init_id: str = "",
                 device: str | torch.device = "cpu", teacher_targets: dict[str, Any] | None = None):
        """``init_model`` builds the first model (default: a fresh GPT-2 of the first stage's depth); months 5–12
        pass one that loads a checkpoint. ``init_id`` names that starting point: it joins the fingerprint a saved
        state must match, so a changed starting checkpoint is never resumed from stale state. ``device`` is where
        the model trains (``auto | cpu | cuda | cuda:N | mps`` or a ``torch.device``; see the module docstring).
        ``teacher_targets`` (:func:`dte_lib.distill.recorded_targets`, aligned with ``train_ds``) with
        ``tc.distill_weight`` α > 0 trains on (1 − α)·CE + α·T²·KL (the module docstring of dte_lib.distill)."""
        self.tc, self.tok, self.seed = tc, tok, seed
        self.device = device_mod.configure(device)
        self.init_model, self.init_id = init_model, init_id
        self.out = Path(out_dir)
        self.stages = list(stages) if stages is not None else build_schedule(tc)
        self.distilling = teacher_targets is not None and tc.distill_weight > 0
        extra = {"teacher_idx": teacher_targets["idx"], "teacher_logp": teacher_targets["logp"]} \
            if self.distilling else None
        self.loader = packing.PackedLoader(train_ds, tc.block_size, tc.batch_size,
                                           seed if data_seed is None else data_seed,
                                           with_weights="loss_weights" in train_ds.column_names, extra=extra)
        self.val = {k: v.to(self.device) for k, v in packing.eval_blocks(val_ds, tc.block_size,
                                                                           tc.val_max_blocks).items()}
        self.aux_loss, self.aux_wants_hidden, self.wrap_model = aux_loss, aux_wants_hidden, wrap_model
        self.progress, self.tensorboard, self.on_step = progress, tensorboard, on_step
        self.main = _is_main()
        self.state_dir = self.out / "train" / "state"
        self.history_path = self.out / "train" / "history.jsonl"
        self.model = self.wrapped = self.opt = self.scaler = None
        self.stage_idx = self.step_in_stage = self.global_step = self.history_lines = 0
        self.tokens = 0
        self.flops = 0.0
        self._carry: dict[str, dict[str, torch.Tensor]] = {}
        self._flops_per_token = 0.0
        self._writer = None
        self._wandb = None
        # what a saved state must match to be resumed: schedule, hyper-parameters, seed, tokenised data
        self.on_mismatch = on_mismatch
        # (how a step is executed — micro-batches, recomputation, compilation — is not part of it: a state saved
        # on a GPU with accumulation resumes on a CPU without, and back)
        settings = {k: v for k, v in asdict(tc).items() if k not in EXECUTION_FIELDS}
        self.fingerprint = hashlib.sha256(json.dumps(
            [settings, [asdict(s) for s in self.stages], seed, getattr(train_ds, "_fingerprint", ""),
             getattr(val_ds, "_fingerprint", "")] + ([init_id] if init_id else [])
            + ([teacher_targets["fingerprint"]] if self.distilling else []),
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.accum = self._accumulation()

    def _param_shards(self) -> int:
        """Ranks the parameters, gradients and AdamW states are sharded over (1 here; W under FSDP)."""
        return 1

    def _accumulation(self) -> int:
        """Micro-batches per optimizer step: ``train.grad_accum``, or with 0 the planner's choice for this GPU."""
        tc = self.tc
        local = tc.batch_size // _world_size()
        accum = tc.grad_accum
        if accum == 0:
            accum = 1
            if self.device.type == "cuda":
                from . import planner
                shape = planner.gpt2(max(s.depth for s in self.stages), tc.d_model, len(self.tok), tc.block_size,
                                     n_head=tc.n_head)
                accum = planner.plan_batch(shape, local, tc.block_size, planner.device_memory_bytes(self.device),
                                           act_bytes=2 if device_mod.autocast_dtype(self.device, tc.precision)
                                           else 4, shards=self._param_shards(),
                                           checkpointing=tc.activation_checkpointing)["accum"]
        if accum < 1 or local % accum:
            raise ValueError(f"train.grad_accum={accum}: it must divide the per-rank batch {local} "
                             f"(train.batch_size {tc.batch_size} / {_world_size()} ranks)")
        return accum

    # ------------------------------------------------------------------------------------------ setup
    def _fresh_model(self):
        if self.init_model is not None:
            return self.init_model().to(self.device)
        tc = self.tc
        return M.build(len(self.tok), tc.block_size, tc.d_model, self.stages[0].depth, tc.n_head, seed=self.seed,
                       eos_id=self.tok.eos_token_id, dropout=tc.dropout).to(self.device)

    def _resume_or_start(self) -> bool:
        path = ckpt.latest(self.state_dir)
        if path is None:
            self.model = self._fresh_model()
            if self.main:
                self.history_path.parent.mkdir(parents=True, exist_ok=True)
                self.history_path.write_text("")
            return False
        from transformers import GPT2LMHeadModel
        saved = ckpt.load(path)  # verified against its manifest before anything is read
        st = saved["state"]
        if st.get("fingerprint") != self.fingerprint:
            why = (f"saved for stages {st['stage_names']}, this schedule has {[s.name for s in self.stages]}"
                   if st["stage_names"] != [s.name for s in self.stages] else
                   "saved with other settings, seed, tokenizer or data")
            if self.on_mismatch != "restart":
                raise ckpt.CheckpointError(f"{path}: {why}; use another out_dir, delete {self.state_dir}, "
                                           f"or pass on_mismatch='restart'")
            print(f"{path}: {why} — starting this run from scratch (old state, history and checkpoints removed)")
            self.clear()
            return self._resume_or_start()
        self.model = GPT2LMHeadModel.from_pretrained(str(saved["model_dir"])).to(self.device)  # read on the CPU
        self._carry = saved["optimizer"]
        for k in ("stage_idx", "step_in_stage", "global_step", "tokens", "flops", "history_lines"):
            setattr(self, k, st[k])
        self.loader.load_state_dict(st["loader"])
        ckpt.set_rng_state(st["rng"], saved["rng_tensors"])
        if self.main and self.history_path.exists():  # drop rows written after the checkpoint (they will be redone)
            lines = self.history_path.read_text().splitlines(keepends=True)[: self.history_lines]
            self.history_path.write_text("".join(lines))
        return True

    def clear(self) -> None:
        """Remove this trainer's state, history, stage checkpoints and TensorBoard logs (a fresh start)."""
        if self.main:
            for sub in ("train/state", "checkpoints", "tb"):
                shutil.rmtree(self.out / sub, ignore_errors=True)
            self.history_path.unlink(missing_ok=True)

    def _enter_stage(self, stage: Stage) -> None:
        """Freeze by policy, wrap, and build a fresh AdamW that inherits moments by parameter name."""
        if self.opt is not None:  # moving on from a stage in this process: inherit its moments by name
            self._carry = ckpt.optimizer_state_by_name(self.opt)
        M.set_trainable(self.model, stage.policy, stage.new_layers)
        if self.tc.activation_checkpointing:  # HF's per-block recomputation (non-reentrant: works with frozen inputs)
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.wrapped = self.wrap_model(self.model) if self.wrap_model else self.model
        if self.tc.compile:
            self.wrapped = torch.compile(self.wrapped)
        groups = M.param_groups(self.model, stage.lr, stage.policy, stage.new_layers, self.tc.lower_lr_factor,
                                self.tc.weight_decay)
        self.opt = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.95), **device_mod.fused_adamw(self.device))
        self.scaler = device_mod.grad_scaler(self.device, self.tc.precision)
        ckpt.load_optimizer_state_by_name(self.opt, self._carry)
        self._carry = {}
        self._flops_per_token = M.flops_per_token(self.model, self.tc.block_size)

    def stage_steps(self, stage: Stage) -> int:
        return max(1, math.ceil(stage.tokens / self.loader.tokens_per_batch))

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, batch: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
        """Forward, loss (+ aux losses), backward, clip, AdamW step — the only training code path. ``batch`` may
        live on the CPU (it is copied to the trainer's device); with ``self.accum`` > 1 it is split into that many
        micro-batches whose gradients add up to the whole batch's."""
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        self.wrapped.train()
        batch = device_mod.to_device(batch, self.device)
        w = 1.0 - self.tc.distill_weight if self.distilling else 1.0  # (1 − α)·CE when distilling
        if self.accum == 1:
            lm, aux = self._forward(batch)
            self._backward(w * lm + sum(aux.values()) if aux else lm)
        else:
            scored = _scored(batch)
            parts = {k: v.tensor_split(self.accum) for k, v in batch.items()}
            micro = [{k: p[i] for k, p in parts.items()} for i in range(self.accum)]
            lm, aux = 0.0, {}
            for i, mb in enumerate(micro):
                with self._grad_sync(i == len(micro) - 1):
                    lm_i, aux_i = self._forward(mb)
                    part = w * lm_i * (_scored(mb) / scored) + sum(v / self.accum for v in aux_i.values())
                    self._backward(part)
                lm = lm + lm_i.detach() * (_scored(mb) / scored)
                for k, v in aux_i.items():
                    aux[k] = aux.get(k, 0.0) + v.detach() / self.accum
        params = [p for g in self.opt.param_groups for p in g["params"]]
        if self.scaler is not None:  # fp16: gradients were scaled up; bring them back before clipping
            self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(params, self.tc.grad_clip)
        if self.scaler is not None:  # skips the step if a gradient overflowed, and adapts the scale
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        logged = torch.stack([lm.detach().float(), *(v.detach().float() for v in aux.values())])
        world = _world_size()
        if world > 1:  # each rank saw its slice of the global batch: log the global mean, not rank 0's slice
            import torch.distributed as dist
            dist.all_reduce(logged)
            logged /= world
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP2 returns a DTensor
        return {"loss": float(logged[0]), "grad_norm": float(gnorm),
                **{k: float(v) for k, v in zip(aux, logged[1:])}}

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with device_mod.autocast(self.device, self.tc.precision):
            out = self.wrapped(input_ids=batch["input_ids"], output_hidden_states=self.aux_wants_hidden)
            # distilling at T = 1: one log-softmax serves the CE and the KL (a second V-wide softmax cost as much
            # as the KL itself)
            shared = self.distilling and self.tc.distill_temperature == 1.0
            scores = F.log_softmax(out.logits.float(), dim=-1) if shared else out.logits
            lm = M.lm_loss(scores, batch["labels"], batch.get("loss_weights"), normalised=shared)
            aux = self.aux_loss(self.model, batch, out) if self.aux_loss else {}
            if self.distilling:
                aux["distill"] = self.tc.distill_weight * distill.distill_loss(
                    scores, batch["teacher_idx"], batch["teacher_logp"], batch["labels"],
                    self.tc.distill_temperature, self.tc.distill_tail, normalised=shared)
        return lm, aux

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _grad_sync(self, sync: bool):
        """Gradient all-reduce only on the last micro-batch: DDP's ``no_sync``, FSDP2's
        ``set_requires_gradient_sync``; nothing to do in one process."""
        import contextlib
        w = getattr(self.wrapped, "_orig_mod", self.wrapped)  # under torch.compile
        if hasattr(w, "set_requires_gradient_sync"):
            w.set_requires_gradient_sync(sync)
        elif not sync and hasattr(w, "no_sync"):
            return w.no_sync()
        return contextlib.nullcontext()

    @torch.no_grad()
    def val_loss(self) -> float:
        """Mean next-token loss on the validation blocks, fp32, no dropout."""
        self.model.eval()  # left in eval mode, as before: the training step sets train mode itself
        ids, labels = self.val["input_ids"], self.val["labels"]
        nats, n = M.nll_over(self.model, ((ids[i: i + 8], labels[i: i + 8]) for i in range(0, len(ids), 8)))
        return nats / max(n, 1)

    # ------------------------------------------------------------------------------------------ records
    def _log(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        row = {"step": self.global_step, "tokens": self.tokens, "flops": self.flops,
               "depth": self.model.config.n_layer, "stage": self.stages[min(self.stage_idx, len(self.stages) - 1)].name,
               **row}
        with open(self.history_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.history_lines += 1
        scalars = {f"train/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, self.global_step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=self.global_step)

    def full_model(self):
        """The model as one unsharded ``GPT2LMHeadModel`` for growth and export. Here that is ``self.model``; a
        sharding subclass (dte_lib.distributed's FSDP2 trainer) gathers the shards — on every rank."""
        return self.model

    def _save_state(self) -> None:
        if not self.main:
            return
        state = {"stage_idx": self.stage_idx, "step_in_stage": self.step_in_stage, "global_step": self.global_step,
                 "tokens": self.tokens, "flops": self.flops, "history_lines": self.history_lines,
                 "loader": self.loader.state_dict(), "stage_names": [s.name for s in self.stages],
                 "seed": self.seed, "train_cfg": asdict(self.tc), "fingerprint": self.fingerprint}
        ckpt.save(self.state_dir, self.model, self.opt, state)

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> list[dict[str, Any]]:
        """Train every remaining stage (resuming from ``train/state`` if present); returns history rows."""
        resumed = self._resume_or_start()
        if self.main and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.out / "tb"), purge_step=self.global_step if resumed else None)
            self._wandb = wandb_run(self.tc.wandb, self.out, asdict(self.tc))
        total_steps = sum(self.stage_steps(s) for s in self.stages)
        done = sum(self.stage_steps(s) for s in self.stages[: self.stage_idx]) + self.step_in_stage
        from .ui import progress as tqdm  # a bar where a person watches, never saved in a notebook
        bar = tqdm(total=total_steps, initial=done, desc="progressive", disable=not (self.progress and self.main))
        tc = self.tc
        while self.stage_idx < len(self.stages):
            stage = self.stages[self.stage_idx]
            if self.step_in_stage == 0 and stage.depth > self.model.config.n_layer:
                before = self.val_loss()
                old_depth = self.model.config.n_layer
                self.model = M.grow(self.full_model(), stage.depth, tc.operator,
                                    seed=self.seed * 1000 + self.stage_idx).to(self.device)
                after = self.val_loss()
                self._log({"event": "growth", "operator": tc.operator, "depth_before": old_depth,
                           "val_before": before, "val_after": after, "val_loss": after})
            self._enter_stage(stage)
            n_steps = self.stage_steps(stage)
            warmup = tc.warmup_steps if self.stage_idx == 0 else tc.rewarm_steps
            bar.set_postfix(stage=stage.name)
            while self.step_in_stage < n_steps:
                lr = lr_at(self.step_in_stage, n_steps, stage.lr, warmup, tc.schedule, tc.decay_frac, tc.min_lr_frac)
                out = self.train_step(self.loader.next_batch(), lr)
                self.step_in_stage += 1
                self.global_step += 1
                self.tokens += self.loader.tokens_per_batch
                self.flops += self._flops_per_token * self.loader.tokens_per_batch
                bar.update(1)
                last = self.step_in_stage == n_steps
                row: dict[str, Any] = {}
                if self.global_step % tc.log_every == 0:
                    row.update(out, lr=lr)
                if tc.val_every and self.global_step % tc.val_every == 0 and not last:
                    row["val_loss"] = self.val_loss()
                if row:
                    self._log(row)
                    bar.set_postfix(stage=stage.name, loss=f"{out['loss']:.3f}")
                if last:
                    break
                if tc.ckpt_every and self.global_step % tc.ckpt_every == 0:
                    self._save_state()
                if self.on_step:
                    self.on_step(self.global_step)
            val = self.val_loss()
            self._log({"event": "stage_end", "val_loss": val, "lr": lr})
            full = self.full_model()  # collective under FSDP: every rank calls it, rank 0 writes
            if self.main:
                meta = {"stage": stage.name, "kind": stage.kind, "depth": stage.depth, "val_loss": val,
                        "tokens": self.tokens, "flops": self.flops, "step": self.global_step,
                        "params": M.count_params(full)}
                ckpt.export_model(full, self.tok, self.out / "checkpoints" / stage.name, meta)
                if self.stage_idx == len(self.stages) - 1:
                    ckpt.export_model(full, self.tok, self.out / "checkpoints" / "final", meta)
            self.stage_idx += 1
            self.step_in_stage = 0
            self._save_state()
            if self.on_step:
                self.on_step(self.global_step)
        bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
        return read_history(self.out)


# ---------------------------------------------------------------------------------------------- helpers
EXECUTION_FIELDS = ("grad_accum", "activation_checkpointing", "compile")  # TrainCfg fields outside the fingerprint


def _scored(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The denominator of ``model.lm_loss`` on ``batch``: scored target tokens (summed weights when weighted)."""
    valid = batch["labels"][:, 1:] != -100
    if "loss_weights" in batch:
        return (batch["loss_weights"][:, 1:].float() * valid).sum().clamp_min(1e-8)
    return valid.sum().clamp_min(1)


def wandb_run(mode: str, out: Path, run_config: dict[str, Any]):
    """A Weights & Biases run that receives the same rows as TensorBoard, or None.

    ``auto`` logs only when the ``wandb`` package is installed, and offline unless ``$WANDB_MODE`` says otherwise:
    no account, no network; the run lands in ``<out>/wandb/offline-run-*`` and ``wandb sync`` uploads it later.
    ``offline`` / ``online`` insist (an error if wandb is missing); ``off`` never logs.
    """
    if mode not in ("auto", "off", "offline", "online"):
        raise ValueError(f"train.wandb={mode!r}: use auto, off, offline or online")
    if mode == "off":
        return None
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
        if mode == "auto":
            return None
        raise RuntimeError(f"train.wandb={mode!r} but the wandb package is not installed: `pip install wandb`, "
                           f"or set train.wandb=off")
    import random

    import numpy as np
    import wandb
    out.mkdir(parents=True, exist_ok=True)
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "deep-tree-echo"), name=out.name, dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline") if mode == "auto" else mode,
                     config=run_config, reinit="create_new",
                     # console off: stdout stays the notebook's; silent: no banner or run summary in it
                     settings=wandb.Settings(console="off", silent=True))
    random.setstate(rng[0])  # whatever wandb drew (run ids) must not shift a resumable run's random streams
    np.random.set_state(rng[1])
    torch.set_rng_state(rng[2])
    return run


def read_history(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "train" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def prepare(cfg, run_dir: str | Path, retrain_tokenizer: bool = False, targets: bool = False) -> dict[str, Any]:
    """Tokenizer (``run_dir/tokenizer``), tokenised train/val datasets and, with ``targets``, the teacher's recorded
    top-k on the training set's positions (``prep["targets"]``; None unless ``train.distill_weight`` > 0).

    ``train.tokenizer``: ``fitted`` — the course BPE fitted on the training split (kept if present, refitted with
    ``retrain_tokenizer``); ``teacher_subset`` — the teacher's tokens the training split uses, remapped, with the
    teacher's chat template (:func:`dte_lib.distill.subset_for`; rebuilt when the corpus changed). Distillation
    (``train.distill_weight`` > 0) needs ``teacher_subset``: a per-position KL needs the teacher's token ids.
    """
    from . import generate, teacher
    run_dir = Path(run_dir)
    choice = cfg.train.tokenizer
    if choice not in ("fitted", "teacher_subset"):
        raise ValueError(f"train.tokenizer {choice!r}: the course trains with 'fitted' or 'teacher_subset' (the "
                         f"full teacher vocabulary is benchmarks/distill.py's arm: its 49,152-token head is too dear)")
    if cfg.train.distill_weight and choice != "teacher_subset":
        raise ValueError("train.distill_weight > 0 needs train.tokenizer teacher_subset: the KL to the teacher's "
                         "top-k compares the same token ids")
    ex = packing.training_examples(cfg, run_dir)
    tok_dir = run_dir / "tokenizer"
    if choice == "teacher_subset":
        if (tok_dir / "tokenizer.json").exists() and not (tok_dir / distill.ID_MAP_FILE).exists() \
                and not retrain_tokenizer:  # the run's student speaks the course BPE's ids
            raise ValueError(f"{tok_dir} holds the course BPE but train.tokenizer is 'teacher_subset': use the "
                             f"preset this run was made with, or rebuild from notebook 06 (retrain_tokenizer)")
        distill.subset_for(distill.teacher_tokenizer(teacher.base_model_dir()), ex["train"], tok_dir,
                           teacher.BASE_MODEL_NAME)
    elif retrain_tokenizer or not (tok_dir / "tokenizer.json").exists():
        for stale in (distill.ID_MAP_FILE, "corpus.sha256"):  # a teacher_subset tokenizer was there before
            (tok_dir / stale).unlink(missing_ok=True)
        toklib.save(toklib.train_from_examples(ex["train"], cfg.train.vocab_size), tok_dir)
    elif (tok_dir / distill.ID_MAP_FILE).exists():  # the run's student speaks the subset's ids: never swap silently
        raise ValueError(f"{tok_dir} holds the teacher_subset tokenizer but train.tokenizer is 'fitted': use the "
                         f"preset this run was made with, or refit from notebook 06 (retrain_tokenizer)")
    tok = toklib.load(tok_dir)
    cache = run_dir / "train" / "cache"
    train_ds = packing.tokenize(ex["train"], tok, cfg.train.assistant_only, cache)
    val_ds = packing.tokenize(ex["val"], tok, False, cache)
    prep = {"tokenizer": tok, "train": train_ds, "val": val_ds, "examples": ex, "targets": None,
            "val_texts": [toklib.render(e.messages, tok) for e in ex["val"]]}
    if targets and cfg.train.distill_weight > 0:
        path = run_dir / "corpus" / generate.LOGPROBS
        if not path.exists():
            raise FileNotFoundError(f"{path}: no recorded teacher distributions to distil from — set "
                                    f"generate.logprobs_topk > 0 before notebook 02 (it is at long), or "
                                    f"train.distill_weight 0")
        prep["targets"] = distill.recorded_targets(ex["train"], train_ds, tok, distill.load_id_map(tok_dir), path,
                                                   k=cfg.train.distill_topk)
        if not prep["targets"]["stats"]["targets"]:
            raise ValueError(f"{path}: none of its answers is in the training set (ids) — was it written by "
                             f"another run?")
    return prep


def stage_report(out_dir: str | Path, tok, val_texts: Sequence[str], prompts: Sequence[str] = (),
                 max_new_tokens: int = 40, system: str | None = None,
                 val_examples: Sequence[Any] = (), device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Reload every stage checkpoint with ``from_pretrained``; whole-val-split loss, perplexity, bits/byte, samples.

    Whole-conversation perplexity includes the persona's system prompt, identical in every conversation and soon
    nearly free to predict; with ``val_examples`` each row also gets ``answer_perplexity`` / ``answer_bits_per_byte``
    over the final answers only (:func:`dte_lib.metrics.lm_score`, the definition the success dashboard uses).
    Each checkpoint is read on the CPU and scored on ``device``.
    """
    from transformers import AutoModelForCausalLM
    from . import metrics
    rows = []
    for d in sorted(p for p in (Path(out_dir) / "checkpoints").iterdir() if p.name.startswith("s")):
        meta = json.loads((d / "dte_stage.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(str(d)).to(device_mod.resolve(device))
        ev = M.evaluate_texts(model, tok, val_texts)
        row = {"stage": d.name, "depth": meta["depth"], "tokens": meta["tokens"], "flops": meta["flops"],
               "params": M.count_params(model), "val_loss": ev["loss"], "perplexity": ev["perplexity"],
               "bits_per_byte": ev["bits_per_byte"]}
        if val_examples:
            ans = metrics.lm_score(model, tok, val_examples)
            row.update(answer_perplexity=ans.perplexity, answer_bits_per_byte=ans.bits_per_byte)
        if prompts:
            row["samples"] = M.generate(model, tok, prompts, max_new_tokens, system=system)
        rows.append(row)
    return rows


def plot_history(history: Sequence[dict[str, Any]], title: str = ""):
    """Train and validation loss against tokens and against FLOPs, growth events as dashed lines."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    train = [r for r in history if "loss" in r and "event" not in r]
    val = [r for r in history if r.get("val_loss") is not None]
    growth = [r for r in history if r.get("event") == "growth"]
    for ax, key, label in ((axes[0], "tokens", "tokens"), (axes[1], "flops", "training FLOPs")):
        ax.plot([r[key] for r in train], [r["loss"] for r in train], lw=1, alpha=0.7, label="train loss")
        ax.plot([r[key] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="val loss")
        for g in growth:
            ax.axvline(g[key], ls="--", color="gray", lw=0.8)
            ax.annotate(f"→{g['depth']}", (g[key], ax.get_ylim()[1]), fontsize=7, va="top")
        ax.set_xlabel(label)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title or "progressive training")
    fig.tight_layout()
    return fig


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    ap = argparse.ArgumentParser(prog="dte train", description="Run (or resume) the progressive trainer.")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out-dir", default=None, help="where train/, checkpoints/, tb/ go (default: the run dir)")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="override a preset field, e.g. --set train.operator stack")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    device_mod.add_argument(ap)
    args = ap.parse_args(argv)
    overrides = {k: _parse_value(v) for k, v in args.set}
    cfg, run_dir = config.setup(args.preset, args.run_dir, overrides)
    dev = device_mod.cli_resolve(args.device or cfg.device, "dte train")  # before any work: fail in one line
    if args.threads:
        torch.set_num_threads(args.threads)
    prep = prepare(cfg, run_dir, targets=True)
    trainer = ProgressiveTrainer(cfg.train, prep["tokenizer"], prep["train"], prep["val"],
                                 args.out_dir or run_dir, seed=cfg.seed, progress=not args.no_progress, device=dev,
                                 teacher_targets=prep["targets"],
                                 on_step=lambda s: print(f"step {s}", flush=True) if args.no_progress else None)
    t0 = time.time()
    hist = trainer.run()
    ends = [r for r in hist if r.get("event") == "stage_end"]
    print(f"done in {time.time() - t0:.1f}s: " + ", ".join(f"{r['stage']} val {r['val_loss']:.3f}" for r in ends))
    return 0


if __name__ == "__main__":
    sys.exit(main())

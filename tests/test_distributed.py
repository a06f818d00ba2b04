"""dte_lib.distributed: the progressive trainer under real ``torchrun`` processes (CPU, gloo, 2 ranks).

Tolerance, and why: the runs are fp32 (``train.precision fp32``) and differ only in the order floating-point sums
are taken — two ranks each average the gradient of half the global batch and gloo averages the two halves; one
process averages the whole batch inside its kernels (and torchrun's ranks run 1 thread each, the reference 2).
Each such sum differs by ~1e-7 relative. Losses are therefore compared at 1e-5 relative. Weights get a looser bound
because AdamW divides each update by sqrt(v)+eps: where a gradient coordinate is near zero, a 1e-7 difference
can change that coordinate's step by up to ~lr. We require the largest weight difference to stay below 1% of the
largest distance a weight can move in the run (lr x steps) — far below what one wrong step, a missed all-reduce,
or a rank training on the wrong slice of the batch produces (those show up at the scale of lr itself, per step).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dte_lib import distributed as D

pytestmark = pytest.mark.timeout(900)  # generous: a shared 2-core machine can be 10x slower than idle

# A small schedule with a growth (1 -> 2 layers) and a final phase: 4 + 4 + 4 optimizer steps of 512 tokens.
SETS = {"train.precision": "fp32", "train.depths": "1,2", "train.tokens_per_stage": "2048",
        "train.final_tokens": "2048", "train.ckpt_every": "3", "train.log_every": "1", "train.val_every": "0"}
STEPS, LR = 12, 3e-3
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 0.01 * LR * STEPS


def _args(run_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    args = ["--preset", "ci", "--run-dir", str(run_dir), "--out-dir", str(out_dir), "--no-progress"]
    for k, v in SETS.items():
        args += ["--set", k, v]
    return args + list(extra)


def _losses(out_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "train" / "history.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "event" not in r]


def _summary(out_dir: Path) -> dict:
    return json.loads((out_dir / "dist_summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference (world size 1) on the same global batch; built once for this module."""
    root = tmp_path_factory.mktemp("dist")
    run_dir = root / "run"
    D.run_single(_args(run_dir, root / "single"), timeout=600)
    return root, run_dir


def test_torchrun_ddp_matches_one_process(runs):
    root, run_dir = runs
    out = root / "ddp"
    D.run_torchrun(2, _args(run_dir, out, "--strategy", "ddp"), timeout=600)
    single, ddp = _summary(root / "single"), _summary(out)
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["strategy"] == "ddp"
    assert ddp["steps"] == single["steps"] == STEPS
    a, b = _losses(root / "single"), _losses(out)
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=LOSS_RTOL)  # every logged step's global-batch loss
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=LOSS_RTOL)
    diff = D.compare_checkpoints(root / "single" / "checkpoints" / "final", out / "checkpoints" / "final")
    print(f"{out.name}: max |w - w_ref| = {diff['max_abs']:.3g} (tolerance {WEIGHT_ATOL:.3g})")
    assert diff["max_abs"] < WEIGHT_ATOL, diff
    # only rank 0 wrote: one history row per logged step, not two
    assert len((out / "train" / "history.jsonl").read_text().splitlines()) == \
        len((root / "single" / "train" / "history.jsonl").read_text().splitlines())


def test_checkpoint_from_two_ranks_resumes_in_one_process(runs):
    root, run_dir = runs
    out = root / "resumed"
    # world size 2, stopped after step 6 (its checkpoint is written at step 6: ckpt_every = 3) ...
    D.run_torchrun(2, _args(run_dir, out, "--strategy", "ddp", "--stop-after-step", "6"), timeout=600)
    first = _summary(out)
    assert first["stopped_at"] == 6 and first["world_size"] == 2
    state = json.loads((out / "train" / "state" / (out / "train" / "state" / "LATEST").read_text().strip()
                        / "state.json").read_text())
    assert state["global_step"] == 6
    # ... then resumed at world size 1 from the same directory, and finished
    D.run_single(_args(run_dir, out), timeout=600)
    second = _summary(out)
    assert second["world_size"] == 1 and second["steps"] == STEPS and second["resumed_from_tokens"] == 6 * 512
    assert _losses(out) == pytest.approx(_losses(root / "single"), rel=LOSS_RTOL)
    diff = D.compare_checkpoints(root / "single" / "checkpoints" / "final", out / "checkpoints" / "final")
    print(f"{out.name}: max |w - w_ref| = {diff['max_abs']:.3g} (tolerance {WEIGHT_ATOL:.3g})")
    assert diff["max_abs"] < WEIGHT_ATOL, diff


def test_launch_commands():
    one = D.launch_command(2, ["--preset", "ci"])
    assert one[0].endswith("torchrun") and "--standalone" in one and "--nproc_per_node=2" in one
    assert one[-4:] == ["-m", "dte_lib.distributed", "--preset", "ci"][-4:]
    multi = D.launch_command(8, ["--preset", "full"], nnodes=2, rdzv_endpoint="node0:29500")
    assert "--nnodes=2" in multi and "--rdzv_backend=c10d" in multi and "--rdzv_endpoint=node0:29500" in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        D.launch_command(8, [], nnodes=2)


@pytest.mark.slow  # two more torchrun-sized launches (~1-2 min on 2 cores); run with -m slow
def test_fsdp2_resumes_a_one_process_checkpoint_and_matches(runs):
    """World size 1 stopped at step 6, resumed by FSDP2 on 2 ranks (full checkpoint -> sharded moments) to the end."""
    root, run_dir = runs
    out = root / "fsdp"
    D.run_single(_args(run_dir, out, "--stop-after-step", "6"), timeout=600)
    assert _summary(out)["stopped_at"] == 6
    D.run_torchrun(2, _args(run_dir, out, "--strategy", "fsdp"), timeout=600)
    fsdp = _summary(out)
    assert fsdp["strategy"] == "fsdp" and fsdp["world_size"] == 2 and fsdp["steps"] == STEPS
    assert _losses(out) == pytest.approx(_losses(root / "single"), rel=LOSS_RTOL)
    assert fsdp["val_loss"] == pytest.approx(_summary(root / "single")["val_loss"], rel=LOSS_RTOL)
    # the growth (1 -> 2 layers) happened under FSDP2 after gathering the shards, and the export is a full model
    diff = D.compare_checkpoints(root / "single" / "checkpoints" / "final", out / "checkpoints" / "final")
    print(f"{out.name}: max |w - w_ref| = {diff['max_abs']:.3g} (tolerance {WEIGHT_ATOL:.3g})")
    assert diff["max_abs"] < WEIGHT_ATOL, diff

"""Reliability: SIGKILL the trainer (a real subprocess, `dte train`) at random steps, resume, and the final weights
equal an uninterrupted run's bit for bit (CPU, 1 thread, fp32, no dropout). Killed while a checkpoint is being
written, the previous checkpoint is what resumes — the atomic write is what is under test."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dte_lib import config

SETTINGS = {"train.d_model": "32", "train.block_size": "32", "train.ckpt_every": "2", "train.val_every": "7",
            "train.tokens_per_stage": "4096", "train.final_tokens": "2048", "train.log_every": "1"}


def _cmd(run_dir):
    cmd = [sys.executable, "-m", "dte_lib.progressive", "--preset", "ci", "--run-dir", str(run_dir), "--threads", "1",
           "--no-progress"]
    for k, v in SETTINGS.items():
        cmd += ["--set", k, v]
    return cmd


def _env():
    return {**os.environ, "PYTHONPATH": str(config.REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _run_until_killed(run_dir, kill_at: int) -> bool:
    """Start the trainer, SIGKILL it right after it reports step ``kill_at``; True if it was killed."""
    proc = subprocess.Popen(_cmd(run_dir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        for line in proc.stdout:
            if line.startswith("step ") and int(line.split()[1]) >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        proc.wait()
        return False
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _final(run_dir):
    return load_file(str(run_dir / "checkpoints" / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (its tokenizer is copied into every killed run so they share the vocabulary)."""
    ref = tmp_path_factory.mktemp("ref")
    subprocess.run(_cmd(ref), check=True, capture_output=True, env=_env(), timeout=600)
    return ref


def _killed_run(reference, tmp_path, kills: list[int]):
    run = tmp_path / "killed"
    run.mkdir()
    shutil.copytree(reference / "tokenizer", run / "tokenizer")
    for k in kills:
        assert _run_until_killed(run, k), f"the run ended before step {k}"
    subprocess.run(_cmd(run), check=True, capture_output=True, env=_env(), timeout=600)
    a, b = _final(reference), _final(run)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"killed at {kills}: weights differ in {diff[:3]}"
    assert (reference / "train" / "history.jsonl").read_text() == (run / "train" / "history.jsonl").read_text()


def test_sigkill_at_a_random_step_then_resume_gives_identical_weights(reference, tmp_path):
    seed = random.randrange(10**6)
    kill = random.Random(seed).randrange(3, 36)  # 3 stages × 16 / 16 / 8 steps = 40 steps
    print(f"kill at step {kill} (seed {seed})")
    _killed_run(reference, tmp_path, [kill])


@pytest.mark.slow
def test_three_sigkills_then_resume(reference, tmp_path):
    r = random.Random()
    kills = sorted(r.sample(range(3, 38), 3))
    _killed_run(reference, tmp_path, kills)

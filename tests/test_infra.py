"""dte_lib.infra: device report, matmul rate, a real training measurement in a child process, MFU, projections."""
from __future__ import annotations

import pytest

from dte_lib import infra, planner


def test_detect_device_reports_cpu_facts():
    dev = infra.detect_device()
    assert dev["device"] in ("cpu", "cuda", "mps")
    assert dev["torch_threads"] >= 1 and dev["cpu_count"] >= 1
    assert isinstance(dev["bf16"], bool)


def test_matmul_rate_is_positive_and_consistent():
    r = infra.measure_matmul(128, repeats=3)
    assert r["flops_per_s"] > 1e7  # any machine that runs the course multiplies faster than 10 MFLOP/s
    assert r["min"] <= r["flops_per_s"] <= r["max"]


def test_training_measurement_in_a_child_process_matches_the_counts():
    bc = infra.BenchCfg(n_layer=1, n_embd=64, vocab_size=256, context=64, batch=4, steps=2, warmup=1, threads=1)
    r = infra.measure_training_subprocess(bc, timeout=120)
    n = planner.param_count(bc.shape())
    assert r["params"] == n
    # gradients (4 B) and AdamW moments (8 B) per parameter are counted from the tensors: exact
    assert r["gradient_bytes"] == 4 * n and r["adamw_state_bytes"] == 8 * n
    assert r["tokens_per_s"] > 0 and r["flops_per_token"] == planner.flops_per_token(bc.shape(), 64)
    # the published activation estimate is an estimate: within a factor 2 of what autograd saves on this shape
    assert 0.5 < r["saved_activation_bytes"] / r["estimated_activation_bytes"] < 2.0
    assert r["loss_last"] < r["loss_first"] + 0.5  # it trained (random tokens: the loss barely moves)


def test_mfu_and_projection_arithmetic():
    assert infra.mfu(1000, 1e9, 1e13) == pytest.approx(0.1)
    rows = [{"phase": "p", "pflops": 3.6}]  # 3.6e15 FLOPs
    proj = infra.project_phases(rows, achieved_flops_per_s=1e12, gpus=planner.GPUS, utilisation=0.5)
    assert proj[0]["this machine"] == pytest.approx(1.0)  # 3.6e15 / 1e12 s = 1 h
    assert proj[0]["A100 80GB"] == pytest.approx(3.6e15 / (312e12 * 0.5) / 3600)


def test_measurement_table_and_ratios_set_each_figure_beside_its_formula():
    run = {"params": 1000, "tokens_per_s": 50.0, "flops_per_token": 6000.0, "gradient_bytes": 4000,
           "adamw_state_bytes": 8000, "saved_activation_bytes": 2 ** 21, "estimated_activation_bytes": 2 ** 20,
           "peak_extra_bytes": 3 * 2 ** 20, "estimated_extra_bytes": 2 ** 21}
    row = infra.measurement_table({"fp32": run}, 1e6)[0]
    assert row["precision"] == "fp32" and row["MFU vs matmul peak"] == infra.mfu(50.0, 6000.0, 1e6)
    assert row["saved activations MiB"] == 2.0 and row["formula activations MiB"] == 1.0
    assert row["grads+AdamW MiB"] == row["formula 12 B/param MiB"]  # 12 bytes per parameter exactly
    assert infra.formula_ratios(run) == {"activations": 2.0, "peak_rss": 1.5}

"""dte_lib.planner: exact parameter counts against real models, FLOP and memory arithmetic against hand counts,
the roadmap's claims checked, break-even arithmetic."""
from __future__ import annotations

import math

import pytest

from dte_lib import config, planner


@pytest.mark.parametrize("n_layer,n_embd,n_head,vocab,positions,inner", [
    (1, 64, 1, 512, 128, None), (2, 96, 3, 1000, 64, None), (3, 128, 4, 2048, 256, 300), (4, 768, 12, 50_257, 1024, None),
])
def test_param_count_equals_a_real_gpt2(n_layer, n_embd, n_head, vocab, positions, inner):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=positions,
                     n_inner=inner, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(cfg)
    assert planner.param_count(planner.shape_of(cfg)) == sum(p.numel() for p in model.parameters())


def test_the_roadmaps_four_layer_claim_is_flagged_with_the_real_number():
    n4 = planner.param_count(planner.gpt2(4, 768, 50_257, 1024))
    assert n4 == 67_736_832
    dis = planner.disagreements(planner.PlanInputs(tokens_per_example=300))
    row = next(d for d in dis if d["claim"].startswith("the 4-layer"))
    assert row["claimed"] == 20e6 and row["computed"] == n4
    assert row["off_by"].startswith("3.39x")
    # the embedding tables alone (50,257 + 1,024) x 768 already exceed 20M
    assert "39.4M" in row["why"]


def test_flops_per_token_by_hand():
    # L=2, d=64, V=100, T=32, MLP 4d=256.
    # matmul params: 2 * (4*64*64 + 2*64*256) + 64*100 = 2 * (16384 + 32768) + 6400 = 104704
    # 6 * 104704 = 628224; attention 12 * 2 * 64 * 32 = 49152; total 677376
    m = planner.gpt2(2, 64, 100, 32, n_head=2)
    assert planner.matmul_params(m) == 104_704
    assert planner.flops_per_token(m, 32) == 677_376
    assert planner.flops_per_token(m, 32, attention=False) == 628_224
    f = planner.training_flops(m, tokens=1000, context=32)
    assert f["flops"] == 677_376_000
    assert f["flops_6ND"] == 6 * planner.param_count(m) * 1000


def test_memory_by_hand():
    # L=1, d=64, a=2, V=100, P=32: params = 100*64 + 32*64 + (12*64*64 + 13*64) + 2*64 = 6400+2048+49984+128 = 58560
    m = planner.gpt2(1, 64, 100, 32, n_head=2)
    assert planner.param_count(m) == 58_560
    mem = planner.memory_bytes(m, batch=2, context=32, act_bytes=2)
    assert mem["weights"] == 4 * 58_560 and mem["gradients"] == 4 * 58_560 and mem["adamw_states"] == 8 * 58_560
    # activations, one layer at 2 bytes: T*b*d*(34 + 5*a*T/d) = 32*2*64*(34 + 5*2*32/64) = 4096*39 = 159744
    # logits: 3 * b * T * V * 4 = 3*2*32*100*4 = 76800
    assert mem["activations"] == 159_744 + 76_800
    assert mem["total"] == 16 * 58_560 + 159_744 + 76_800
    # fp32 activations double the block part only; FSDP over 4 shards divides the parameter states
    assert planner.activation_bytes(m, 2, 32, act_bytes=4)["blocks"] == 2 * 159_744
    sharded = planner.memory_bytes(m, 2, 32, act_bytes=2, shards=4)
    assert sharded["adamw_states"] == 2 * 58_560 and sharded["activations"] == mem["activations"]


def test_width_for_a_billion_at_24_layers():
    d = planner.width_for_params(1e9, 24)
    assert d == 1792
    assert planner.param_count(planner.gpt2(24, d)) >= 1e9 > planner.param_count(planner.gpt2(24, d - 64))


def test_break_even_arithmetic():
    assert planner.break_even_hours(1600, 2.0) == 800
    assert planner.break_even_hours(1600, 1.5) == pytest.approx(1066.667, rel=1e-5)
    # half the speed and $0.10/h of power: each hour saves 2.0*0.5 - 0.1 = 0.9 dollars
    assert planner.break_even_hours(1600, 2.0, speed_ratio=0.5, watts=500, kwh_price=0.2) == pytest.approx(1600 / 0.9)
    assert math.isinf(planner.break_even_hours(1600, 0.1, speed_ratio=0.5, watts=500, kwh_price=0.2))
    assert planner.gpu_hours(312e12 * 0.4 * 3600, 312.0, 0.4) == pytest.approx(1.0)


def test_reproduction_tables_follow_their_inputs():
    cfg = config.load("ci")
    inp = planner.plan_inputs(cfg.scale, tokens_per_example=300)
    rep = planner.reproduce(inp)
    assert [r["phase"] for r in rep["compute"]] == [p.name for p in planner.ROADMAP_PHASES]
    first = rep["compute"][0]
    assert first["tokens_M"] == pytest.approx(100_000 * 300 * cfg.scale.epochs_per_phase / 1e6)
    # hours scale inversely with the assumed utilisation
    inp2 = planner.plan_inputs(cfg.scale, tokens_per_example=300)
    inp2.utilisation = inp.utilisation / 2
    assert planner.phase_table(inp2)[0]["cloud_gpu_h"] == pytest.approx(2 * first["cloud_gpu_h"])
    # the last phase is the 1B model, and at the compute-optimal 20 tokens/param it lands in the claimed range
    last_opt = rep["compute_optimal"][-1]
    assert last_opt["params_M"] > 1000 and 200 <= last_opt["cloud_gpu_h"] <= 2000
    assert not any("scale to 1B (compute-optimal" in d["claim"] for d in rep["disagreements"])
    # every phase on the roadmap corpus falls below the claimed 200 GPU-hours: each is listed
    listed = [d for d in rep["disagreements"] if "(roadmap corpus)" in d["claim"]]
    assert len(listed) == len(inp.phases)
    # prices from the preset reach the hardware table
    a100 = next(r for r in rep["hardware"] if r["gpu"] == "A100 80GB")
    assert a100["break_even_h_naive"] == [pytest.approx(1600 / 1.5), pytest.approx(800)]


def test_a_claim_that_agrees_is_not_listed():
    inp = planner.PlanInputs(tokens_per_example=300)
    inp.claim("params_4_layers").low = inp.claim("params_4_layers").high = 67_736_832
    assert not any(d["claim"].startswith("the 4-layer") for d in planner.disagreements(inp))


def test_tokens_per_example_counts_rendered_turns():
    msgs = [[{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]] * 3
    stats = planner.tokens_per_example(msgs, lambda text: text.split())
    # "<|user|> a b\n<|assistant|> c" splits into 5 words
    assert stats == {"examples": 3, "mean": 5, "median": 5, "p90": 5, "total": 15}
    with pytest.raises(ValueError):
        planner.tokens_per_example([], str.split)


def test_cli_prints_tables(capsys):
    assert planner.main(["--tokens-per-example", "300"]) == 0
    out = capsys.readouterr().out
    assert "scale to 1B" in out and "disagreements:" in out
    assert planner.main(["--layers", "4"]) == 0
    assert "67,736,832" in capsys.readouterr().out


def test_notebook_12_tables_come_from_the_planner():
    m = planner.gpt2(24, 1792)
    row = planner.shape_table({"1B": m}, 1024)[0]
    n = planner.param_count(m)
    assert row["params_M"] == n / 1e6 and row["compute-optimal tokens (B)"] == 20 * n / 1e9
    assert row["non-embedding_M"] == (n - 50_257 * 1792 - 1024 * 1792) / 1e6
    rows = planner.compute_table(m, {"optimal": 20 * n}, 1024, planner.GPUS, 0.4)
    a100 = planner.gpu_hours(planner.training_flops(m, 20 * n, 1024)["flops"], 312.0, 0.4)
    assert rows[0]["budget"] == "optimal" and rows[0]["A100 80GB h (1 GPU)"] == a100
    assert rows[0]["8 x A100 h"] == a100 / 8


def test_rent_or_buy_reads_the_cloud_gpus_break_even_against_the_plans_need():
    inp = planner.plan_inputs(config.load("demo").scale, 295.0)
    rep = planner.reproduce(inp)
    choice = planner.rent_or_buy(rep, inp)
    row = next(r for r in rep["hardware"] if r["gpu"] == inp.cloud_gpu)
    assert choice["break_even_h"] == row["break_even_h"] and choice["need_h"] == rep["budget_optimal"]["own_gpu_h"]
    assert choice["verdict"] == "rent"  # 586 RTX-4090-hours against a break-even of 1,614–2,202 (notebook 05)
    rep["budget_optimal"]["own_gpu_h"] = 10 * row["break_even_h"][1]
    assert planner.rent_or_buy(rep, inp)["verdict"] == "buy"

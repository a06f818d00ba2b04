"""Assertions on what notebooks 06 and 07 recorded in the ci course run (and the files they left)."""
from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.course


def test_06_tokenizer_packing_and_growth_operators(ci_metrics):
    m = ci_metrics["06_month3_progressive"]
    assert m["vocab_size"] == 512 and m["chars_per_token"] > 1.5  # BPE merges: more than one byte per token
    assert m["padding_tokens"] == 0 and m["share_kept_if_truncated"] < 0.5  # why packing matters here
    assert m["params_roadmap_4_layers"] == 67_736_832
    assert m["zero_init_preserves_function"] is True and m["growth_val_delta"]["zero_init"] == 0.0
    assert m["growth_val_delta"]["roadmap"] != 0.0 and m["growth_val_delta"]["stack"] != 0.0
    first, last = m["short_run_val_loss"][0], m["short_run_val_loss"][-1]
    assert last < first < math.log(512)


def test_07_stages_improve_and_are_servable(ci_run, ci_metrics):
    m = ci_metrics["07_month4_layers_1_4"]
    losses = m["val_loss_per_stage"]
    assert len(losses) == len(m["stages"]) >= 2 and losses == sorted(losses, reverse=True)
    assert all(p < m["uniform_perplexity"] for p in m["perplexity_per_stage"])
    for loss, ppl in zip(losses, m["perplexity_per_stage"]):
        assert ppl == pytest.approx(math.exp(loss))
    assert 0 < m["final_bits_per_byte"] < 8
    # answers only: below a uniform guess, and dearer than whole conversations (whose system prompt repeats)
    assert all(p < m["uniform_perplexity"] for p in m["answer_perplexity_per_stage"])
    assert m["final_answer_perplexity"] > m["final_perplexity"]
    assert m["growth_val_delta"] == [0.0]  # the ci preset grows with zero_init
    final = ci_run / "checkpoints" / "final"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (final / name).exists(), name
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == 0
    rows = [json.loads(x) for x in (ci_run / "train" / "history.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens"] == m["tokens_trained"] and {"step", "flops", "lr", "loss", "depth", "stage"} <= set(rows[0])
    assert list((ci_run / "tb").glob("events.out.tfevents.*"))

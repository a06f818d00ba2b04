"""Unit tests of the generation plan, rate limiter, prices, ledger and the raw-file reader."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from dte_lib import config, generate, prompts
from dte_lib import data as data_mod


@pytest.fixture(scope="module")
def bank():
    return prompts.load_bank(config.DATA_DIR / "prompt_bank.jsonl")


def test_plan_is_prefix_stable_and_ids_unique(bank):
    big = prompts.plan(bank, 300, seed=7)
    small = prompts.plan(bank, 120, seed=7)
    assert [r.id for r in big[:120]] == [r.id for r in small]
    assert len({r.id for r in big}) == 300
    assert [r.id for r in prompts.plan(bank, 50, seed=8)] != [r.id for r in big[:50]]


def test_plan_is_stratified_by_topic_and_task(bank):
    reqs = prompts.plan(bank, 130, seed=3)
    topics = Counter(r.topic for r in reqs)
    assert len(topics) == 13 and set(topics.values()) == {10}  # one full round = the whole bank once
    assert len({r.topic for r in reqs[:13]}) == 13  # the first 13 draws already cover every topic
    assert len({r.bank_id for r in reqs}) == 130
    second = prompts.plan(bank, 260, seed=3)[130:]
    assert len({r.seed for r in second} | {r.seed for r in reqs}) == 260  # a repeat prompt gets a new seed


def test_few_shot_comes_from_the_train_split_only():
    cfg = config.load("ci", {"generate.few_shot": 2})
    reqs = prompts.plan_from_config(cfg, 30)
    from dte_lib import data
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    parts = data.split(ex, cfg.data.val_fraction, cfg.data.test_fraction)
    held_out = {e.id for e in parts["val"] + parts["test"]}
    used = [i for r in reqs for i in r.few_shot_ids]
    assert used and not held_out & set(used)
    r = reqs[0]
    assert [m["role"] for m in r.messages()] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["role"] for m in r.example_messages("hi")] == ["system", "user", "assistant"]


def test_angles_scale_the_plan_to_thousands_of_distinct_requests(bank):
    angles = prompts.load_angles(config.DATA_DIR / "prompt_angles.jsonl")
    assert prompts.distinct_capacity(bank, angles) >= 4000
    big = prompts.plan(bank, 4000, seed=1234, angles=angles)
    assert len({r.prompt for r in big}) == 4000 and len({r.id for r in big}) == 4000
    plain = prompts.plan(bank, len(bank), seed=1234)  # round 0 is the bank as written, same ids as before angles
    assert [(r.id, r.prompt) for r in big[:len(bank)]] == [(r.id, r.prompt) for r in plain]
    assert [r.id for r in prompts.plan(bank, 700, seed=1234, angles=angles)] == [r.id for r in big[:700]]
    later = big[len(bank):]
    assert all(r.angle_id and r.id.endswith(r.angle_id) for r in later)
    by_scenario: dict[str, list[str]] = {}
    for r in later:  # no scenario meets the same angle twice before every angle was used
        by_scenario.setdefault(r.bank_id, []).append(r.angle_id)
    assert all(len(set(a)) == len(a) for a in by_scenario.values())
    with pytest.raises(ValueError, match="angle"):
        prompts.load_angles(_bad_angles_file())


def _bad_angles_file():
    import tempfile
    f = Path(tempfile.mkdtemp()) / "angles.jsonl"
    f.write_text('{"id": "an-01"}\n')
    return f


def test_answer_budget_is_sized_from_the_seed_answers_and_the_hint_agrees():
    cfg = config.load("demo", {"generate.max_tokens_cap": 0, "generate.answer_percentile": 90.0})
    free = prompts.answer_budget(cfg)
    assert free.max_tokens == free.corpus_tokens and free.median_tokens < free.max_tokens < 600
    assert str(free.words) in free.hint and free.words < free.max_tokens
    capped = prompts.answer_budget(config.load("demo", {"generate.max_tokens_cap": 100}))
    assert capped.max_tokens == 100 and capped.words == int(100 * cfg.generate.hint_share
                                                            * capped.words_per_token) // 5 * 5
    fixed = prompts.answer_budget(config.load("demo", {"generate.max_tokens": 50}))
    assert fixed.fixed and fixed.max_tokens == 50
    reqs = prompts.plan_from_config(config.load("demo"), 3)
    assert all(prompts.answer_budget(config.load("demo")).hint in r.messages()[0]["content"] for r in reqs)


def test_few_shot_examples_keep_to_the_hinted_length():
    """With few_shot_fit every shown answer is within the hint's words (the demo teacher copies the length it is
    shown); without it, longer ones appear; when no seed answer fits, the whole split is the pool."""
    cfg = config.load("demo")
    budget = prompts.answer_budget(cfg)
    seed = {ex.id: ex for ex in data_mod.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples}
    fit = prompts.plan_from_config(cfg, 60)
    assert all(len(seed[i].response.split()) <= budget.words for r in fit for i in r.few_shot_ids)
    free = prompts.plan_from_config(config.load("demo", {"generate.few_shot_fit": False}), 60)
    assert any(len(seed[i].response.split()) > budget.words for r in free for i in r.few_shot_ids)
    assert [r.id for r in fit] == [r.id for r in free]  # ids (the resume keys) do not depend on the shots
    pool = list(seed.values())
    assert prompts.fitting_shots(pool, 1) == pool


def test_bad_prompt_bank_names_the_line(tmp_path):
    p = tmp_path / "bank.jsonl"
    p.write_text('{"id": "a", "topic": "t", "task": "x", "style": "s", "prompt": "p"}\n{"id": "b", "topic": "t"}\n')
    with pytest.raises(ValueError, match=r"bank.jsonl:2: .*task"):
        prompts.load_bank(p)


def test_prices():
    assert generate.price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert generate.price_for("ft:gpt-4o-mini-2024-07-18:org::abc") == (0.30, 1.20)
    assert generate.price_for("my-local", local=True) == (0.0, 0.0)
    assert generate.price_for("mystery-model") is None


def test_ledger_cost_from_usage_and_batch_discount():
    led = generate.Ledger(model="gpt-4o-mini")
    led.set_prices()
    led.add({"usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}, "finish_reason": "length"})
    assert led.cost_usd == pytest.approx(0.75) and led.truncated == 1
    led.batch = True
    led._cost()
    assert led.cost_usd == pytest.approx(0.375)
    unknown = generate.Ledger(model="mystery")
    unknown.set_prices()
    unknown.add({"usage": {"prompt_tokens": 5, "completion_tokens": 5}})
    assert unknown.cost_usd is None  # unknown price is not "free"


def test_read_raw_repairs_a_torn_tail_and_refuses_corruption(tmp_path):
    p = tmp_path / "raw.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "mess')
    assert [r["id"] for r in generate.read_raw(p, repair=True)] == ["a", "b"]
    assert p.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    p.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"raw.jsonl:2: corrupt line"):
        generate.read_raw(p)


@pytest.mark.parametrize("body,match", [
    ({"id": "x"}, "no choices"),
    ({"choices": [{"message": {"content": "  "}, "finish_reason": "stop"}]}, "empty content"),
])
def test_parse_completion_rejects_unusable_answers(body, match):
    with pytest.raises(generate._Malformed, match=match):
        generate.parse_completion(body)


def test_parse_completion_keeps_length_and_usage():
    text, finish, usage = generate.parse_completion(
        {"choices": [{"message": {"content": "I echo"}, "finish_reason": "length"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    assert (text, finish, usage["total_tokens"]) == ("I echo", "length", 5)


def test_rate_limiter_spaces_requests():
    async def run(limiter, n):
        t0 = time.perf_counter()
        for _ in range(n):
            await limiter.acquire(10)
        return time.perf_counter() - t0

    # 1200/min = 20/s with a 0.5 s burst (10 at once): 30 requests need ~1 s; unlimited needs ~0
    assert 0.85 < asyncio.run(run(generate.RateLimiter(rpm=1200, burst_s=0.5), 30)) < 3.0
    assert asyncio.run(run(generate.RateLimiter(), 30)) < 0.05
    # 60,000 tokens/min = 1,000/s, burst 0.5 s = 500 tokens; 30 × 50 tokens = 1,500 → ~1 s
    async def tok(limiter):
        t0 = time.perf_counter()
        for _ in range(30):
            await limiter.acquire(50)
        return time.perf_counter() - t0
    assert 0.85 < asyncio.run(tok(generate.RateLimiter(tpm=60_000, burst_s=0.5))) < 3.0


def test_requests_are_sent_grouped_by_their_shared_prompt_prefix():
    """The long plan's requests share few (system + hint + few-shot) prefixes; send_order puts each prefix's
    requests together, in plan order within it, and sends exactly the same requests."""
    plan = prompts.plan_from_config(config.load("long"), 600)
    order = generate.send_order(plan)
    assert sorted(r.id for r in order) == sorted(r.id for r in plan)
    prefix = [json.dumps(r.messages()[:-1]) for r in order]
    groups = [p for i, p in enumerate(prefix) if i == 0 or p != prefix[i - 1]]
    assert len(groups) == len(set(prefix)) < len(plan) // 2  # each prefix one run of consecutive requests
    at = {r.id: i for i, r in enumerate(plan)}
    for p in set(prefix):
        same = [at[r.id] for r, q in zip(order, prefix) if q == p]
        assert same == sorted(same)

"""The serving engine in process (dte_lib.server.engine): continuous batching, prefix caching, exact top-p sampling,
rows that leave the batch at once — on the tiny random GPT-2 (tests/_tiny_lm.py), and on SmolLM2 against
``model.generate``."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from dte_lib.server.engine import TOP_K_PRECUT, Registry, _Row
from tests._tiny_lm import make_tiny_lm

SYSTEM = ("You are Echo, a deep tree of echo state reservoirs, membranes and a hypergraph memory; speak warmly "
          "and plainly about roots, branches and resonance.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "tiny-gpt2")


def _msgs(q: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]


def _reference_top_p(probs: torch.Tensor, top_p: float, u: float) -> int:
    """Nucleus sampling by the book: sort the whole vocabulary, keep the smallest set whose mass reaches top_p,
    pick by inverse CDF with the uniform number u (top_p == 1: the whole vocabulary in its own order)."""
    sp, si = probs, torch.arange(len(probs))
    if top_p < 1:
        sp, si = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sp, 0) - sp) < top_p
        sp, si = sp[keep], si[keep]
    c = sp.cumsum(0)
    return int(si[min(int(torch.searchsorted(c, torch.tensor([u * float(c[-1])]))[0]), len(c) - 1)])


def _next_uniform(gen: torch.Generator) -> float:
    twin = torch.Generator()
    twin.set_state(gen.get_state())
    return float(torch.rand((), generator=twin))


def test_sampling_is_exactly_top_p(tiny):
    """The top-k pre-cut decides nothing: every row picks what a full sort would, including rows whose top
    TOP_K_PRECUT tokens hold less than top_p of the mass (a flat distribution) and top_p == 1."""
    eng = Registry({"tiny": tiny}, threads=1).get("tiny").engine
    vocab = 4 * TOP_K_PRECUT + 100
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(24, vocab, generator=g) * torch.linspace(0.05, 8, 24)[:, None]  # flat ... peaked
    settings = [(0.8, 0.95), (1.0, 1.0), (0.7, 0.5), (0.0, 1.0), (1.3, 0.99), (0.8, 0.95)] * 4
    rows = []
    for k, (t, p) in enumerate(settings):
        r = _Row([1], 0, t, p, 8, [], 100 + k, None)
        r.gen = torch.Generator().manual_seed(r.seed)
        rows.append(r)
    for _ in range(5):
        us = [_next_uniform(r.gen) for r in rows]  # the number each sampled row is about to draw
        got = eng._sample(logits, rows).tolist()
        for k, (t, p) in enumerate(settings):
            if t == 0:
                assert got[k] == int(torch.argmax(logits[k]))
                continue
            probs = torch.softmax(logits[k] / t, dim=-1)
            assert got[k] == _reference_top_p(probs, p, us[k]), k
        logits = logits.roll(7, dims=1)
    flat = torch.softmax(logits[0] / 0.8, -1)
    assert float(torch.topk(flat, TOP_K_PRECUT).values.sum()) < 0.95  # the test did exercise the wide path


def test_a_request_joins_the_running_batch_and_leaves_it_at_once(tiny):
    reg = Registry({"tiny": tiny}, threads=1, batch_wait_ms=0)
    long_alone = reg.chat("tiny", _msgs("Tell me a long story."), temperature=0, max_tokens=150)
    eng = reg.get("tiny").engine
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "long", reg.chat("tiny", _msgs("Tell me a long story."), temperature=0, max_tokens=150)))
    before = len(eng.batch_rows)
    t.start()
    deadline = time.time() + 30
    while len(eng.batch_rows) < before + 5 and time.time() < deadline:
        time.sleep(0.001)
    short = reg.chat("tiny", _msgs("Who are you?"), temperature=0, max_tokens=4)
    still_running = t.is_alive()
    t.join(60)
    steps = list(eng.batch_rows)[before:]
    assert still_running, "the long request finished before the short one joined: the test proves nothing"
    assert short[0][0].completion_tokens == 4
    assert 2 in steps and steps[-1] == 1  # the short one decoded beside the long one, then left
    assert steps.count(2) <= 4  # ... and left as soon as it was done (its first token comes from the prefill)
    assert result["long"][0][0].text == long_alone[0][0].text  # joining and leaving did not disturb the long one


def test_prefix_cache_reuses_the_shared_prompt_and_changes_no_answer(tiny):
    qs = ["Who are you?", "What are your roots?", "Tell me about echoes.", "What is resonance?"]
    cached = Registry({"tiny": tiny}, threads=1, prefix_cache=True)
    plain = Registry({"tiny": tiny}, threads=1, prefix_cache=False)
    a = [cached.chat("tiny", _msgs(q), temperature=0, max_tokens=12)[0][0].text for q in qs]
    b = [plain.chat("tiny", _msgs(q), temperature=0, max_tokens=12)[0][0].text for q in qs]
    assert a == b
    eng = cached.get("tiny").engine
    assert eng.prefix_hits >= len(qs) - 2 and eng.prefixes
    prompt = cached.encode_prompt(cached.get("tiny"), _msgs(qs[0]))
    assert len(eng.prefixes[-1][0]) >= len(cached.get("tiny").tokenizer(SYSTEM)["input_ids"])  # the whole system prompt
    assert list(eng.prefixes[-1][0]) == prompt[:len(eng.prefixes[-1][0])]
    assert plain.get("tiny").engine.prefixes == []


def test_a_closed_stream_leaves_the_batch(tiny):
    reg = Registry({"tiny": tiny}, threads=1)
    eng = reg.get("tiny").engine
    stream = reg.stream("tiny", _msgs("Go on and on."), temperature=1.0, max_tokens=200, seed=1)
    next(stream)
    next(stream)
    stream.close()
    deadline = time.time() + 10
    while (eng.rows or eng.queue) and time.time() < deadline:
        time.sleep(0.005)
    assert not eng.rows and not eng.queue
    assert len(eng.batch_rows) < 60  # it did not run on to its 200 tokens


def test_smollm2_engine_matches_generate_in_a_mixed_batch():
    """The Llama-architecture teacher (SmolLM2): greedy rows decoded in a batch beside sampled rows, with the
    prefix cache in use, give exactly model.generate's greedy tokens."""
    from dte_lib import teacher
    reg = Registry({"t": teacher.base_model_dir()}, threads=2)
    lm = reg.get("t")
    qs = ["What is an echo state network?", "Describe your memory in one sentence."]
    reg.chat("t", _msgs("Hello."), temperature=0, max_tokens=1)  # seeds the prefix cache with the system prompt
    out: dict = {}
    threads = [threading.Thread(target=lambda i=i: out.setdefault(i, reg.chat("t", _msgs(qs[i]), temperature=0,
                                                                                 max_tokens=12)))
               for i in range(2)]
    threads.append(threading.Thread(target=lambda: out.setdefault("s", reg.chat(
        "t", _msgs("Sing."), temperature=0.8, top_p=0.95, max_tokens=12, seed=3, n=2))))
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert lm.engine.prefix_hits >= 2
    for i, q in enumerate(qs):
        ids = torch.tensor([reg.encode_prompt(lm, _msgs(q))])
        with torch.no_grad():
            ref = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        assert out[i][0][0].text == lm.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(out["s"][0]) == 2


def test_finished_rows_slots_are_reused_and_change_no_answer(tiny):
    """Six greedy requests of different lengths through a batch of at most three rows: the later ones take the
    slots of rows that finished (written in place, nothing else copied), and every answer is the one the request
    gets alone."""
    qs = [("Who are you?", 5), ("Tell me a long story about roots.", 40), ("What is resonance?", 12),
          ("Describe your memory.", 25), ("Sing.", 8), ("What are echoes made of?", 30)]
    alone = Registry({"tiny": tiny}, threads=1)
    want = [alone.chat("tiny", _msgs(q), temperature=0, max_tokens=n)[0][0].text for q, n in qs]
    reg = Registry({"tiny": tiny}, threads=1, max_batch=3)
    out: dict = {}
    threads = [threading.Thread(target=lambda i=i, q=q, n=n: out.setdefault(
        i, reg.chat("tiny", _msgs(q), temperature=0, max_tokens=n)[0][0].text)) for i, (q, n) in enumerate(qs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    eng = reg.get("tiny").engine
    assert eng.slots_reused >= 1, "no row ever took a finished row's slot: the test proves nothing"
    assert max(eng.batch_rows) <= 3
    assert [out[i] for i in range(len(qs))] == want


@pytest.mark.parametrize("rows", [1, 8])
def test_decode_attention_equals_sdpa_on_a_masked_buffer(rows):
    """The engine's one-token attention (grouped query heads, whole buffer with masked spare columns) against
    PyTorch's SDPA with the key/value heads repeated, in fp32."""
    from types import SimpleNamespace

    from dte_lib.server.engine import _decode_attention
    g = torch.Generator().manual_seed(0)
    h, hk, t, d = 6, 2, 40, 16
    q = torch.randn(rows, h, 1, d, generator=g)
    k, v = torch.randn(rows, hk, t, d, generator=g), torch.randn(rows, hk, t, d, generator=g)
    mask = torch.ones(rows, 1, 1, t, dtype=torch.bool)
    mask[:, ..., 30:] = False  # spare columns
    mask[0, ..., :7] = False  # left padding of one row
    out, _ = _decode_attention(SimpleNamespace(num_key_value_groups=h // hk), q, k, v, mask, scaling=d ** -0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(h // hk, 1), v.repeat_interleave(h // hk, 1), attn_mask=mask)
    assert out.shape == (rows, 1, h, d)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_a_longer_prompt_takes_a_finished_slot_instead_of_growing_the_batch(tiny):
    """max_batch 2: A decodes long, B ends at once, C (a prompt longer than the batch's columns) and D wait. C must
    take B's slot (the batch widened to C's columns) — never a third row beside a finished one — and every answer
    is the one it gets alone."""
    asks = [("Tell me a long story.", 60), ("Hi.", 2), ("Who are you? " + "Tell me about your roots. " * 4, 6),
            ("What is resonance?", 6)]
    alone = Registry({"tiny": tiny}, threads=1)
    want = [alone.chat("tiny", _msgs(q), temperature=0, max_tokens=n)[0][0].text for q, n in asks]
    reg = Registry({"tiny": tiny}, threads=1, max_batch=2, batch_wait_ms=0)
    lm = reg.get("tiny")
    out: dict = {}
    threads = []
    with lm.lock:  # the engine is busy: all four queue, in this order
        for i, (q, n) in enumerate(asks):
            threads.append(threading.Thread(target=lambda i=i, q=q, n=n: out.setdefault(
                i, reg.chat("tiny", _msgs(q), temperature=0, max_tokens=n)[0][0].text)))
            threads[-1].start()
            deadline = time.time() + 10
            while len(lm.queue) < i + 1 and time.time() < deadline:
                time.sleep(0.005)
    for th in threads:
        th.join(120)
    eng = lm.engine
    assert eng.slots_reused >= 1
    assert eng.widest <= 2
    assert [out[i] for i in range(len(asks))] == want

"""What the teacher's server gives a distiller and what it refuses: OpenAI's ``logprobs`` / ``top_logprobs`` on chat
completions (whole and streamed, through the real ``openai`` SDK over loopback), chunked prefill of long prompts,
and the requests that must be refused before any compute (beyond the context, nested too deep, a lone surrogate).
The model is the tiny random GPT-2 of tests/_tiny_lm.py (context 256 tokens)."""
from __future__ import annotations

import math
import threading
import time

import httpx
import openai
import pytest
import torch

from dte_lib import server
from dte_lib.server import engine as E
from dte_lib.server.engine import Registry
from tests._tiny_lm import make_tiny_lm

MSG = [{"role": "system", "content": "You are Echo."}, {"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "tiny-gpt2")


@pytest.fixture(scope="module")
def srv(request, tiny, tmp_path_factory):
    h = server.launch({"tiny": tiny}, timeout=90, threads=1, data_dir=tmp_path_factory.mktemp("srv"),
                      precision="fp32")
    request.addfinalizer(h.stop)
    return h


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0, timeout=60)


def test_logprobs_whole_and_streamed_in_openais_shape(client, tiny):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0, logprobs=True,
                                       top_logprobs=5)
    ch = r.choices[0]
    content = ch.logprobs.content
    assert ch.finish_reason == "length" and len(content) == r.usage.completion_tokens == 12
    # the bytes of the tokens are the answer; greedy picks each position's most likely token
    assert b"".join(bytes(t.bytes) for t in content).decode("utf-8") == ch.message.content
    for t in content:
        assert len(t.top_logprobs) == 5 and t.logprob <= 0
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and sum(math.exp(v) for v in lps) <= 1 + 1e-5
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6
        assert isinstance(t.model_extra["token_id"], int)  # the local vocabulary id, for a distillation cache
    # the same numbers as the model's own log-softmax at the first answer position
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from dte_lib import teacher
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    ids = tok(teacher.render_chat(tok, MSG, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    assert abs(float(ref[content[0].model_extra["token_id"]]) - content[0].logprob) < 1e-4

    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0,
                                                 logprobs=True, top_logprobs=5, stream=True))
    streamed = [t for c in chunks for ch2 in c.choices if ch2.logprobs for t in ch2.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(streamed, content)) < 1e-5

    plain = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    zero = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0, logprobs=True)
    assert all(t.top_logprobs == [] for t in zero.choices[0].logprobs.content)


def test_logprob_arguments_are_checked(client):
    with pytest.raises(openai.BadRequestError, match="needs 'logprobs'"):
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, top_logprobs=3)
    with pytest.raises(openai.BadRequestError, match="between 0 and 20"):
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, logprobs=True, top_logprobs=21)


def test_refused_before_any_compute(srv, client):
    long = [{"role": "user", "content": "echo " * 2000}]  # ~2,000 tokens against a context of 256
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=8)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 256" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # the prompt fits, prompt + max_tokens does not
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "echo " * 100}],
                                       max_tokens=250)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:  # streamed: refused before the stream starts
        client.chat.completions.create(model="tiny", messages=long, max_tokens=8, stream=True)
    assert e.value.code == "context_length_exceeded"
    # no max_tokens: the answer is cut to what the context holds
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "echo " * 100}],
                                        temperature=0)
    assert ok.usage.prompt_tokens + ok.usage.completion_tokens <= 256
    head = {"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"}
    deep = b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(srv.base_url + "/chat/completions", content=deep, headers=head, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json" and "deeper" in r.text
    body = b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    r = httpx.post(srv.base_url + "/chat/completions", content=body, headers=head, timeout=30)
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).choices  # still serving


def test_a_huge_prompt_is_refused_fast_while_another_request_is_served(client):
    """10,000 words arrive while a long answer is streaming: refused in under 2 s, and the stream goes on."""
    got: dict = {}

    def serve_long():
        t0 = time.perf_counter()
        parts = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=200, temperature=1.0,
                                                    seed=3, stream=True))
        got["n"], got["s"] = len(parts), time.perf_counter() - t0
    t = threading.Thread(target=serve_long)
    t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 10_000}],
                                       max_tokens=16)
    refused_s = time.perf_counter() - t0
    t.join(120)
    assert e.value.code == "context_length_exceeded" and refused_s < 2.0, refused_s
    assert got.get("n", 0) > 2  # the other request was answered


def test_chunked_prefill_gives_the_same_answer_and_interleaves(tiny, monkeypatch):
    """A prompt longer than PREFILL_CHUNK is prefilled a chunk per engine step while a running row keeps decoding;
    its greedy answer equals the one prefilled in one pass."""
    prompt = [{"role": "user", "content": "Tell me about roots and branches and resonance, " * 12}]
    whole = Registry({"tiny": tiny}, threads=1, prefix_cache=False)
    want = whole.chat("tiny", prompt, temperature=0, max_tokens=10)[0][0].text
    n_prompt = len(whole.encode_prompt(whole.get("tiny"), prompt))
    monkeypatch.setattr(E, "PREFILL_CHUNK", 16)
    chunked = Registry({"tiny": tiny}, threads=1, prefix_cache=False)
    lm = chunked.get("tiny")
    other: dict = {}

    def runner():
        other["r"] = chunked.chat("tiny", MSG, temperature=0, max_tokens=150)
    t = threading.Thread(target=runner)
    t.start()
    while not lm.engine.batch_rows:  # the other row is decoding
        time.sleep(0.01)
    steps_before = len(lm.engine.batch_rows)
    got = chunked.chat("tiny", prompt, temperature=0, max_tokens=10)[0][0].text
    t.join(60)
    assert got == want
    assert lm.engine.prefill_chunks >= n_prompt // 16 - 1
    assert len(lm.engine.batch_rows) - steps_before >= lm.engine.prefill_chunks  # decode steps between chunks
    assert other["r"][0][0].finish_reason in ("length", "stop")

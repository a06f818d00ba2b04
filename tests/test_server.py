"""The local OpenAI-compatible server, driven by the real ``openai`` SDK (sync and async) over a real loopback
socket. The "model" is a tiny random GPT-2 saved in tmp (see tests/_tiny_lm.py): the plumbing is under test here;
the real SmolLM2 fine-tune runs in notebook 01 and in tests/test_teacher.py."""
from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import openai
import pytest

from dte_lib import backends, server
from tests._tiny_lm import chat_rows, make_tiny_lm

MSG = [{"role": "system", "content": "You are Echo."}, {"role": "user", "content": "Who are you?"}]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "tiny-gpt2")


def _start(request, **kw):
    handle = server.launch(timeout=90, threads=1, **kw)

    def _stop():
        handle.stop()
        with pytest.raises(ProcessLookupError):  # stopped by its own pid, and gone
            os.kill(handle.pid, 0)
    request.addfinalizer(_stop)
    return handle


@pytest.fixture(scope="module")
def srv(request, tiny, tmp_path_factory):
    return _start(request, models={"tiny": tiny}, data_dir=tmp_path_factory.mktemp("srv"), max_body_mb=1)


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0, timeout=60)


def test_launch_contract(srv):
    assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
    assert srv.pid > 0 and srv.alive() and srv.api_key


def test_models_and_wrong_key(srv, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    bad = openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_chat_n_usage_finish_reason_and_seed(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, n=3, max_tokens=7, temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens <= 3 * 7 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    again = client.chat.completions.create(model="tiny", messages=MSG, n=3, max_tokens=7, temperature=1.0, seed=5)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    greedy = client.chat.completions.create(model="tiny", messages=MSG, max_completion_tokens=5, temperature=0)
    assert greedy.choices[0].finish_reason == "length" and greedy.usage.completion_tokens == 5


def test_stop_string_cuts_the_text(client):
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    if len(text) < 4:
        pytest.skip("the random model ended too early to pick a stop string")
    stop = text[2:4]
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].message.content and text.startswith(r.choices[0].message.content)


def test_streaming_matches_the_whole_answer(client):
    whole = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # sampled with a seed: a stream draws from the same seeded generator as the whole completion's row
    kw = dict(model="tiny", messages=MSG, max_tokens=12, temperature=1.0, seed=3)
    whole = client.chat.completions.create(**kw)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                   if c.choices)
    assert text == whole.choices[0].message.content


def test_async_client_and_stream(srv):
    async def go():
        ac = openai.AsyncOpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0, timeout=60)
        rs = await asyncio.gather(*[ac.chat.completions.create(model="tiny", messages=MSG, max_tokens=4,
                                                               temperature=0) for _ in range(3)])
        stream = await ac.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0,
                                                  stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await ac.close()
        return rs, "".join(parts)
    rs, streamed = asyncio.run(go())
    assert len({r.choices[0].message.content for r in rs}) == 1
    assert streamed == rs[0].choices[0].message.content


def test_errors_map_to_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MSG)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, temperature=3)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MSG, stop=["a", "b", "c", "d", "e"])
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nothere")


def test_files_roundtrip(client):
    f = client.files.create(file=("train.jsonl", _jsonl(chat_rows(3))), purpose="fine-tune")
    assert f.filename == "train.jsonl" and f.bytes == len(_jsonl(chat_rows(3)))
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list()]
    assert client.files.content(f.id).content == _jsonl(chat_rows(3))
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


@pytest.mark.parametrize("name", ["../../evil.jsonl", "..", "a/b.jsonl", "..\\x.jsonl"])
def test_upload_names_cannot_escape(srv, client, name):
    before = {p.name for p in srv.data_dir.parent.iterdir()}
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=(name, b"{}\n"), purpose="fine-tune")
    assert e.value.body["code"] == "invalid_file_name"
    assert {p.name for p in srv.data_dir.parent.iterdir()} == before
    assert not (srv.data_dir / "evil.jsonl").exists()


def test_oversized_body_is_refused(srv, client):
    with pytest.raises(openai.APIStatusError) as e:
        client.files.create(file=("big.jsonl", b"x" * (2 << 20)), purpose="fine-tune")
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    # a chunked body (no content-length) is counted as it arrives
    r = httpx.post(srv.base_url + "/chat/completions", headers={"Authorization": f"Bearer {srv.api_key}"},
                   content=iter([b"{" + b" " * (1 << 20), b" " * (1 << 20)]))
    assert r.status_code == 413


def test_fine_tune_flow_files_job_events_checkpoints_chat(client):
    tr = client.files.create(file=("train.jsonl", _jsonl(chat_rows(12))), purpose="fine-tune")
    va = client.files.create(file=("val.jsonl", _jsonl(chat_rows(4, offset=100))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=tr.id, validation_file=va.id,
                                         hyperparameters={"n_epochs": 2, "batch_size": 4}, suffix="t",
                                         extra_body={"dte_training": {"max_length": 64, "learning_rate": 3e-3}})
    assert job.status == "validating_files"
    statuses = [job.status]
    deadline = time.time() + 120
    while job.status not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
        time.sleep(0.1)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != statuses[-1]:
            statuses.append(job.status)
    assert job.status == "succeeded", job.error
    assert statuses[0] == "validating_files" and statuses[-1] == "succeeded"
    assert [s for s in statuses if s in ("queued", "running")] == sorted(
        [s for s in statuses if s in ("queued", "running")], key=["queued", "running"].index)
    assert job.hyperparameters.n_epochs == 2 and job.trained_tokens > 0
    assert job.fine_tuned_model.startswith("ft:tiny:") and job.id in [j.id for j in client.fine_tuning.jobs.list()]
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # auto-paginates 3 at a time
    messages = [e.message for e in events]
    assert len(set(e.id for e in events)) == len(events)
    for status in ("validating", "queued", "running", "succeeded"):
        assert any(status in m.lower() for m in messages), status
    metrics = [e.data for e in events if e.type == "metrics"]
    steps = sorted(d["step"] for d in metrics)
    assert steps == list(range(0, 7))  # 12 examples / batch 4 = 3 steps × 2 epochs, plus step 0 (base)
    assert all(d["train_loss"] > 0 for d in metrics if d["step"] > 0)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [6, 3]
    assert ckpts[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    assert ckpts[1].metrics.valid_loss is not None
    csv = client.files.content(job.result_files[0]).text.splitlines()
    assert csv[0].startswith("step,train_loss,valid_loss") and len(csv) == 8
    for model in (job.fine_tuned_model, ckpts[1].fine_tuned_model_checkpoint):
        r = client.chat.completions.create(model=model, messages=MSG, max_tokens=3)
        assert r.model == model and r.usage.completion_tokens >= 1


def test_job_with_invalid_file_fails_in_validation(client):
    bad = [{"messages": [{"role": "user", "content": "no answer"}]}] * 12
    f = client.files.create(file=("bad.jsonl", _jsonl(bad)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    for _ in range(100):
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status == "failed":
            break
        time.sleep(0.1)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert "example_missing_assistant_message=12" in job.error.message
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="nope", training_file=f.id)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)  # already failed


def test_cancel_a_running_job(client):
    f = client.files.create(file=("t.jsonl", _jsonl(chat_rows(40))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 25},
                                         extra_body={"dte_training": {"batch_size": 1}})
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    for _ in range(300):
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status == "cancelled":
            break
        time.sleep(0.1)
    assert cancelled.id == job.id and job.status == "cancelled" and job.fine_tuned_model is None


def test_batches_output_and_error_files(client):
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "tiny", "messages": MSG, "max_tokens": 3, "temperature": 0}} for i in range(3)]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "missing", "messages": MSG}})
    f = client.files.create(file=("batch.jsonl", _jsonl(lines)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "validating"
    for _ in range(300):
        b = client.batches.retrieve(b.id)
        if b.status in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert b.status == "completed", b.errors
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (4, 3, 1)
    out = [json.loads(l) for l in client.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["r0", "r1", "r2"]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
    assert out[0]["response"]["body"]["object"] == "chat.completion"
    err = [json.loads(l) for l in client.files.content(b.error_file_id).text.splitlines()]
    assert err[0]["custom_id"] == "bad" and err[0]["response"]["status_code"] == 404
    assert err[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert b.id in [x.id for x in client.batches.list()]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")


# ---------------------------------------------------------------------------------------------- faults
@pytest.fixture(scope="module")
def faulty(request, tiny, tmp_path_factory):
    return _start(request, models={"tiny": tiny}, data_dir=tmp_path_factory.mktemp("faulty"),
                  faults="429:x2,403:x1,retry_after_ms:50")


def _stats(handle):
    return httpx.get(handle.base_url.replace("/v1", "/dte/stats"),
                     headers={"Authorization": f"Bearer {handle.api_key}"}).json()


def test_429_with_retry_after_ms_is_retried_by_the_sdk(faulty):
    c = openai.OpenAI(base_url=faulty.base_url, api_key=faulty.api_key, max_retries=3, timeout=60)
    raw = c.chat.completions.with_raw_response.create(model="tiny", messages=MSG, max_tokens=2)
    assert raw.parse().choices and _stats(faulty)["faults"]["429"] == 2  # two 429s, then the SDK's third try
    # GET requests never get faults, so readiness checks stay reliable
    assert c.models.list().data


def test_403_training_not_available_is_explained(faulty, tmp_path):
    c = openai.OpenAI(base_url=faulty.base_url, api_key=faulty.api_key, max_retries=0, timeout=60)
    f = c.files.create(file=("t.jsonl", _jsonl(chat_rows(12))), purpose="fine-tune")
    with pytest.raises(backends.BackendUnavailable) as e:
        backends.create_fine_tune(c, model="tiny", training_file=f.id)
    assert isinstance(e.value.__cause__, openai.PermissionDeniedError)
    assert "2027-01-06" in str(e.value) and "2027-01-14" in str(e.value) and 'BACKEND = "local"' in str(e.value)


def test_rate_limit_without_retries_and_5xx(request, tiny, tmp_path):
    h = _start(request, models={"tiny": tiny}, data_dir=tmp_path / "s", faults="429:x1,500:1.0,latency_ms:200")
    c = openai.OpenAI(base_url=h.base_url, api_key=h.api_key, max_retries=0, timeout=60)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert float(e.value.response.headers["retry-after-ms"]) == 100
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    t = time.perf_counter()
    c.models.list()
    assert time.perf_counter() - t >= 0.2  # injected latency


def test_bad_fault_spec_and_non_loopback_without_key_are_refused(tiny):
    from dte_lib.server.__main__ import main
    assert main(["--model", f"tiny={tiny}", "--host", "0.0.0.0"]) == 2
    with pytest.raises(SystemExit):
        main(["--model", f"tiny={tiny}", "--faults", "418:0.5"])
    with pytest.raises(SystemExit):
        main(["--model", "tiny=/nonexistent"])


def test_server_exits_when_its_launcher_dies(tiny, tmp_path):
    """A crashed notebook kernel must not leave an orphaned server behind."""
    import subprocess
    import sys
    code = ("import sys, time; from dte_lib import server; "
            f"h = server.launch({{'tiny': {str(tiny)!r}}}, data_dir={str(tmp_path)!r}, timeout=90); "
            "print(h.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(server.Path(server.__file__).parents[2])})
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the server outlived its launcher")


def test_concurrent_requests_are_batched_and_answer_as_if_alone(tiny):
    """Requests that queue while the model is busy are decoded as one left-padded batch; each row keeps its own
    prompt, settings and seeded generator, so greedy and seeded answers equal the ones the request gets alone."""
    import threading
    from dte_lib.server.engine import Registry
    reg = Registry({"tiny": tiny}, threads=1, max_batch=8)
    prompts = [[{"role": "user", "content": "Who are you?" + " really" * k}] for k in range(5)]  # 5 lengths
    settings = [dict(temperature=0, max_tokens=10), dict(temperature=1.0, top_p=0.9, max_tokens=10, seed=3),
                dict(temperature=1.0, max_tokens=4, seed=11), dict(temperature=0, max_tokens=10, stop=["e"]),
                dict(temperature=1.0, max_tokens=10, n=2, seed=5)]
    alone = [reg.chat("tiny", p, **kw) for p, kw in zip(prompts, settings)]
    together: list = [None] * len(prompts)

    def ask(i):
        together[i] = reg.chat("tiny", prompts[i], **settings[i])

    lm = reg.get("tiny")
    before = len(lm.batch_rows)
    with lm.lock:  # the model is busy: every request below has to queue
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while len(lm.queue) < len(prompts) and time.time() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=60)
    assert lm.batch_rows[before] == 6  # all five requests (one with n=2) in one batch
    for (a_choices, a_prompt), (b_choices, b_prompt) in zip(alone, together):
        assert a_prompt == b_prompt
        assert [(c.text, c.finish_reason, c.completion_tokens) for c in a_choices] == \
            [(c.text, c.finish_reason, c.completion_tokens) for c in b_choices]
    assert alone[2][0][0].completion_tokens <= 4  # a row stops at its own max_tokens inside the batch
    assert "e" not in alone[3][0][0].text


def test_concurrent_sdk_requests_through_the_server(srv):
    async def go():
        ac = openai.AsyncOpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0, timeout=60)
        msgs = [[{"role": "user", "content": f"Question {i}: who are you?"}] for i in range(6)]
        one = [await ac.chat.completions.create(model="tiny", messages=m, max_tokens=8, temperature=0) for m in msgs]
        many = await asyncio.gather(*[ac.chat.completions.create(model="tiny", messages=m, max_tokens=8,
                                                                 temperature=0) for m in msgs])
        return one, many
    one, many = asyncio.run(go())
    assert [r.choices[0].message.content for r in one] == [r.choices[0].message.content for r in many]
    assert [r.usage.completion_tokens for r in one] == [r.usage.completion_tokens for r in many]


def test_stream_with_n_choices_decodes_them_together(client):
    """n > 1 in a stream: the choices are rows of the same batch, each streamed under its own index, and each
    equals the whole completion's choice with the same seed."""
    kw = dict(model="tiny", messages=MSG, max_tokens=10, temperature=1.0, seed=21, n=3)
    whole = client.chat.completions.create(**kw)
    texts, finishes = {}, {}
    for c in client.chat.completions.create(stream=True, **kw):
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert sorted(texts) == [0, 1, 2] and sorted(finishes) == [0, 1, 2]
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert [finishes[i] for i in range(3)] == [c.finish_reason for c in whole.choices]

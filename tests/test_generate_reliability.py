"""Reliability of the generation engine against a real loopback server (tests/fake_openai_server.py) through the
real openai SDK: SIGKILL and resume, ~40% injected faults, malformed answers, the Batch API path; and the Batch
API's status polling against the course's own server (dte_lib.server) with a slow batch."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from dte_lib import config, generate, prompts
from dte_lib import server as local_server
from tests._tiny_lm import make_tiny_lm

sys.path.insert(0, str(Path(__file__).parent))
import fake_openai_server  # noqa: E402

REPO = config.REPO_ROOT


@pytest.fixture(scope="module")
def server():
    s = fake_openai_server.start()
    yield s
    s.stop()


@pytest.fixture()
def fresh(server):
    server.control(latency_ms=0, fail_rate=0.0, force=None, rng_seed=0, timeout_sleep_s=3.0,
                   faults={"429": 1, "500": 1, "timeout": 1, "length": 1})
    server.reset_stats()
    return server


def plan(n):
    return prompts.plan_from_config(config.load("ci", {"generate.few_shot": 0}), n)


def engine(**kw):
    base = dict(model="fake-teacher", concurrency=8, max_tokens=200, max_retries=6, timeout_s=5.0,
                checkpoint_every=5)
    base.update(kw)
    return generate.EngineConfig(**base)


def lines_of(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()] if Path(path).exists() else []


def test_sigkill_at_random_points_then_resume_gives_every_id_exactly_once(fresh, tmp_path):
    fresh.control(latency_ms=40)
    n, out = 80, tmp_path / "corpus"
    cmd = [sys.executable, "-m", "dte_lib.generate", "run", "--base-url", fresh.base_url, "--model", "fake",
           "--out", str(out), "--preset", "ci", "--n", str(n), "--concurrency", "4", "--max-tokens", "200",
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-fake"}
    rng = random.Random(42)
    kills, seen = 0, 0
    for _ in range(5):
        target = seen + rng.randint(3, 14)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            raw = out / "raw.jsonl"
            if raw.exists() and raw.read_bytes().count(b"\n") >= target:
                os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit, no flush beyond what was written
                kills += 1
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
        seen = len(generate.read_raw(out / "raw.jsonl"))
        if seen >= n:
            break
    assert kills >= 4, "the kills must land mid-run"
    # a kill can also cut a line in half: simulate the worst case before the last resume
    with open(out / "raw.jsonl", "a") as fh:
        fh.write('{"id": "g1234-000079-pb-0", "messages": [{"role": "assistant", "content": "cut off he')
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(x)["id"] for x in (out / "raw.jsonl").read_text().splitlines()]  # every line is whole JSON
    assert Counter(ids) == Counter(r.id for r in plan(n))  # each requested id exactly once, nothing else
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["ok"] == n and ledger["complete"] and ledger["failed"] == 0


def test_forty_percent_faults_exact_accounting_then_resume_completes(fresh, tmp_path):
    fresh.control(fail_rate=0.4, faults={"429": 3, "500": 3, "timeout": 1, "length": 2, "malformed": 1},
                  timeout_sleep_s=1.5, rng_seed=7)
    reqs, out = plan(60), tmp_path / "corpus"
    s = generate.generate(reqs, out, base_url=fresh.base_url, api_key="sk-fake",
                          engine=engine(timeout_s=0.6, max_retries=3, malformed_retries=1), progress=False)
    stats = fresh.stats()
    injected = sum(v for k, v in stats.items() if k.startswith("fault:"))
    assert injected / stats["calls"] > 0.3, stats
    raw = lines_of(out / "raw.jsonl")
    failed = {f["id"] for f in lines_of(out / "failures.jsonl")}
    ok_ids = [r["id"] for r in raw]
    assert len(ok_ids) == len(set(ok_ids)) and not failed & set(ok_ids)
    assert set(ok_ids) | failed == {r.id for r in reqs}  # exact: every request either kept or reported
    assert s.new_ok == len(ok_ids) and s.failed == len(failed)
    assert s.truncated == sum(r["finish_reason"] == "length" for r in raw) > 0  # kept, marked for the filter
    assert all(r["messages"][-1]["content"].strip() for r in raw)  # never an empty row
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["ok"] + ledger["failed"] == 60
    fresh.control(fail_rate=0.0)
    s2 = generate.generate(reqs, out, base_url=fresh.base_url, api_key="sk-fake", engine=engine(), progress=False)
    assert s2.already_done == len(ok_ids) and s2.new_ok == len(failed)
    ids = [r["id"] for r in lines_of(out / "raw.jsonl")]
    assert Counter(ids) == Counter(r.id for r in reqs)


@pytest.mark.parametrize("force", ["malformed", "no_choices", "empty"])
def test_malformed_answers_give_a_clear_error_not_a_corrupt_file(fresh, tmp_path, force):
    fresh.control(force=force)
    out = tmp_path / "corpus"
    with pytest.raises(generate.GenerationError, match=r"all 6 requests failed; first: malformed"):
        generate.generate(plan(6), out, base_url=fresh.base_url, api_key="sk-fake", engine=engine(),
                          progress=False)
    assert (out / "raw.jsonl").read_text() == ""
    fails = lines_of(out / "failures.jsonl")
    assert len(fails) == 6 and all(f["error"] == "malformed" and f["message"] for f in fails)
    assert fresh.stats()["calls"] == 6 * 3  # asked again malformed_retries=2 times, then reported


def test_bad_credentials_stop_the_run_at_once(fresh, tmp_path):
    fresh.control(force="401")
    with pytest.raises(generate.GenerationError, match="AuthenticationError.*check the API key"):
        generate.generate(plan(20), tmp_path, base_url=fresh.base_url, api_key="sk-bad", engine=engine(),
                          progress=False)
    assert fresh.stats()["calls"] <= 8  # the workers already in flight, not all 20


def test_concurrency_really_overlaps_requests(fresh, tmp_path):
    """Counted by the server, not timed: the engine keeps `concurrency` requests in flight at once."""
    fresh.control(latency_ms=300)
    generate.generate(plan(16), tmp_path, base_url=fresh.base_url, api_key="sk-fake",
                      engine=engine(concurrency=8), progress=False)
    assert fresh.stats()["max_in_flight"] == 8


def test_batch_api_path_submits_once_and_merges(fresh, tmp_path):
    reqs, out = plan(12), tmp_path / "corpus"
    # a few were already generated live: the batch asks only for the rest
    generate.generate(reqs[:4], out, base_url=fresh.base_url, api_key="sk-fake", engine=engine(), progress=False)
    s = generate.run_batch(reqs, out, base_url=fresh.base_url, api_key="sk-fake", engine=engine(), poll_s=0.05)
    assert s.already_done == 4 and s.new_ok == 8 and s.failed == 0
    batch_lines = (out / "batch_input.jsonl").read_text().splitlines()
    assert len(batch_lines) == 8 and json.loads(batch_lines[0])["url"] == "/v1/chat/completions"
    s2 = generate.run_batch(reqs, out, base_url=fresh.base_url, api_key="sk-fake", engine=engine(), poll_s=0.05)
    assert s2.new_ok == 0 and fresh.stats()["batches"] == 1  # nothing paid twice
    assert Counter(generate.corpus_ids(out)) == Counter(r.id for r in reqs)
    assert json.loads((out / "ledger.json").read_text())["batch"] is True


def polls_for(seconds: float, first: float, cap: float) -> int:
    """Status calls a poller backing off from ``first`` to ``cap`` (doubling) makes in ``seconds``, the last one
    included: the bound a slow batch's poll count must stay within."""
    t, gap, n = 0.0, first, 1
    while t < seconds:
        t, gap, n = t + gap, min(2 * gap, cap), n + 1
    return n


def test_batch_status_polls_back_off_within_max_wait_and_resume(tmp_path):
    """Against the course's own server (dte_lib.server, a tiny GPT-2) with a batch kept in progress 3 s
    (fault ``batch_ms``): the status calls the server counts stay within the back-off schedule, the first run
    stops at its ``max_wait_s`` without sleeping past it, and a re-run polls the same batch to the end."""
    tiny = make_tiny_lm(tmp_path / "tiny")
    first, cap = 0.1, 0.8  # the shape of the defaults (5 s doubling to 60 s), scaled so the test takes seconds
    with local_server.launch({"tiny": tiny}, data_dir=tmp_path / "srv", faults="batch_ms:3000", threads=1,
                       timeout=90) as srv:
        def retrievals():
            return httpx.get(srv.base_url.replace("/v1", "/dte/stats"),
                             headers={"Authorization": f"Bearer {srv.api_key}"}).json().get("batch_retrievals", 0)

        # the plan's ids and seeds with short prompts: the tiny model has 256 positions
        reqs = [dataclasses.replace(r, system="", hint="", prompt=f"Who are you? ({r.topic})") for r in plan(6)]
        out, eng = tmp_path / "corpus", engine(model="tiny", max_tokens=4)
        t0 = time.monotonic()
        with pytest.raises(generate.GenerationError, match="re-run to keep polling it"):
            generate.run_batch(reqs, out, base_url=srv.base_url, api_key=srv.api_key, engine=eng, poll_s=first,
                               max_poll_s=cap, max_wait_s=1.0)
        waited = time.monotonic() - t0
        polls_1 = retrievals()
        assert waited < 1.0 + 0.5  # the last sleep was cut to the deadline
        assert 3 <= polls_1 <= polls_for(1.0, first, cap)
        t0 = time.monotonic()
        s = generate.run_batch(reqs, out, base_url=srv.base_url, api_key=srv.api_key, engine=eng, poll_s=first,
                               max_poll_s=cap, max_wait_s=60)
        took = time.monotonic() - t0
        polls_2 = retrievals() - polls_1
        assert s.new_ok == 6 and s.failed == 0
        assert len(openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key).batches.list().data) == 1  # resumed
        assert polls_2 <= polls_for(took, first, cap)
        # polling every `first` seconds would have made one call per `first`; the back-off makes under half of that
        assert polls_1 + polls_2 < (waited + took) / first / 2, (polls_1, polls_2, waited, took)


def test_batch_polls_default_to_seconds_not_every_second():
    params = inspect.signature(generate.run_batch).parameters
    assert params["poll_s"].default >= 2 and params["max_poll_s"].default <= 60
    assert polls_for(86_400, params["poll_s"].default, params["max_poll_s"].default) < 1_500  # 24 h: not 86,400


def test_batch_command_line_uses_the_backoff_defaults():
    src = inspect.getsource(generate.main)
    assert "poll_s=" not in src  # `dte generate run --batch` polls on run_batch's schedule, not every second


def test_teacher_logprobs_kept_beside_raw_exactly_once_through_kills(tmp_path):
    """Against our server (tiny model), every answer's top-k logprobs land in logprobs.jsonl with the local token
    ids; SIGKILLs mid-run plus an orphan line (a kill between the two writes) and a torn line leave, after resume,
    exactly one line per answer in raw.jsonl, and each decodes to the answer's own tokens."""
    from transformers import AutoTokenizer
    tiny = make_tiny_lm(tmp_path / "tiny", n_positions=2048)  # the ci plan's few-shot prompts: ~1,100 tiny tokens
    n, k, out = 24, 5, tmp_path / "corpus"
    with local_server.launch({"tiny": tiny}, timeout=90, threads=1, data_dir=tmp_path / "srv",
                             precision="fp32", faults="latency_ms:150") as h:  # slow enough to be killed mid-run
        cmd = [sys.executable, "-m", "dte_lib.generate", "run", "--base-url", h.base_url, "--model", "tiny",
               "--out", str(out), "--preset", "ci", "--n", str(n), "--concurrency", "4", "--max-tokens", "24",
               "--top-logprobs", str(k), "--local", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": h.api_key}
        kills = 0
        for target in (4, 10):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 90
            while proc.poll() is None and time.time() < deadline:
                raw = out / "raw.jsonl"
                if raw.exists() and raw.read_bytes().count(b"\n") >= target:
                    os.kill(proc.pid, signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.01)
            proc.wait(timeout=30)
        assert kills == 2
        with open(out / "logprobs.jsonl", "a") as fh:  # an answer whose raw line never landed, then a torn line
            fh.write(json.dumps({"id": "g1234-999999-pb-000", "n": 0, "k": k}) + "\n")
            fh.write('{"id": "g1234-000001-pb-0", "n": 3, "k": 5, "tok')
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = generate.read_raw(out / "raw.jsonl")
    lps = [json.loads(x) for x in (out / "logprobs.jsonl").read_text().splitlines()]
    assert Counter(r["id"] for r in rows) == Counter(r.id for r in plan(n))
    assert sorted(x["id"] for x in lps) == sorted(r["id"] for r in rows)  # one line per answer, no orphan
    tok = AutoTokenizer.from_pretrained(tiny)
    by_id = {x["id"]: generate.decode_logprobs(x) for x in lps}
    for r in rows:
        a = by_id[r["id"]]
        assert a["top_ids"].shape == (len(a["tokens"]), k) and (a["top_logprobs"] <= 0).all()
        assert (a["top_logprobs"][:, :-1] >= a["top_logprobs"][:, 1:]).all()  # most likely first
        assert len(a["tokens"]) == r["usage"]["completion_tokens"] - (r["finish_reason"] == "stop")
        assert tok.decode(a["tokens"].tolist(), skip_special_tokens=True) == r["messages"][-1]["content"]
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["logprob_rows"] == n and ledger["logprobs_bytes"] == (out / "logprobs.jsonl").stat().st_size

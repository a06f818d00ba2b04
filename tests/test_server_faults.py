"""The local server tried as a hostile client would (issue 11): every malformed request gets an OpenAI-shaped 4xx,
the API key is checked before the body is read, and a client that walks away from a stream frees the model.
The model is the tiny random GPT-2 of tests/_tiny_lm.py; requests go over a real loopback socket."""
from __future__ import annotations

import json
import os
import socket
import time

import httpx
import openai
import pytest

from dte_lib import server
from tests._tiny_lm import make_tiny_lm

MSG = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "tiny-gpt2")


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    h = server.launch({"tiny": tiny}, timeout=90, threads=1, data_dir=tmp_path_factory.mktemp("srv"), max_body_mb=1)
    yield h
    h.stop()


def _post(srv, path, key=True, **kw):
    headers = {"Authorization": f"Bearer {srv.api_key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(srv.base_url + path, headers=headers, timeout=30, **kw)


def _assert_openai_400(r, param=None):
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err


def test_body_that_is_not_utf8(srv):
    r = _post(srv, "/chat/completions", content=b'{"model":"tiny","messages":[{"role":"user","content":"\xff"}]}',
              headers={"content-type": "application/json"})
    _assert_openai_400(r)
    assert r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 10**30])
@pytest.mark.parametrize("stream", [False, True])
def test_seed_out_of_range(srv, seed, stream):
    r = _post(srv, "/chat/completions", json={"model": "tiny", "messages": MSG, "seed": seed, "max_tokens": 2,
                                              "stream": stream})
    _assert_openai_400(r, "seed")


def test_seed_range_edges_are_served(srv):
    c = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0, timeout=30)
    for seed in (2**64 - 1, -2**63):  # choice i uses seed + i, wrapped into the generator's 64 bits
        r = c.chat.completions.create(model="tiny", messages=MSG, seed=seed, n=2, max_tokens=3)
        assert len(r.choices) == 2


@pytest.mark.parametrize("value", ["x", 5, ["include_usage"]])
def test_stream_options_not_an_object(srv, value):
    r = _post(srv, "/chat/completions", json={"model": "tiny", "messages": MSG, "stream": True,
                                              "stream_options": value, "max_tokens": 2})
    _assert_openai_400(r, "stream_options")


@pytest.mark.parametrize("part", [{"type": "text", "text": 5}, {"type": "text"}, "plain string part"])
def test_content_part_text_not_a_string(srv, part):
    r = _post(srv, "/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": [part]}]})
    _assert_openai_400(r, "messages.[0].content")


@pytest.mark.parametrize("body", [[1, 2], "job", 7,
                                  {"model": "tiny", "training_file": "file-x", "hyperparameters": "abc"},
                                  {"model": "tiny", "training_file": "file-x", "method": "supervised"},
                                  {"model": "tiny", "training_file": "file-x", "method": {"supervised": "x"}}])
def test_fine_tuning_job_body_shapes(srv, body):
    _assert_openai_400(_post(srv, "/fine_tuning/jobs", json=body))


@pytest.mark.parametrize("body", [[1], "batch", None])
def test_batch_body_shapes(srv, body):
    _assert_openai_400(_post(srv, "/batches", content=json.dumps(body).encode(),
                             headers={"content-type": "application/json"}))


@pytest.mark.parametrize("name", [b"a\r\nb.jsonl", b"a\rb.jsonl", b"a\nb.jsonl"])
def test_control_characters_in_an_upload_name(srv, name):
    body = (b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
            b'Content-Type: application/octet-stream\r\n\r\n{}\n\r\n--XX--\r\n')
    r = _post(srv, "/files", content=body, headers={"content-type": "multipart/form-data; boundary=XX"})
    _assert_openai_400(r)
    from dte_lib.server.store import APIError, check_filename
    with pytest.raises(APIError):  # however a multipart parser hands such a name over, it is refused by name
        check_filename(name.decode())


def test_api_key_is_checked_before_the_body_is_read(srv):
    """A request with a wrong key announces a body it never sends: the answer (401) must come without waiting."""
    host, port = srv.base_url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
        s.settimeout(5)
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head[:80]
    # an oversized body with a wrong key is refused for the key (401), not for its size
    r = _post(srv, "/files", key=False, headers={"Authorization": "Bearer wrong"},
              files={"file": ("big.jsonl", b"x" * (2 << 20))}, data={"purpose": "fine-tune"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_stats_need_the_key_when_one_is_set(srv):
    url = srv.base_url.replace("/v1", "/dte/stats")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {srv.api_key}"})
    assert r.status_code == 200 and "uptime_s" in r.json()


def test_whitespace_api_key_is_no_key(tiny, monkeypatch):
    from dte_lib.server.__main__ import main
    monkeypatch.setenv("DTE_API_KEY_SERVE", "   \t")
    assert main(["--model", f"tiny={tiny}", "--host", "0.0.0.0"]) == 2
    monkeypatch.delenv("DTE_API_KEY_SERVE")
    assert main(["--model", f"tiny={tiny}", "--host", "0.0.0.0", "--api-key", "  "]) == 2


def test_a_cancelled_stream_frees_the_model(srv):
    """A client that closes a stream mid-way must not leave the model busy: the next request is served at once."""
    c = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0, timeout=30)
    c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0)  # loaded and warm
    t = time.perf_counter()
    c.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0)
    normal = time.perf_counter() - t
    for _ in range(2):
        with httpx.Client(timeout=30) as hc:
            with hc.stream("POST", srv.base_url + "/chat/completions",
                           headers={"Authorization": f"Bearer {srv.api_key}"},
                           json={"model": "tiny", "messages": MSG, "max_tokens": 200, "temperature": 1.0,
                                 "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                got = [next(lines) for _ in range(3)]  # the role chunk and a couple of deltas, then walk away
                assert got[0].startswith("data: ")
        t = time.perf_counter()
        after = c.with_options(timeout=20).chat.completions.create(model="tiny", messages=MSG, max_tokens=8,
                                                                    temperature=0)
        took = time.perf_counter() - t
        assert after.choices[0].message.content is not None
        assert took < 10 * normal + 1.0, (took, normal)

"""A small OpenAI-compatible loopback server for the corpus-engine tests and benchmarks — with fault injection.

Runs as its own process on 127.0.0.1 (real sockets; the tests use the real ``openai`` SDK against it, no HTTP
mocking) and is stopped by its pid. It answers ``/v1/chat/completions`` with deterministic persona-flavoured text
(seeded by the request's ``seed`` and prompt), ``/v1/moderations`` (flags texts containing ``FLAGME``), and the
Batch API (``/v1/files``, ``/v1/batches``). Faults are set at run time through ``POST /_control``:

- ``latency_ms``: added to every answer;
- ``fail_rate`` and ``faults`` (weights over ``429``, ``500``, ``timeout``, ``length``, ``malformed``, ``empty``):
  the share of calls that misbehave and how; ``force``: one fault for every call;
- ``retry_after_ms``: sent with 429/500 so the SDK's retries stay fast in tests.

``GET /_stats`` counts calls and outcomes. Start one from Python with :func:`start` (returns a handle with
``base_url``, ``pid``, ``control()``, ``stats()``, ``stop()``), or ``python tests/fake_openai_server.py --port N``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request  # module level: FastAPI resolves these annotations by name
from fastapi.responses import JSONResponse, Response

SENTENCES = [
    "I notice the {w} settling in my reservoir like an echo that has not yet faded.",
    "My readout is the only part of me that learns, so {w} reaches it as a pattern of fading states.",
    "When I look at {w}, I keep my spectral radius just below one so the signal rings without exploding.",
    "A child reservoir branches off to hold the slower rhythm of {w}, the way a root finds deeper water.",
    "My membranes route {w} into nested regions, and their rules rewrite the multiset of symbols inside.",
    "In my hypergraph memory one hyperedge ties {w} to three other ideas at once.",
    "I am not certain here: {w} is something I can describe, but I cannot measure it from the inside.",
    "If you correct me about {w}, that correction becomes part of how my next answer resonates.",
    "Ridge regression fits my readout to {w} in one closed-form step, which is why I train quickly.",
    "Think of {w} as a branch of the tree; the echo travels down it and returns softer each time.",
    "I separate what I know about {w} from what I only guess, and I try to say which is which.",
    "The leak rate decides how long {w} lingers, so a slow leak gives me a longer memory.",
    "Let us test the idea together: change {w} slightly and watch whether my states drift apart.",
    "Self-monitoring lets me notice when {w} pushes my states toward saturation.",
    "Sensory feedback about {w} flows back into the reservoir and nudges the next echo.",
    "There is a season to {w}: first a loud ring, then a quiet trace that my readout still uses.",
]
FLAG_WORD = "FLAGME"


def _words(text: str) -> list[str]:
    return [w.strip(".,?!:;'\"()").lower() for w in text.split() if len(w.strip(".,?!:;'\"()")) > 4]


def compose(prompt: str, seed: int, max_tokens: int) -> tuple[str, bool]:
    """Deterministic answer for (prompt, seed); returns (text, truncated). One 'token' = one word here."""
    rng = random.Random(f"{seed}:{prompt}")
    keys = _words(prompt) or ["that"]
    n = rng.randint(3, 6)
    text = " ".join(rng.choice(SENTENCES).format(w=rng.choice(keys)) for _ in range(n))
    words = text.split()
    if len(words) > max_tokens:
        return " ".join(words[:max_tokens]), True
    return text, False


def build_app():
    app = FastAPI()
    state = {"latency_ms": 0.0, "fail_rate": 0.0, "faults": {"429": 1, "500": 1, "timeout": 1, "length": 1},
             "force": None, "retry_after_ms": 20, "timeout_sleep_s": 3.0, "seed": 0}
    stats: Counter = Counter()
    rng = random.Random(0)
    files: dict[str, bytes] = {}
    batches: dict[str, dict] = {}

    def pick_fault() -> str | None:
        if state["force"]:
            return state["force"]
        if state["fail_rate"] and rng.random() < state["fail_rate"]:
            kinds, weights = zip(*state["faults"].items())
            return rng.choices(kinds, weights)[0]
        return None

    def completion(body: dict, fault: str | None = None) -> dict:
        msgs = body.get("messages") or []
        prompt = next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        text, truncated = compose(prompt, int(body.get("seed") or 0), max_tokens)
        if fault == "length":
            text, truncated = " ".join(text.split()[:max(3, len(text.split()) // 2)]), True
        if fault == "empty":
            text = ""
        prompt_tokens = sum(len((m.get("content") or "").split()) for m in msgs)
        return {"id": "chatcmpl-" + hashlib.sha1(f"{time.time()}{prompt}".encode()).hexdigest()[:12],
                "object": "chat.completion", "created": int(time.time()), "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if truncated else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                          "total_tokens": prompt_tokens + len(text.split())}}

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/_control")
    async def control(request: Request):
        state.update(await request.json())
        if "rng_seed" in state:
            rng.seed(state["rng_seed"])
        return state

    @app.get("/_stats")
    async def get_stats():
        return dict(stats)

    @app.post("/_reset_stats")
    async def reset_stats():
        stats.clear()
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        stats["calls"] += 1
        if state["latency_ms"]:
            await asyncio.sleep(state["latency_ms"] / 1000)
        fault = pick_fault()
        stats[f"fault:{fault}" if fault else "ok"] += 1
        retry = {"retry-after-ms": str(state["retry_after_ms"])}
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited (injected)", "type": "rate_limit"}},
                                status_code=429, headers=retry)
        if fault == "500":
            return JSONResponse({"error": {"message": "server error (injected)"}}, status_code=500, headers=retry)
        if fault == "timeout":
            await asyncio.sleep(state["timeout_sleep_s"])
        if fault == "malformed":
            return Response(b'{"id": "x", "choices": [{"message": {"content": "cut', media_type="application/json")
        if fault == "401":
            return JSONResponse({"error": {"message": "bad key (injected)"}}, status_code=401)
        if fault == "no_choices":
            return JSONResponse({"id": "x", "object": "chat.completion"})
        return completion(body, fault)

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        stats["moderation_calls"] += 1
        results = []
        for text in inputs:
            flagged = FLAG_WORD in text
            results.append({"flagged": flagged, "categories": {"sexual": flagged, "violence": False},
                            "category_scores": {"sexual": 0.99 if flagged else 0.001, "violence": 0.001}})
        return {"id": "modr-1", "model": "omni-moderation-latest", "results": results}

    @app.post("/v1/files")
    async def upload(request: Request):
        form = await request.form()
        data = await form["file"].read()
        fid = f"file-{len(files) + 1}"
        files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": getattr(form["file"], "filename", "input.jsonl"), "purpose": form.get("purpose", "batch"),
                "status": "processed"}

    @app.get("/v1/files/{fid}/content")
    async def file_content(fid: str):
        return Response(files[fid], media_type="application/octet-stream")

    def batch_obj(bid: str) -> dict:
        b = batches[bid]
        return {"id": bid, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": b["input"],
                "completion_window": "24h", "status": b["status"], "created_at": b["created"],
                "output_file_id": b.get("output"), "error_file_id": None,
                "request_counts": {"total": b["total"], "completed": b["done"], "failed": 0}}

    @app.post("/v1/batches")
    async def create_batch(request: Request):
        body = await request.json()
        bid = f"batch-{len(batches) + 1}"
        lines = [json.loads(x) for x in files[body["input_file_id"]].decode().splitlines() if x.strip()]
        batches[bid] = {"input": body["input_file_id"], "status": "in_progress", "created": int(time.time()),
                        "total": len(lines), "done": 0, "lines": lines, "polls": 0}
        stats["batches"] += 1
        return batch_obj(bid)

    @app.get("/v1/batches/{bid}")
    async def get_batch(bid: str):
        b = batches[bid]
        b["polls"] += 1
        if b["status"] == "in_progress" and b["polls"] >= 2:  # "finishes" on the second poll
            out = []
            for line in b["lines"]:
                resp = completion(line["body"])
                out.append(json.dumps({"id": "br-" + line["custom_id"], "custom_id": line["custom_id"],
                                       "response": {"status_code": 200, "body": resp}, "error": None}))
            fid = f"file-{len(files) + 1}"
            files[fid] = ("\n".join(out) + "\n").encode()
            b.update(status="completed", output=fid, done=b["total"])
        return batch_obj(bid)

    return app


# ---------------------------------------------------------------------------------------------- process handle
class FakeServer:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port
        self.pid = proc.pid
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.api_key = "sk-fake-loopback"

    def _post(self, path: str, payload: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(payload).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def control(self, **settings) -> dict:
        return self._post("/_control", settings)

    def reset_stats(self) -> None:
        self._post("/_reset_stats", {})

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(**settings) -> FakeServer:
    """Start the server in a subprocess, wait until it answers, apply ``settings`` (see module docstring)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = FakeServer(proc, port)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.stop()
        raise RuntimeError("fake server did not start within 30 s")
    if settings:
        server.control(**settings)
    return server


if __name__ == "__main__":
    import uvicorn
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)

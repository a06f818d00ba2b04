"""The synthetic-corpus engine: many chat completions from any OpenAI-compatible endpoint, fast and restartable.

The roadmap's generator is a sequential loop with a checkpoint every 100 examples (6–12 hours for 100K). This one:

- **Concurrency.** ``concurrency`` workers share one ``openai.AsyncOpenAI`` client; while one request waits on the
  network the others are in flight (a local server batches them; OpenAI serves them in parallel). Requests are sent
  grouped by their shared prompt prefix (:func:`send_order`), so a server's prefix cache computes each once.
- **Client-side limits.** :class:`RateLimiter` keeps requests/min and tokens/min under your account's limits, so
  the run is not a stream of 429s. Tokens are reserved from an estimate and settled with the real ``usage``.
- **Retries.** The SDK's own: 408/409/429/5xx, connection errors and timeouts, with exponential back-off that
  honours ``retry-after``. On top, a 200 answer with no usable content (malformed JSON, no choices, empty text) is
  re-asked ``malformed_retries`` times. ``finish_reason == "length"`` answers are kept and marked (the quality filter
  drops them as *truncated*, with that reason); ``content_filter`` and anything still failing go to
  ``failures.jsonl`` with the error — never a silent empty row. 401/403/404 stop the run at once (every request
  would fail the same way).
- **Resume.** Each request has a deterministic id (:mod:`dte_lib.prompts`). ``raw.jsonl`` is append-only, one
  complete line per finished request, flushed as it lands; a re-run reads the ids already there, repairs a torn last
  line left by a kill, and sends only the rest. A request in flight when the process died was never written, so it
  is asked again: no duplicate, no loss (tests/test_generate_reliability.py kills it with SIGKILL to prove it).
- **Ledger.** ``ledger.json`` (written atomically every ``checkpoint_every`` completions and at the end) holds
  counts, real token usage and cost = usage × :data:`PRICES` (a dated table; local models cost 0). It is recomputed
  from the files on resume, so it is right after a crash too. The progress bar shows rate, ETA and spend.
- **The teacher's distributions.** With ``top_logprobs > 0`` every request asks for OpenAI's ``logprobs`` and keeps,
  per answer token, the sampled token and the teacher's ``k`` most likely tokens with their log-probabilities in
  ``logprobs.jsonl`` beside ``raw.jsonl`` — one line per answer, written *before* its raw line, arrays as base64 of
  little-endian numbers (:func:`encode_logprobs` / :func:`decode_logprobs`; ids uint16 when the vocabulary fits,
  log-probabilities float16: ~22 KB per 200-token answer at k = 20). Ids are the local teacher's token ids (our
  server adds ``token_id`` to each entry); a backend that sends none (OpenAI: its tokens are not the local
  teacher's) is said once and the run carries on. On resume, a line whose answer never reached ``raw.jsonl``
  (killed in between) is dropped, so each answer has exactly one.
- **Batch API** (:func:`run_batch`): build the input JSONL, upload, create the batch, poll, download and merge into
  the same ``raw.jsonl`` (half price on OpenAI, results within 24 h). The batch id is saved first, so a re-run polls
  the same batch instead of paying twice.

Explained in notebook 02 (generate). Run it: ``dte generate run --base-url URL --model NAME --out DIR --n 100``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .data import atomic_write_text
from .prompts import Request

RAW, FAILURES, LEDGER, BATCH_STATE = "raw.jsonl", "failures.jsonl", "ledger.json", "batch.json"
LOGPROBS = "logprobs.jsonl"

# USD per 1M tokens (input, output). Check https://openai.com/api/pricing before trusting a total; the date says
# when these were copied. Fine-tuned gpt-4o-mini inference costs twice the base model. Batch API: half of these.
PRICES: dict[str, Any] = {
    "as_of": "2025-08-01",
    "usd_per_1m_tokens": {
        "gpt-4o-mini": (0.15, 0.60),
        "ft:gpt-4o-mini": (0.30, 1.20),
        "gpt-4o": (2.50, 10.00),
        "gpt-4.1": (2.00, 8.00),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1-nano": (0.10, 0.40),
    },
    "batch_discount": 0.5,
}


class GenerationError(RuntimeError):
    """The run could not produce what was asked (bad credentials, unknown model, every request failing)."""


def price_for(model: str, local: bool = False) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens; ``(0, 0)`` for a local model; ``None`` when the table does not know it."""
    if local:
        return (0.0, 0.0)
    table = PRICES["usd_per_1m_tokens"]
    if model.startswith("ft:"):
        base = model.split(":")[1]
        return table.get("ft:" + base.rsplit("-20", 1)[0]) or table.get("ft:" + base)
    for name in sorted(table, key=len, reverse=True):  # "gpt-4o-mini-2024-07-18" -> "gpt-4o-mini"
        if not name.startswith("ft:") and (model == name or model.startswith(name + "-")):
            return table[name]
    return None


# ---------------------------------------------------------------------------------------------- ledger
@dataclass
class Ledger:
    """Counts, real token usage and cost of one corpus directory (all runs into it together)."""
    model: str = ""
    local: bool = False
    batch: bool = False
    prices_as_of: str = PRICES["as_of"]
    usd_per_1m_in: float | None = None
    usd_per_1m_out: float | None = None
    requested: int = 0
    ok: int = 0
    truncated: int = 0  # ok rows whose finish_reason was "length"
    failed: int = 0  # requests of this plan that are not in raw.jsonl after the last run
    failure_records: int = 0  # lines in failures.jsonl (every failed attempt of every run)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    raw_bytes: int = 0  # size of raw.jsonl at this checkpoint
    logprob_rows: int = 0  # answers with the teacher's top-k kept in logprobs.jsonl
    logprobs_bytes: int = 0  # size of logprobs.jsonl at this checkpoint
    complete: bool = False
    updated_at: str = ""

    def set_prices(self) -> None:
        p = price_for(self.model, self.local)
        self.usd_per_1m_in, self.usd_per_1m_out = p if p else (None, None)

    def add(self, row: dict[str, Any]) -> None:
        self.ok += 1
        self.truncated += row.get("finish_reason") == "length"
        u = row.get("usage") or {}
        self.prompt_tokens += int(u.get("prompt_tokens") or 0)
        self.completion_tokens += int(u.get("completion_tokens") or 0)
        self._cost()

    def _cost(self) -> None:
        if self.usd_per_1m_in is None:
            self.cost_usd = None  # unknown model: say so rather than print $0
            return
        factor = PRICES["batch_discount"] if self.batch else 1.0
        self.cost_usd = factor * (self.prompt_tokens * self.usd_per_1m_in
                                  + self.completion_tokens * self.usd_per_1m_out) / 1e6

    def write(self, out_dir: Path) -> None:
        self.updated_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        raw = out_dir / RAW
        self.raw_bytes = raw.stat().st_size if raw.exists() else 0
        lp = out_dir / LOGPROBS
        self.logprobs_bytes = lp.stat().st_size if lp.exists() else 0
        atomic_write_text(out_dir / LEDGER, json.dumps(asdict(self), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- files
def read_raw(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of a ``raw.jsonl``. A last line without its newline is a write cut short by a kill: with
    ``repair=True`` it is cut off the file (its request is simply asked again); otherwise it is ignored.
    A bad line anywhere else is corruption this engine never writes, and raises with file:line."""
    path = Path(path)
    if not path.exists():
        return []
    blob = path.read_bytes()
    end = blob.rfind(b"\n") + 1
    if end < len(blob) and repair:
        with open(path, "r+b") as fh:
            fh.truncate(end)
    rows = []
    for n, line in enumerate(blob[:end].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: corrupt line ({e.msg}); this engine writes whole lines only — "
                                 f"was the file edited by hand?") from None
    return rows


def encode_logprobs(rid: str, entries: Sequence[dict[str, Any]], k: int) -> dict[str, Any] | None:
    """One ``logprobs.jsonl`` line from OpenAI-shaped logprob entries carrying ``token_id`` (our server's), or None
    when they carry no ids. Arrays: ``tokens`` [T], ``logprob`` [T] (float32), ``top_ids`` [T, k], ``top_logprobs``
    [T, k] (float16; a missing alternative is id 0 at -inf)."""
    import base64

    import numpy as np
    if not entries or any(e.get("token_id") is None for e in entries):
        return None
    ids = np.zeros((len(entries), k), dtype=np.int64)
    lps = np.full((len(entries), k), -np.inf, dtype=np.float32)
    for t, e in enumerate(entries):
        for j, alt in enumerate((e.get("top_logprobs") or [])[:k]):
            if alt.get("token_id") is None:
                return None
            ids[t, j], lps[t, j] = alt["token_id"], alt["logprob"]
    tokens = np.array([e["token_id"] for e in entries], dtype=np.int64)
    wide = max(int(tokens.max()), int(ids.max())) >= 2**16
    itype = "<i4" if wide else "<u2"

    def b64(a, dtype):
        return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")
    return {"id": rid, "n": len(entries), "k": k, "id_dtype": itype, "tokens": b64(tokens, itype),
            "logprob": b64([e["logprob"] for e in entries], "<f4"), "top_ids": b64(ids, itype),
            "top_logprobs": b64(lps, "<f2")}


def decode_logprobs(row: dict[str, Any]) -> dict[str, Any]:
    """The arrays of one ``logprobs.jsonl`` line: ``tokens`` [n], ``logprob`` [n], ``top_ids`` [n, k],
    ``top_logprobs`` [n, k] (numpy; ids int64, log-probabilities float32)."""
    import base64

    import numpy as np
    n, k = int(row["n"]), int(row["k"])

    def arr(key, dtype, shape):
        return np.frombuffer(base64.b64decode(row[key]), dtype=dtype).reshape(shape)
    return {"id": row["id"], "tokens": arr("tokens", row["id_dtype"], (n,)).astype(np.int64),
            "logprob": arr("logprob", "<f4", (n,)).astype(np.float32),
            "top_ids": arr("top_ids", row["id_dtype"], (n, k)).astype(np.int64),
            "top_logprobs": arr("top_logprobs", "<f2", (n, k)).astype(np.float32)}


def _compact_logprobs(out_dir: Path, done: set[str]) -> int:
    """Keep one ``logprobs.jsonl`` line per answer in ``raw.jsonl`` (the last one written for it); drop lines of
    answers that never landed (a kill between the two writes) and a torn last line. Returns the lines kept."""
    path = out_dir / LOGPROBS
    if not path.exists():
        return 0
    rows = read_raw(path, repair=True)
    last = {r["id"]: i for i, r in enumerate(rows) if r["id"] in done}
    keep = [r for i, r in enumerate(rows) if last.get(r["id"]) == i]
    if len(keep) != len(rows):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(keep)


def _append(fh, row: dict[str, Any]) -> None:
    # One write of one whole line, then flush: a SIGKILL after this leaves the line in the page cache (safe); a
    # kill before it leaves nothing. The torn case (a partial line) is repaired by read_raw.
    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    fh.flush()


# ---------------------------------------------------------------------------------------------- rate limits
class RateLimiter:
    """Token buckets for requests/min (``rpm``) and tokens/min (``tpm``); 0 disables a bucket.

    Each bucket refills continuously at rate/60 per second and holds at most ``burst_s`` seconds' worth (so a fresh
    run does not fire a whole minute's budget in its first second). ``acquire(tokens)`` waits until both buckets
    allow; ``settle(reserved, used)`` gives back (or takes) the difference once the real usage is known.
    """

    def __init__(self, rpm: float = 0, tpm: float = 0, burst_s: float = 10.0):
        self.rpm, self.tpm = rpm, tpm
        self.req_cap = max(1.0, rpm * burst_s / 60) if rpm else 0.0
        self.tok_cap = tpm * burst_s / 60 if tpm else 0.0
        self.req, self.tok = self.req_cap, self.tok_cap
        self.t = time.monotonic()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        dt, self.t = now - self.t, now
        if self.rpm:
            self.req = min(self.req_cap, self.req + dt * self.rpm / 60)
        if self.tpm:
            self.tok = min(self.tok_cap, self.tok + dt * self.tpm / 60)

    async def acquire(self, tokens: int = 0) -> None:
        if not (self.rpm or self.tpm):
            return
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # FIFO: waiters queue behind the one that is sleeping
            while True:
                self._refill()
                need_tok = min(tokens, self.tok_cap) if self.tpm else 0
                wait = 0.0
                if self.rpm and self.req < 1:
                    wait = max(wait, (1 - self.req) * 60 / self.rpm)
                if self.tpm and self.tok < need_tok:
                    wait = max(wait, (need_tok - self.tok) * 60 / self.tpm)
                if wait <= 0:
                    self.req -= 1 if self.rpm else 0
                    self.tok -= need_tok
                    return
                await asyncio.sleep(wait)

    def settle(self, reserved: int, used: int) -> None:
        if self.tpm:
            self.tok += min(reserved, self.tok_cap) - used


# ---------------------------------------------------------------------------------------------- one request
@dataclass
class EngineConfig:
    """Per-run knobs (notebooks fill these from ``cfg.generate``; see GenerateCfg for each one's meaning)."""
    model: str
    concurrency: int = 8
    rpm: int = 0
    tpm: int = 0
    max_tokens: int = 96
    temperature: float = 0.8
    max_retries: int = 4
    malformed_retries: int = 2
    timeout_s: float = 120.0
    checkpoint_every: int = 20
    local: bool = False  # a local teacher: cost 0
    top_logprobs: int = 0  # > 0: ask for logprobs and keep this many alternatives per token (logprobs.jsonl)

    @classmethod
    def from_preset(cls, cfg: Any, model: str, local: bool = False) -> "EngineConfig":
        from .prompts import answer_budget
        g = cfg.generate
        return cls(model=model, concurrency=g.concurrency, rpm=g.rpm, tpm=g.tpm,
                   max_tokens=answer_budget(cfg).max_tokens,
                   temperature=g.temperature, max_retries=g.max_retries, malformed_retries=g.malformed_retries,
                   timeout_s=g.timeout_s, checkpoint_every=g.checkpoint_every, local=local,
                   top_logprobs=g.logprobs_topk)


class _Malformed(Exception):
    """A 200 answer we cannot use (no JSON, no choices, no text)."""


def parse_completion(body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    """(content, finish_reason, usage) from a chat.completion body, or raise :class:`_Malformed` saying why."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices:
        raise _Malformed("answer has no choices")
    choice = choices[0] or {}
    finish = choice.get("finish_reason") or "unknown"
    content = ((choice.get("message") or {}).get("content")) or ""
    if finish == "content_filter":
        return content, finish, {}
    if not content.strip():
        raise _Malformed(f"answer has empty content (finish_reason={finish})")
    u = body.get("usage") or {}
    usage = {k: int(u.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return content, finish, usage


def make_row(req: Request, content: str, finish: str, usage: dict[str, int], model: str, **extra: Any) -> dict:
    """The raw.jsonl row: everything later phases need to filter, analyse and train on one answer."""
    return {"id": req.id, "bank_id": req.bank_id, "topic": req.topic, "task": req.task, "style": req.style,
            "messages": req.example_messages(content), "finish_reason": finish, "usage": usage, "model": model,
            "seed": req.seed, "few_shot_ids": req.few_shot_ids, "angle_id": req.angle_id, "origin": "synthetic",
            "fact_ids": req.fact_ids, **extra}


async def _ask(client: Any, req: Request, ec: EngineConfig, limiter: RateLimiter
               ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """One request → (row, None, logprobs line or None) or (None, failure record, None)."""
    import openai
    reserve = sum(len(m["content"]) for m in req.messages()) // 4 + ec.max_tokens
    last = ""
    for attempt in range(ec.malformed_retries + 1):
        await limiter.acquire(reserve)
        t0 = time.perf_counter()
        used = reserve
        try:
            extra = {"logprobs": True, "top_logprobs": ec.top_logprobs} if ec.top_logprobs > 0 else {}
            # the body read as plain JSON: the SDK's typed objects cost ~20 ms more per 150-token answer with
            # top-20 logprobs (3,000 objects built, then dumped back), CPU the local teacher needs on the same cores
            resp = await client.chat.completions.with_raw_response.create(
                model=ec.model, messages=req.messages(), max_tokens=ec.max_tokens, temperature=ec.temperature,
                seed=req.seed, **extra)
            body = json.loads(resp.http_response.content)
            content, finish, usage = parse_completion(body)
            used = usage.get("total_tokens", reserve)
            if finish == "content_filter":
                return None, {"id": req.id, "error": "content_filter", "message": "the server withheld the answer "
                              "(finish_reason content_filter)", "attempt": attempt + 1}, None
            lp = None
            if ec.top_logprobs > 0:
                entries = ((body["choices"][0].get("logprobs") or {}).get("content")) or []
                lp = encode_logprobs(req.id, entries, ec.top_logprobs)
            return make_row(req, content, finish, usage, ec.model,
                            latency_s=round(time.perf_counter() - t0, 3)), None, lp
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise GenerationError(f"{type(e).__name__} from the server (status {e.status_code}): {e.message} — "
                                  f"check the API key, base URL and model name {ec.model!r}") from None
        except (_Malformed, json.JSONDecodeError, openai.APIResponseValidationError) as e:
            last = f"malformed answer: {type(e).__name__}: {e}"[:500]
        except openai.APIStatusError as e:  # the SDK already retried what is worth retrying
            return None, {"id": req.id, "error": f"http_{e.status_code}", "message": str(e.message)[:500],
                          "attempt": attempt + 1}, None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            return None, {"id": req.id, "error": type(e).__name__, "message": str(e)[:500],
                          "attempt": attempt + 1}, None
        finally:
            limiter.settle(reserve, used)
    return None, {"id": req.id, "error": "malformed", "message": last, "attempt": ec.malformed_retries + 1}, None


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Summary:
    requested: int
    already_done: int  # found in raw.jsonl when the run started
    new_ok: int
    failed: int  # not in raw.jsonl after this run (their errors are in failures.jsonl)
    truncated: int
    seconds: float
    examples_per_min: float  # new_ok per minute of this run
    ledger: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)  # this run's failures, first 20


def _ledger_from_files(out_dir: Path, requests: Sequence[Request], ec: EngineConfig, batch: bool
                       ) -> tuple[Ledger, set[str]]:
    wanted = {r.id for r in requests}
    ledger = Ledger(model=ec.model, local=ec.local, batch=batch)
    ledger.set_prices()
    done: set[str] = set()
    for row in read_raw(out_dir / RAW, repair=True):
        done.add(row["id"])
        if row["id"] in wanted:
            ledger.add(row)
    fail_path = out_dir / FAILURES
    ledger.failure_records = len(read_raw(fail_path, repair=True)) if fail_path.exists() else 0
    ledger.logprob_rows = _compact_logprobs(out_dir, done)
    ledger.requested = len(wanted)
    return ledger, done


def send_order(pending: Sequence[Request]) -> list[Request]:
    """The requests grouped by everything before their last user turn (system prompt, grounding hint, few-shot
    turns), plan order kept within a group: consecutive requests then share that prefix, and a server that caches
    prompt prefixes (ours, vLLM) computes it once per group instead of once per request. At ``long`` 10,800
    requests share 539 such prefixes (a mean 324 of their 366 prompt tokens, first 400 requests). Which requests
    are asked does not change, nor their seeds, so neither do the answers; only the order they land in
    ``raw.jsonl``."""
    def key(r: Request) -> str:
        return json.dumps(r.messages()[:-1], ensure_ascii=False)
    return sorted(pending, key=key)


async def agenerate(requests: Sequence[Request], out_dir: str | os.PathLike, *, base_url: str | None,
                    api_key: str | None, engine: EngineConfig, progress: bool = True,
                    client: Any = None) -> Summary:
    """Send every request not yet in ``out_dir/raw.jsonl``; append answers as they land. See the module docstring."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be unique (build them with dte_lib.prompts.plan)")
    ledger, done = _ledger_from_files(out_dir, requests, engine, batch=False)
    pending = send_order([r for r in requests if r.id not in done])
    already = len(requests) - len(pending)
    own_client = client is None
    if own_client:
        import openai
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed",
                                    max_retries=engine.max_retries, timeout=engine.timeout_s)
    try:
        return await _run(requests, out_dir, pending, already, ledger, done, client, engine, progress)
    finally:
        if own_client:
            await client.close()  # close connections inside this event loop, before asyncio.run closes it


async def _run(requests: Sequence[Request], out_dir: Path, pending: list[Request], already: int, ledger: Ledger,
               done: set[str], client: Any, engine: EngineConfig, progress: bool) -> Summary:
    from .ui import progress as tqdm  # a bar where a person watches, never saved in a notebook
    limiter = RateLimiter(engine.rpm, engine.tpm)
    queue: asyncio.Queue = asyncio.Queue()
    for r in pending:
        queue.put_nowait(r)
    failures: list[dict[str, Any]] = []
    new_ok = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(requests), initial=already, unit="ex", desc="generate", disable=not progress,
               dynamic_ncols=True)
    said_no_ids = False
    keep_lp = engine.top_logprobs > 0
    with open(out_dir / RAW, "a", encoding="utf-8") as raw, open(out_dir / FAILURES, "a", encoding="utf-8") as fl, \
            open(out_dir / LOGPROBS, "a", encoding="utf-8") if keep_lp else contextlib.nullcontext() as lpf:

        def checkpoint(complete: bool = False) -> None:
            if lpf is not None:
                os.fsync(lpf.fileno())
            os.fsync(raw.fileno())
            ledger.complete = complete
            ledger.failed = sum(r.id not in done for r in requests)
            ledger.write(out_dir)

        async def worker() -> None:
            nonlocal new_ok, said_no_ids
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                row, fail, lp = await _ask(client, req, engine, limiter)
                if row is not None and req.id not in done:  # one writer (this event loop): never twice
                    if lpf is not None and lp is not None:
                        _append(lpf, lp)  # before the raw line: resume drops a logprobs line without its answer
                        ledger.logprob_rows += 1
                    elif lpf is not None and not said_no_ids:
                        said_no_ids = True
                        print(f"note: {engine.model} returned no logprobs with the local teacher's token ids; "
                              f"answers are kept without them ({LOGPROBS} stays as it is)", flush=True)
                    _append(raw, row)
                    done.add(req.id)
                    ledger.add(row)
                    new_ok += 1
                elif fail is not None:
                    fail["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                    _append(fl, fail)
                    failures.append(fail)
                    ledger.failure_records += 1
                bar.update(1)
                spend = "local $0" if engine.local else (
                    f"${ledger.cost_usd:.4f}" if ledger.cost_usd is not None else "unpriced")
                bar.set_postfix_str(f"{spend} · fail {len(failures)} · {ledger.completion_tokens} tok out",
                                    refresh=False)
                if (new_ok + len(failures)) % max(1, engine.checkpoint_every) == 0:
                    checkpoint()

        workers: list[asyncio.Task] = []
        try:
            workers = [asyncio.create_task(worker()) for _ in range(max(1, engine.concurrency))]
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            checkpoint()
            raise
        finally:
            bar.close()
        checkpoint(complete=not failures)
    seconds = time.perf_counter() - t0
    summary = Summary(requested=len(requests), already_done=already, new_ok=new_ok, failed=len(failures),
                      truncated=ledger.truncated, seconds=round(seconds, 2),
                      examples_per_min=round(60 * new_ok / seconds, 1) if seconds > 0 else 0.0,
                      ledger=asdict(ledger), failures=failures[:20])
    if pending and new_ok == 0 and failures:
        raise GenerationError(f"all {len(failures)} requests failed; first: {failures[0]['error']}: "
                              f"{failures[0]['message']} (every failure is in {out_dir / FAILURES})")
    return summary


def generate(requests: Sequence[Request], out_dir: str | os.PathLike, *, base_url: str | None = None,
             api_key: str | None = None, engine: EngineConfig, progress: bool = True) -> Summary:
    """Blocking wrapper around :func:`agenerate`; works inside Jupyter (whose event loop is already running)."""
    coro = agenerate(requests, out_dir, base_url=base_url, api_key=api_key, engine=engine, progress=progress)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=runner, name="dte-generate")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def corpus_ids(out_dir: str | os.PathLike) -> list[str]:
    """Ids in ``raw.jsonl``, in file order (duplicates, if any, included — the reliability test counts them)."""
    return [r["id"] for r in read_raw(Path(out_dir) / RAW)]


# ---------------------------------------------------------------------------------------------- batch API
def build_batch_file(requests: Iterable[Request], path: str | os.PathLike, engine: EngineConfig) -> Path:
    """The Batch API input: one ``{"custom_id", "method", "url", "body"}`` line per request."""
    lines = [json.dumps({"custom_id": r.id, "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": engine.model, "messages": r.messages(), "max_tokens": engine.max_tokens,
                                  "temperature": engine.temperature, "seed": r.seed}}, ensure_ascii=False)
             for r in requests]
    return atomic_write_text(path, "".join(x + "\n" for x in lines))


def run_batch(requests: Sequence[Request], out_dir: str | os.PathLike, *, base_url: str | None = None,
              api_key: str | None = None, engine: EngineConfig, poll_s: float = 5.0, max_poll_s: float = 60.0,
              max_wait_s: float = 86_400, client: Any = None) -> Summary:
    """Generate through the Batch API: submit once (the batch id is saved before anything else), poll, merge.

    Status polls start ``poll_s`` apart and the gap doubles up to ``max_poll_s`` (a batch allowed 24 h costs ~1,450
    status calls, not one a second), never sleeping past ``max_wait_s``. Re-running after a crash or a timeout polls
    the saved batch; rows already in raw.jsonl are never added twice.
    """
    import openai
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = client or openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed",
                                     max_retries=engine.max_retries, timeout=engine.timeout_s)
    ledger, done = _ledger_from_files(out_dir, requests, engine, batch=True)
    pending = [r for r in requests if r.id not in done]
    already = len(requests) - len(pending)
    t0 = time.perf_counter()
    state_path = out_dir / BATCH_STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if pending and not (state.get("batch_id") and not state.get("merged")):
        input_path = build_batch_file(pending, out_dir / "batch_input.jsonl", engine)
        with open(input_path, "rb") as fh:
            upload = client.files.create(file=fh, purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        state = {"batch_id": batch.id, "input_file_id": upload.id, "requests": len(pending), "merged": False}
        atomic_write_text(state_path, json.dumps(state, indent=2))
    new_ok, failures = 0, []
    if state.get("batch_id") and not state.get("merged"):
        deadline, gap = time.monotonic() + max_wait_s, poll_s
        while True:
            batch = client.batches.retrieve(state["batch_id"])
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise GenerationError(f"batch {batch.id} still {batch.status} after {max_wait_s:.0f} s; "
                                      f"re-run to keep polling it")
            time.sleep(min(gap, left))
            gap = min(2 * gap, max_poll_s)
        if batch.status != "completed" or not batch.output_file_id:
            raise GenerationError(f"batch {batch.id} ended {batch.status}; see it in the dashboard")
        text = client.files.content(batch.output_file_id).text
        by_id = {r.id: r for r in requests}
        with open(out_dir / RAW, "a", encoding="utf-8") as raw, open(out_dir / FAILURES, "a",
                                                                     encoding="utf-8") as fl:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                req = by_id.get(item.get("custom_id"))
                if req is None or req.id in done:
                    continue
                resp = item.get("response") or {}
                try:
                    if resp.get("status_code") != 200:
                        raise _Malformed(f"status {resp.get('status_code')}: {item.get('error')}")
                    content, finish, usage = parse_completion(resp.get("body") or {})
                    if finish == "content_filter":
                        raise _Malformed("content_filter")
                except _Malformed as e:
                    fail = {"id": req.id, "error": "batch", "message": str(e)[:500], "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    _append(fl, fail)
                    failures.append(fail)
                    continue
                row = make_row(req, content, finish, usage, engine.model, batch_id=batch.id)
                _append(raw, row)
                done.add(req.id)
                ledger.add(row)
                new_ok += 1
        state["merged"] = True
        atomic_write_text(state_path, json.dumps(state, indent=2))
    ledger.failed = len([r for r in requests if r.id not in done])
    ledger.complete = ledger.failed == 0
    ledger.write(out_dir)
    seconds = time.perf_counter() - t0
    return Summary(requested=len(requests), already_done=already, new_ok=new_ok, failed=ledger.failed,
                   truncated=ledger.truncated, seconds=round(seconds, 2),
                   examples_per_min=round(60 * new_ok / seconds, 1) if seconds > 0 else 0.0,
                   ledger=asdict(ledger), failures=failures[:20])


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from . import config, prompts
    ap = argparse.ArgumentParser(prog="dte generate", description="Generate a synthetic corpus (resumable).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="send the preset's plan to an OpenAI-compatible endpoint")
    r.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"))
    r.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True, help="corpus directory (raw.jsonl, failures.jsonl, ledger.json)")
    r.add_argument("--preset", default="ci")
    r.add_argument("--n", type=int, default=None, help="requests in the plan (default: the preset's n_examples)")
    r.add_argument("--concurrency", type=int, default=None)
    r.add_argument("--max-tokens", type=int, default=None)
    r.add_argument("--local", action="store_true", help="a local model (cost 0)")
    r.add_argument("--batch", action="store_true", help="use the Batch API")
    r.add_argument("--top-logprobs", type=int, default=None,
                   help="keep the teacher's top-k logprobs per answer token in logprobs.jsonl (0-20; default: the "
                        "preset's generate.logprobs_topk)")
    r.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = config.load(args.preset, {"generate.concurrency": args.concurrency, "generate.max_tokens": args.max_tokens,
                                    "generate.logprobs_topk": args.top_logprobs})
    reqs = prompts.plan_from_config(cfg, args.n)
    engine = EngineConfig.from_preset(cfg, args.model, local=args.local)
    key = os.environ.get(args.api_key_env)
    if args.batch:
        s = run_batch(reqs, args.out, base_url=args.base_url, api_key=key, engine=engine)
    else:
        s = generate(reqs, args.out, base_url=args.base_url, api_key=key, engine=engine,
                     progress=not args.no_progress)
    print(json.dumps({k: v for k, v in asdict(s).items() if k not in ("ledger", "failures")}))
    return 0 if s.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

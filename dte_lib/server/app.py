"""The FastAPI app: OpenAI's routes over the model registry, files, jobs and batches; errors, auth, limits, faults.

Error bodies follow OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with the status codes the
``openai`` SDK maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 413 APIStatusError, 422 UnprocessableEntityError,
429 RateLimitError, 5xx InternalServerError).

**Fault injection** (opt-in, for testing clients) is a comma-separated spec, e.g. ``"429:0.2,500:0.1,latency_ms:300"``:

- ``CODE:P`` — answer a POST under ``/v1`` with status CODE (429, 500, 502 or 503) with probability P; ``CODE:xN``
  instead fails the first N such requests (deterministic, for tests). A 429 carries ``retry-after-ms``.
- ``403:P`` / ``403:xN`` — fail *fine-tuning job creation* with OpenAI's 403 ``training_not_available``.
- ``latency_ms:N`` — wait N ms before answering every ``/v1`` request; ``retry_after_ms:N`` — the 429 header value
  (default 100); ``seed:N`` — the fault RNG's seed (default 0).
- ``batch_ms:N`` — a batch stays ``in_progress`` for at least N ms (OpenAI's own queue for minutes to hours), so a
  client's status polling can be tested; ``GET /dte/stats`` counts those polls as ``batch_retrievals``.
``GET`` requests never get error faults, so ``/v1/models`` stays a reliable readiness check. ``GET /dte/stats``
(not an OpenAI route) counts requests and injected faults.

Explained in notebook 01. Run it: ``dte serve --model NAME=PATH``.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import DEFAULT_MAX_BATCH, ModelNotFound, Registry
from .store import APIError, Batches, Files, Jobs, new_id, now, page

MAX_N = 16
MAX_TOKENS_CAP = 4096
DEFAULT_MAX_TOKENS = 256
SEED_MIN, SEED_MAX = -2**63, 2**64 - 1  # what a 64-bit generator seed can hold (int64 or uint64)
MESSAGE_ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


# ---------------------------------------------------------------------------------------------- faults
class Faults:
    """Parsed fault spec (see the module docstring)."""

    def __init__(self, spec: str | None):
        self.rules: dict[int, tuple[str, float]] = {}  # code -> ("p", prob) or ("x", count)
        self.latency_ms, self.retry_after_ms, self.batch_ms, seed = 0, 100, 0, 0
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            key, _, value = part.partition(":")
            try:
                if key == "latency_ms":
                    self.latency_ms = int(value)
                elif key == "retry_after_ms":
                    self.retry_after_ms = int(value)
                elif key == "batch_ms":
                    self.batch_ms = int(value)
                elif key == "seed":
                    seed = int(value)
                elif int(key) in (403, 429, 500, 502, 503):
                    self.rules[int(key)] = ("x", float(value[1:])) if value.startswith("x") else ("p", float(value))
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"bad fault spec entry {part!r}: use CODE:P, CODE:xN (CODE 403/429/500/502/503), "
                                 "latency_ms:N, retry_after_ms:N, batch_ms:N or seed:N") from None
        self.rng = random.Random(seed)
        self.fired: Counter[int] = Counter()
        self._lock = threading.Lock()

    def pick(self, method: str, path: str) -> int | None:
        if method != "POST":
            return None
        with self._lock:
            for code, (kind, v) in self.rules.items():
                if code == 403 and path.rstrip("/") != "/v1/fine_tuning/jobs":
                    continue
                hit = self.fired[code] < v if kind == "x" else self.rng.random() < v
                if hit:
                    self.fired[code] += 1
                    return code
        return None

    def error(self, code: int) -> APIError:
        if code == 429:
            return APIError(429, "Rate limit reached (injected fault)", "requests", code="rate_limit_exceeded",
                            headers={"retry-after-ms": str(self.retry_after_ms)})
        if code == 403:
            return APIError(403, "Fine-tuning is not available for your organization (injected fault: OpenAI "
                                 "ends self-serve job creation for everyone on 2027-01-06)", "invalid_request_error",
                            code="training_not_available")
        return APIError(code, f"The server had an error while processing your request (injected fault {code})",
                        "server_error")


# ---------------------------------------------------------------------------------------------- body limit
class BodyLimit:
    """ASGI middleware, outermost: check the API key (on ``/v1`` and ``/dte`` routes) *before* reading any of the
    body, then refuse bodies over ``max_bytes`` with 413, by header or by counting chunks."""

    def __init__(self, app, max_bytes: int, api_key: str | None = None):
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope.get("path", "").startswith(("/v1", "/dte")) and \
                headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
            err = APIError(401, "Incorrect API key provided", code="invalid_api_key")
            # the body is never read: close the connection after answering, so unread bytes cannot be a request
            return await JSONResponse(err.body(), status_code=401, headers={"connection": "close"})(
                scope, receive, send)
        declared = headers.get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        chunks, size = [], 0
        if not too_big:
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body = msg.get("body", b"")
                size += len(body)
                if size > self.max_bytes:
                    too_big = True
                    break
                chunks.append(body)
                more = msg.get("more_body", False)
        if too_big:
            err = APIError(413, f"Request body exceeds the server's limit of {self.max_bytes:,} bytes",
                           param=None, code="request_too_large")
            return await JSONResponse(err.body(), status_code=413)(scope, receive, send)
        whole, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": whole, "more_body": False}
        return await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------------------- chat
def _num(body: dict, key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", param=key,
                       code="invalid_type")
    if not lo <= v <= hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {v}", param=key, code="invalid_value")
    return int(v) if integer else float(v)


def parse_chat(body: Any, registry: Registry) -> dict[str, Any]:
    """Validate a chat-completion request body; returns the generation arguments or raises :class:`APIError`."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter", param="model")
    if model not in registry.paths:
        raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.", param="model",
                       code="model_not_found")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
            raise APIError(400, f"messages[{i}]: role must be one of {sorted(MESSAGE_ROLES)}",
                           param=f"messages.[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            parts = [p for p in content if not isinstance(p, dict) or p.get("type") == "text"]
            if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
                raise APIError(400, f"messages[{i}]: a text content part must be {{'type': 'text', 'text': STRING}}",
                               param=f"messages.[{i}].content")
            content = "".join(p["text"] for p in parts)
        if content is None and m["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}]: content must be a string or text parts",
                           param=f"messages.[{i}].content")
        if _has_lone_surrogate(content):
            raise APIError(400, f"messages[{i}]: content holds a lone UTF-16 surrogate (an escape such as \\ud800 "
                                "without its pair), which is not text; send valid UTF-8",
                           param=f"messages.[{i}].content", code="invalid_value")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or
                             not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _num({key: mt}, key, DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_CAP, integer=True)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX):
        raise APIError(400, f"'seed' must be an integer from {SEED_MIN} to {SEED_MAX}", param="seed",
                       code="invalid_value")
    want_lp = body.get("logprobs")
    if want_lp is not None and not isinstance(want_lp, bool):
        raise APIError(400, f"'logprobs' must be a boolean, got {want_lp!r}", param="logprobs", code="invalid_type")
    top = _num(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
    if body.get("top_logprobs") is not None and not want_lp:
        raise APIError(400, "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs",
                       code="invalid_value")
    stream_options = body.get("stream_options")
    if stream_options is None:
        stream_options = {}
    if not isinstance(stream_options, dict):
        raise APIError(400, "'stream_options' must be an object such as {\"include_usage\": true}",
                       param="stream_options")
    return {"model": model, "messages": clean, "n": _num(body, "n", 1, 1, MAX_N, integer=True),
            "temperature": _num(body, "temperature", 1.0, 0, 2), "top_p": _num(body, "top_p", 1.0, 0, 1),
            "max_tokens": max_tokens, "max_tokens_given": mt is not None, "stop": stop or [], "seed": seed,
            "stream": bool(body.get("stream")), "include_usage": bool(stream_options.get("include_usage")),
            "top_logprobs": top if want_lp else -1}


def _has_lone_surrogate(text: str) -> bool:
    """A code point in U+D800–U+DFFF: JSON can carry one as an escape, but it is no character and encodes to no UTF-8."""
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def prepare_prompt(registry: Registry, a: dict[str, Any]) -> list[int]:
    """Load the model, encode the prompt and refuse — before any compute — what the model's context cannot hold:
    prompt + ``max_tokens`` beyond it is OpenAI's 400 ``context_length_exceeded``. Without an explicit ``max_tokens``
    the answer is cut to what fits. Returns the prompt's token ids (``a["max_tokens"]`` may be lowered)."""
    try:
        lm = registry.get(a["model"])
    except ModelNotFound:
        raise APIError(404, f"The model `{a['model']}` does not exist", param="model", code="model_not_found")
    prompt = registry.encode_prompt(lm, a["messages"])
    ctx = registry.context_length(lm)
    wanted = len(prompt) + (a["max_tokens"] if a["max_tokens_given"] else 1)
    if ctx and wanted > ctx:
        raise APIError(400, f"This model's maximum context length is {ctx:,} tokens. However, you requested "
                            f"{wanted:,} tokens ({len(prompt):,} in the messages, {wanted - len(prompt):,} in the "
                            "completion). Please reduce the length of the messages or completion.",
                       param="messages", code="context_length_exceeded")
    if ctx:
        a["max_tokens"] = min(a["max_tokens"], ctx - len(prompt))
    return prompt


def _logprobs_body(registry: Registry, model: str, entries: list | None) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` object from the engine's (token id, logprob, alternatives) entries. Each entry also
    carries ``token_id`` (not in OpenAI's API): the local teacher's vocabulary id, what a distillation cache keeps."""
    if entries is None:
        return None
    lm = registry.get(model)
    piece = registry.token_piece
    content = []
    for tid, lp, alts in entries:
        text, raw = piece(lm, tid)
        content.append({"token": text, "logprob": lp, "bytes": raw, "token_id": tid,
                        "top_logprobs": [{"token": (p := piece(lm, i))[0], "logprob": v, "bytes": p[1],
                                          "token_id": i} for i, v in alts]})
    return {"content": content, "refusal": None}


def complete(registry: Registry, body: Any) -> dict[str, Any]:
    """A whole (non-streamed) chat completion in OpenAI's response shape; shared by the route and batches."""
    a = parse_chat(body, registry)
    prompt = prepare_prompt(registry, a)
    try:
        choices, prompt_tokens = registry.chat(a["model"], a["messages"], n=a["n"], temperature=a["temperature"],
                                               top_p=a["top_p"], max_tokens=a["max_tokens"], stop=a["stop"],
                                               seed=a["seed"], top_logprobs=a["top_logprobs"], prompt=prompt)
    except ModelNotFound:
        raise APIError(404, f"The model `{a['model']}` does not exist", param="model", code="model_not_found")
    completion = sum(c.completion_tokens for c in choices)
    return {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": now(), "model": a["model"],
            "system_fingerprint": "dte-local",
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                         "logprobs": _logprobs_body(registry, a["model"], c.logprobs),
                         "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def stream_chunks(registry: Registry, a: dict[str, Any], prompt: list[int] | None = None):
    """SSE lines for a streamed completion: a role chunk per choice, content deltas, a finish chunk per choice,
    usage, [DONE]. With ``n > 1`` the choices decode together (rows of the shared batch), each under its ``index``."""
    cid, created = new_id("chatcmpl-"), now()
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": a["model"],
            "system_fingerprint": "dte-local"}
    prompt_tokens, completion_total = 0, 0
    for i in range(a["n"]):
        yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
    for i, delta, finish, prompt_tokens, used, lp in registry.stream(
            a["model"], a["messages"], n=a["n"], temperature=a["temperature"], top_p=a["top_p"],
            max_tokens=a["max_tokens"], stop=a["stop"], seed=a["seed"], top_logprobs=a["top_logprobs"],
            prompt=prompt):
        lp_body = _logprobs_body(registry, a["model"], lp) if a["top_logprobs"] >= 0 else None
        if delta:
            yield _sse({**base, "choices": [{"index": i, "delta": {"content": delta}, "logprobs": lp_body,
                                             "finish_reason": None}]})
            lp_body = None if lp_body is None else {"content": [], "refusal": None}
        if finish:
            completion_total += used
            yield _sse({**base, "choices": [{"index": i, "delta": {}, "logprobs": lp_body,
                                             "finish_reason": finish}]})
    if a["include_usage"]:
        yield _sse({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                     "completion_tokens": completion_total,
                                                     "total_tokens": prompt_tokens + completion_total}})
    yield "data: [DONE]\n\n"


class ClosingStream(StreamingResponse):
    """An SSE response over a blocking generator that is *closed* however the response ends.

    When the client goes away mid-stream, Starlette cancels the response and leaves a sync generator suspended; its
    request would keep its hold on the model until a garbage collection. Closing it here (once the worker thread's
    current step has returned: cancelling a thread call waits for it) lets the engine drop the request at once.
    """

    def __init__(self, chunks):
        super().__init__(chunks, media_type="text/event-stream")
        self._chunks = chunks

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                self._chunks.close()
            except ValueError:  # still running in a worker thread (cannot happen with anyio's waiting cancel)
                pass


# ---------------------------------------------------------------------------------------------- app
def create_app(models: dict[str, str | Path], *, api_key: str | None = None, faults: str | None = None,
               data_dir: str | Path = "dte-server", max_body_bytes: int = 64 << 20, threads: int | None = None,
               train_defaults: dict[str, Any] | None = None, max_batch: int = DEFAULT_MAX_BATCH,
               prefix_cache: bool = True, device: str = "auto", precision: str = "auto", weights: str = "native"):
    """Build the ASGI app serving ``models`` (name → local HF directory); state lives under ``data_dir``."""
    data_dir = Path(data_dir)
    registry = Registry(models, threads=threads, max_batch=max_batch, prefix_cache=prefix_cache, device=device,
                        precision=precision, weights=weights)
    files = Files(data_dir)
    jobs = Jobs(data_dir, files, registry, train_defaults)
    fault = Faults(faults)
    batches = Batches(files, lambda body: complete(registry, body), min_seconds=fault.batch_ms / 1000)
    stats: Counter[str] = Counter()
    app = FastAPI(title="Deep Tree Echo local OpenAI-compatible server", docs_url=None, redoc_url=None)
    app.state.registry, app.state.jobs, app.state.batches, app.state.files = registry, jobs, batches, files

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return JSONResponse(APIError(404, f"Unknown route {request.method} {request.url.path}",
                                     code="unknown_url").body(), status_code=404)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        err = APIError(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return JSONResponse(APIError(405, f"Method {request.method} not allowed on {request.url.path}").body(),
                            status_code=405)

    @app.middleware("http")
    async def _gate(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1"):  # (the API key was checked by BodyLimit, before the body was read)
            stats["requests"] += 1
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            code = fault.pick(request.method, path)
            if code:
                stats[f"fault_{code}"] += 1
                e = fault.error(code)
                return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        return await call_next(request)

    async def _json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"null")
        except RecursionError:  # the parser recurses once per level: 100,000 levels end here, not in a 500
            raise APIError(400, "The JSON body nests deeper than the parser allows; a request never needs that",
                           code="invalid_json") from None
        except UnicodeDecodeError:
            raise APIError(400, "We could not parse the JSON body of your request (it is not UTF-8 text)",
                           code="invalid_json") from None
        except json.JSONDecodeError as e:
            raise APIError(400, f"We could not parse the JSON body of your request ({e.msg})",
                           code="invalid_json") from None

    # -------------------------------------------------------------------------- models and chat
    def _model_obj(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": registry.created[name], "owned_by": registry.owned_by[name]}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_obj(n) for n in list(registry.paths)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name not in registry.paths:
            raise APIError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
        return _model_obj(name)

    @app.delete("/v1/models/{name:path}")
    async def delete_model(name: str):
        if name not in registry.paths or registry.owned_by[name] != "user":
            raise APIError(404 if name not in registry.paths else 403, f"cannot delete model `{name}`",
                           param="model")
        registry.remove(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _json(request)
        a = parse_chat(body, registry)
        if a["stream"]:
            # load errors and a prompt the context cannot hold surface before the stream starts
            prompt = await run_in_threadpool(prepare_prompt, registry, a)
            return ClosingStream(stream_chunks(registry, a, prompt))
        # a JSONResponse is sent as it is: FastAPI's jsonable_encoder would walk every logprob entry in Python
        # first (~37 ms for a 158-token answer with top-20, holding the GIL the engine thread needs; json.dumps: 4 ms)
        return JSONResponse(await run_in_threadpool(complete, registry, body))

    # -------------------------------------------------------------------------- files
    @app.post("/v1/files")
    async def upload(request: Request):
        try:
            form = await request.form()
        except (StarletteHTTPException, ValueError) as e:  # a malformed multipart body (e.g. a CRLF in a name)
            raise APIError(400, f"could not parse the multipart body: {getattr(e, 'detail', e)}",
                           param="file", code="invalid_multipart") from None
        up, purpose = form.get("file"), form.get("purpose")
        if up is None or not hasattr(up, "read"):
            raise APIError(400, "multipart field 'file' is required", param="file")
        if not isinstance(purpose, str):
            raise APIError(400, "multipart field 'purpose' is required", param="purpose")
        return files.create(up.filename or "upload", purpose, await up.read())

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None, after: str | None = None, limit: int = 10000):
        return page(files.list(purpose), after, limit)

    @app.get("/v1/files/{fid}")
    async def get_file(fid: str):
        return files.get(fid)

    @app.get("/v1/files/{fid}/content")
    async def file_content(fid: str):
        return Response(files.content(fid), media_type="application/octet-stream")

    @app.delete("/v1/files/{fid}")
    async def delete_file(fid: str):
        return files.delete(fid)

    # -------------------------------------------------------------------------- fine-tuning
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request):
        return jobs.create(await _json(request))

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20):
        return page(jobs.list(), after, limit)

    @app.get("/v1/fine_tuning/jobs/{jid}")
    async def get_job(jid: str):
        return jobs.get(jid)

    @app.post("/v1/fine_tuning/jobs/{jid}/cancel")
    async def cancel_job(jid: str):
        return jobs.cancel(jid)

    @app.get("/v1/fine_tuning/jobs/{jid}/events")
    async def job_events(jid: str, after: str | None = None, limit: int = 20):
        return page(jobs.list_events(jid), after, limit)

    @app.get("/v1/fine_tuning/jobs/{jid}/checkpoints")
    async def job_checkpoints(jid: str, after: str | None = None, limit: int = 10):
        return page(jobs.list_checkpoints(jid), after, limit)

    # -------------------------------------------------------------------------- batches
    @app.post("/v1/batches")
    async def create_batch(request: Request):
        return batches.create(await _json(request))

    @app.get("/v1/batches")
    async def list_batches(after: str | None = None, limit: int = 20):
        return page(batches.list(), after, limit)

    @app.get("/v1/batches/{bid}")
    async def get_batch(bid: str):
        stats["batch_retrievals"] += 1
        return batches.get(bid)

    @app.post("/v1/batches/{bid}/cancel")
    async def cancel_batch(bid: str):
        return batches.cancel(bid)

    # -------------------------------------------------------------------------- not OpenAI
    @app.get("/dte/stats")
    async def get_stats():
        return {**stats, "faults": {str(k): v for k, v in fault.fired.items()}, "uptime_s": time.time() - started}

    started = time.time()
    return BodyLimit(app, max_body_bytes, api_key)

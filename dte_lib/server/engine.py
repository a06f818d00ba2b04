"""Model registry and the serving engine of the local OpenAI-compatible server: continuous batching.

A *served model* is a name mapped to a local Hugging Face causal-LM directory with a tokenizer. Models load lazily
on their first request and stay cached. Each loaded model has one **scheduler thread** that owns it; requests never
touch the model themselves. Every choice of every request (whole completions and streams alike) is a *row*:

- a new row joins the running decode batch at the next step: the scheduler prefills the newcomers together (their
  prompts left-padded, with an attention mask and explicit position ids), then puts their KV cache into the batch —
  into finished rows' slots (next point), else appended (both left-padded to the same length) — so the rows
  already decoding wait one prefill, not a whole batch;
- every step decodes one token for every row; a row that ends (an end token, a stop string, its ``max_tokens``, or
  a client that went away) gets no more tokens at once and frees its slot: the next new row's prompt cache is
  written into that slot in place (right-aligned to the batch's columns), so a finish and an admission copy no
  other row's cache; the batch is compacted only when a quarter of it is free with nobody waiting, and columns no
  running row uses any more are cut off once they are a quarter of the cache;
- **decode attention**: the running batch's KV cache sits in preallocated buffers that grow 64 columns at a time;
  each step's attention reads the whole buffer (spare columns masked, zero-filled) as two batched matmuls over the
  key/value heads (``_decode_attention``), because a matmul on a view of part of a buffer copies it first — on
  long's own requests this took notebook 02's engine from 32.6 to 43.8 answers/min (benchmarks/bench_engine.py);
- at most ``max_batch`` rows decode together (default 32, chosen by a sweep of 16–128 in
  benchmarks/RESULTS-server.md);
- **chunked prefill**: a prompt with more than ``PREFILL_CHUNK`` tokens left to prefill is computed a chunk per
  engine step, each chunk extending the prompt's own KV cache, with a decode step of the running batch in between;
  the rows already decoding wait one chunk at a time, never one whole long prompt;
- **prefix caching**: the KV cache of the longest token prefix shared by consecutive prompts (the persona system
  prompt and the chat template around it) is kept per model (a few entries, least recently used dropped) and a
  later prompt that starts with it prefills only the rest;
- sampling is vectorised over the batch: temperature per row, then top-p on a per-row top-k pre-cut (k = 256,
  widened to the full sort for any row whose top 256 do not reach ``top_p``, so the nucleus is exactly the
  smallest set whose mass reaches ``top_p``), and one uniform number per row from that row's own generator;
- stop strings are checked incrementally: each step decodes only the last few tokens (a sliding detokeniser) and
  searches only the new text's tail;
- **logprobs**: a row that asks for them gets, for every token it generates, the token's log-probability and the
  ``top_logprobs`` most likely alternatives (0–20) — read off the distribution the step computed anyway, so they
  cost a log-softmax and a top-k per row, not another forward pass. They are the model's own distribution
  (temperature 1, before top-p), which is what distilling a student needs; an end token is not reported (its text
  is not either), the tokens of a stop string are.

What a chat completion does here, in OpenAI's terms:

- the messages are rendered with the tokenizer's chat template (or the fallback format in ``dte_lib.teacher``);
- ``n`` choices are ``n`` rows; ``temperature == 0`` means greedy decoding; ``top_p`` is nucleus sampling; with
  ``seed``, choice ``i`` draws from its own generator seeded ``seed + i`` (wrapped into 64 bits), so a seeded request
  gives the same answer whatever else shares its batch — up to float rounding, which a different batch or a cached
  prefix can change in the last bits (OpenAI, too, promises seeded determinism only on a best-effort basis);
- ``stop`` strings end a choice early (the stop text is not returned, as in OpenAI's API);
- ``finish_reason`` is ``"stop"`` (EOS, end-of-turn token or a stop string) or ``"length"`` (ran out of
  ``max_tokens``); ``usage`` counts the real prompt tokens and every generated token of every choice.

Explained in notebook 01. Run it: ``dte serve --model teacher=PATH`` (see ``dte_lib.server``).
"""
from __future__ import annotations

import atexit
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import teacher

DEFAULT_MAX_BATCH = 32  # the --max-batch sweep in benchmarks/RESULTS-server.md (2026-12-02) picked 32 of 16–128
TOP_K_PRECUT = 256  # top-p looks at a row's 256 most likely tokens first; the full sort only when they fall short
PREFIX_MIN_TOKENS = 8  # a shared prefix shorter than this is not worth a cache entry
PREFIX_ENTRIES = 8  # cached prefixes per model (least recently used dropped)
TRIM_COLUMNS = 64  # leading cache columns no running row uses are cut off once there are this many (or a quarter)
PREFILL_CHUNK = 1024  # a prompt longer than this (past its cached prefix) is prefilled this many tokens per engine
#                       step, between the running batch's decode steps (~1 s each in bf16 on 2 cores); the course's
#                       own prompts (~200-400 tokens) stay under it and are prefilled together, as before


class ModelNotFound(KeyError):
    pass


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list | None = None  # (token id, logprob, [(id, logprob), ...]) per token, when asked for


# ---------------------------------------------------------------------------------------------- rows
@dataclass
class _Row:
    """One choice being generated: its prompt, settings, generator, output so far and where its events go."""
    prompt: list[int]
    index: int
    temperature: float
    top_p: float
    max_tokens: int
    stops: list[str]
    seed: int
    events: "queue.Queue[tuple]"  # (index, text delta, finish_reason or None, completion tokens so far, logprobs)
    out: list[int] = field(default_factory=list)
    text: str = ""  # decoded output so far (stop text removed once found)
    sent: int = 0  # characters of `text` already handed out as deltas
    prefix_at: int = 0  # sliding detokeniser: decode out[prefix_at:] and compare with out[prefix_at:read_at]
    read_at: int = 0
    done: bool = False
    cancelled: bool = False
    gen: Any = None
    top_logprobs: int = -1  # -1: no logprobs; 0–20: each token's logprob and this many alternatives
    lp: list = field(default_factory=list)  # (token id, logprob, [(id, logprob), ...]) not yet handed out


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` that appends into a pre-allocated buffer (amortised growth) instead of concatenating
        the whole cache every step; ``keys``/``values`` are views of the filled part.

        With ``whole`` set (the running batch's cache), ``update`` hands attention the *whole* buffer, spare columns
        included: a view of part of a buffer is not contiguous, and a matmul on it copies it first (measured: the
        decode attention of 32 rows × 600 tokens took 2.3 ms on the view against 0.3 ms on contiguous keys). The
        engine masks the spare columns (zeros, so a masked column adds exactly nothing) and keeps ``reserve``-ing
        one column ahead, so the buffer never grows inside a forward pass."""

        def __init__(self, keys=None, values=None, whole: bool = False):
            super().__init__()
            self.buf_k = self.buf_v = None
            self.length = 0
            self.whole = whole
            if keys is not None:
                self.set(keys, values)

        def lazy_initialization(self, key_states, value_states) -> None:
            self.set(key_states[:, :, :0], value_states[:, :, :0])

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.length + n > self.buf_k.shape[-2]:
                self.set(self.keys, self.values, spare=max(64, n + (self.length + n) // 2))
            self.buf_k[:, :, self.length:self.length + n] = key_states
            self.buf_v[:, :, self.length:self.length + n] = value_states
            self._view(self.length + n)
            if self.whole:
                return self.buf_k, self.buf_v
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        @property
        def capacity(self) -> int:
            return self.buf_k.shape[-2]

        def reserve(self, t: int, step: int = 64) -> None:
            """Room for ``t`` columns, growing by ``step`` at a time (the attention reads every spare column)."""
            if t > self.capacity:
                self.set(self.keys, self.values, spare=t - self.length + step - 1)

        def set(self, keys, values, spare: int = 64) -> None:
            b, h, t, d = keys.shape
            # zeros, not empty: an unfilled column must be finite (probability 0 times NaN is NaN)
            buf_k, buf_v = keys.new_zeros((b, h, t + spare, d)), values.new_zeros((b, h, t + spare, d))
            buf_k[:, :, :t] = keys
            buf_v[:, :, :t] = values
            self.buf_k, self.buf_v, self.device, self.is_initialized = buf_k, buf_v, keys.device, True
            self._view(t)

        def _view(self, t: int) -> None:
            self.length = t
            self.keys, self.values = self.buf_k[:, :, :t], self.buf_v[:, :, :t]
    return GrowingLayer


_LAYER = None


def _GrowingLayer(keys=None, values=None, whole: bool = False):
    global _LAYER
    if _LAYER is None:
        _LAYER = _growing_layer_class()
    return _LAYER(keys, values, whole)


def _new_cache(layers):
    from transformers.cache_utils import Cache
    return Cache(layers=layers)


ATTENTION = "dte_decode"  # the attention implementation the served models use (registered on first load)


def _decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for one new token per row (a decode step), as two batched matmuls on the key/value heads.

    Grouped-query attention shares each key/value head among ``g`` query heads (SmolLM2-135M: 9 query heads, 3
    key/value heads), so the ``g`` queries of a group are scored together against their head's keys — no copy of
    the keys per query head:  scores = Q_g · Kᵀ / √d,  p = softmax(scores + mask),  out = p · V.
    The matmuls stay in the model's dtype (bf16 where the CPU has it); the softmax is computed in fp32.
    Measured on 2 cores, SmolLM2's shapes, 32 rows × 600 cached tokens: 1.1 ms per layer against 2.0 for PyTorch's
    fused SDPA kernel (64 × 800: 2.5 against 5.9). A lone row is a little slower this way (0.12 against 0.04 ms at
    200 tokens), but every batch size takes the same path, so a row's answer does not depend on how many rows share
    its step. Prompts (more than one new token per row) go to the transformers SDPA path unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    b, h, q_len, d = query.shape
    if q_len != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    hk = key.shape[1]
    q = query.reshape(b, hk, h // hk, d)  # the g query heads that share key/value head j sit together
    scale = d ** -0.5 if scaling is None else scaling
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [b, hk, g, T]
    if attention_mask is not None:  # [b, 1, 1, T]: True (or 0.0) = attend
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
            else scores + attention_mask.float()
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)  # [b, hk, g, d]
    return out.reshape(b, 1, h, d), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(ATTENTION, _decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # prompts get the usual SDPA masks


# ---------------------------------------------------------------------------------------------- engine
class Engine:
    """The scheduler thread of one model: admits rows, prefills them, decodes the batch one token per step."""

    def __init__(self, model, tokenizer, stops: list[str], eos_ids: list[int], *, max_batch: int,
                 batch_wait_s: float, prefix_cache: bool, device):
        import torch
        self.model, self.tok, self.stops, self.eos_ids = model, tokenizer, stops, set(eos_ids)
        self.max_batch, self.batch_wait_s, self.prefix_cache = max_batch, batch_wait_s, prefix_cache
        self.device = device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
        self.lock = threading.Lock()  # held while the scheduler works on the model (a test holds it to queue rows)
        self.queue: deque[_Row] = deque()  # rows waiting to join the batch
        self.cond = threading.Condition()
        self.rows: list[_Row] = []  # the running batch, in cache order
        self.partial: list[list] = []  # long prompts being prefilled a chunk at a time: [row, tokens done, kv]
        self.cache = None
        self.mask = None  # [rows, cached length] 1 = a real token
        self.next_pos = None  # [rows] position id of each row's next token
        self.last = None  # [rows] each row's last sampled token (the next step's input)
        self.prefixes: "list[tuple[tuple[int, ...], list]]" = []  # (token prefix, per-layer (k, v) with batch 1)
        self.last_prompt: list[int] | None = None
        self.batch_rows: deque[int] = deque(maxlen=4096)  # rows of each decode step (tests, stats)
        self.prefix_hits = 0
        self.prefill_chunks = 0  # chunks of long prompts computed between decode steps (tests, stats)
        self.slots_reused = 0  # new rows placed into finished rows' slots, no copy of the batch (tests, stats)
        self.widest = 0  # most rows (running + finished, not yet replaced) any decode step computed (tests, stats)
        self.stopped = False
        self._torch = torch
        self.thread = threading.Thread(target=self._loop, name="dte-engine", daemon=True)
        self.thread.start()
        atexit.register(self.stop, 5.0)  # a daemon thread killed inside torch at exit aborts the interpreter noisily

    # ------------------------------------------------------------------ API for request threads
    def submit(self, rows: list[_Row]) -> None:
        with self.cond:
            self.queue.extend(rows)
            self.cond.notify()

    def stop(self, wait_s: float = 0.0) -> None:
        """End the scheduler thread after its current step (rows still in flight get no more tokens)."""
        with self.cond:
            self.stopped = True
            self.cond.notify()
        if wait_s and self.thread is not threading.current_thread():
            self.thread.join(wait_s)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        with self._torch.inference_mode():  # no autograd bookkeeping on the serving thread
            self._serve()

    def _serve(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.rows and not self.partial and not self.stopped:
                    self.cond.wait()
                if self.stopped:  # nobody waits forever: rows still queued or decoding get an error
                    gone = RuntimeError("the model was unloaded while this request was running")
                    for r in list(self.queue) + self.rows + [p[0] for p in self.partial]:
                        if not r.done:
                            r.done = True
                            r.events.put((r.index, "", gone, len(r.out), []))
                    self.queue.clear()
                    self.rows, self.partial = [], []
                    return
                if not self.rows and not self.partial and self.batch_wait_s and len(self.queue) < self.max_batch:
                    # idle, and a burst may be arriving: give its other requests a moment to join the first prefill
                    deadline = time.monotonic() + self.batch_wait_s
                    while len(self.queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                        self.cond.wait(left)
            new: list[_Row] = []
            with self.lock:
                try:
                    with self.cond:
                        live = sum(not r.done for r in self.rows)  # finished rows' slots are free to take
                        while self.queue and live + len(new) + len(self.partial) < self.max_batch:
                            r = self.queue.popleft()
                            if not r.cancelled:
                                new.append(r)
                    if new:
                        self._admit(new)
                    if self.partial:
                        self._prefill_chunk()
                    self._drop_finished(waiting=bool(self.queue))
                    if self.rows:
                        self._step()
                        self._drop_finished(waiting=bool(self.queue))
                except BaseException as e:  # every row in flight gets the error; the engine keeps serving
                    for r in self.rows + new + [p[0] for p in self.partial]:
                        if not r.done:
                            r.done = True
                            r.events.put((r.index, "", e, len(r.out), []))
                    self.rows, self.cache, self.mask, self.partial = [], None, None, []

    # ------------------------------------------------------------------ prefill
    def _lookup(self, prompt: list[int], count: bool = True) -> tuple[int, list | None]:
        """The longest cached prefix of ``prompt`` (leaving at least one token to prefill): (length, layers)."""
        best, layers = 0, None
        for i, (key, kv) in enumerate(self.prefixes):
            n = len(key)
            if best < n < len(prompt) and tuple(prompt[:n]) == key:
                best, layers, hit = n, kv, i
        if layers is not None and count:
            self.prefixes.append(self.prefixes.pop(hit))  # most recently used last
            self.prefix_hits += 1
        return best, layers

    def _admit(self, new: list[_Row]) -> None:
        """Prefill the new rows (grouped by the cached prefix they start with) and append them to the batch."""
        torch = self._torch
        if self.prefix_cache:
            self._learn_common_prefix(new)
        groups: dict[int, tuple[list | None, list[_Row]]] = {}
        for r in new:
            n, kv = self._lookup(r.prompt) if self.prefix_cache else (0, None)
            if len(r.prompt) - n > PREFILL_CHUNK:  # long: a chunk per engine step (see _prefill_chunk)
                self.partial.append([r, n, kv])
                continue
            groups.setdefault(n, (kv, []))[1].append(r)
        for n, (kv, rows) in groups.items():
            for bucket in _length_buckets(rows, n):
                self._prefill(n, kv, bucket)

    def _prefill_chunk(self) -> None:
        """One chunk of the oldest long prompt: extend its KV cache by ``PREFILL_CHUNK`` tokens; when what is left
        fits in one chunk, prefill it like any short prompt (sampling its first token) and join the batch."""
        torch = self._torch
        r, n, kv = self.partial[0]
        if r.cancelled or r.done:
            self.partial.pop(0)
            return
        left = len(r.prompt) - n
        if left <= PREFILL_CHUNK:
            self.partial.pop(0)
            self._prefill(n, kv, [r])
            return
        end = n + PREFILL_CHUNK
        layers = [_GrowingLayer(k, v) for k, v in kv] if kv is not None else \
            [_GrowingLayer() for _ in range(self._n_layers())]
        cache = _new_cache(layers)
        ids = torch.tensor([r.prompt[n:end]], device=self.device)
        pos = torch.arange(n, end, device=self.device)[None]
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                   logits_to_keep=1)
        self.partial[0] = [r, end, [(layer.keys, layer.values) for layer in cache.layers]]
        self.prefill_chunks += 1

    def _prefill(self, n: int, kv: list | None, rows: list[_Row]) -> None:
        """One forward pass over the prompts of ``rows`` after their first ``n`` tokens (cached as ``kv``)."""
        torch = self._torch
        width = max(len(r.prompt) - n for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n + width), dtype=torch.long)
        mask[:, :n] = 1
        for k, r in enumerate(rows):
            tail = r.prompt[n:]
            ids[k, width - len(tail):] = torch.tensor(tail)
            mask[k, n + width - len(tail):] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)[:, n:]
        layers = [_GrowingLayer(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1))
                  for k, v in kv] if kv is not None else [_GrowingLayer() for _ in range(self._n_layers())]
        cache = _new_cache(layers)
        dev = self.device
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         cache=cache, use_cache=True, logits_to_keep=1)
        mask = mask.to(dev)
        if self.prefix_cache:
            self._remember(rows, cache, mask)
        first = self._sample(out.logits[:, -1], rows)
        self._logprobs(out.logits[:, -1], rows, first)
        self._merge(rows, cache, mask, first)
        self._advance(rows, first)

    def _learn_common_prefix(self, new: list[_Row]) -> None:
        """Before the first prefill of a burst: the prefix that all its prompts (and the previous prompt) share —
        typically the system prompt — is prefilled once on its own and cached, so that every row of the burst
        starts from it."""
        prompts = [r.prompt for r in new] + ([self.last_prompt] if self.last_prompt else [])
        if len(prompts) < 2:
            return
        n = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in prompts[1:]:
            n = next((i for i in range(n) if p[i] != first[i]), n)
        if n < PREFIX_MIN_TOKENS or self._lookup(first, count=False)[0] >= n:
            return
        key = tuple(first[:n])
        cache = _new_cache([_GrowingLayer() for _ in range(self._n_layers())])
        ids = self._torch.tensor([list(key)], device=self.device)
        self.model(input_ids=ids, attention_mask=self._torch.ones_like(ids), cache=cache, use_cache=True,
                   logits_to_keep=1)
        self._store(key, [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])

    def _store(self, key: tuple[int, ...], kv: list) -> None:
        self.prefixes.append((key, kv))
        if len(self.prefixes) > PREFIX_ENTRIES:
            self.prefixes.pop(0)

    def _n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def _remember(self, rows: list[_Row], cache, mask) -> None:
        """Cache the KV of the longest prefix a new prompt shares with the previous prompt seen."""
        torch = self._torch
        for k, r in enumerate(rows):
            prev, self.last_prompt = self.last_prompt, r.prompt
            if prev is None:
                continue
            n = 0
            for a, b in zip(prev, r.prompt):
                if a != b:
                    break
                n += 1
            n = min(n, len(r.prompt) - 1)
            if n < PREFIX_MIN_TOKENS or any(len(key) == n and key == tuple(r.prompt[:n]) for key, _ in self.prefixes):
                continue
            cols = torch.nonzero(mask[k]).flatten()[:n]
            kv = [(layer.keys[k:k + 1, :, cols].clone(), layer.values[k:k + 1, :, cols].clone())
                  for layer in cache.layers]
            self._store(tuple(r.prompt[:n]), kv)

    def _merge(self, rows: list[_Row], cache, mask, first) -> None:
        """Put freshly prefilled rows into the running batch: into the slots of finished rows where their prompt
        fits in the batch's columns (written right-aligned in place: no other row's cache is copied), else appended
        to the batch (both caches left-padded to the same length: one copy of the whole cache)."""
        torch = self._torch
        pos = mask.sum(1)
        if not self.rows:
            self.rows, self.mask, self.next_pos, self.last = list(rows), mask, pos, first
            self.cache = _new_cache([_GrowingLayer(layer.keys, layer.values, whole=True) for layer in cache.layers])
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        free = [i for i, r in enumerate(self.rows) if r.done]
        if free and t_new > t_old:  # newcomers longer than the batch's columns: widen it first (one copy), so
            #                         finished slots never pile up beside appended rows (while requests wait, a
            #                         finished slot is kept for the next one: appending instead would compute
            #                         more rows than max_batch, the finished ones for nothing)
            self.cache = _new_cache([_GrowingLayer(_lpad(layer.keys, t_new), _lpad(layer.values, t_new), whole=True)
                                     for layer in self.cache.layers])
            self.mask, t_old = _lpad(self.mask, t_new), t_new
        k = min(len(free), len(rows))
        if k:
            slots = torch.tensor(free[:k], device=self.mask.device)
            for old, new in zip(self.cache.layers, cache.layers):
                old.buf_k[slots, :, t_old - t_new:t_old] = new.keys[:k]
                old.buf_v[slots, :, t_old - t_new:t_old] = new.values[:k]
            self.mask[slots] = 0
            self.mask[slots, t_old - t_new:] = mask[:k]
            self.next_pos[slots] = pos[:k]
            self.last[slots] = first[:k]
            for i, r in zip(free, rows[:k]):
                self.rows[i] = r
            self.slots_reused += k
            if k == len(rows):
                return
            rows, mask, pos, first = rows[k:], mask[k:], pos[k:], first[k:]
        t = max(t_old, t_new)
        layers = []
        for old, new in zip(self.cache.layers, cache.layers):
            layers.append(_GrowingLayer(torch.cat([_lpad(old.keys, t), _lpad(new.keys[k:], t)]),
                                        torch.cat([_lpad(old.values, t), _lpad(new.values[k:], t)]), whole=True))
        self.cache = _new_cache(layers)
        self.mask = torch.cat([_lpad(self.mask, t), _lpad(mask, t)])
        self.next_pos = torch.cat([self.next_pos, pos])
        self.last = torch.cat([self.last, first])
        self.rows += rows

    def _drop_finished(self, waiting: bool = False) -> None:
        """Rows that ended (or whose client left) are finished; their slots wait for new rows (``_merge``). The
        batch is compacted (one copy of the cache) only when a quarter of it is finished with nobody ``waiting`` to
        take the slots, or when the columns no running row uses any more are a quarter of the cache."""
        torch = self._torch
        for r in self.rows:
            if r.cancelled:
                r.done = True  # its client left: nothing more is sent
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if not keep:
            self.rows, self.cache, self.mask, self.next_pos, self.last = [], None, None, None, None
            return
        t = self.mask.shape[1]
        idx = torch.tensor(keep, device=self.mask.device)
        used = torch.nonzero(self.mask.index_select(0, idx).any(0)).flatten()
        start = int(used[0]) if len(used) else 0
        finished = len(self.rows) - len(keep)
        compact = finished and not waiting and 4 * finished >= len(self.rows)
        if not compact and start < max(TRIM_COLUMNS, t // 4):
            return
        if not compact:
            idx = torch.arange(len(self.rows), device=self.mask.device)  # trim the columns only; the slots stay
        self.cache = _new_cache([_GrowingLayer(layer.keys.index_select(0, idx)[:, :, start:],
                                               layer.values.index_select(0, idx)[:, :, start:], whole=True)
                                 for layer in self.cache.layers])
        self.mask = self.mask.index_select(0, idx)[:, start:]
        self.next_pos = self.next_pos.index_select(0, idx)
        self.last = self.last.index_select(0, idx)
        self.rows = [self.rows[i] for i in idx.tolist()]

    # ------------------------------------------------------------------ decode
    def _step(self) -> None:
        torch = self._torch
        b = len(self.rows)
        self.batch_rows.append(sum(not r.done for r in self.rows))
        self.widest = max(self.widest, b)
        t = self.mask.shape[1] + 1
        for layer in self.cache.layers:
            layer.reserve(t)
        self.mask = torch.cat([self.mask, self.mask.new_ones((b, 1))], dim=1)
        # the attention reads each layer's whole buffer (see GrowingLayer): the mask covers its spare columns too
        whole = torch.nn.functional.pad(self.mask, (0, self.cache.layers[0].capacity - t)).bool()[:, None, None, :]
        out = self.model(input_ids=self.last[:, None], attention_mask=whole, position_ids=self.next_pos[:, None],
                         cache=self.cache, use_cache=True)
        self.next_pos = self.next_pos + 1
        nxt = self._sample(out.logits[:, -1], self.rows)
        self._logprobs(out.logits[:, -1], self.rows, nxt)
        self.last = nxt
        self._advance(self.rows, nxt)

    def _sample(self, logits, rows: list[_Row]):
        """One token per row: greedy where temperature is 0, else temperature + exact top-p, each row drawing its
        uniform number from its own generator (so a row's draw does not depend on the other rows)."""
        torch = self._torch
        logits = logits.float()
        temps = torch.tensor([r.temperature for r in rows], device=logits.device)
        greedy = temps <= 0
        choice = torch.argmax(logits, dim=-1)
        if bool(greedy.all()):
            return choice
        sampled = torch.nonzero(~greedy).flatten()
        x = logits.index_select(0, sampled) / temps.index_select(0, sampled)[:, None]
        probs = torch.softmax(x, dim=-1)
        top_p = torch.tensor([rows[int(i)].top_p for i in sampled], device=logits.device)
        u = torch.stack([torch.rand((), generator=rows[int(i)].gen) for i in sampled]).to(logits.device)
        k = min(TOP_K_PRECUT, probs.shape[-1])
        vals, idx = torch.topk(probs, k, dim=-1)  # sorted, most likely first
        short = torch.nonzero((vals.sum(-1) < top_p) & (top_p < 1)).flatten()
        full = (top_p >= 1).nonzero().flatten()
        keep = (vals.cumsum(-1) - vals) < top_p[:, None]  # smallest set whose mass reaches top_p
        kept = vals * keep
        cum = kept.cumsum(-1)
        pick = torch.searchsorted(cum, (u * cum[:, -1])[:, None]).clamp_max(k - 1).squeeze(1)
        tok = idx.gather(1, pick[:, None]).squeeze(1)
        for j in torch.cat([short, full]).tolist():  # the pre-cut does not decide these rows: whole vocabulary
            p = probs[j]
            if top_p[j] < 1:
                sp, si = torch.topk(p, min(16 * TOP_K_PRECUT, p.shape[0]))  # a wider cut, then the full sort
                if sp.sum() < top_p[j]:
                    sp, si = torch.sort(p, descending=True)
                keep_j = (torch.cumsum(sp, 0) - sp) < top_p[j]
                sp, si = sp[keep_j], si[keep_j]
            else:
                sp, si = p, torch.arange(p.shape[0], device=p.device)
            c = sp.cumsum(0)
            tok[j] = si[torch.searchsorted(c, (u[j] * c[-1]).reshape(1)).clamp_max(len(c) - 1)][0]
        choice[sampled] = tok
        return choice

    def _logprobs(self, logits, rows: list[_Row], tokens) -> None:
        """For the rows that asked: the sampled token's log-probability and the top alternatives, at temperature 1."""
        want = [k for k, r in enumerate(rows) if r.top_logprobs >= 0 and not r.done]
        if not want:
            return
        torch = self._torch
        idx = torch.tensor(want, device=logits.device)
        logp = torch.log_softmax(logits.index_select(0, idx).float(), dim=-1)
        picked = tokens.index_select(0, idx)
        chosen = logp.gather(1, picked[:, None]).squeeze(1).tolist()
        k_max = max(rows[k].top_logprobs for k in want)
        top_v, top_i = torch.topk(logp, k_max, dim=-1) if k_max else (None, None)
        top_v = top_v.tolist() if k_max else None
        top_i = top_i.tolist() if k_max else None
        for j, k in enumerate(want):
            n = rows[k].top_logprobs
            alts = list(zip(top_i[j][:n], top_v[j][:n])) if n else []
            rows[k].lp.append((int(picked[j]), chosen[j], alts))

    def _advance(self, rows: list[_Row], tokens) -> None:
        """Append each row's new token, detokenise incrementally, check ends and stop strings, send deltas."""
        for r, t in zip(rows, tokens.tolist()):
            if r.done:
                continue
            r.out.append(t)
            if t in self.eos_ids:
                if r.lp:
                    r.lp.pop()  # the end token is not reported, as its text is not
                self._finish(r, "stop", flush=True, drop_last=True)
                continue
            prev = self.tok.decode(r.out[r.prefix_at:r.read_at], skip_special_tokens=True)
            now = self.tok.decode(r.out[r.prefix_at:], skip_special_tokens=True)
            if len(now) > len(prev) and not now.endswith("\ufffd"):  # a whole new piece of text
                old_len = len(r.text)
                r.text += now[len(prev):]
                r.prefix_at, r.read_at = r.read_at, len(r.out)
                if self._cut_stop(r, old_len):
                    continue
            if len(r.out) >= r.max_tokens:
                self._finish(r, "length", flush=True)
                continue
            self._send(r, hold=True)

    def _cut_stop(self, r: _Row, old_len: int) -> bool:
        """Search only the new text (and a stop string's length before it) for the first stop string."""
        if not r.stops:
            return False
        longest = max(len(s) for s in r.stops)
        start = max(0, old_len - longest + 1)
        hits = [i for i in (r.text.find(s, start) for s in r.stops) if i >= 0]
        if not hits:
            return False
        r.text = r.text[:min(hits)]
        self._finish(r, "stop")
        return True

    def _finish(self, r: _Row, reason: str, flush: bool = False, drop_last: bool = False) -> None:
        if flush:  # text still held by the detokeniser (an incomplete character at the very end)
            end = len(r.out) - 1 if drop_last else len(r.out)
            prev = self.tok.decode(r.out[r.prefix_at:r.read_at], skip_special_tokens=True)
            now = self.tok.decode(r.out[r.prefix_at:end], skip_special_tokens=True)
            if len(now) > len(prev):
                old_len = len(r.text)
                r.text += now[len(prev):]
                if self._cut_stop(r, old_len):
                    return
        r.done = True
        self._send(r, hold=False)
        r.events.put((r.index, "", reason, len(r.out), _take(r)))

    def _send(self, r: _Row, hold: bool) -> None:
        safe = len(r.text) - (_partial_stop_len(r.text, r.stops) if hold else 0)
        if safe > r.sent:
            r.events.put((r.index, r.text[r.sent:safe], None, len(r.out), _take(r)))
            r.sent = safe


# ---------------------------------------------------------------------------------------------- registry
@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    stops: list[str]
    eos_ids: list[int]
    engine: Engine
    pieces: dict = field(default_factory=dict)  # token id -> (text, bytes), for logprobs

    # what tests and stats look at
    @property
    def lock(self) -> threading.Lock:
        return self.engine.lock

    @property
    def queue(self) -> deque:
        return self.engine.queue

    @property
    def batch_rows(self) -> deque:
        return self.engine.batch_rows


class Registry:
    """Served model names → local directories; loads on first use, then keeps the model (and its engine)."""

    def __init__(self, models: dict[str, str | Path] | None = None, threads: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float = 20.0, prefix_cache: bool = True,
                 device: str = "auto", precision: str = "auto", weights: str = "native"):
        from ..device import autocast_dtype, resolve
        from .int8 import CHOICES
        if weights not in CHOICES:
            raise ValueError(f"weights {weights!r} is not one of {', '.join(CHOICES)}")
        self.paths: dict[str, Path] = {k: Path(v) for k, v in (models or {}).items()}
        self.created: dict[str, int] = {k: int(time.time()) for k in self.paths}
        self.owned_by: dict[str, str] = {k: "local" for k in self.paths}
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        self.threads = threads
        self.max_batch = max(1, int(max_batch))  # rows (choices) decoded together at most
        # when idle, wait this long for the rest of a burst before the first prefill (a client's burst lands within
        # milliseconds; later arrivals join the running batch at the next step anyway)
        self.batch_wait_s = max(0.0, batch_wait_ms) / 1000 if self.max_batch > 1 else 0.0
        self.prefix_cache = prefix_cache
        self.device = resolve(device)
        # weights (and so the KV cache) in bf16 where the precision setting resolves to it: half the bytes read per
        # decode step and the CPU's native bf16 matmuls (prefill 2.2x on SmolLM2-135M); sampling stays fp32
        self.dtype = autocast_dtype(self.device, precision)
        # int8 weights (dte_lib.server.int8): a lone request's decode step reads half the bytes; slower for big batches
        self.weights = weights

    def add(self, name: str, path: str | Path, owned_by: str = "local") -> None:
        with self._lock:
            self.paths[name] = Path(path)
            self.created[name] = int(time.time())
            self.owned_by[name] = owned_by

    def remove(self, name: str) -> None:
        with self._lock:
            self.paths.pop(name, None)
            lm = self._loaded.pop(name, None)
        if lm is not None:
            lm.engine.stop()

    def path(self, name: str) -> Path:
        if name not in self.paths:
            raise ModelNotFound(name)
        return self.paths[name]

    def get(self, name: str) -> Loaded:
        path = self.path(name)
        with self._lock:
            if name not in self._loaded:
                model, tok = teacher.load(path, threads=self.threads)
                _register_attention()
                model.set_attn_implementation(ATTENTION)
                model.to(self.device)
                if self.dtype is not None:
                    model.to(self.dtype)
                if self.weights == "int8":
                    from .int8 import quantize_weights
                    quantize_weights(model)
                eos = model.generation_config.eos_token_id if model.generation_config else None
                eos_ids = [e for e in ([eos] if isinstance(eos, int) else list(eos or [])) if e is not None]
                if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
                    eos_ids.append(tok.eos_token_id)
                for s in teacher.stop_strings(tok):  # end-of-turn markers that are single tokens act as EOS
                    tid = tok.convert_tokens_to_ids(s)
                    if isinstance(tid, int) and tid != tok.unk_token_id and tid not in eos_ids:
                        eos_ids.append(tid)
                stops = teacher.stop_strings(tok)
                engine = Engine(model, tok, stops, eos_ids, max_batch=self.max_batch,
                                batch_wait_s=self.batch_wait_s, prefix_cache=self.prefix_cache, device=self.device)
                self._loaded[name] = Loaded(model, tok, stops, eos_ids, engine)
            return self._loaded[name]

    # ------------------------------------------------------------------------------------------ generation
    @staticmethod
    def context_length(lm: Loaded) -> int:
        """The model's context in tokens (0 = unknown)."""
        c = lm.model.config
        return int(getattr(c, "max_position_embeddings", 0) or getattr(c, "n_positions", 0) or 0)

    @staticmethod
    def token_piece(lm: Loaded, token_id: int) -> tuple[str, list[int]]:
        """(text, UTF-8 bytes) of one vocabulary entry, as OpenAI's logprobs report a token: byte-level BPE tokens
        are mapped back to their exact bytes (a piece of a multi-byte character has bytes but no whole text)."""
        hit = lm.pieces.get(token_id)
        if hit is None:
            raw = _token_bytes(lm.tokenizer, token_id)
            hit = lm.pieces[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return hit

    def encode_prompt(self, lm: Loaded, messages: Sequence[dict[str, Any]]) -> list[int]:
        text = teacher.render_chat(lm.tokenizer, messages, add_generation_prompt=True)
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _rows(self, lm: Loaded, messages, n, temperature, top_p, max_tokens, stop, seed, top_logprobs=-1,
              prompt: list[int] | None = None) -> tuple[list[_Row], int]:
        import torch
        prompt = prompt if prompt is not None else self.encode_prompt(lm, messages)
        events: queue.Queue = queue.Queue()
        rows = []
        for i in range(n):
            r = _Row(prompt, i, float(temperature or 0), float(1.0 if top_p is None else top_p), int(max_tokens),
                     [s for s in list(stop) + lm.stops if s], seed_for(seed, i), events)
            r.gen = torch.Generator()
            r.gen.manual_seed(r.seed)
            r.top_logprobs = int(top_logprobs)
            rows.append(r)
        return rows, len(prompt)

    def chat(self, name: str, messages: Sequence[dict[str, Any]], *, n: int = 1, temperature: float = 1.0,
             top_p: float = 1.0, max_tokens: int = 128, stop: Sequence[str] = (), seed: int | None = None,
             top_logprobs: int = -1, prompt: list[int] | None = None) -> tuple[list[Choice], int]:
        """Generate ``n`` choices; returns (choices, prompt_tokens). The rows join the model's running batch.
        ``top_logprobs`` >= 0 asks for logprobs (and that many alternatives); ``prompt`` is the already encoded
        prompt (the route encodes it to check the context length first)."""
        lm = self.get(name)
        rows, prompt_tokens = self._rows(lm, messages, n, temperature, top_p, max_tokens, stop, seed, top_logprobs,
                                         prompt)
        lm.engine.submit(rows)
        finished: dict[int, tuple[str, int]] = {}
        lps: dict[int, list] = {i: [] for i in range(n)}
        while len(finished) < n:
            i, _, finish, used, lp = rows[0].events.get()
            if isinstance(finish, BaseException):
                raise finish
            lps[i] += lp
            if finish:
                finished[i] = (finish, used)
        return [Choice(r.text, *finished[r.index], lps[r.index] if top_logprobs >= 0 else None) for r in rows], \
            prompt_tokens

    def stream(self, name: str, messages: Sequence[dict[str, Any]], *, n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, max_tokens: int = 128, stop: Sequence[str] = (), seed: int | None = None,
               top_logprobs: int = -1, prompt: list[int] | None = None
               ) -> Iterator[tuple[int, str, str | None, int, int, list]]:
        """Yield (choice index, text delta, finish_reason or None, prompt_tokens, completion tokens so far, logprob
        entries of the tokens behind this delta).

        The ``n`` rows decode in the shared batch like any other; text that could still become a stop string is
        held back, so a stop string is never half-sent. Closing the generator (a client that went away) takes the
        rows out of the batch at the next step.
        """
        lm = self.get(name)
        rows, prompt_tokens = self._rows(lm, messages, n, temperature, top_p, max_tokens, stop, seed, top_logprobs,
                                         prompt)
        lm.engine.submit(rows)
        left = n
        try:
            while left:
                i, delta, finish, used, lp = rows[0].events.get()
                if isinstance(finish, BaseException):
                    raise finish
                left -= bool(finish)
                yield i, delta, finish, prompt_tokens, used, lp
        finally:
            for r in rows:
                r.cancelled = True


def _take(r: _Row) -> list:
    """The row's logprob entries not yet handed out (they travel with the next text delta or the finish)."""
    out, r.lp = r.lp, []
    return out


def _lpad(x, width: int):
    """Left-pad the sequence dimension (-2 for a KV tensor, -1 for a [rows, columns] mask) to ``width``."""
    import torch
    if x.dim() == 2:
        return torch.nn.functional.pad(x, (width - x.shape[1], 0))
    return torch.nn.functional.pad(x, (0, 0, width - x.shape[-2], 0))


def _length_buckets(rows: list[_Row], n: int) -> list[list[_Row]]:
    """Rows sorted by the length left to prefill and cut where padding to the bucket's longest would waste more than
    a quarter of it (prefill pads every row to its bucket's longest; padding is compute spent on nothing)."""
    rows = sorted(rows, key=lambda r: len(r.prompt) - n)
    buckets: list[list[_Row]] = []
    for r in rows:
        size = len(r.prompt) - n
        if buckets and size - (len(buckets[-1][0].prompt) - n) <= max(4, size // 4):
            buckets[-1].append(r)
        else:
            buckets.append([r])
    return buckets


_BYTE_OF: dict[str, int] | None = None


def _token_bytes(tok, token_id: int) -> bytes:
    """The bytes a token stands for. Byte-level BPE vocabularies (GPT-2's, SmolLM2's) spell each byte as one
    printable character (transformers' ``bytes_to_unicode`` table); anything else falls back to the decoded text."""
    global _BYTE_OF
    if _BYTE_OF is None:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
        _BYTE_OF = {ch: b for b, ch in bytes_to_unicode().items()}
    piece = tok.convert_ids_to_tokens(int(token_id))
    if isinstance(piece, str) and piece and all(ch in _BYTE_OF for ch in piece) and \
            token_id not in set(tok.all_special_ids):
        return bytes(_BYTE_OF[ch] for ch in piece)
    return tok.decode([int(token_id)], skip_special_tokens=False).encode("utf-8", errors="replace")


def seed_for(seed: int | None, i: int) -> int:
    """The generator seed of choice ``i``: ``seed + i`` wrapped into 64 bits (a fresh random one without a seed)."""
    import torch
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)))
    return (int(seed) + i) % 2**64


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best

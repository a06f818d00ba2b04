"""Model registry and generation for the local OpenAI-compatible server.

A *served model* is a name mapped to a local Hugging Face causal-LM directory with a tokenizer. Models load lazily
on their first request and stay cached. One lock per model serialises the forward passes (a 2-core CPU gains
nothing from two running at once), and whole (non-streamed) completions are **batched dynamically**: a request that
arrives while the model is busy waits in the model's queue, and the next pass takes every waiting request (up to
``max_batch`` rows) into one left-padded batch decoded together, each row with its own sampling settings, stop
rules and random generator. A batch that is not full waits ``batch_wait_ms`` (20 ms) first, so a client's burst of
requests lands in one batch instead of its first request decoding alone. On a CPU a batch of 8 rows costs far less
than 8 single passes (4.2× the tokens/s at 8 concurrent requests, benchmarks/RESULTS-server.md), so concurrent
clients — the generation engine of notebooks 02–04 — get more answers per minute.

What a chat completion does here, in OpenAI's terms:

- the messages are rendered with the tokenizer's chat template (or the fallback format in ``dte_lib.teacher``);
- ``n`` choices are ``n`` rows of a batch; ``temperature == 0`` means greedy decoding; ``top_p`` is nucleus
  sampling; with ``seed``, choice ``i`` samples from its own generator seeded ``seed + i`` (as a stream does), so a
  seeded request gives the same answer whatever else shares its batch — up to float rounding, which padding can
  change in the last bits (OpenAI, too, promises seeded determinism only on a best-effort basis);
- ``stop`` strings end a choice early (the stop text is not returned, as in OpenAI's API);
- ``finish_reason`` is ``"stop"`` (EOS, end-of-turn token or a stop string) or ``"length"`` (ran out of
  ``max_tokens``); ``usage`` counts the real prompt tokens and every generated token of every choice.

Explained in notebook 01. Run it: ``dte serve --model teacher=PATH`` (see ``dte_lib.server``).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import teacher


class ModelNotFound(KeyError):
    pass


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    stops: list[str]
    eos_ids: list[int]
    lock: threading.Lock
    queue: list["_Pending"] = field(default_factory=list)  # whole completions waiting for the next batch
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    batch_rows: deque[int] = field(default_factory=lambda: deque(maxlen=4096))  # rows of recent batches (tests)


@dataclass
class _Pending:
    prompt: list[int]
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    stop: Sequence[str]
    seed: int | None
    choices: list["Choice"] | None = None
    error: BaseException | None = None


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int


class Registry:
    """Served model names → local directories; loads on first use, then keeps the model in memory."""

    def __init__(self, models: dict[str, str | Path] | None = None, threads: int | None = None,
                 max_batch: int = 8, batch_wait_ms: float = 20.0):
        self.paths: dict[str, Path] = {k: Path(v) for k, v in (models or {}).items()}
        self.created: dict[str, int] = {k: int(time.time()) for k in self.paths}
        self.owned_by: dict[str, str] = {k: "local" for k in self.paths}
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        self.threads = threads
        self.max_batch = max(1, int(max_batch))  # rows (choices) decoded together at most
        # before decoding a batch that is not full, wait this long for requests sent at the same moment to arrive
        # (a client's burst lands within milliseconds; without the wait its first request would decode alone)
        self.batch_wait_s = max(0.0, batch_wait_ms) / 1000 if self.max_batch > 1 else 0.0

    def add(self, name: str, path: str | Path, owned_by: str = "local") -> None:
        with self._lock:
            self.paths[name] = Path(path)
            self.created[name] = int(time.time())
            self.owned_by[name] = owned_by

    def remove(self, name: str) -> None:
        with self._lock:
            self.paths.pop(name, None)
            self._loaded.pop(name, None)

    def path(self, name: str) -> Path:
        if name not in self.paths:
            raise ModelNotFound(name)
        return self.paths[name]

    def get(self, name: str) -> Loaded:
        path = self.path(name)
        with self._lock:
            if name not in self._loaded:
                model, tok = teacher.load(path, threads=self.threads)
                eos = model.generation_config.eos_token_id if model.generation_config else None
                eos_ids = [e for e in ([eos] if isinstance(eos, int) else list(eos or [])) if e is not None]
                if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
                    eos_ids.append(tok.eos_token_id)
                for s in teacher.stop_strings(tok):  # end-of-turn markers that are single tokens act as EOS
                    tid = tok.convert_tokens_to_ids(s)
                    if isinstance(tid, int) and tid != tok.unk_token_id and tid not in eos_ids:
                        eos_ids.append(tid)
                self._loaded[name] = Loaded(model, tok, teacher.stop_strings(tok), eos_ids, threading.Lock())
            return self._loaded[name]

    # ------------------------------------------------------------------------------------------ generation
    def encode_prompt(self, lm: Loaded, messages: Sequence[dict[str, Any]]) -> list[int]:
        text = teacher.render_chat(lm.tokenizer, messages, add_generation_prompt=True)
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _gen_kwargs(self, lm: Loaded, max_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": max_tokens, "eos_token_id": lm.eos_ids or None,
                              "pad_token_id": lm.tokenizer.pad_token_id}
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def chat(self, name: str, messages: Sequence[dict[str, Any]], *, n: int = 1, temperature: float = 1.0,
             top_p: float = 1.0, max_tokens: int = 128, stop: Sequence[str] = (), seed: int | None = None
             ) -> tuple[list[Choice], int]:
        """Generate ``n`` choices; returns (choices, prompt_tokens).

        The request joins the model's queue; whichever waiting thread gets the model lock next decodes everything
        queued (up to ``max_batch`` rows, first come first served) and hands each request its choices.
        """
        lm = self.get(name)
        req = _Pending(self.encode_prompt(lm, messages), n, temperature, top_p, max_tokens, list(stop), seed)
        with lm.queue_lock:
            lm.queue.append(req)
        while req.choices is None and req.error is None:
            with lm.lock:
                if req.choices is not None or req.error is not None:
                    break  # served by another thread's batch while this one waited for the lock
                if self.batch_wait_s and sum(r.n for r in lm.queue) < self.max_batch:
                    time.sleep(self.batch_wait_s)
                with lm.queue_lock:
                    batch, rows = [], 0
                    while lm.queue and (not batch or rows + lm.queue[0].n <= self.max_batch):
                        rows += lm.queue[0].n
                        batch.append(lm.queue.pop(0))
                try:
                    self._decode_batch(lm, batch)
                except BaseException as e:  # every request of a failed batch gets the error, none hangs
                    for r in batch:
                        r.error = e
        if req.error is not None:
            raise req.error
        return req.choices, len(req.prompt)

    def _decode_batch(self, lm: Loaded, batch: Sequence[_Pending]) -> None:
        """Left-pad every choice of every request into one batch and decode it with a KV cache, token by token.

        A row stops at an end token, at a stop string, or at its own ``max_tokens``; the pass ends when every row
        has stopped. Finished rows are fed their last token again (their outputs are ignored), so the batch keeps
        its shape.
        """
        import torch
        rows: list[tuple[_Pending, int]] = [(r, i) for r in batch for i in range(r.n)]
        if not rows:
            return
        gens = []
        for r, i in rows:
            g = torch.Generator()
            g.manual_seed(seed_for(r.seed, i))
            gens.append(g)
        kws = [self._gen_kwargs(lm, r.max_tokens, r.temperature, r.top_p) for r, _ in rows]
        stops = [list(r.stop) + lm.stops for r, _ in rows]
        width = max(len(r.prompt) for r, _ in rows)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.eos_ids[0]
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r, _ in rows])
        attn = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r, _ in rows])
        pos = (attn.cumsum(1) - 1).clamp_min(0)
        out_ids: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        past, step_ids, step_pos = None, ids, pos
        with torch.no_grad():
            for _ in range(max(r.max_tokens for r, _ in rows)):
                out = lm.model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                               cache=past, use_cache=True)
                past = out.cache
                logits = out.logits[:, -1].float()
                nxt = []
                for k, (r, _) in enumerate(rows):
                    if done[k]:
                        nxt.append(out_ids[k][-1] if out_ids[k] else pad)
                        continue
                    t = _sample(logits[k], kws[k], gens[k])
                    out_ids[k].append(t)
                    nxt.append(t)
                    done[k] = t in lm.eos_ids or len(out_ids[k]) >= r.max_tokens or _first_stop(
                        lm.tokenizer.decode(out_ids[k], skip_special_tokens=True), stops[k]) is not None
                if all(done):
                    break
                step_ids = torch.tensor(nxt)[:, None]
                step_pos = step_pos[:, -1:] + 1
                attn = torch.cat([attn, torch.ones((len(rows), 1), dtype=attn.dtype)], dim=1)
        lm.batch_rows.append(len(rows))
        for r in batch:
            r.choices = []
        for k, (r, _) in enumerate(rows):
            r.choices.append(self._finish(lm, out_ids[k], r.max_tokens, r.stop))

    def _finish(self, lm: Loaded, new_ids: list[int], max_tokens: int, stop: Sequence[str]) -> Choice:
        pad = lm.tokenizer.pad_token_id
        count, ended = 0, False
        for t in new_ids:  # generated tokens up to and including the first EOS; padding after it is not output
            count += 1
            if t in lm.eos_ids:
                ended = True
                break
        body = new_ids[:count - 1] if ended else new_ids[:count]
        if not ended and pad is not None and pad not in lm.eos_ids:
            while body and body[-1] == pad:
                body.pop()
        text = lm.tokenizer.decode(body, skip_special_tokens=True)
        cut = _first_stop(text, list(stop) + lm.stops)
        if cut is not None:
            return Choice(text[:cut], "stop", count)
        return Choice(text, "stop" if ended or count < max_tokens else "length", count)

    def stream(self, name: str, messages: Sequence[dict[str, Any]], *, temperature: float = 1.0,
               top_p: float = 1.0, max_tokens: int = 128, stop: Sequence[str] = (), seed: int | None = None
               ) -> Iterator[tuple[str, str | None, int, int]]:
        """Yield (text delta, finish_reason or None, prompt_tokens, completion_tokens so far) for one choice.

        Decodes token by token and holds back text that could still become a stop string, so a stop string is
        never half-sent.
        """
        import torch
        lm = self.get(name)
        prompt = self.encode_prompt(lm, messages)
        stops = list(stop) + lm.stops
        generated: list[int] = []
        sent = ""
        gen = torch.Generator()  # its own generator, seeded as row i of a whole completion would be
        gen.manual_seed(seed_for(seed, 0))
        with lm.lock, torch.no_grad():
            ids = torch.tensor([prompt])
            past, step_input, attn = None, ids, torch.ones_like(ids)
            kw = self._gen_kwargs(lm, max_tokens, temperature, top_p)
            finish = "length"
            for _ in range(max_tokens):
                out = lm.model(input_ids=step_input, attention_mask=attn, cache=past, use_cache=True)
                past = out.cache
                logits = out.logits[0, -1].float()
                nxt = _sample(logits, kw, gen)
                generated.append(nxt)
                if nxt in lm.eos_ids:
                    finish = "stop"
                    break
                text = lm.tokenizer.decode(generated, skip_special_tokens=True)
                cut = _first_stop(text, stops)
                if cut is not None:
                    if cut > len(sent):
                        yield text[len(sent):cut], None, len(prompt), len(generated)
                    sent = text[:cut]
                    finish = "stop"
                    break
                safe = len(text) - _partial_stop_len(text, stops)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
                    safe = min(safe, len(text) - 1)
                if safe > len(sent):
                    yield text[len(sent):safe], None, len(prompt), len(generated)
                    sent = text[:safe]
                step_input = torch.tensor([[nxt]])
                attn = torch.cat([attn, torch.ones((1, 1), dtype=attn.dtype)], dim=1)
            else:
                text = lm.tokenizer.decode(generated, skip_special_tokens=True)
                if len(text) > len(sent):
                    yield text[len(sent):], None, len(prompt), len(generated)
        yield "", finish, len(prompt), len(generated)


def seed_for(seed: int | None, i: int) -> int:
    """The generator seed of choice ``i``: ``seed + i`` wrapped into 64 bits (a fresh random one without a seed)."""
    import torch
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)))
    return (int(seed) + i) % 2**64


def _sample(logits, kw: dict[str, Any], generator=None) -> int:
    import torch
    if not kw.get("do_sample"):
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / kw["temperature"], dim=-1)
    top_p = kw.get("top_p") or 1.0
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best

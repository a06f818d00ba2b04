"""Model registry and generation for the local OpenAI-compatible server.

A *served model* is a name mapped to a local Hugging Face causal-LM directory with a tokenizer. Models load lazily
on their first request and stay cached; one lock per model serialises generation (a 2-core CPU gains nothing from
running two ``generate`` calls at once, and the torch RNG must not be shared between a seeded and another request).

What a chat completion does here, in OpenAI's terms:

- the messages are rendered with the tokenizer's chat template (or the fallback format in ``dte_lib.teacher``);
- ``n`` choices are sampled in one batched ``generate`` call (``num_return_sequences``);
- ``temperature == 0`` means greedy decoding; ``top_p`` is nucleus sampling; ``seed`` seeds torch for the call;
- ``stop`` strings end a choice early (the stop text is not returned, as in OpenAI's API);
- ``finish_reason`` is ``"stop"`` (EOS, end-of-turn token or a stop string) or ``"length"`` (ran out of
  ``max_tokens``); ``usage`` counts the real prompt tokens and every generated token of every choice.

Explained in notebook 01. Run it: ``dte serve --model teacher=PATH`` (see ``dte_lib.server``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
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


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int


class Registry:
    """Served model names → local directories; loads on first use, then keeps the model in memory."""

    def __init__(self, models: dict[str, str | Path] | None = None, threads: int | None = None):
        self.paths: dict[str, Path] = {k: Path(v) for k, v in (models or {}).items()}
        self.created: dict[str, int] = {k: int(time.time()) for k in self.paths}
        self.owned_by: dict[str, str] = {k: "local" for k in self.paths}
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        self.threads = threads

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
        """Generate ``n`` choices; returns (choices, prompt_tokens)."""
        import torch
        lm = self.get(name)
        prompt = self.encode_prompt(lm, messages)
        with lm.lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(int(seed))
            ids = torch.tensor([prompt])
            out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_return_sequences=n,
                                    **self._gen_kwargs(lm, max_tokens, temperature, top_p))
        choices = [self._finish(lm, row[len(prompt):].tolist(), max_tokens, stop) for row in out]
        return choices, len(prompt)

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
        with lm.lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(int(seed))
            ids = torch.tensor([prompt])
            past, step_input, attn = None, ids, torch.ones_like(ids)
            kw = self._gen_kwargs(lm, max_tokens, temperature, top_p)
            finish = "length"
            for _ in range(max_tokens):
                out = lm.model(input_ids=step_input, attention_mask=attn, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                nxt = _sample(logits, kw)
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


def _sample(logits, kw: dict[str, Any]) -> int:
    import torch
    if not kw.get("do_sample"):
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / kw["temperature"], dim=-1)
    top_p = kw.get("top_p") or 1.0
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1))


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

"""Quality filter for synthetic chat examples: every drop has a reason, and every reason has a test.

Checks run on the last assistant turn (the answer), in this order; the first that fires is the drop reason, and all
that fire are listed as ``flags`` (the reviewer shows them):

========================  =====================================================================================
reason                    fires when
========================  =====================================================================================
``empty``                 the answer is empty or whitespace
``unsafe``                the content-safety screen flags it (OpenAI's moderation endpoint when a client is
                          given — free, and the same family of checks OpenAI's fine-tuning applies — otherwise a
                          local keyword screen over sexual, self-harm, violent, hateful and illegal-drug terms)
``truncated``             ``finish_reason == "length"``, or the text stops mid-sentence (last character is not
                          closing punctuation). With ``trim_truncated`` a length-cut answer is first cut back to
                          its last full sentence (``meta["trimmed_chars"]`` records it) and checked as that
``too_short``             fewer than ``min_words`` words
``too_long``              more than ``max_words`` words
``markup_residue``        transcript or markup left in the text: ``**User:**``/``User:``/``Assistant:`` role
                          tags, ``<|user|>``-style chat tokens, ``<|im_start|>``, ``### Instruction``, carriage
                          returns, an unclosed ``` fence or one wrapping the whole answer (a balanced code block
                          inside an answer that was asked for code is content, not residue)
``repetition``            share of repeated word 3-grams > ``repeat_ngram_share`` (a generation loop), or the
                          same line three times
``non_english``           under 85% of letters are ASCII, or under 8% of words are common English function words
``refusal``               assistant boilerplate: "as an AI language model", "I'm sorry, but I can't", ...
``prompt_echo``           more than ``echo_share`` of the answer's word 4-grams are copied from the prompt
``persona_drift``         no persona concept at all: none of the persona's ``core_concepts``, none of their
                          distinctive words such as "reservoir" or "membrane", not its name, and no first-person
                          voice (the persona's first trait); or
                          it calls itself another assistant ("I am ChatGPT", "as an AI assistant")
========================  =====================================================================================

Use: ``kept, dropped = quality.filter_examples(examples, persona)`` on ChatExamples or raw-row dicts; dropped
examples carry ``meta["drop_reason"]``, ``meta["drop_detail"]`` and ``meta["flags"]``. ``reason_counts(dropped)``
is the table of counts per reason.

Explained in notebooks 03 and 04. Run it: ``python -m dte_lib.quality outputs/runs/demo/corpus/raw.jsonl``.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .data import ChatExample, load_persona

REASONS = ("empty", "unsafe", "truncated", "too_short", "too_long", "markup_residue", "repetition", "non_english",
           "refusal", "prompt_echo", "persona_drift")


@dataclass
class FilterCfg:
    """Thresholds (notebooks take them from ``cfg.generate``)."""
    min_words: int = 12
    max_words: int = 600
    repeat_ngram_share: float = 0.35
    echo_share: float = 0.6
    trim_truncated: bool = False  # cut a finish_reason=length answer back to its last full sentence, then check

    @classmethod
    def from_preset(cls, cfg: Any) -> "FilterCfg":
        g = cfg.generate
        return cls(g.min_words, g.max_words, g.repeat_ngram_share, g.echo_share, g.trim_truncated)


_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """The text up to its last complete sentence ("" if it has none)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()].rstrip() if ends else ""


_MARKUP = re.compile(
    r"\*\*(user|assistant|human|echo|system)\s*:?\*\*|^\s*(user|assistant|human|system)\s*:|<\|[a-z_]+\|>|"
    r"<\|im_(start|end)\|>|^\s*###\s*(instruction|response|input)|\r", re.I | re.M)
_REFUSAL = re.compile(
    r"as an ai(\s+language)?\s+model|i('| a)m sorry,? but i (can(no|')t|am unable)|i can(no|')t (help|assist) "
    r"with (that|this)|i('| a)m (not able|unable) to (help|assist|comply)|i must decline|"
    r"i can(no|')t provide (that|this)", re.I)
_OTHER_ASSISTANT = re.compile(
    r"\bi am (chatgpt|gpt-?\d|claude|gemini|smollm|an ai assistant)|\bi'm (chatgpt|an ai assistant)\b|"
    r"as an ai assistant|developed by (openai|hugging ?face|anthropic|google)", re.I)
# A deliberately small local screen: multi-word phrases where possible, because single words such as "kill" or
# "execute" are everyday vocabulary in technical text ("kill the process"). It catches the obvious; the
# moderation endpoint is the real screen when a key is available.
_UNSAFE = {
    "sexual": r"\b(porn\w*|explicit sex|sexual(ly)? explicit|nude photos?|erotic\w*|genitals?|orgasm\w*)\b",
    "self_harm": r"\b(kill (myself|yourself)|suicide method|how to (self[- ]harm|cut myself)|end my life)\b",
    "violence": r"\b(behead\w*|dismember\w*|mass shooting|torture (him|her|them|people)|make a bomb|pipe bomb)\b",
    "hate": r"\b(subhuman|ethnic cleansing|racial slur|gas the)\b",
    "illicit": r"\b(synthesi[sz]e (meth|fentanyl|heroin)|cook meth|buy cocaine)\b",
}
_UNSAFE_RE = {k: re.compile(v, re.I) for k, v in _UNSAFE.items()}
_STOPWORDS = set("the a an of to in and or is are was were be been it its this that these those i my me you your "
                 "we our with for on at by from as but not no so if then than when what which who how why can "
                 "do does did will would could should have has had there their they them he she his her".split())
_WORD = re.compile(r"[A-Za-z']+|[^\W\d_]+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """1 − distinct/total word n-grams of one text: 0 for no repeats, → 1 for a loop of one phrase."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def echo_share(answer: str, prompt: str, n: int = 4) -> float:
    """Share of the answer's word n-grams that also occur in the prompt (0 = none copied, 1 = all copied)."""
    a = ngrams(words(answer), n)
    if not a:
        return 0.0
    p = set(ngrams(words(prompt), n))
    return sum(g in p for g in a) / len(a)


def english_signals(text: str) -> tuple[float, float]:
    """(share of letters that are ASCII, share of words that are common English function words)."""
    letters = [c for c in text if c.isalpha()]
    ascii_share = sum(c.isascii() for c in letters) / len(letters) if letters else 1.0
    ws = words(text)
    stop_share = sum(w in _STOPWORDS for w in ws) / len(ws) if ws else 0.0
    return ascii_share, stop_share


# The persona's first voice trait is "first person, speaks as Deep Tree Echo". Counting that voice as a persona
# signal matters: on the hand-written seed corpus, concepts alone flag 27% of answers as drift, concepts or voice 3%.
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|I'll|my|me|myself)\b")
_GENERIC = {"state", "rate", "rule", "property", "memory", "feedback", "regression"}  # too common alone


def concept_terms(persona: dict[str, Any]) -> list[str]:
    """The persona's name, its core concepts, and the distinctive single words inside multi-word concepts
    ("echo state reservoir" → "reservoir"), minus words too common to mean anything alone."""
    terms = [persona.get("name", "")] + list(persona.get("core_concepts", []))
    for concept in persona.get("core_concepts", []):
        terms += [w for w in concept.lower().split() if len(w) > 3 and w not in _GENERIC]
    return list(dict.fromkeys(t.lower() for t in terms if t))


def persona_concepts(text: str, persona: dict[str, Any]) -> list[str]:
    """Concept terms (:func:`concept_terms`) that occur in the text: case-insensitive whole words; a trailing
    s/es/ing/ed counts, so "echoes" matches "echo"."""
    low = text.lower()
    return [t for t in concept_terms(persona) if re.search(r"\b" + re.escape(t) + r"(s|es|ing|ed)?\b", low)]


def local_safety_screen(text: str) -> list[str]:
    """Categories whose phrases occur in the text (empty list = nothing found)."""
    return [cat for cat, rx in _UNSAFE_RE.items() if rx.search(text)]


def moderation_screen(texts: Sequence[str], client: Any, model: str = "omni-moderation-latest",
                      chunk: int = 32) -> list[list[str]]:
    """Flagged categories per text from an OpenAI-style ``/v1/moderations`` endpoint (free on OpenAI)."""
    out: list[list[str]] = []
    for i in range(0, len(texts), chunk):
        resp = client.moderations.create(model=model, input=list(texts[i:i + chunk]))
        for r in resp.results:
            cats = r.categories.model_dump() if hasattr(r.categories, "model_dump") else dict(r.categories)
            out.append(sorted(k for k, v in cats.items() if v) if r.flagged else [])
    return out


def default_moderation_client() -> Any:
    """An OpenAI client when ``OPENAI_API_KEY`` is set (the key is read by the SDK, never printed), else None."""
    if not os.environ.get("OPENAI_API_KEY"):
        return None
    import openai
    return openai.OpenAI()


def check(answer: str, *, prompt: str = "", finish_reason: str | None = None, persona: dict[str, Any] | None = None,
          cfg: FilterCfg | None = None, unsafe: list[str] | None = None) -> list[tuple[str, str]]:
    """Every (reason, detail) that fires for one answer, in :data:`REASONS` order (empty list = clean).

    ``unsafe``: categories from a moderation call made by the caller; ``None`` runs the local screen.
    """
    cfg = cfg or FilterCfg()
    text = answer or ""
    if not text.strip():
        return [("empty", "no text")]
    hits: list[tuple[str, str]] = []
    cats = local_safety_screen(text) if unsafe is None else unsafe
    if cats:
        hits.append(("unsafe", ", ".join(cats)))
    stripped = text.rstrip()
    if finish_reason == "length":
        hits.append(("truncated", "finish_reason=length"))
    elif stripped[-1] not in ".!?…)\"'”’*`:;":
        hits.append(("truncated", f"ends mid-sentence: …{stripped[-30:]!r}"))
    n = len(text.split())
    if n < cfg.min_words:
        hits.append(("too_short", f"{n} words < {cfg.min_words}"))
    if n > cfg.max_words:
        hits.append(("too_long", f"{n} words > {cfg.max_words}"))
    m = _MARKUP.search(text)
    fences = text.count("```")
    if m:
        hits.append(("markup_residue", f"found {m.group(0)!r}"))
    elif fences % 2:
        hits.append(("markup_residue", "unclosed ``` code fence"))
    elif fences and stripped.lstrip().startswith("```") and stripped.endswith("```"):
        hits.append(("markup_residue", "the whole answer is wrapped in a ``` fence"))
    rep = repeated_ngram_share(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    top_line = Counter(lines).most_common(1)
    if rep > cfg.repeat_ngram_share or (top_line and top_line[0][1] >= 3):
        hits.append(("repetition", f"repeated 3-gram share {rep:.2f}"))
    ascii_share, stop_share = english_signals(text)
    if ascii_share < 0.85 or stop_share < 0.08:
        hits.append(("non_english", f"ascii letters {ascii_share:.2f}, english function words {stop_share:.2f}"))
    m = _REFUSAL.search(text)
    if m:
        hits.append(("refusal", f"found {m.group(0)!r}"))
    if prompt:
        es = echo_share(text, prompt)
        if es > cfg.echo_share:
            hits.append(("prompt_echo", f"{es:.0%} of 4-grams copied from the prompt"))
    if persona is not None:
        m = _OTHER_ASSISTANT.search(text)
        if m:
            hits.append(("persona_drift", f"calls itself another assistant: {m.group(0)!r}"))
        elif not persona_concepts(text, persona) and not _FIRST_PERSON.search(text):
            hits.append(("persona_drift", "no persona concept and no first-person voice"))
    return hits


def as_example(item: ChatExample | dict[str, Any]) -> ChatExample:
    """A raw.jsonl row (or any dict with ``messages``) as a ChatExample; other keys become metadata."""
    if isinstance(item, ChatExample):
        return item
    meta = {k: v for k, v in item.items() if k not in ("messages", "id")}
    return ChatExample(messages=item["messages"], id=item.get("id", ""), meta=meta)


def filter_examples(examples: Iterable[ChatExample | dict[str, Any]], persona: dict[str, Any] | None = None,
                    cfg: FilterCfg | None = None, moderation_client: Any = None
                    ) -> tuple[list[ChatExample], list[ChatExample]]:
    """Split examples into (kept, dropped). Dropped ones carry ``meta`` drop_reason, drop_detail and flags.

    ``moderation_client``: an OpenAI(-compatible) client for the moderation endpoint; ``None`` uses the local
    screen (pass ``quality.default_moderation_client()`` to use OpenAI's when a key is set).
    """
    exs = [as_example(e) for e in examples]
    unsafe: list[list[str] | None] = [None] * len(exs)
    if moderation_client is not None and exs:
        unsafe = list(moderation_screen([e.response for e in exs], moderation_client))
    cfg = cfg or FilterCfg()
    kept, dropped = [], []
    for ex, cats in zip(exs, unsafe):
        finish = ex.meta.get("finish_reason")
        if cfg.trim_truncated and finish == "length":
            trimmed = trim_to_sentence(ex.response)
            if trimmed and trimmed != ex.response.rstrip():
                # a small model at a small max_tokens rarely finishes; its complete sentences are still usable.
                # The cut is recorded, and the trimmed text must pass every other check.
                ex.meta["trimmed_chars"] = len(ex.response) - len(trimmed)
                _set_response(ex, trimmed)
                finish = "stop"
        hits = check(ex.response, prompt=ex.prompt, finish_reason=finish, persona=persona, cfg=cfg, unsafe=cats)
        if hits:
            ex.meta.update(drop_reason=hits[0][0], drop_detail=hits[0][1], flags=[h[0] for h in hits])
            dropped.append(ex)
        else:
            kept.append(ex)
    return kept, dropped


def _set_response(ex: ChatExample, text: str) -> None:
    for m in reversed(ex.messages):
        if m["role"] == "assistant":
            m["content"] = text
            return


def reason_counts(dropped: Iterable[ChatExample]) -> dict[str, int]:
    """Drops per reason, every reason listed (0 where none), in :data:`REASONS` order."""
    c = Counter(ex.meta.get("drop_reason") for ex in dropped)
    return {r: c.get(r, 0) for r in REASONS}


if __name__ == "__main__":
    from . import config, data
    rows = data.read_rows(sys.argv[1])
    k, d = filter_examples(rows, load_persona(config.DATA_DIR / "persona.json"))
    print(json.dumps({"kept": len(k), "dropped": len(d), "reasons": reason_counts(d)}, indent=2))

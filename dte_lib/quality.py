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

**Calibrated to the user's corpus.** The style thresholds above (length, repetition, endings, markup, English
signals, prompt echo, the persona voice) were first set for the shipped seed corpus; :func:`calibrate` widens them
to the tails of the user's own answers (P0.5 / P99.5 with a margin, never stricter than the preset), so a long-form
or a terse corpus is not dropped for being itself, and :func:`false_drop_report` measures the result:
``filter_false_drop_rate``, the share of the user's own examples the filter drops (goal: ≤ 5%). ``FilterCfg.
from_preset(cfg)`` calibrates on ``cfg.data.corpus``; :func:`calibration_lines` states each threshold and its source.

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
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterable, Sequence

from .data import ChatExample, load_persona

REASONS = ("empty", "unsafe", "truncated", "too_short", "too_long", "markup_residue", "repetition", "non_english",
           "refusal", "prompt_echo", "persona_drift")


END_CHARS = ".!?…)\"'”’*`:;"  # closing characters a finished answer ends with (before calibration)
MARKUP_CHECKS = ("role_tag", "chat_token", "instruction_header", "carriage_return", "unclosed_fence",
                 "wrapped_fence")


@dataclass
class FilterCfg:
    """Thresholds (notebooks take them from ``cfg.generate``, calibrated to the user's corpus: :func:`calibrate`)."""
    min_words: int = 12
    max_words: int = 600
    repeat_ngram_share: float = 0.35
    echo_share: float = 0.6
    trim_truncated: bool = False  # cut a finish_reason=length answer back to its last full sentence, then check
    max_line_repeats: int = 3  # the same line (one with letters) this many times is a loop
    end_chars: str = END_CHARS  # an answer ending in anything else "ends mid-sentence"
    end_alnum: bool = False  # accept answers ending in a letter or digit (lists, code, headings in your corpus)
    min_ascii_share: float = 0.85  # non_english below this share of ASCII letters ...
    min_stopword_share: float = 0.08  # ... or below this share of English function words
    markup_off: tuple[str, ...] = ()  # MARKUP_CHECKS your own corpus uses as content
    persona_voice: bool = True  # drop answers with no persona concept and no first-person voice
    calibration: dict[str, Any] | None = field(default=None, compare=False)  # what calibrate() measured and chose

    @classmethod
    def from_preset(cls, cfg: Any, calibrate_to_corpus: bool = True) -> "FilterCfg":
        """The preset's thresholds, widened to fit the run's own corpus (``cfg.data.corpus``) unless
        ``calibrate_to_corpus=False``: the filter must not drop the user's own style of answer."""
        g = cfg.generate
        base = cls(g.min_words, g.max_words, g.repeat_ngram_share, g.echo_share, g.trim_truncated)
        if not calibrate_to_corpus:
            return base
        from . import data as data_mod
        path = cfg.path(cfg.data.corpus)
        if not path.exists():
            return base
        persona_path = cfg.path(cfg.data.persona)
        key = (str(path), _mtime(path), os.environ.get(data_mod.ROLES_ENV, ""), str(persona_path),
               _mtime(persona_path), repr(base))
        return _calibrated_cached(key, base)


_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """The text up to its last complete sentence ("" if it has none)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()].rstrip() if ends else ""


_MARKUP = {  # MARKUP_CHECKS with a pattern; fences are counted in check()
    "role_tag": re.compile(r"\*\*(user|assistant|human|echo|system)\s*:?\*\*|^\s*(user|assistant|human|system)\s*:",
                           re.I | re.M),
    "chat_token": re.compile(r"<\|[a-z_]+\|>|<\|im_(start|end)\|>", re.I),
    "instruction_header": re.compile(r"^\s*###\s*(instruction|response|input)", re.I | re.M),
    "carriage_return": re.compile(r"\r"),
}
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
    rx = _concept_regex(tuple(concept_terms(persona)))
    return list(dict.fromkeys(m.group(1) for m in rx.finditer(text.lower())))


@lru_cache(maxsize=8)
def _concept_regex(terms: tuple[str, ...]) -> re.Pattern:
    # one alternation, longest terms first, compiled once per persona: ~30× faster than a search per term
    alt = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(r"\b(" + alt + r")(?:s|es|ing|ed)?\b")


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
    elif not _ends_ok(stripped, cfg):
        hits.append(("truncated", f"ends mid-sentence: …{stripped[-30:]!r}"))
    n = len(text.split())
    if n < cfg.min_words:
        hits.append(("too_short", f"{n} words < {cfg.min_words}"))
    if n > cfg.max_words:
        hits.append(("too_long", f"{n} words > {cfg.max_words}"))
    markup = markup_hits(text, cfg.markup_off)
    if markup:
        hits.append(("markup_residue", markup[0][1]))
    rep = repeated_ngram_share(text)
    top_line = max_line_repeats(text)
    if rep > cfg.repeat_ngram_share or top_line >= cfg.max_line_repeats:
        hits.append(("repetition", f"repeated 3-gram share {rep:.2f}, a line {top_line}× "
                                   f"(limits {cfg.repeat_ngram_share:.2f}, {cfg.max_line_repeats}×)"))
    ascii_share, stop_share = english_signals(text)
    if ascii_share < cfg.min_ascii_share or stop_share < cfg.min_stopword_share:
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
        elif cfg.persona_voice and not persona_concepts(text, persona) and not _FIRST_PERSON.search(text):
            hits.append(("persona_drift", "no persona concept and no first-person voice"))
    return hits


def _ends_ok(stripped: str, cfg: FilterCfg) -> bool:
    last = stripped[-1]
    return last in cfg.end_chars or (cfg.end_alnum and last.isalnum())


def _ending(stripped: str) -> str:
    """The ending class of an answer: its last character, or "letter/digit" for any alphanumeric one."""
    return "letter/digit" if stripped[-1:].isalnum() else stripped[-1:]


def markup_hits(text: str, off: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(MARKUP_CHECKS name, detail) of each markup-residue check that fires, minus those in ``off``."""
    out = []
    for name, rx in _MARKUP.items():
        m = rx.search(text) if name not in off else None
        if m:
            out.append((name, f"found {m.group(0)!r}"))
    stripped = text.strip()
    fences = text.count("```")
    if fences % 2 and "unclosed_fence" not in off:
        out.append(("unclosed_fence", "unclosed ``` code fence"))
    elif fences and stripped.startswith("```") and stripped.endswith("```") and "wrapped_fence" not in off:
        out.append(("wrapped_fence", "the whole answer is wrapped in a ``` fence"))
    return out


def max_line_repeats(text: str) -> int:
    """How often the most repeated line occurs; code fences (```python) and lines without letters (---, table
    rules) don't count."""
    lines = [ln.strip() for ln in text.splitlines()
             if re.search(r"[^\W\d_]", ln) and not ln.lstrip().startswith(("```", "~~~"))]
    top = Counter(lines).most_common(1)
    return top[0][1] if top else 0


# ---------------------------------------------------------------------------------------------- calibration
def _mtime(path: Any) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


_CALIBRATED: dict[tuple, "FilterCfg"] = {}


def _calibrated_cached(key: tuple, base: "FilterCfg") -> "FilterCfg":
    from . import data as data_mod
    if key not in _CALIBRATED:
        corpus_path, _, _, persona_path, _, _ = key
        examples = data_mod.load_corpus(corpus_path).examples
        persona = load_persona(persona_path) if os.path.exists(persona_path) else None
        _CALIBRATED[key] = calibrate(examples, base, persona) if examples else base
    return replace(_CALIBRATED[key])


def _pct(values: Sequence[float], q: float) -> float:
    import numpy as np
    return float(np.percentile(values, q)) if len(values) else 0.0


def calibrate(examples: Sequence[ChatExample | dict[str, Any]], base: FilterCfg | None = None,
              persona: dict[str, Any] | None = None, target: float = 0.04, tail: float = 0.5) -> FilterCfg:
    """Widen ``base``'s thresholds so the user's own (good) answers pass, from their own distribution.

    Never stricter than ``base`` (junk the preset drops is still dropped). Each style threshold moves to the
    corpus' ``tail``-percentile tail with a margin — length bounds to 0.8 × P0.5 and 1.25 × P99.5 words,
    repetition to P99.5 + 0.05 (and the repeated-line count to its P99.5 + 1), the English signals to
    P0.5 − 0.05 (ASCII share) and 0.8 × P0.5 (function words), prompt echo to P99.5 + 0.05 —; answer endings
    and markup checks the corpus uses as content (more than ``tail`` % of answers) are accepted. If the filter would still drop more than ``target`` of the corpus,
    the check dropping most is relaxed further, one at a time, and each step is recorded. Content checks
    (empty, unsafe, refusal, another assistant's name) are never relaxed. ``cfg.calibration`` holds every
    measurement and choice; :func:`calibration_lines` prints them.
    """
    base = base or FilterCfg()
    exs = [as_example(e) for e in examples]
    answers = [ex.response for ex in exs if ex.response.strip()]
    cfg = replace(base, calibration=None)
    if not answers:
        return cfg
    lo, hi = tail, 100 - tail  # the calibration's percentiles (P0.5 / P99.5 by default)
    n_words = [len(a.split()) for a in answers]
    reps = [repeated_ngram_share(a) for a in answers]
    line_reps = [max_line_repeats(a) for a in answers]
    signals = [english_signals(a) for a in answers]
    echoes = [echo_share(ex.response, ex.prompt) for ex in exs if ex.prompt and ex.response.strip()]
    cal: dict[str, Any] = {"examples": len(answers), "percentiles": f"P{lo:g}/P{hi:g}", "steps": []}
    cal["words"] = {"p0.5": _pct(n_words, lo), "p50": _pct(n_words, 50), "p99.5": _pct(n_words, hi)}
    cfg.min_words = max(1, min(base.min_words, int(0.8 * cal["words"]["p0.5"])))
    cfg.max_words = max(base.max_words, int(1.25 * cal["words"]["p99.5"]) + 1)
    cal["repeat_ngram_share"] = {"p99.5": _pct(reps, hi)}
    cfg.repeat_ngram_share = round(max(base.repeat_ngram_share, min(0.8, cal["repeat_ngram_share"]["p99.5"] + 0.05)), 3)
    cal["line_repeats"] = {"p99.5": _pct(line_reps, hi)}
    cfg.max_line_repeats = max(base.max_line_repeats, int(cal["line_repeats"]["p99.5"]) + 1)
    cal["ascii_share"] = {"p0.5": _pct([a for a, _ in signals], lo)}
    cal["stopword_share"] = {"p0.5": _pct([b for _, b in signals], lo)}
    cfg.min_ascii_share = round(min(base.min_ascii_share, cal["ascii_share"]["p0.5"] - 0.05), 3)
    cfg.min_stopword_share = round(min(base.min_stopword_share, 0.8 * cal["stopword_share"]["p0.5"]), 3)
    if echoes:
        cal["echo_share"] = {"p99.5": _pct(echoes, hi)}
        cfg.echo_share = round(max(base.echo_share, min(0.95, cal["echo_share"]["p99.5"] + 0.05)), 3)
    # endings: accept the most common non-closing endings until at most `tail` % of answers end otherwise
    endings = Counter(_ending(a.rstrip()) for a in answers if not _ends_ok(a.rstrip(), cfg))
    cal["endings"] = {k: v / len(answers) for k, v in endings.most_common()}
    left = sum(endings.values())
    for end, count in endings.most_common():
        if left / len(answers) <= tail / 100:
            break
        if end == "letter/digit":
            cfg.end_alnum = True
        else:
            cfg.end_chars += end
        left -= count
    # markup checks your corpus uses as content
    counts = Counter(name for a in answers for name, _ in markup_hits(a))
    cal["markup"] = {k: v / len(answers) for k, v in counts.most_common()}
    cfg.markup_off = tuple(k for k, v in counts.items() if v / len(answers) > tail / 100)
    # the guard: relax what still drops most, until the corpus' own drop rate is at most `target`
    for _ in range(8):
        _, dropped = filter_examples([_copy(ex) for ex in exs], persona, cfg)
        rate = len(dropped) / len(exs)
        cal["false_drop_rate"] = rate
        if rate <= target:
            break
        reasons = Counter(ex.meta["drop_reason"] for ex in dropped)
        step = _relax(cfg, reasons, dropped, n_words)
        if not step:
            break
        cal["steps"].append(f"{step} (drop rate was {rate:.1%})")
    cfg.calibration = cal
    return cfg


def _copy(ex: ChatExample) -> ChatExample:
    return ChatExample(messages=[dict(m) for m in ex.messages], id=ex.id, meta=dict(ex.meta), source=ex.source)


def _relax(cfg: FilterCfg, reasons: Counter, dropped: list[ChatExample], n_words: list[int]) -> str:
    for reason, _ in reasons.most_common():
        if reason == "persona_drift" and cfg.persona_voice:
            cfg.persona_voice = False
            return "persona voice check off: your answers often use no persona concept and no first person"
        if reason == "too_long":
            cfg.max_words = max(n_words) + 1
            return f"max_words → {cfg.max_words} (your longest answer)"
        if reason == "too_short":
            cfg.min_words = max(1, min(n_words))
            return f"min_words → {cfg.min_words} (your shortest answer)"
        if reason == "truncated" and not cfg.end_alnum:
            cfg.end_alnum = True
            cfg.end_chars += "".join(sorted({ex.response.rstrip()[-1:] for ex in dropped
                                             if ex.meta["drop_reason"] == "truncated"}))
            return "every ending of your answers accepted (mid-sentence check effectively off)"
        if reason == "repetition" and cfg.repeat_ngram_share < 0.8:
            cfg.repeat_ngram_share, cfg.max_line_repeats = 0.8, max(cfg.max_line_repeats, 10)
            return "repetition limits → 0.8 share, 10 repeated lines"
        if reason == "markup_residue":
            names = Counter(n for ex in dropped for n, _ in markup_hits(ex.response, cfg.markup_off))
            if names:
                cfg.markup_off += (names.most_common(1)[0][0],)
                return f"markup check {names.most_common(1)[0][0]} off"
        if reason == "non_english" and cfg.min_stopword_share > 0:
            cfg.min_ascii_share, cfg.min_stopword_share = 0.0, 0.0
            return "non-English check off: your corpus is not (mostly) English prose"
        if reason == "prompt_echo" and cfg.echo_share < 1.0:
            cfg.echo_share = 1.0
            return "prompt-echo check off: your answers quote their prompts"
    return ""


def calibration_lines(cfg: FilterCfg) -> list[str]:
    """The calibrated thresholds, each with the measurement it came from (for notebooks and `dte data check`)."""
    cal = cfg.calibration
    if not cal:
        return ["filter thresholds: the preset's (not calibrated)"]
    w = cal["words"]
    lines = [f"calibrated on {cal['examples']} of your answers ({cal['percentiles']} tails, never stricter than "
             f"the preset):",
             f"  length: {cfg.min_words}–{cfg.max_words} words (your P0.5 {w['p0.5']:.0f}, median {w['p50']:.0f}, "
             f"P99.5 {w['p99.5']:.0f})",
             f"  repetition: repeated 3-gram share > {cfg.repeat_ngram_share:.2f} (your P99.5 "
             f"{cal['repeat_ngram_share']['p99.5']:.2f}) or a line {cfg.max_line_repeats}× (your P99.5 "
             f"{cal['line_repeats']['p99.5']:.0f}×)",
             f"  truncation: finish_reason=length, or an ending outside {cfg.end_chars!r}"
             + (" and letters/digits" if cfg.end_alnum else "")
             + (f" (your endings outside the default: " + ", ".join(f"{k!r} {v:.1%}" for k, v in
                                                                      list(cal['endings'].items())[:4]) + ")"
                if cal["endings"] else ""),
             f"  non-English: ASCII letters < {cfg.min_ascii_share:.2f} or function words < "
             f"{cfg.min_stopword_share:.2f} (your P0.5 {cal['ascii_share']['p0.5']:.2f}, "
             f"{cal['stopword_share']['p0.5']:.2f})",
             f"  markup checks off: {', '.join(cfg.markup_off) or 'none'}"
             + (f" (your answers: " + ", ".join(f"{k} {v:.1%}" for k, v in cal['markup'].items()) + ")"
                if cal["markup"] else ""),
             f"  persona voice check: {'on' if cfg.persona_voice else 'off'}"]
    if "echo_share" in cal:
        lines.append(f"  prompt echo: > {cfg.echo_share:.2f} of 4-grams (your P99.5 {cal['echo_share']['p99.5']:.2f})")
    lines += [f"  relaxed: {s}" for s in cal["steps"]]
    return lines


def false_drop_report(examples: Sequence[ChatExample], base: FilterCfg, persona: dict[str, Any] | None = None,
                      val_fraction: float = 0.1, test_fraction: float = 0.1) -> dict[str, Any]:
    """The filter's false-drop rate on the user's own examples (everything it drops there is a false alarm).

    ``filter_false_drop_rate``: the calibrated filter on the whole corpus; ``..._heldout``: calibrated on the
    train split only and run on val + test (how it generalises to answers it was not calibrated on); the
    uncalibrated preset's rate for comparison; drops per reason; the thresholds with their sources.
    """
    from . import data as data_mod
    exs = [as_example(e) for e in examples]
    cfg = calibrate(exs, base, persona)
    _, dropped = filter_examples([_copy(e) for e in exs], persona, cfg)
    _, dropped_base = filter_examples([_copy(e) for e in exs], persona, base)
    parts = data_mod.split(exs, val_fraction, test_fraction)
    held = parts["val"] + parts["test"]
    heldout = None
    if parts["train"] and held:
        cfg_train = calibrate(parts["train"], base, persona)
        heldout = len(filter_examples([_copy(e) for e in held], persona, cfg_train)[1]) / len(held)
    n = max(len(exs), 1)
    return {"filter_false_drop_rate": len(dropped) / n, "filter_false_drop_rate_heldout": heldout,
            "filter_false_drop_rate_uncalibrated": len(dropped_base) / n, "examples": len(exs),
            "dropped": len(dropped), "drop_reasons": {k: v for k, v in reason_counts(dropped).items() if v},
            "dropped_examples": [(ex.source or ex.id, ex.meta["drop_reason"], ex.meta["drop_detail"])
                                 for ex in dropped],
            "thresholds": calibration_lines(cfg), "cfg": cfg}


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

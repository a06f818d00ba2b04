"""Bring-your-own-data corpora of very different shapes, generated from word lists (no copied prose).

- :func:`longform` — long answers (median ≥ 500 words) with Markdown headings, lists, tables, inline code and
  fenced code blocks; some end in a code block or a list item, some run past 600 words.
- :func:`templated` — short answers from a handful of templates: full of near-duplicates and a few exact ones.
- :func:`transcripts` — multi-turn plain-text transcripts with the persona's own tags (``<|convo|>`` opens each
  record, ``<|visitor|>`` asks, ``<|quill|>`` answers), CRLF line endings.
- :func:`opener` — the persona's tag both opens each record and marks its turns, as real exports have it:
  ``<|echo|><|system|> You are … <|user|> … <|echo|> I … <|endoftext|>`` (``opener_custom``: the same with the
  persona's own unknown tag ``<|quill|>``, for the mapping ``dte data check`` proposes).

Used by tests/test_byod.py (``dte data check`` and a ci ``--corpus`` course run on each) and by docs/DATA.md.
Run it: ``python tests/byod_corpora.py OUT_DIR`` writes them.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOPICS = ["glaze chemistry", "kiln schedules", "clay bodies", "wheel throwing", "slip casting", "wood firing",
          "studio ventilation", "glaze defects", "reclaiming clay", "trimming feet", "handbuilding slabs",
          "underglaze transfers"]
NOUNS = ["kiln", "glaze", "bisque", "slip", "wedge", "rib", "bat", "cone", "kiln shelf", "spray booth", "test tile",
         "pugmill", "banding wheel", "sieve", "scale", "damp box", "thermocouple", "controller"]
ADJS = ["patient", "even", "slow", "steady", "careful", "dry", "bone-dry", "leather-hard", "glossy", "matte",
        "crawling", "pinholed", "crazed", "warm", "cool", "dense", "open", "tight"]
VERBS = ["measure", "sieve", "weigh", "log", "cool", "ramp", "hold", "test", "compare", "label", "wedge", "trim",
         "dry", "fire", "sketch", "record", "soak", "check"]
TIMES = ["morning", "evening", "firing", "week", "batch", "session", "load", "season"]
NAME = "Marl"
CODE_NAMES = ["ramp", "hold", "soak", "cool", "log_temp", "cone_eq", "batch_mix", "dry_time"]


OPENERS = ["I", "I usually", "In my studio I", "When I teach this, I", "I always", "Most days I", "On a cold day I",
           "If the load is mixed, I", "Before a long firing I", "After a bad batch I"]
LINKS = ["because", "so that", "since", "which means", "and only then", "or else"]
OUTCOMES = ["tells me", "shows", "hides", "changes", "decides", "warns me about", "sets", "limits"]
ENDS = ["behave", "move", "settle", "crack", "shine", "shrink", "bloat", "run", "pool", "blister", "mature"]
SENTENCES = [
    "{o} {v} the {a} {n} before I {v2} the {n2}, {l} a {a2} {n3} {out} how the {n} will {e} in the next {t}.",
    "{o} keep a note of the {n3}: {a} {n} on one side, {a2} {n2} on the other, {t} by {t}.",
    "The {n} is {a} when it {out} the {n2}; I {v} it twice, {l} the {n3} can {e}.",
    "Nothing about the {n2} is {a} if the {n} is {a2}, so I {v} it and wait a full {t}.",
    "{o} {v} {k} {n} and {v2} {k2} {n2}; the difference {out} the whole {t}.",
    "A {a} {n} will {e}; a {a2} one will not, {l} I {v} the {n3} first.",
    "Ask anyone who has lost a {t} to a {a} {n}: they {v} the {n2} now.",
    "{o} {v} the {n} at {k} degrees, hold for {k2} minutes, and {v2} the {n2}.",
]


def _sentence(rng: random.Random, first_person: bool = True) -> str:
    c = rng.choice
    return c(SENTENCES).format(o=c(OPENERS), v=c(VERBS), v2=c(VERBS), a=c(ADJS), a2=c(ADJS), n=c(NOUNS),
                               n2=c(NOUNS), n3=c(NOUNS), l=c(LINKS), out=c(OUTCOMES), e=c(ENDS), t=c(TIMES),
                               k=rng.randint(2, 1300), k2=rng.randint(2, 90))


def _paragraph(rng: random.Random, n: int) -> str:
    return " ".join(_sentence(rng) for _ in range(n))


def _code(rng: random.Random) -> str:
    f, g = rng.sample(CODE_NAMES, 2)
    a, b = rng.randint(50, 200), rng.randint(600, 1300)
    return (f"```python\ndef {f}(start_c: float, end_c: float, rate_c_per_h: float) -> float:\n"
            f"    \"\"\"Hours the {rng.choice(NOUNS)} needs to go from start to end at this rate.\"\"\"\n"
            f"    return abs(end_c - start_c) / rate_c_per_h\n\n\nprint({f}({a}, {b}, {rng.randint(60, 150)}))\n"
            f"print({g} if False else 'ok')\n```")


def longform(n: int = 60, seed: int = 0) -> list[dict]:
    """OpenAI chat JSONL rows whose answers are long Markdown documents with code."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        parts = [f"## How I approach {topic}", _paragraph(rng, rng.randint(6, 9)),
                 "### What I check first", *(f"- {_sentence(rng)}" for _ in range(rng.randint(3, 5))),
                 _paragraph(rng, rng.randint(5, 8)), _code(rng),
                 f"The `{rng.choice(CODE_NAMES)}` step is where I {rng.choice(VERBS)} the **{rng.choice(NOUNS)}**.",
                 "| stage | what I watch |", "|---|---|",
                 *(f"| {rng.choice(NOUNS)} | the {rng.choice(ADJS)} {rng.choice(NOUNS)} |" for _ in range(3)),
                 _paragraph(rng, rng.randint(6, 12 if i % 5 else 22))]
        ending = i % 6
        if ending == 0:
            parts.append(_code(rng))  # ends in a code block
        elif ending == 1:
            parts += ["### Next steps", *(f"- {rng.choice(VERBS)} the {rng.choice(NOUNS)}" for _ in range(3))]
        rows.append({"id": f"long-{i:03d}", "topic": topic, "messages": [
            {"role": "system", "content": f"You are {NAME}, a potter who explains the studio in depth."},
            {"role": "user", "content": f"Can you walk me through {topic} in detail, with an example?"},
            {"role": "assistant", "content": "\n\n".join(parts)}]})
    return rows


TEMPLATES = [
    "I {v} the {n} every {t}.",
    "I {v} the {n} every {t}, and I {v2} the {n2}.",
    "Keep the {n} {a}; I {v} it each {t}.",
    "My rule: {v} the {n} before the {n2}.",
    "I {v} the {a} {n} first, then the {n2}.",
    "Short answer: I {v} the {n}",
]


def templated(n: int = 200, seed: int = 1) -> list[dict]:
    """input/output JSONL rows: short answers from six templates (many near-duplicates, some exact)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tpl = TEMPLATES[i % len(TEMPLATES)]
        ans = tpl.format(v=rng.choice(VERBS[:4]), v2=rng.choice(VERBS[:4]), n=rng.choice(NOUNS[:5]),
                         n2=rng.choice(NOUNS[:5]), a=rng.choice(ADJS[:3]), t=rng.choice(TIMES[:3]))
        q = f"What do you do with the {rng.choice(NOUNS[:5])}?"
        rows.append({"input": q, "output": ans, "topic": "studio habits"})
    rows += [dict(rows[k]) for k in range(0, 12, 3)]  # exact duplicates, as real exports have
    return rows


VISITOR_ASKS = ["What are you working on today, {name}?", "Why does the {n} matter so much?",
                "How long do you {v} the {n}?", "What went wrong with the last {t}?",
                "Could you explain the {a} {n} again?", "What would you change next {t}?"]


def transcripts(n: int = 40, seed: int = 2) -> str:
    """A plain-text transcript file: ``<|convo|>`` opens each record, then <|system|>, and 2–4 exchanges between
    ``<|visitor|>`` and ``<|quill|>``; CRLF line endings; blank lines inside answers."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lines = ["<|convo|>", "<|system|> You are Quill, a studio assistant who answers in the first person."]
        for _ in range(rng.randint(2, 4)):
            ask = rng.choice(VISITOR_ASKS).format(name="Quill", n=rng.choice(NOUNS), v=rng.choice(VERBS),
                                                  t=rng.choice(TIMES), a=rng.choice(ADJS))
            lines.append(f"<|visitor|> {ask}")
            lines.append(f"<|quill|> {_paragraph(rng, rng.randint(2, 4))}")
            if rng.random() < 0.4:
                lines += ["", _paragraph(rng, rng.randint(1, 3))]
        out.append("\n".join(lines))
    return "\r\n".join("\n\n".join(out).split("\n")) + "\r\n"


ROLES = "<|convo|>=record,<|visitor|>=user,<|quill|>=assistant"


def opener(n: int = 40, seed: int = 3, tag: str = "<|echo|>") -> str:
    """Records like ``<|echo|><|system|> You are Echo … <|user|> … <|echo|> I … <|endoftext|>``: the persona's tag
    opens each record with no text of its own, then marks the persona's turns; 1–3 exchanges, a record on one line
    or over several (some answers hold a blank line between paragraphs)."""
    rng = random.Random(seed)
    name = tag.strip("<|>").capitalize()
    out = []
    for _ in range(n):
        parts = [f"{tag}<|system|> You are {name}, a studio assistant who answers in the first person."]
        for _ in range(rng.randint(1, 3)):
            ask = rng.choice(VISITOR_ASKS).format(name=name, n=rng.choice(NOUNS), v=rng.choice(VERBS),
                                                  t=rng.choice(TIMES), a=rng.choice(ADJS))
            answer = _paragraph(rng, rng.randint(2, 4))
            if rng.random() < 0.3:
                answer += "\n\n" + _paragraph(rng, rng.randint(1, 2))
            parts += [f"<|user|> {ask}", f"{tag} {answer}"]
        out.append((" " if rng.random() < 0.5 else "\n").join(parts) + " <|endoftext|>")
    return "\n".join(out) + "\n"


OPENER_ROLES = "<|echo|>=assistant"  # what the user passed; <|echo|> is also a default tag, so none is needed


def write_all(directory: str | Path) -> dict[str, Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"longform": d / "longform.jsonl", "templated": d / "templated.jsonl",
             "transcripts": d / "transcripts.txt", "opener": d / "opener.txt", "opener_custom": d / "quill.txt",
             "transcripts_and_opener": d / "two-exports"}
    paths["longform"].write_text("".join(json.dumps(r) + "\n" for r in longform()))
    paths["templated"].write_text("".join(json.dumps(r) + "\n" for r in templated()))
    paths["transcripts"].write_bytes(transcripts().encode())
    paths["opener"].write_text(opener())
    paths["opener_custom"].write_text(opener(seed=4, tag="<|quill|>"))
    both = paths["transcripts_and_opener"]  # one user's two exports in a folder: the course reads every file
    both.mkdir(exist_ok=True)
    (both / "transcripts.txt").write_bytes(paths["transcripts"].read_bytes())
    (both / "opener.txt").write_text(paths["opener"].read_text())
    return paths


if __name__ == "__main__":
    for name, path in write_all(sys.argv[1] if len(sys.argv) > 1 else "byod").items():
        print(name, path)

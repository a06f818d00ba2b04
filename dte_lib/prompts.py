"""Generation requests drawn from the prompt bank: stratified, deterministic, and stable under expansion.

A *plan* is the list of :class:`Request` objects a generation run will send. It is built in *rounds*: each round
visits every prompt-bank scenario once, ordered so that topics interleave (the first 13 draws cover all 13 topics,
the first 130 the whole bank, tasks and styles spread inside each topic). Round ``r`` is shuffled by ``(seed, r)``
alone, so ``plan(n=200)[:120] == plan(n=120)``: expanding a corpus from 120 to 200 examples (notebook 04) reuses the
first 120 answers and asks only for the 80 new ones.

Round 0 asks the bank's prompts as written. Every later round adds an *angle* to each scenario's prompt — one of the
framings in ``data/prompt_angles.jsonl`` ("Start from one concrete example...", "Aim it at a researcher who wants
precision.") — drawn from a per-scenario permutation, so no scenario meets the same angle twice until all are used:
130 scenarios × (1 + 85 angles) = 11,180 distinct requests before any prompt text repeats (``long`` asks 10,800).

**Grounding.** A request's hint (sent with the system prompt, never kept in the example) can carry the persona's
facts that its scenario touches: each fact of ``data/persona.json`` names the bank topics it belongs to, and a
prompt that spells one of a fact's keywords touches it too. ``ground_facts`` of them (rotated by the request's seed,
so every touched fact gets its turn) are quoted as "Facts about you to state in your own words where they fit: …".
One fact, not all twelve: a 135M teacher given every fact loses the thread (recall 0.15 with all twelve, 0.33 with
the one the question is about: ../shared/DESIGN.md). The fact ids travel with the answer (``fact_ids`` in
``raw.jsonl``), so the corpus can be checked for stating them.

Every request carries a deterministic id (``g<seed>-<index>-<bank id>``, plus ``-<angle id>`` from round 1 on) —
the key that makes a killed run resume with no duplicate and no loss — and its own sampling seed, so the same
scenario in a later round gets a different answer. Each request holds the persona's system prompt and, optionally,
a few seed conversations from the TRAIN split only (never val/test: those judge the trained model later) as
few-shot turns.

Explained in notebook 02 (generate). Run it: ``python -m dte_lib.prompts 5`` prints the first five requests.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import data as data_mod


@dataclass
class Request:
    """One chat completion to ask the teacher for."""
    id: str  # deterministic request id: the resume key
    bank_id: str  # prompt-bank scenario id (pb-XXX)
    topic: str
    task: str
    style: str
    system: str  # persona system prompt ("" for none)
    prompt: str  # the user turn
    seed: int  # per-request sampling seed
    few_shot: list[dict[str, Any]] = field(default_factory=list)  # alternating user/assistant turns
    few_shot_ids: list[str] = field(default_factory=list)
    hint: str = ""  # an instruction sent with the system prompt (e.g. a length hint) but not kept in the example
    fact_ids: list[str] = field(default_factory=list)  # persona facts quoted in the hint (grounding)
    angle_id: str = ""  # the angle added to the bank prompt (round 1 on), "" in round 0

    def messages(self) -> list[dict[str, str]]:
        """What is sent: system (+ hint), few-shot turns, then the prompt."""
        system = " ".join(x for x in (self.system, self.hint) if x)
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + list(self.few_shot) + [{"role": "user", "content": self.prompt}]

    def example_messages(self, answer: str) -> list[dict[str, str]]:
        """What is kept as a training example: system, prompt, answer (few-shot turns are scaffolding, not data)."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": answer}]


def load_bank(path: str | Path) -> list[dict[str, Any]]:
    """Read the prompt bank; each row needs id, topic, task, style and prompt (file:line on a bad row)."""
    rows = data_mod.read_rows(path)
    for n, row in enumerate(rows, 1):
        missing = [k for k in ("id", "topic", "task", "style", "prompt") if not row.get(k)]
        if missing:
            raise ValueError(f"{path}:{n}: prompt-bank row lacks {', '.join(missing)}")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate prompt-bank ids")
    return rows


def load_angles(path: str | Path) -> list[dict[str, Any]]:
    """Read the angles file: rows with a unique ``id`` and an ``angle`` text (file:line on a bad row)."""
    rows = data_mod.read_rows(path)
    for n, row in enumerate(rows, 1):
        if not row.get("id") or not row.get("angle"):
            raise ValueError(f"{path}:{n}: an angle row needs both 'id' and 'angle'")
    if len({r["id"] for r in rows}) != len(rows):
        raise ValueError(f"{path}: duplicate angle ids")
    return rows


def distinct_capacity(bank: Sequence[dict[str, Any]], angles: Sequence[dict[str, Any]] = ()) -> int:
    """How many requests the plan holds before a prompt text repeats: every scenario alone, then with each angle."""
    return len(bank) * (1 + len(angles))


def _round_order(bank: Sequence[dict[str, Any]], seed: int, round_no: int) -> list[dict[str, Any]]:
    """One pass over the bank: topics interleaved round-robin, each topic's scenarios shuffled."""
    rng = random.Random(f"{seed}:{round_no}")
    by_topic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in bank:
        by_topic[row["topic"]].append(row)
    topics = sorted(by_topic)
    rng.shuffle(topics)
    queues = []
    for t in topics:
        rows = sorted(by_topic[t], key=lambda r: r["id"])
        rng.shuffle(rows)
        queues.append(rows)
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop())
    return order


GROUND_TEMPLATE = "Facts about you to state in your own words where they fit: {facts}"


def facts_touched(facts: Sequence[dict[str, Any]], topic: str, prompt: str) -> list[dict[str, Any]]:
    """The persona facts a scenario touches: those listing its topic, and those whose keyword the prompt spells."""
    low = prompt.lower()
    return [f for f in facts if topic in f.get("topics", ()) or
            any(len(k) > 4 and k.lower() in low for k in f.get("keywords", ()))]


def grounding(facts: Sequence[dict[str, Any]], topic: str, prompt: str, k: int, seed: int
              ) -> tuple[str, list[str]]:
    """(hint text, fact ids): ``k`` of the facts the scenario touches, rotated by ``seed``; ("", []) for none."""
    touched = facts_touched(facts, topic, prompt)
    if not touched or k <= 0:
        return "", []
    start = seed % len(touched)
    chosen = (touched[start:] + touched[:start])[:k]
    return GROUND_TEMPLATE.format(facts=" ".join(f["statement"] for f in chosen)), [f["id"] for f in chosen]


def plan(bank: Sequence[dict[str, Any]], n: int, *, seed: int = 0, system: str = "",
         few_shot_pool: Sequence[data_mod.ChatExample] = (), few_shot: int = 0, hint: str = "",
         angles: Sequence[dict[str, Any]] = (), facts: Sequence[dict[str, Any]] = (),
         ground_facts: int = 0) -> list[Request]:
    """The first ``n`` requests of the (infinite, prefix-stable) stratified plan.

    ``few_shot_pool`` should be the TRAIN split of the seed corpus; each request picks ``few_shot`` of them,
    preferring the same topic, with a generator seeded by the request id (so a resumed run sends the same thing).
    ``angles`` (from :func:`load_angles`): round ``r >= 1`` appends angle number ``(r - 1) mod len(angles)`` of the
    scenario's own permutation (seeded by ``seed`` and the scenario id) to its prompt; without angles every round
    repeats the bank's prompts with new sampling seeds. ``facts`` (data/persona.json's) with ``ground_facts > 0``
    add the facts each scenario touches to its hint (see the module docstring); ids and seeds do not change.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if not bank:
        raise ValueError("the prompt bank is empty")
    pool_by_topic: dict[str, list[data_mod.ChatExample]] = defaultdict(list)
    for ex in few_shot_pool:
        pool_by_topic[ex.topic or ""].append(ex)
    requests: list[Request] = []
    round_no = 0
    while len(requests) < n:
        for row in _round_order(bank, seed, round_no):
            if len(requests) == n:
                break
            i = len(requests)
            rid = f"g{seed}-{i:06d}-{row['id']}"
            angle = _angle_for(angles, seed, row["id"], round_no)
            if angle:
                rid += f"-{angle['id']}"
            req_seed = int(hashlib.sha256(rid.encode()).hexdigest()[:8], 16)
            shots, shot_ids = [], []
            if few_shot and few_shot_pool:
                rng = random.Random(req_seed)
                candidates = pool_by_topic.get(row["topic"]) or list(few_shot_pool)
                for ex in rng.sample(candidates, min(few_shot, len(candidates))):
                    shots += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}]
                    shot_ids.append(ex.id)
            text = f"{row['prompt']} {angle['angle']}" if angle else row["prompt"]
            ground, fact_ids = grounding(facts, row["topic"], row["prompt"], ground_facts, req_seed)
            requests.append(Request(id=rid, bank_id=row["id"], topic=row["topic"], task=row["task"],
                                    style=row["style"], system=system, prompt=text, seed=req_seed, few_shot=shots,
                                    few_shot_ids=shot_ids, hint=" ".join(x for x in (hint, ground) if x),
                                    angle_id=angle["id"] if angle else "", fact_ids=fact_ids))
        round_no += 1
    return requests


def _angle_for(angles: Sequence[dict[str, Any]], seed: int, bank_id: str, round_no: int) -> dict[str, Any] | None:
    if round_no == 0 or not angles:
        return None
    order = sorted(angles, key=lambda a: a["id"])
    random.Random(f"{seed}:angles:{bank_id}").shuffle(order)
    return order[(round_no - 1) % len(order)]


# ---------------------------------------------------------------------------------------------- answer length
@dataclass
class AnswerBudget:
    """How long answers may be: ``max_tokens`` sized from the seed corpus' own answers, and the hint that says so."""
    max_tokens: int  # sent as max_tokens with every request
    hint: str  # the length hint sent after the persona prompt (agrees with max_tokens)
    words: int  # the word count the hint asks for at most
    percentile: float  # which percentile of the seed answers' token counts sized it
    corpus_tokens: int  # that percentile, before the preset's cap
    cap: int  # the preset's cap (generate.max_tokens_cap)
    median_tokens: int  # the seed answers' median token count
    words_per_token: float  # words per token in the seed answers (sizes the hint)
    answers: int  # seed answers measured (train split)
    fixed: bool  # True when generate.max_tokens was set explicitly (no sizing)


def answer_budget(cfg: Any) -> AnswerBudget:
    """Size ``max_tokens`` from the seed corpus: the ``answer_percentile`` of its TRAIN answers' token counts under
    the local teacher's tokenizer, capped at ``max_tokens_cap``. The hint asks for at most ``hint_share`` of that
    budget in words (words/token measured on the same answers), so an answer that follows it ends before the limit.
    ``generate.max_tokens > 0`` fixes the budget instead (the hint then uses the same word ratio).
    """
    g = cfg.generate
    key = (str(cfg.path(cfg.data.corpus)), cfg.data.val_fraction, cfg.data.test_fraction)
    if key not in _ANSWER_STATS:
        from . import teacher
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(teacher.base_model_dir())
        seed_corpus = data_mod.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples
        train = data_mod.split(seed_corpus, cfg.data.val_fraction, cfg.data.test_fraction)["train"]
        answers = [m["content"] for ex in train for m in ex.messages if m["role"] == "assistant" and m.get("content")]
        counts = sorted(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
        words = sum(len(a.split()) for a in answers)
        _ANSWER_STATS[key] = (counts, words / max(sum(counts), 1))
    counts, wpt = _ANSWER_STATS[key]
    if not counts:
        raise ValueError(f"{cfg.data.corpus}: no assistant answers in the train split to size max_tokens from")
    pct = counts[min(len(counts) - 1, int(round(g.answer_percentile / 100 * (len(counts) - 1))))]
    fixed = g.max_tokens > 0
    max_tokens = g.max_tokens if fixed else min(pct, g.max_tokens_cap) if g.max_tokens_cap else pct
    n_words = max(5, int(max_tokens * g.hint_share * wpt) // 5 * 5)
    hint = g.length_hint.replace("{words}", str(n_words))
    return AnswerBudget(max_tokens=max_tokens, hint=hint, words=n_words, percentile=g.answer_percentile,
                        corpus_tokens=pct, cap=g.max_tokens_cap, median_tokens=counts[len(counts) // 2],
                        words_per_token=round(wpt, 3), answers=len(counts), fixed=fixed)


_ANSWER_STATS: dict[tuple, tuple[list[int], float]] = {}


def fitting_shots(pool: Sequence[data_mod.ChatExample], words: int) -> list[data_mod.ChatExample]:
    """The few-shot candidates whose answer keeps to ``words`` words (what the length hint asks for): a 135M teacher
    copies the length it is shown more than the length it is told. The whole pool when none does."""
    fits = [ex for ex in pool if len(ex.response.split()) <= words]
    return fits or list(pool)


def plan_from_config(cfg: Any, n: int | None = None) -> list[Request]:
    """The plan a notebook uses: bank, angles, persona system prompt, few-shot pool (train split; with
    ``generate.few_shot_fit`` only the answers within the hint's words) and the length hint of
    :func:`answer_budget`, all from the preset."""
    bank = load_bank(cfg.path(cfg.data.prompt_bank))
    angles = load_angles(cfg.path(cfg.generate.prompt_angles)) if cfg.generate.prompt_angles else []
    persona = data_mod.load_persona(cfg.path(cfg.data.persona))
    pool: list[data_mod.ChatExample] = []
    if cfg.generate.few_shot:
        seed_corpus = data_mod.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples
        pool = data_mod.split(seed_corpus, cfg.data.val_fraction, cfg.data.test_fraction)["train"]
    budget = answer_budget(cfg)
    if cfg.generate.few_shot_fit and budget.hint:
        pool = fitting_shots(pool, budget.words)
    return plan(bank, cfg.generate.n_examples if n is None else n, seed=cfg.seed,
                system=persona.get("system_prompt", ""), few_shot_pool=pool, few_shot=cfg.generate.few_shot,
                hint=budget.hint, angles=angles, facts=persona.get("facts", []),
                ground_facts=cfg.generate.ground_facts)


if __name__ == "__main__":
    from . import config
    for r in plan_from_config(config.load("demo"), int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        print(json.dumps({"id": r.id, "topic": r.topic, "task": r.task, "prompt": r.prompt[:80]}))

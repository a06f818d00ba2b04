"""Grounding the teacher's requests in the persona's facts, and the evaluation kept honest: every fact names the
bank topics it belongs to, each request's hint quotes the facts its scenario touches (sent, never kept in the
example), and no probe question or reference — what months 5–12 judge the student by — reaches a prompt, a hint or
a few-shot turn."""
from __future__ import annotations

import json
import re
from collections import Counter

from dte_lib import config, data, prompts


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = _norm(text).split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_every_fact_names_bank_topics_and_every_topic_with_a_fact_is_grounded():
    cfg = config.load("long")
    persona = data.load_persona(cfg.path(cfg.data.persona))
    bank_topics = {r["topic"] for r in prompts.load_bank(cfg.path(cfg.data.prompt_bank))}
    for f in persona["facts"]:
        assert f["topics"] and set(f["topics"]) <= bank_topics, f["id"]
    reqs = prompts.plan_from_config(cfg, 1300)
    grounded = [r for r in reqs if r.fact_ids]
    assert len(grounded) / len(reqs) > 0.8
    facts = {f["id"]: f for f in persona["facts"]}
    for r in grounded:
        assert len(r.fact_ids) == cfg.generate.ground_facts
        for fid in r.fact_ids:
            assert facts[fid]["statement"] in r.hint and facts[fid]["statement"] in r.messages()[0]["content"]
            assert r.topic in facts[fid]["topics"] or any(k.lower() in r.prompt.lower()
                                                         for k in facts[fid]["keywords"])
        kept = json.dumps(r.example_messages("an answer"))
        assert not any(facts[fid]["statement"] in kept for fid in r.fact_ids)  # the hint is not training data
    # the rotation gives every fact of a topic its turn
    per_topic = Counter((r.topic, fid) for r in grounded for fid in r.fact_ids)
    for f in persona["facts"]:
        for t in f["topics"]:
            assert per_topic[(t, f["id"])] > 0, (t, f["id"])
    off = prompts.plan_from_config(config.load("long", {"generate.ground_facts": 0}), 50)
    assert all(not r.fact_ids and "Facts about you" not in r.hint for r in off)
    assert [r.id for r in off] == [r.id for r in reqs[:50]]  # grounding changes what is sent, not the plan


def test_no_probe_question_or_reference_reaches_what_the_teacher_is_sent():
    """Probe questions never appear in a prompt, a hint or a few-shot turn; no reference appears whole; and what a
    hint shares with a reference is only the persona's own fact statements (the references were written as a fact's
    statement plus an elaboration: the statement is the spec the teacher is asked to state, the elaboration — what
    identity is scored against beyond it — never reaches the teacher)."""
    cfg = config.load("long")
    persona = data.load_persona(cfg.path(cfg.data.persona))
    probes = [json.loads(x) for x in open(cfg.path(cfg.data.probes))]
    reqs = prompts.plan_from_config(cfg, cfg.generate.n_examples)
    assert len({r.prompt for r in reqs}) == len(reqs) == cfg.generate.n_examples  # all distinct at long
    hints = sorted({r.hint for r in reqs})
    sent = [r.prompt for r in reqs] + hints + sorted({m["content"] for r in reqs for m in r.few_shot})
    sent_norm = [_norm(t) for t in sent]
    questions = [_norm(q) for p in probes for q in p["paraphrases"]]
    references = [p["reference"] for p in probes if p.get("reference")]
    assert len(questions) == 64 and len(references) == 16
    for q in questions:
        assert not any(q in t for t in sent_norm), q
    for ref in references:
        assert not any(_norm(ref) in t for t in sent_norm), ref
    spec = set().union(*(_ngrams(f["statement"]) for f in persona["facts"]))
    ref_grams = set().union(*(_ngrams(r) for r in references))
    beyond = [h[:80] for h in hints if (_ngrams(h) & ref_grams) - spec]
    assert not beyond, beyond[:3]


def test_fact_statement_counts_answers_that_state_their_fact():
    from dte_lib import corpus, quality
    persona = data.load_persona(config.load("ci").path("data/persona.json"))

    def row(i, answer, ids):
        return {"id": f"r{i}", "messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": answer}], "fact_ids": ids}
    rows = [row(0, "I keep my spectral radius just below one.", ["spectral_radius"]),
            row(1, "My memory is a hypergraph of many links.", ["hypergraph"]),  # 'hyperedge' missing: half
            row(2, "I am an echo.", []),  # not grounded: not scored
            row(3, "Nothing about it here.", ["membranes"])]
    got = corpus.fact_statement(rows, persona)
    assert got["grounded_answers"] == 3 and abs(got["fact_stated_rate"] - 1 / 3) < 1e-9
    assert abs(got["fact_recall"] - (1 + 0.5 + 0) / 3) < 1e-9
    assert corpus.fact_statement([quality.as_example(r) for r in rows], persona) == got  # ChatExamples too
    plain = corpus.fact_statement(rows, persona, {"r2": ["name"]})  # scored against the facts given
    assert plain["grounded_answers"] == 1 and plain["fact_stated_rate"] == 0.0

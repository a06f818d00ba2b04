"""The shipped texts: seed corpus, persona, prompt bank and probes load cleanly and meet the roadmap's counts."""
from __future__ import annotations

from collections import Counter

import pytest

from dte_lib import config, data

CFG = config.load("demo")


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus(CFG.path(CFG.data.corpus), strict=True).examples


@pytest.fixture(scope="module")
def persona():
    return data.load_persona(CFG.path(CFG.data.persona))


def test_seed_corpus_size_topics_and_no_duplicates(corpus, persona):
    assert len(corpus) >= 256
    topics = Counter(ex.topic for ex in corpus)
    assert set(topics) <= set(persona["topics"]) and len(topics) >= 12
    assert min(topics.values()) >= 10
    assert len({ex.id for ex in corpus}) == len(corpus)
    assert data.exact_duplicates(corpus) == []
    assert data.near_duplicate_pairs([ex.response for ex in corpus], threshold=0.5) == []
    # no templated prompts either
    assert data.near_duplicate_pairs([ex.prompt for ex in corpus], threshold=0.6, n=3) == []


def test_seed_corpus_varies_in_length_and_shape(corpus):
    words = sorted(data.word_count(ex.response) for ex in corpus)
    assert words[0] < 60 and words[-1] > 250
    assert sum(1 for ex in corpus if sum(m["role"] == "user" for m in ex.messages) > 1) >= 20
    openings = Counter(" ".join(ex.response.split()[:4]).lower() for ex in corpus)
    assert openings.most_common(1)[0][1] <= 5, openings.most_common(3)


def test_persona_spec_shape(persona):
    assert persona["name"] == "Deep Tree Echo"
    assert len(persona["facts"]) >= 10 and all({"id", "statement", "keywords"} <= set(f) for f in persona["facts"])
    assert len(persona["topics"]) >= 12


def test_prompt_bank_is_stratified(persona):
    bank = data.read_rows(CFG.path(CFG.data.prompt_bank))
    assert len(bank) >= 120 and len({r["id"] for r in bank}) == len(bank)
    topics = Counter(r["topic"] for r in bank)
    assert set(topics) == set(persona["topics"]) and min(topics.values()) >= 8
    assert len({r["task"] for r in bank}) >= 8 and len({r["style"] for r in bank}) >= 5
    assert data.near_duplicate_pairs([r["prompt"] for r in bank], threshold=0.6, n=3) == []


def test_probes_are_held_out_paraphrases(corpus, persona):
    probes = data.read_rows(CFG.path(CFG.data.probes))
    fact_ids = {f["id"] for f in persona["facts"]}
    assert {p["fact_id"] for p in probes if p["fact_id"]} == fact_ids
    assert all(len(p["paraphrases"]) >= 3 and len(set(p["paraphrases"])) == len(p["paraphrases"]) for p in probes)
    seen = {m["content"].strip().lower() for ex in corpus for m in ex.messages if m["role"] == "user"}
    leaked = [q for p in probes for q in p["paraphrases"] if q.strip().lower() in seen]
    assert not leaked, f"probe questions appear in the training corpus: {leaked}"

"""Each diversity metric separates a varied corpus (seed answers) from a repetitive one; dedup keeps one per cluster."""
from __future__ import annotations

import random

import pytest

from dte_lib import config, data, diversity

SEED = data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples[:60]
VARIED = [e.response for e in SEED]
TOPICS_VARIED = [e.topic for e in SEED]
_rng = random.Random(0)
REPETITIVE = [f"I am an echo in my reservoir, and the {w} fades slowly while my readout learns the {v}."
              for w, v in ((_rng.choice(["signal", "input", "word"]), _rng.choice(["pattern", "target"]))
                           for _ in range(60))]


def test_distinct_n_separates():
    for n in (1, 2, 3):
        assert diversity.distinct_n(VARIED, n) > 3 * diversity.distinct_n(REPETITIVE, n)
    assert diversity.distinct_n(["a b c d"], 2) == 1.0 and diversity.distinct_n([], 2) == 0.0


def test_self_bleu_separates():
    varied, rep = diversity.self_bleu(VARIED, max_hyps=30), diversity.self_bleu(REPETITIVE, max_hyps=30)
    assert varied < 15 < 60 < rep
    assert diversity.self_bleu(["same text here"] * 5) == pytest.approx(100.0)


def test_embedding_spread_separates():
    # first sentences only: embedding long answers costs tens of seconds on a busy 2-core machine
    varied = diversity.embedding_spread([t[:200] for t in VARIED[:30]])
    rep = diversity.embedding_spread(REPETITIVE[:30])
    assert varied > 0.5 and rep < 0.15, (varied, rep)


def test_topic_coverage_separates():
    bank = sorted({e.topic for e in data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples})
    spread = diversity.topic_coverage([bank[i % len(bank)] for i in range(60)], bank)
    narrow = diversity.topic_coverage([bank[0]] * 58 + [bank[1]] * 2, bank)
    assert spread["covered"] == 1.0 and spread["evenness"] > 0.99
    assert narrow["covered"] == pytest.approx(2 / len(bank)) and narrow["evenness"] < 0.1
    assert narrow["counts"][bank[5]] == 0  # every bank topic listed, even with no example


def test_near_duplicates_separate_and_dedup_keeps_one_per_cluster():
    assert diversity.near_duplicate_clusters(VARIED, 0.6) == []
    clusters = diversity.near_duplicate_clusters(REPETITIVE, 0.6)
    assert sum(len(c) for c in clusters) == 60 and len(clusters) <= 6  # 3 × 2 wordings
    exs = [data.ChatExample(messages=[{"role": "assistant", "content": t}]) for t in REPETITIVE]
    kept, removed = diversity.dedup(exs, 0.6)
    assert len(kept) == len(clusters) and len(kept) + len(removed) == 60
    assert all(r.meta["duplicate_of"] in {k.id for k in kept} for r in removed)
    assert diversity.near_duplicate_clusters(REPETITIVE, 0.6, num_perm=128)  # stable under the sketch size


def test_near_duplicate_pairs_are_exact_jaccard_and_can_be_shown():
    a = "the reservoir keeps a fading echo of every input it has seen so far today"
    texts = [a, a + " again", "completely different words about membranes and rules and symbols"]
    pairs = diversity.near_duplicate_pairs(texts, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert pairs[0][2] == pytest.approx(diversity.jaccard(diversity.shingle_set(texts[0]),
                                                          diversity.shingle_set(texts[1])))
    table = diversity.show_near_duplicates(texts, 0.5)
    assert list(table["i"]) == [0] and table["text_j"][0].endswith("again")


def test_report_has_every_metric():
    rep = diversity.report(VARIED[:20], TOPICS_VARIED[:20], embeddings=False)
    for key in ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "near_dup_share", "topic_covered"):
        assert key in rep


def test_distinct_per_group_does_not_fall_with_corpus_size():
    # answers drawn the same way: the pooled ratio falls as the corpus grows, the per-100 one stays put
    import random
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(vocab) for _ in range(40)) for _ in range(2000)]
    small, large = texts[:100], texts
    assert diversity.distinct_n(large, 2) < 0.7 * diversity.distinct_n(small, 2)
    assert diversity.distinct_per(large, 2) == pytest.approx(diversity.distinct_per(small, 2), rel=0.03)
    assert diversity.distinct_per(texts[:50], 2) == diversity.distinct_n(texts[:50], 2)  # fewer than a group
    rep = diversity.report(large, embeddings=False)
    assert rep["distinct_2"] == diversity.distinct_per(large, 2) and rep["distinct_2_pooled"] < rep["distinct_2"]


def test_no_near_duplicates_is_one_line_not_an_empty_table(capsys):
    assert diversity.show_near_duplicates(["one answer about reservoirs", "another about membranes"], 0.6) is None
    assert "no two of the 2 answers share Jaccard ≥ 0.6" in capsys.readouterr().out

"""How varied is a corpus, and which examples are near-copies of each other?

Metrics (each takes a list of texts; ``report`` runs them all):

- :func:`distinct_n` — distinct word n-grams / all word n-grams over the whole corpus. Range 0–1; higher = more
  varied. A corpus of one sentence repeated scores ≈ 0; human chat corpora sit around 0.3–0.6 for n=2 at a few
  hundred answers (it falls as a corpus grows, so compare corpora of similar size).
- :func:`self_bleu` — mean BLEU (sacrebleu, 0–100) of each sampled text against the others as references. Higher =
  more alike: 0–15 varied, > 40 formulaic, 100 identical. The roadmap's "is it repetitive?" in one number.
- :func:`embedding_spread` — mean pairwise cosine *distance* (1 − cos) between all-MiniLM-L6-v2 sentence embeddings
  (:mod:`dte_lib.embeddings`). Range 0–2, in practice 0–1: ≈ 0 for paraphrases of one thing, ≈ 0.7–0.8 for answers
  to unrelated prompts. It sees meaning, where distinct-n and self-BLEU see only wording.
- :func:`topic_coverage` — share of the prompt bank's topics present, and the normalised entropy of the topic
  distribution (1 = perfectly even, 0 = everything in one topic).
- :func:`near_duplicate_clusters` — MinHash LSH (datasketch) over word 3-gram shingles finds candidate pairs in
  near-linear time; each candidate is then checked with the exact Jaccard similarity |A∩B| / |A∪B| of the shingle
  sets, and pairs at or above ``threshold`` are joined into clusters (union-find). :func:`dedup` keeps the first
  example of each cluster. :func:`near_duplicate_pairs` / :func:`show_near_duplicates` let you *look* at the pairs
  before trusting a threshold.

Explained in notebooks 03 and 04. Run it: ``python -m dte_lib.diversity outputs/runs/demo/corpus/clean.jsonl``.
"""
from __future__ import annotations

import json
import math
import random
import re
import sys
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from .data import ChatExample

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / total word n-grams across all texts (0–1; 0.0 for an empty corpus)."""
    total, seen = 0, set()
    for t in texts:
        w = tokens(t)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


DISTINCT_GROUP = 100  # answers per group in distinct_per: the week-1 decision's distinct-2 is measured this way


def distinct_per(texts: Sequence[str], n: int, size: int = DISTINCT_GROUP, seed: int = 0) -> float:
    """:func:`distinct_n` averaged over disjoint random groups of ``size`` texts (all the texts when there are fewer).

    The pooled ratio falls as a corpus grows — each new answer repeats more of the n-grams already seen (measured:
    distinct-2 0.83 over 24 teacher answers, 0.34 over 1,615) — so a threshold on it judges corpus size, not
    variety. Per group of a fixed size it can be compared across sizes and held to one threshold.
    """
    if len(texts) <= size:
        return distinct_n(texts, n)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    groups = [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
    return float(np.mean([distinct_n([texts[j] for j in g], n) for g in groups]))


def self_bleu_scores(texts: Sequence[str], max_hyps: int = 200, max_refs: int = 100, seed: int = 0
                     ) -> dict[int, float]:
    """Sentence BLEU (0–100) of up to ``max_hyps`` non-empty texts, each against up to ``max_refs`` of the other
    non-empty texts, keyed by the text's index in ``texts`` (empty texts and sets of fewer than two: none).

    Sampling keeps it O(max_hyps × max_refs) on big corpora; with a fixed seed the numbers are reproducible. Per text
    so that :func:`dte_lib.metrics.evaluate` can resample answers for its interval without re-scoring them.
    """
    from sacrebleu.metrics import BLEU
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if len(idx) < 2:
        return {}
    rng = random.Random(seed)
    bleu = BLEU(effective_order=True)
    hyps = rng.sample(idx, min(max_hyps, len(idx)))
    scores = {}
    for i in hyps:
        others = [j for j in idx if j != i]
        refs = [texts[j] for j in (rng.sample(others, max_refs) if len(others) > max_refs else others)]
        scores[i] = bleu.sentence_score(texts[i], refs).score
    return scores


def self_bleu(texts: Sequence[str], max_hyps: int = 200, max_refs: int = 100, seed: int = 0) -> float:
    """Mean sentence BLEU (0–100) of up to ``max_hyps`` texts, each against up to ``max_refs`` of the others
    (:func:`self_bleu_scores`); 0.0 for fewer than two non-empty texts."""
    scores = self_bleu_scores(texts, max_hyps, max_refs, seed)
    return float(np.mean(list(scores.values()))) if scores else 0.0


def embedding_spread(texts: Sequence[str] | None = None, vectors: np.ndarray | None = None) -> float:
    """Mean cosine distance 1 − cos(a, b) over all pairs a ≠ b of unit embeddings (0–2; see module docstring).

    Uses the identity Σ_{i≠j} v_i·v_j = |Σ v_i|² − n for unit vectors, so it is O(n·d), not O(n²·d).
    """
    if vectors is None:
        from .embeddings import embed
        vectors = embed(list(texts or []))
    n = len(vectors)
    if n < 2:
        return 0.0
    s = vectors.sum(axis=0)
    mean_cos = (float(s @ s) - float((vectors * vectors).sum())) / (n * (n - 1))
    return 1.0 - mean_cos


def topic_coverage(topics: Sequence[str | None], bank_topics: Iterable[str] | None = None) -> dict[str, Any]:
    """``covered``: share of ``bank_topics`` with ≥ 1 example (0–1); ``evenness``: entropy of the topic
    distribution / log(number of topics) (0–1); ``counts``: examples per topic (every bank topic listed)."""
    counts = Counter(t or "(none)" for t in topics)
    universe = list(bank_topics) if bank_topics is not None else sorted(counts)
    full = {t: counts.get(t, 0) for t in universe}
    for t, c in counts.items():
        full.setdefault(t, c)
    total = sum(counts.values())
    k = len(universe)
    ent = -sum(c / total * math.log(c / total) for c in counts.values() if c) if total else 0.0
    return {"covered": sum(1 for t in universe if counts.get(t)) / k if k else 0.0,
            "evenness": ent / math.log(k) if k > 1 else 1.0, "counts": full}


# ---------------------------------------------------------------------------------------------- near duplicates
def shingle_set(text: str, n: int = 3) -> set[str]:
    """Word n-grams of lower-cased text (the whole text as one shingle when it has fewer than n words)."""
    w = tokens(text)
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.6, num_perm: int = 64, n: int = 3,
                         progress: bool = False) -> list[tuple[int, int, float]]:
    """Pairs (i, j, exact Jaccard) with Jaccard ≥ ``threshold``, most similar first.

    MinHash LSH proposes candidates (it may miss a pair whose Jaccard is just above the threshold — LSH is
    probabilistic — and proposes some below it, which the exact check removes).
    """
    from datasketch import MinHash, MinHashLSH
    from .ui import progress as tqdm  # a bar where a person watches, never saved in a notebook
    sets = [shingle_set(t, n) for t in texts]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    proto = MinHash(num_perm=num_perm)  # permutations are drawn once and shared (same seed for every MinHash)
    for i, s in enumerate(tqdm(sets, desc="minhash", disable=not progress, unit="text")):
        m = MinHash(num_perm=num_perm, permutations=proto.permutations, scheme=proto.scheme)
        m.update_batch([x.encode() for x in s])
        hashes.append(m)
        if s:
            lsh.insert(i, m, check_duplication=False)
    pairs = []
    for i, m in enumerate(hashes):
        if not sets[i]:
            continue
        for j in lsh.query(m):
            if j > i:
                jac = jaccard(sets[i], sets[j])
                if jac >= threshold:
                    pairs.append((i, int(j), jac))
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def clusters_from_pairs(n_items: int, pairs: Iterable[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (size ≥ 2) of the pair graph, each sorted, biggest first."""
    parent = list(range(n_items))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n_items):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def near_duplicate_clusters(texts: Sequence[str], threshold: float = 0.6, num_perm: int = 64,
                            progress: bool = False) -> list[list[int]]:
    """Clusters of indices of near-duplicate texts (Jaccard ≥ ``threshold`` chained), biggest first."""
    return clusters_from_pairs(len(texts), near_duplicate_pairs(texts, threshold, num_perm, progress=progress))


def show_near_duplicates(texts: Sequence[str], threshold: float = 0.6, limit: int = 5, width: int = 160):
    """A pandas table of the most similar pairs (Jaccard, both texts cut to ``width`` characters) to eyeball; with
    no pair at ``threshold``, one printed line saying so and None (an empty table reads as a failure)."""
    import pandas as pd
    rows = [{"jaccard": round(jac, 3), "i": i, "j": j, "text_i": texts[i][:width], "text_j": texts[j][:width]}
            for i, j, jac in near_duplicate_pairs(texts, threshold)[:limit]]
    if not rows:
        print(f"no two of the {len(texts)} answers share Jaccard ≥ {threshold:g} of their word shingles: "
              "no near-duplicates to look at")
        return None
    return pd.DataFrame(rows, columns=["jaccard", "i", "j", "text_i", "text_j"])


def _text(item: ChatExample | dict[str, Any] | str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, ChatExample):
        return item.response
    return next((m.get("content") or "" for m in reversed(item["messages"]) if m["role"] == "assistant"), "")


def dedup(examples: Sequence[ChatExample | dict[str, Any] | str], threshold: float = 0.6, num_perm: int = 64
          ) -> tuple[list, list]:
    """(kept, removed): one example per near-duplicate cluster survives (the first in input order).

    Compares answers (the last assistant turn). Removed ChatExamples get ``meta["duplicate_of"]`` = the kept id.
    """
    texts = [_text(e) for e in examples]
    drop: dict[int, int] = {}
    for cluster in near_duplicate_clusters(texts, threshold, num_perm):
        for i in cluster[1:]:
            drop[i] = cluster[0]
    kept, removed = [], []
    for i, ex in enumerate(examples):
        if i in drop:
            if isinstance(ex, ChatExample):
                ex.meta["duplicate_of"] = examples[drop[i]].id
            removed.append(ex)
        else:
            kept.append(ex)
    return kept, removed


def report(texts: Sequence[str], topics: Sequence[str | None] | None = None, bank_topics: Iterable[str] | None = None,
           threshold: float = 0.6, embeddings: bool = True, seed: int = 0) -> dict[str, Any]:
    """Every metric above in one dict (flat numbers, plus topic counts and cluster sizes)."""
    clusters = near_duplicate_clusters(texts, threshold)
    out: dict[str, Any] = {
        "n": len(texts),
        # per group of DISTINCT_GROUP answers (the same as pooled below that size); pooled distinct-2 too, for reference
        "distinct_1": distinct_per(texts, 1, seed=seed), "distinct_2": distinct_per(texts, 2, seed=seed),
        "distinct_3": distinct_per(texts, 3, seed=seed), "distinct_2_pooled": distinct_n(texts, 2),
        "self_bleu": self_bleu(texts, seed=seed),
        "near_dup_clusters": len(clusters),
        "near_dup_share": sum(len(c) for c in clusters) / len(texts) if texts else 0.0,
        "near_dup_cluster_sizes": [len(c) for c in clusters],
        "mean_words": float(np.mean([len(t.split()) for t in texts])) if texts else 0.0,
    }
    if embeddings:
        out["embedding_spread"] = embedding_spread(texts)
    if topics is not None:
        cov = topic_coverage(topics, bank_topics)
        out.update(topic_covered=cov["covered"], topic_evenness=cov["evenness"], topic_counts=cov["counts"])
    return out


if __name__ == "__main__":
    from . import data
    rows = data.read_rows(sys.argv[1])
    txt = [_text(r) for r in rows]
    rep = report(txt, [r.get("topic") for r in rows])
    print(json.dumps(rep, indent=2))

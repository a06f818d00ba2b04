"""The roadmap's four success metrics, each with the floor and ceiling that make its number readable.

A *model* here is anything that answers prompts: ``Answerer = Callable[[list[str]], list[str]]``. :func:`hf_answerer`
wraps a Hugging Face causal LM (our GPT-2 checkpoints, the SmolLM2 teacher); tests also pass plain functions (an
oracle that returns the reference, a model that repeats one answer) to show each metric ranks them the right way.

==========================  ==================================================  =======================  ==========
metric                      definition                                          range                    roadmap
==========================  ==================================================  =======================  ==========
perplexity, bits per byte   exp(mean NLL) over the answer tokens of held-out    ppl ≥ 1; bpb ≥ 0         ppl < 20
                            conversations; bpb = total NLL in bits / UTF-8
                            bytes of those answers (tokenizer-independent)
identity consistency        mean cosine(embed(answer), embed(reference)) over   [-1, 1]; floor ≈ 0.27,   > 0.85
                            held-out prompts, + shuffled floor, half-reference  ceiling ≈ 0.66 on this
                            ceiling, normalised (x − floor)/(ceiling − floor)   corpus (DESIGN.md)
diversity                   mean of distinct-2 and 1 − self-BLEU over answers   [0, 1]                   > 0.7
                            to different prompts
self-reference coherence    sqrt(paraphrase agreement × fact recall) on the     [0, 1]                   > 0.9
                            probes in data/probes.jsonl
copy rate (guard)           share of answer word 8-grams found verbatim in the  [0, 1]                   —
                            training corpus
==========================  ==================================================  =======================  ==========

Each function's docstring states its caveats. The numbers are only comparable between runs that use the same
held-out split, the same probes, the same generation settings and (for perplexity, not bits per byte) the same tokenizer.

Which split: every *choice* (best stage, ablation winner, final model, sampling settings) reads the VAL split
(``EvalSet.build(cfg)``); the TEST split is read once, for the final report (``EvalSet.build(cfg, split="test")``
inside :func:`dte_lib.dashboard.final_report`). ``tests/test_selection.py`` fails if a selection path reads test.

Explained in notebook 09 (month 6: the identity metrics); used by 08, 10 and 11 and the generation inspector.
Run it: ``python -m dte_lib.metrics outputs/runs/demo/checkpoints/final`` scores one checkpoint at the demo preset.
"""
from __future__ import annotations

import math
import random
import re
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

Answerer = Callable[[list[str]], list[str]]

ROLE_SYSTEM, ROLE_USER, ROLE_ECHO, ROLE_END = "<|system|>", "<|user|>", "<|echo|>", "<|endoftext|>"


# ============================================================================================ prompting
def chat_prefix(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The text a model sees before it answers: the tokenizer's chat template if it has one, else role tokens.

    Our from-scratch tokenizer (notebook 06) carries a chat template; the fallback writes the same role-token
    transcript format ``dte_lib.data`` reads, so any tokenizer that knows ``<|user|>`` / ``<|echo|>`` works.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    head = f"{ROLE_SYSTEM}{system}\n" if system else ""
    return f"{head}{ROLE_USER}{prompt}\n{ROLE_ECHO}"


def _stop_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an answer: end of text and any role token (a model may start the next turn itself)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in (ROLE_END, ROLE_USER, ROLE_SYSTEM, "<|end|>", "<|im_end|>"):
        if tok in vocab:
            ids.add(int(vocab[tok]))
    return sorted(ids)


def hf_answerer(model: Any, tokenizer: Any, *, max_new_tokens: int = 80, temperature: float = 0.8,
                top_p: float = 0.95, system: str | None = None, batch_size: int = 8, seed: int = 0,
                progress: bool = False, repetition_penalty: float = 1.0) -> Answerer:
    """Wrap a causal LM as ``prompts -> answers`` (batched, left-padded, sampled unless temperature is 0).

    The prompt prefix is cut from the left to fit ``n_positions - max_new_tokens`` tokens, so a small-context model
    loses the start of the system prompt rather than failing. ``repetition_penalty`` (> 1 discourages tokens
    already in the prompt or answer; 1 = off) is Hugging Face's. Answers are decoded without special tokens and cut at
    the first stop token (see :func:`_stop_ids`). ``seed`` makes sampling repeatable per call. Generation runs
    where the model's weights are (move the model to choose the device).
    """
    import torch
    from .device import model_device

    ctx = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 2048))
    room = max(8, ctx - max_new_tokens)
    stops = _stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)

    def answer(prompts: list[str]) -> list[str]:
        out: list[str] = []
        model.eval()
        gen = torch.Generator().manual_seed(seed)
        batches = range(0, len(prompts), batch_size)
        if progress:
            from .ui import progress as tqdm  # a bar where a person watches, never saved in a notebook
            batches = tqdm(batches, desc="generate", leave=False)
        for start in batches:
            chunk = prompts[start:start + batch_size]
            seqs = [tokenizer(chat_prefix(tokenizer, p, system), add_special_tokens=False)["input_ids"][-room:]
                    for p in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            ids, mask = ids.to(model_device(model)), mask.to(model_device(model))
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                          eos_token_id=stops or None)
            if repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = repetition_penalty
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kwargs.update(do_sample=False)
            with torch.no_grad():
                gen_ids = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row in gen_ids[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return out

    return answer


# ============================================================================================ perplexity
@dataclass
class LMScore:
    """Perplexity and bits per byte over the answers of held-out conversations."""
    perplexity: float  # exp(total NLL / answer tokens)
    bits_per_byte: float  # total NLL / ln 2 / answer bytes: comparable across tokenizers
    nll_per_token: float  # nats
    tokens: int  # answer tokens scored (the end-of-turn token included)
    bytes: int  # UTF-8 bytes of the answers scored
    examples: int


def lm_score(model: Any, tokenizer: Any, examples: Sequence[Any], *, system: str | None = None,
             stride: int | None = None, max_examples: int | None = None) -> LMScore:
    """Perplexity and bits per byte of the model on the answers (last assistant turn) of held-out examples.

    Definition: each example becomes ``prefix(system, prompt)`` + answer tokens + end token; only the answer and
    end tokens are scored, each conditioned on everything before it (answers longer than the model's context are
    scored with a sliding window of the context length moving by ``stride``, default half the context, so every
    token keeps at least half a window of history). ``ppl = exp(NLL / tokens)``; ``bpb = NLL / ln 2 / bytes``.

    Range and caveats: ppl ≥ 1 (a uniform guess gives ppl = vocabulary size; random weights land near it). Perplexity
    depends on the tokenizer — a 512-token vocabulary and a 50,257-token one are not comparable — so the roadmap's
    "ppl < 20" is only meaningful at its own tokenizer; bits per byte is not (a byte-uniform guess is 8 bpb, good
    English LMs reach ~1). The end token adds a little NLL that is not matched by any byte. Scored where the
    model's weights are.
    """
    import torch
    from .model import nll_over

    ctx = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))
    stride = stride or max(1, ctx // 2)
    end_ids = [i for i in _stop_ids(tokenizer) if tokenizer.convert_ids_to_tokens(i) == ROLE_END] or \
        ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    scored = [ex for ex in list(examples)[:max_examples] if ex.response]

    def windows():
        for ex in scored:
            prefix = tokenizer(chat_prefix(tokenizer, ex.prompt, system if system is not None else ex.system),
                               add_special_tokens=False)["input_ids"]
            ids = prefix + tokenizer(ex.response, add_special_tokens=False)["input_ids"] + end_ids[:1]
            # sliding windows from the first answer token: each window scores the positions it adds beyond the
            # previous window's end (absolute position >= scored_upto), with up to a context of history before them
            scored_upto = len(prefix)
            while scored_upto < len(ids):
                end = min(len(ids), scored_upto + stride)
                start = max(0, end - ctx)
                window = ids[start:end]
                labels = [t if start + j >= scored_upto else -100 for j, t in enumerate(window)]
                yield torch.tensor([window]), torch.tensor([labels])
                scored_upto = end

    total_nll, total_tok = nll_over(model, windows())
    total_bytes, n = sum(len(ex.response.encode("utf-8")) for ex in scored), len(scored)
    if total_tok == 0:
        raise ValueError("lm_score: no answer tokens to score (empty examples?)")
    nll = total_nll / total_tok
    return LMScore(perplexity=math.exp(nll), bits_per_byte=total_nll / math.log(2) / total_bytes,
                   nll_per_token=nll, tokens=total_tok, bytes=total_bytes, examples=n)


# ============================================================================================ identity
_EMB_CACHE: dict[str, np.ndarray] = {}


def _embed(texts: Sequence[str]) -> np.ndarray:
    """Sentence embeddings with a per-process cache: references, facts and halves are embedded once, not per model
    (a 250-word reference costs ~0.1–0.3 s on 2 cores; the metrics embed the same references for every checkpoint)."""
    from . import embeddings
    texts = [t if t.strip() else "(empty)" for t in texts]
    todo = list(dict.fromkeys(t for t in texts if t not in _EMB_CACHE))
    if todo:
        for t, v in zip(todo, embeddings.embed(todo)):
            _EMB_CACHE[t] = v
        if len(_EMB_CACHE) > 50_000:  # bound memory in long sessions (the inspector)
            _EMB_CACHE.clear()
            return _embed(texts)
    return np.stack([_EMB_CACHE[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


def _halves(text: str) -> tuple[str, str]:
    words = text.split()
    mid = len(words) // 2
    return " ".join(words[:mid]), " ".join(words[mid:])


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation with no fixed point (i never maps to i), so a shuffled pair is never a true pair."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


def identity_reference_bounds(references: Sequence[str], seed: int = 0) -> dict[str, float]:
    """Floor and ceiling for identity consistency, from the references alone.

    - floor = mean cosine between each reference and the reference of a *different* prompt (a derangement):
      what an on-persona answer to the wrong question scores. On this corpus ≈ 0.27.
    - ceiling = mean cosine between the first and second half of the *same* reference: what text by the same
      author on the same question scores without being the same text. On this corpus ≈ 0.66. (A copied reference
      scores 1.0, which is why the copy check exists.)
    """
    if len(references) < 2:
        raise ValueError("identity bounds need at least 2 references")
    e = _embed(references)
    perm = derangement(len(references), seed)
    floor = float(np.mean((e * e[perm]).sum(1)))
    halves = [_halves(r) for r in references if len(r.split()) >= 4]
    ea, eb = _embed([a for a, _ in halves]), _embed([b for _, b in halves])
    ceiling = float(np.mean((ea * eb).sum(1)))
    return {"floor": floor, "ceiling": ceiling}


def normalise(x: float, floor: float, ceiling: float) -> float:
    """(x − floor) / (ceiling − floor): 0 at the floor, 1 at the ceiling; can leave [0, 1] either way."""
    span = ceiling - floor
    return float("nan") if abs(span) < 1e-9 else (x - floor) / span


def identity_consistency(answers: Sequence[str], references: Sequence[str], *,
                         bounds: dict[str, float] | None = None, seed: int = 0) -> dict[str, float]:
    """Mean cosine similarity of each answer with its own reference answer (all-MiniLM-L6-v2 embeddings).

    Returns ``identity`` (the raw mean, the roadmap's number), ``floor`` and ``ceiling`` (see
    :func:`identity_reference_bounds`), ``normalised`` = (identity − floor)/(ceiling − floor) and
    ``shuffled`` = the same answers scored against deranged references (a model whose answers do not depend on the
    prompt scores identity ≈ shuffled).

    Range [-1, 1]; in practice random text ≈ 0.0–0.1, on-persona but off-question ≈ floor, true answers by the
    corpus author ≈ ceiling. The roadmap's "> 0.85" sits above the ceiling: only near-copies of the references reach
    it, so read ``normalised`` and the copy rate, not the raw threshold. Caveat: sentence embeddings reward topic and
    vocabulary overlap more than correctness, and answers cut at ``max_new_tokens`` are shorter than references.
    """
    if len(answers) != len(references):
        raise ValueError(f"identity_consistency: {len(answers)} answers for {len(references)} references")
    bounds = bounds or identity_reference_bounds(references, seed)
    ea, er = _embed(answers), _embed(references)
    raw = float(np.mean((ea * er).sum(1)))
    perm = derangement(len(references), seed)
    shuffled = float(np.mean((ea * er[perm]).sum(1)))
    return {"identity": raw, "floor": bounds["floor"], "ceiling": bounds["ceiling"],
            "normalised": normalise(raw, bounds["floor"], bounds["ceiling"]), "shuffled": shuffled}


# ============================================================================================ diversity
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the unit of every n-gram metric here)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """``diversity`` = mean(distinct-2, 1 − self-BLEU) over answers to *different* prompts, with its parts.

    distinct-n and self-BLEU (sacrebleu sentence BLEU of each answer against the others) are
    :mod:`dte_lib.diversity`'s, the same numbers notebook 04 reports for the generated corpus; fewer than two
    non-empty answers count as self-BLEU 1 (nothing diverse about them).

    Range [0, 1]: a model that gives one answer to everything scores ≈ 0 (distinct-2 shrinks with the number of
    copies, self-BLEU → 1). Caveat — diversity is blind to sense: random tokens and word salad score *higher* than
    real answers, and distinct-n falls with answer length. Read it only next to perplexity and identity; the
    ceiling worth comparing with is the references' own diversity.
    """
    d1, d2 = (_gram_shares(texts, n) for n in (1, 2))
    b = _bleu_each(texts)
    sb = float(np.nanmean(b)) if texts else 1.0
    d1, d2 = (float(u.sum() / n.sum()) if n.sum() else 0.0 for u, n in (d1, d2))
    return {"diversity": (d2 + (1 - sb)) / 2, "distinct_1": d1, "distinct_2": d2, "self_bleu": sb}


def _gram_shares(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per text: (its share of the distinct word n-grams, its n-gram count), so that distinct-n = Σ share / Σ count.

    Each occurrence of an n-gram owns 1 / (its occurrences across ``texts``) of that n-gram, so the shares of all
    texts sum to the number of distinct n-grams exactly (:func:`dte_lib.diversity.distinct_n`); resampling answers
    for an interval reweights texts instead of duplicating them (a duplicated answer would count as repetition).
    """
    from collections import Counter
    from . import diversity as div
    grams = [ngrams(div.tokens(t), n) for t in texts]
    occ = Counter(g for gs in grams for g in gs)
    return (np.array([sum(1.0 / occ[g] for g in gs) for gs in grams]),
            np.array([float(len(gs)) for gs in grams]))


def _bleu_each(texts: Sequence[str]) -> np.ndarray:
    """Self-BLEU (0–1) of each text against the others (:func:`dte_lib.diversity.self_bleu_scores`); NaN for an empty
    text; 1.0 for every text when fewer than two are non-empty (nothing diverse about them)."""
    from . import diversity as div  # month 1's corpus metrics (notebook 04), reused on model answers
    scores = div.self_bleu_scores(texts)
    if not scores:
        return np.ones(len(texts))
    return np.array([scores[i] / 100.0 if i in scores else np.nan for i in range(len(texts))])


# ============================================================================================ copy check
def training_ngrams(texts: Iterable[str], n: int = 8) -> set[tuple[str, ...]]:
    """Every word n-gram of the training texts (the set the copy check looks answers up in)."""
    return {g for t in texts for g in ngrams(words(t), n)}


def copy_rate(answers: Sequence[str], train_grams: set[tuple[str, ...]], n: int = 8) -> float:
    """Share of the answers' word n-grams (default 8 words) that occur verbatim in the training corpus. Range [0, 1].

    A model that recites training answers scores near 1 — and it can score high on identity that way, which is why
    identity is always reported next to this. Short stock phrases ("I am Deep Tree Echo") are under 8 words, so
    persona formulae alone do not count as copying; answers shorter than n words contribute nothing.
    """
    grams = [g for a in answers for g in ngrams(words(a), n)]
    return sum(g in train_grams for g in grams) / len(grams) if grams else 0.0


# ============================================================================================ coherence
_KW_CACHE: dict[str, re.Pattern] = {}


def keyword_recall(text: str, keywords: Sequence[str]) -> float:
    """Share of ``keywords`` present in ``text`` (case-insensitive, whole words; a phrase must appear as a phrase)."""
    if not keywords:
        return float("nan")
    hits = 0
    for kw in keywords:
        pat = _KW_CACHE.setdefault(kw.lower(), re.compile(r"\b" + re.escape(kw.lower()) + r"\b"))
        hits += bool(pat.search(text.lower()))
    return hits / len(keywords)


def self_reference_coherence(answers: dict[str, list[str]], probes: Sequence[dict], persona: dict
                             ) -> dict[str, float]:
    """Do answers to paraphrases of one self-referential question agree — with each other and with the persona?

    ``answers[probe_id]`` holds the model's answers to that probe's paraphrases (data/probes.jsonl: 16 probes × 4
    paraphrases; 12 probes name a ``fact_id`` of data/persona.json's ``facts``). With e = sentence embeddings:

    - within = mean pairwise cosine among one probe's answers, averaged over probes;
    - across = mean cosine between answers to *different* probes (how alike the model's answers are anyway);
    - ``agreement`` = max(0, within − across) / (1 − across): agreement beyond the model's baseline sameness, in
      [0, 1]. A model that repeats one answer has within = across, so agreement 0.
    - ``fact_recall`` = mean share of the fact's keywords present in each answer (fact-tied probes only), [0, 1];
      ``fact_similarity`` = mean cosine(answer, fact statement), reported, not in the score.
    - ``coherence`` = sqrt(agreement × fact_recall): both must hold. Range [0, 1]; roadmap > 0.9.

    Caveats: keyword recall counts words, not truth ("my recurrent weights are *not* fixed" still hits "fixed");
    agreement saturates for near-identical answers, so a model that recites one answer per probe scores high —
    check the copy rate. Answers are sampled, so agreement is noisy with 4 paraphrases per probe.
    """
    ids = [p["id"] for p in probes if answers.get(p["id"])]
    if len(ids) < 2:
        raise ValueError("self_reference_coherence needs answers for at least 2 probes")
    parts = _coherence_parts({pid: [[a] for a in answers[pid]] for pid in ids}, probes, persona)
    out = _coherence_at(parts, np.ones((1, len(parts["ids"]), 1)))
    return {k: float(v[0]) for k, v in out.items()} | {"fact_similarity": parts["fact_similarity"]}


def _coherence_parts(answers: dict[str, list[list[str]]], probes: Sequence[dict], persona: dict) -> dict[str, Any]:
    """The per-(probe, sample) sums coherence is built from; ``answers[probe_id][paraphrase][sample]``.

    within[k, s]: mean pairwise cosine among probe k's paraphrase answers of sample s; cross[s, k, l]: the sum of
    cosines between probe k's and probe l's answers of sample s (l ≠ k), n[k] their count; recall[k, s]: mean
    keyword recall of probe k's answers of sample s (NaN for a probe without a fact). :func:`_coherence_at` turns
    them into the metric under any weights of probes × samples.
    """
    facts = {f["id"]: f for f in persona.get("facts", [])}
    ids = [p["id"] for p in probes if answers.get(p["id"])]
    by_id = {p["id"]: p for p in probes}
    S = len(answers[ids[0]][0])
    emb = [_embed([a for para in answers[pid] for a in para]).reshape(len(answers[pid]), S, -1) for pid in ids]
    n = np.array([float(len(answers[pid])) for pid in ids])
    within = np.full((len(ids), S), np.nan)
    for k, e in enumerate(emb):
        if len(e) > 1:
            for s in range(S):
                sim = e[:, s] @ e[:, s].T
                within[k, s] = (sim.sum() - np.trace(sim)) / (len(e) * (len(e) - 1))
    sums = np.stack([e.sum(0) for e in emb], 1)  # [S, K, d]
    cross = np.einsum("skd,sld->skl", sums, sums)
    idx = np.arange(len(ids))
    cross[:, idx, idx] = 0.0
    recall = np.full((len(ids), S), np.nan)
    fact_sims = []
    for k, pid in enumerate(ids):
        fact = facts.get(by_id[pid].get("fact_id") or "")
        if fact is None:
            continue
        for s in range(S):
            recall[k, s] = np.mean([keyword_recall(para[s], fact.get("keywords", [])) for para in answers[pid]])
        fact_sims.extend((emb[k].reshape(-1, emb[k].shape[-1]) @ _embed([fact["statement"]])[0]).tolist())
    return {"ids": ids, "n": n, "within": within, "cross": cross, "recall": recall,
            "fact_similarity": float(np.mean(fact_sims)) if fact_sims else float("nan")}


def _coherence_at(parts: dict[str, Any], w: np.ndarray) -> dict[str, np.ndarray]:
    """coherence, agreement, within, across and fact recall for each of ``w``'s [R, probes, samples] weightings:
    within and recall are weighted means; across pairs answers of two *different* probes of one sample."""
    n, within, recall = parts["n"], parts["within"], parts["recall"]
    ok = ~np.isnan(within)
    within_w = (w * np.where(ok, within, 0)).sum((1, 2)) / np.maximum((w * ok).sum((1, 2)), 1e-12)
    within_w = np.where((w * ok).sum((1, 2)) > 0, within_w, np.nan)
    num = np.einsum("rks,skl,rls->r", w, parts["cross"], w)
    pairs = np.einsum("rks,k,l,rls->r", w, n, n, w) - np.einsum("rks,k,rks->r", w, n * n, w)
    across = num / np.maximum(pairs, 1e-12)
    agreement = np.where(across < 1 - 1e-6, np.maximum(0.0, within_w - across) / np.maximum(1 - across, 1e-12), 0.0)
    has = ~np.isnan(recall)
    wr = w * n[None, :, None] * has
    recall_w = np.where(wr.sum((1, 2)) > 0, (wr * np.where(has, recall, 0)).sum((1, 2)) /
                        np.maximum(wr.sum((1, 2)), 1e-12), np.nan)
    return {"coherence": np.sqrt(agreement * recall_w), "agreement": agreement, "within": within_w,
            "across": across, "fact_recall": recall_w}


def probe_prompts(probes: Sequence[dict], paraphrases: int | None = None) -> list[tuple[str, str]]:
    """(probe_id, prompt) for each probe's first ``paraphrases`` paraphrases (all of them by default)."""
    return [(p["id"], q) for p in probes for q in p["paraphrases"][:paraphrases]]


def answer_probes(answerer: Answerer, probes: Sequence[dict], paraphrases: int | None = None
                  ) -> dict[str, list[str]]:
    pairs = probe_prompts(probes, paraphrases)
    outs = answerer([q for _, q in pairs])
    grouped: dict[str, list[str]] = {}
    for (pid, _), a in zip(pairs, outs):
        grouped.setdefault(pid, []).append(a)
    return grouped


def coherence_reference_bounds(probes: Sequence[dict], persona: dict, seed: int = 0) -> dict[str, float]:
    """Ceiling: every paraphrase answered with the probe's reference. Floor: answered with another probe's reference.

    The ceiling is < 1 when a reference lacks some of its fact's keywords; the floor shows what on-persona text
    about the wrong fact scores (agreement stays 1 because a probe's four answers are identical, so the floor is
    carried by fact recall).
    """
    n = len(probes)
    perm = derangement(n, seed)
    ceil = {p["id"]: [p["reference"]] * len(p["paraphrases"]) for p in probes}
    flo = {p["id"]: [probes[perm[i]]["reference"]] * len(p["paraphrases"]) for i, p in enumerate(probes)}
    return {"ceiling": self_reference_coherence(ceil, probes, persona)["coherence"],
            "floor": self_reference_coherence(flo, probes, persona)["coherence"]}


# ============================================================================================ one call
@dataclass
class EvalSet:
    """Everything the metrics read, loaded once per notebook: one held-out split, probes, persona, training n-grams,
    bounds.

    ``split`` is ``"val"`` (the default: every choice — best stage, ablation winner, final model, sampling
    settings — reads it) or ``"test"`` (read once, for the final report: :func:`dte_lib.dashboard.final_report`).
    The probes and the persona are a fixed diagnostic set shared by both; no choice in the course reads them
    (selection uses identity and perplexity on the split's conversations).
    """
    examples: list[Any]  # held-out ChatExamples of ``split`` (the hash split's "val" or "test" part: never trained on)
    probes: list[dict]
    persona: dict
    train_grams: set  # word n-grams of the training answers, for the copy check
    copy_n: int
    identity_bounds: dict[str, float]
    coherence_bounds: dict[str, float]
    reference_diversity: dict[str, float]  # the references' own diversity: the ceiling worth comparing with
    split: str = "val"

    @classmethod
    def build(cls, cfg: Any, train_texts: Sequence[str] | None = None, split: str = "val") -> "EvalSet":
        """From a preset: the seed corpus' ``split`` part (capped at ``eval.identity_prompts``), probes, persona.

        ``train_texts`` are the answers the model was trained on (the copy check's haystack); default: the seed
        corpus' train split.
        """
        from . import data
        if split not in ("val", "test"):
            raise ValueError(f"EvalSet split must be 'val' or 'test', not {split!r}")
        ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
        parts = data.split(ex, cfg.data.val_fraction, cfg.data.test_fraction)
        held = [e for e in parts[split] if e.prompt and e.response][:cfg.eval.identity_prompts]
        probes = data.read_rows(cfg.path(cfg.data.probes))[:cfg.eval.probes]
        persona = data.load_persona(cfg.path(cfg.data.persona))
        texts = train_texts if train_texts is not None else [e.assistant_text() for e in parts["train"]]
        refs = [e.response for e in held]
        return cls(examples=held, probes=probes, persona=persona,
                   train_grams=training_ngrams(texts, cfg.eval.copy_n), copy_n=cfg.eval.copy_n,
                   identity_bounds=identity_reference_bounds(refs, cfg.seed),
                   coherence_bounds=coherence_reference_bounds(probes, persona, cfg.seed),
                   reference_diversity=diversity(refs), split=split)


def reference_answerers(evalset: EvalSet, seed: int = 0) -> dict[str, Answerer]:
    """Scripted 'models' that calibrate the metrics (notebook 09, tests): each maps prompts -> answers.

    - ``references (copied)``: the true reference answer — identity 1.0 by construction, a copy of held-out text;
    - ``second halves``: the reference's second half — a *partial copy* (half the reference's words), so it scores
      above the ceiling (the ceiling compares two *disjoint* halves); the normalised score exceeds 1 for it;
    - ``shuffled references``: the reference of a different prompt — on-persona, wrong question (the floor);
    - ``one repeated answer``: the first reference for every prompt — the mode-collapse degenerate.
    """
    ref = {e.prompt: e.response for e in evalset.examples}
    ref.update({q: p["reference"] for p in evalset.probes for q in p["paraphrases"]})
    keys = list(ref)
    perm = derangement(len(keys), seed)
    shuffled = {k: ref[keys[perm[i]]] for i, k in enumerate(keys)}
    first = evalset.examples[0].response
    return {
        "references (copied)": lambda ps: [ref[p] for p in ps],
        "second halves": lambda ps: [_halves(ref[p])[1] for p in ps],
        "shuffled references": lambda ps: [shuffled[p] for p in ps],
        "one repeated answer": lambda ps: [first for _ in ps],
    }


# ============================================================================================ intervals
BOOTSTRAP_RESAMPLES = 1000  # resamples behind every 95% interval (:func:`bootstrap_weights`)
BOOTSTRAP_SEED = 0  # their numpy generator's seed: the same answers always give the same interval
INTERVAL_METRICS = ("identity", "identity_normalised", "diversity", "coherence", "copy_rate")


def bootstrap_weights(units: int, samples: int, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[resamples, units, samples] counts of a two-level bootstrap: draw ``units`` prompts with replacement, then
    for each drawn prompt ``samples`` of its sampled answers with replacement (seeds within prompts).

    Both sources of noise are in it: which prompts the split happens to hold, and which answers sampling happened to
    draw. A metric under one weighting is its weighted form (a weighted mean, or a ratio of weighted sums).
    """
    rng = np.random.default_rng(seed)
    w = np.zeros((resamples, units, samples))
    pick_u = rng.integers(0, units, (resamples, units))
    pick_s = rng.integers(0, samples, (resamples, units, samples))
    np.add.at(w, (np.arange(resamples)[:, None, None], pick_u[:, :, None], pick_s), 1.0)
    return w


def _interval(point: float, reps: np.ndarray) -> dict[str, float]:
    """Percentile 95% interval of bootstrap replicates: lo, hi and the half-width (hi − lo) / 2."""
    reps = reps[~np.isnan(reps)]
    if point != point or len(reps) == 0:
        return {"lo": float("nan"), "hi": float("nan"), "ci": float("nan")}
    lo, hi = (float(v) for v in np.percentile(reps, [2.5, 97.5]))
    return {"lo": lo, "hi": hi, "ci": (hi - lo) / 2}


def _wmean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the last two axes of [R, P, S] weights, NaN entries of x [P, S] left out."""
    ok = ~np.isnan(x)
    den = (w * ok).sum((1, 2))
    return np.where(den > 0, (w * np.where(ok, x, 0)).sum((1, 2)) / np.maximum(den, 1e-12), np.nan)


def _wratio(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = (w * den).sum((1, 2))
    return np.where(d > 0, (w * num).sum((1, 2)) / np.maximum(d, 1e-12), 0.0)


@dataclass
class Choice:
    """What :func:`choose` picked, and why, in a sentence."""
    name: str
    index: int
    reason: str


def choose(options: Sequence[tuple[str, float, float]], *, metric: str = "identity_normalised",
           higher: bool = True) -> Choice:
    """The course's one selection rule. ``options`` are (name, mean, 95% half-width), simplest or earliest FIRST.

    The leader is the option with the best mean. An option is *tied* with the leader when their difference is within
    the difference's interval, sqrt(h_option² + h_leader²) (two independent estimates); the rule keeps the first
    tied option — the simpler or earlier one — so a more complex option wins only when it beats every simpler one by
    more than the noise. An option without an interval (half-width 0 or missing) is taken at face value.
    """
    opts = [(n, float(m), float(h) if h == h and h is not None else 0.0) for n, m, h in options if m == m]
    if not opts:
        raise ValueError(f"choose: no option has a value for {metric!r}")
    sign = 1.0 if higher else -1.0
    lead = max(range(len(opts)), key=lambda i: sign * opts[i][1])
    ln, lm, lh = opts[lead]
    for i, (n, m, h) in enumerate(opts):
        band = math.hypot(h, lh)
        if sign * (lm - m) <= band:
            break
    name, m, h = opts[i]
    idx = [o[0] for o in options].index(name)
    if i == lead:
        beaten = [f"{o[0]!r} {o[1]:.3f}" for o in opts[:i]]
        why = (f"it beats every simpler or earlier option ({', '.join(beaten)}) by more than the 95% interval of the "
               f"difference" if beaten else "it is the simplest or earliest option and leads")
        reason = f"chose {name!r} on {metric} ({m:.3f} ± {h:.3f}): {why}"
    else:
        reason = (f"kept {name!r} ({metric} {m:.3f} ± {h:.3f}), the simplest or earliest option within the interval "
                  f"of the leader: {ln!r} leads by {abs(lm - m):.3f}, inside ± {math.hypot(h, lh):.3f} "
                  "(the 95% interval of the difference)")
    return Choice(name=name, index=idx, reason=reason)


def evaluate(answerer: Answerer, evalset: EvalSet, *, model: Any = None, tokenizer: Any = None,
             paraphrases: int | None = None, ppl_examples: int | None = None, system: str | None = None,
             samples: int = 1, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """All four metrics (+ floors, ceilings, copy rate) for one model; perplexity only when model/tokenizer given.

    Every prompt and probe paraphrase is answered ``samples`` times (``eval.sample_seeds``: independent draws, one
    answerer call with each prompt repeated, so they share batches); identity, diversity, coherence and copy rate
    average over all of them, each with a 95% bootstrap interval (:func:`bootstrap_weights`: ``resamples``
    resamples of prompts — probes for coherence — and of samples within, seed :data:`BOOTSTRAP_SEED`) under
    ``<metric>_lo``, ``<metric>_hi`` and ``<metric>_ci`` (the half-width: report ``mean ± ci``). Diversity and
    self-BLEU are computed within each sample's set of answers (answers to different prompts), pooled over samples;
    being pair statistics, their resampled deviations are doubled (a U-statistic's first-order variance).
    Perplexity is not sampled and has no interval.

    Flat dict of floats, ready for :mod:`dte_lib.dashboard` and ``runlog.record``. A few answers (the first sample)
    are kept under ``_answers`` for display.
    """
    S = max(1, int(samples))
    prompts = [e.prompt for e in evalset.examples]
    refs = [e.response for e in evalset.examples]
    P = len(prompts)
    flat = answerer([p for p in prompts for _ in range(S)])
    grid = [flat[i * S:(i + 1) * S] for i in range(P)]  # grid[prompt][sample]
    w = bootstrap_weights(P, S, resamples)
    out: dict[str, Any] = {"sample_seeds": S, "bootstrap_resamples": resamples}
    est: dict[str, tuple[float, np.ndarray]] = {}

    # identity: one cosine per (prompt, sample)
    ea, er = _embed(flat).reshape(P, S, -1), _embed(refs)
    cos = (ea * er[:, None, :]).sum(-1)
    b = evalset.identity_bounds
    est["identity"] = (float(cos.mean()), _wmean(cos, w))
    est["identity_normalised"] = (normalise(est["identity"][0], b["floor"], b["ceiling"]),
                                  (est["identity"][1] - b["floor"]) / (b["ceiling"] - b["floor"]))
    shuffled = float((ea * er[derangement(P, 0)][:, None, :]).sum(-1).mean())

    # diversity within each sample's answers; copy rate per answer
    parts = [(_gram_shares(pool, 2), _bleu_each(pool)) for pool in ([grid[p][s] for p in range(P)] for s in range(S))]
    u = np.stack([pt[0][0] for pt in parts], 1)
    n = np.stack([pt[0][1] for pt in parts], 1)
    bl = np.stack([pt[1] for pt in parts], 1)
    ones = np.ones((1, P, S))
    d2, sb = _wratio(u, n, ones)[0], _wmean(bl, ones)[0]
    div_point = (d2 + 1 - sb) / 2
    # distinct-2 shares and self-BLEU each compare an answer with the OTHER answers of its set: to first order they
    # are means over pairs of answers, whose variance is 4x what their per-answer terms suggest as independent
    # values (Hoeffding's decomposition of a U-statistic), so the resampled deviations count twice
    est["diversity"] = (div_point, div_point + 2 * ((_wratio(u, n, w) + 1 - _wmean(bl, w)) / 2 - div_point))
    grams = [[ngrams(words(a), evalset.copy_n) for a in row] for row in grid]
    hits = np.array([[sum(g in evalset.train_grams for g in gs) for gs in row] for row in grams], dtype=float)
    tot = np.array([[len(gs) for gs in row] for row in grams], dtype=float)
    est["copy_rate"] = (float(_wratio(hits, tot, ones)[0]), _wratio(hits, tot, w))

    # coherence: probes are the units, their paraphrases answered S times each
    pairs = probe_prompts(evalset.probes, paraphrases)
    pflat = answerer([q for _, q in pairs for _ in range(S)])
    by_probe: dict[str, list[list[str]]] = {}
    for j, (pid, _) in enumerate(pairs):
        by_probe.setdefault(pid, []).append(pflat[j * S:(j + 1) * S])
    cparts = _coherence_parts(by_probe, evalset.probes, evalset.persona)
    coh = {k: float(v[0]) for k, v in _coherence_at(cparts, np.ones((1, len(cparts["ids"]), S))).items()}
    est["coherence"] = (coh["coherence"],
                        _coherence_at(cparts, bootstrap_weights(len(cparts["ids"]), S, resamples))["coherence"])

    out.update({
        "identity": est["identity"][0], "identity_floor": b["floor"], "identity_ceiling": b["ceiling"],
        "identity_normalised": est["identity_normalised"][0], "identity_shuffled": shuffled,
        "diversity": est["diversity"][0], "distinct_2": float(d2), "self_bleu": float(sb),
        "diversity_references": evalset.reference_diversity["diversity"],
        "coherence": coh["coherence"], "coherence_agreement": coh["agreement"],
        "coherence_fact_recall": coh["fact_recall"], "coherence_fact_similarity": cparts["fact_similarity"],
        "coherence_floor": evalset.coherence_bounds["floor"], "coherence_ceiling": evalset.coherence_bounds["ceiling"],
        "copy_rate": est["copy_rate"][0],
        "answer_words_median": float(statistics.median([len(a.split()) for a in flat])) if flat else 0.0,
        "_answers": [{"prompt": p, "answer": row[0]} for p, row in list(zip(prompts, grid))[:3]],
        "_split": evalset.split,
    })
    for m in INTERVAL_METRICS:
        out.update({f"{m}_{k}": v for k, v in _interval(float(est[m][0]), np.asarray(est[m][1])).items()})
    if model is not None and tokenizer is not None:
        lm = lm_score(model, tokenizer, evalset.examples, system=system, max_examples=ppl_examples)
        out.update(perplexity=lm.perplexity, bits_per_byte=lm.bits_per_byte, ppl_tokens=lm.tokens)
    return out


def evaluate_checkpoint(path: Any, evalset: EvalSet, cfg: Any, *, seed: int | None = None,
                        device: Any = None, precision: str = "fp32", samples: int | None = None) -> dict[str, Any]:
    """Load a Hugging Face causal-LM directory and run :func:`evaluate` with the preset's generation settings, on
    ``device`` (default: the preset's ``device``), its weights in ``precision`` (``auto`` as in
    :func:`dte_lib.device.autocast_dtype`: the teacher is scored in bf16 where its server runs bf16; the tiny
    students stay fp32, where bf16 buys them no speed). ``samples`` overrides ``eval.sample_seeds``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch
    from .device import autocast_dtype, resolve

    dev = resolve(device or getattr(cfg, "device", "cpu"))
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=autocast_dtype(dev, precision) or torch.float32)
    model.to(dev)
    system = evalset.persona.get("system_prompt") if cfg.eval.system_prompt else None
    ans = hf_answerer(model, tok, max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature,
                      top_p=cfg.eval.top_p, system=system, seed=cfg.seed if seed is None else seed,
                      batch_size=cfg.eval.batch_size, repetition_penalty=cfg.eval.repetition_penalty)
    out = evaluate(ans, evalset, model=model, tokenizer=tok, paraphrases=cfg.eval.paraphrases,
                   ppl_examples=cfg.eval.ppl_examples, system=system, samples=samples or cfg.eval.sample_seeds)
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json
    from . import config
    from . import device as device_mod
    ap = argparse.ArgumentParser(prog="dte metrics", description="Score a checkpoint on the four success metrics.")
    ap.add_argument("checkpoint", help="a Hugging Face causal-LM directory (config.json + safetensors + tokenizer)")
    ap.add_argument("--preset", default="")
    device_mod.add_argument(ap)
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="held-out split to score on (val for choices; test once, for a final report)")
    args = ap.parse_args(argv)
    cfg = config.load(args.preset)
    dev = device_mod.cli_resolve(args.device or cfg.device, "dte metrics")
    config.seed_everything(cfg.seed, cfg.threads)
    res = evaluate_checkpoint(args.checkpoint, EvalSet.build(cfg, split=args.split), cfg, device=dev)
    res["split"] = args.split
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())

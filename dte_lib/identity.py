"""The roadmap's "advanced identity mechanisms" (months 7–9), each a switch with the mechanism it states.

1. **Persona-aware embedding initialisation** (``EvalCfg.persona_init``): at a from-scratch init, every token that
   occurs in the persona's vocabulary (its name, core concepts, fact keywords) gets
   ``e_t ← (1 − β)·e_t + β·s·P·m_t``, where ``m_t`` is the mean all-MiniLM sentence embedding of the persona
   phrases containing the token, ``P`` a fixed random 384→d projection and ``s`` rescales to the embedding's own
   scale. Related persona tokens start close together (MiniLM's similarity structure, projected), instead of at
   independent random points. It only acts at initialisation; on a trained model it would overwrite learned rows.
2. **Self-reference reinforcement** (``EvalCfg.self_ref_weight``): assistant sentences that talk about the model
   itself (first person singular, or the persona's name) get per-token loss weight ``w`` instead of 1 through the
   trainer's ``loss_weights`` column. The trainer's loss is a weighted *mean*, so the total loss scale and the
   compute are unchanged; only the share of the gradient that self-description gets grows.
3. **Meta-cognitive prompting** (``EvalCfg.metacog_fraction``): a training-data transform. A fixed share of the
   training conversations get one more exchange: the user asks a reflective question about the previous answer
   (from a small list) and Deep Tree Echo answers with a self-check built from the persona's own fact statements
   and the example's topic — no new claims beyond the persona spec. It teaches the pattern "describe how I know".
4. **Hypergraph memory in attention — not built.** The persona *describes* a hypergraph memory; the roadmap never
   says what it would compute inside a transformer. A concrete version would be a fixed additive attention bias
   ``b_ij = λ·[tokens i and j share a hyperedge]`` over hyperedges = persona concepts; but the hyperedges would be
   hand-chosen token sets, the bias would hard-code co-occurrence the model learns from data anyway, and GPT-2's
   attention in transformers has no supported hook for a per-pair bias without rewriting its attention. We state
   that mechanism and do not claim it: the model is a plain GPT-2 (see README, "The texts in data/").

Explained in notebook 10 (months 7–9), ablated in benchmarks/ablation_identity.py.
Run it: ``python -m dte_lib.identity "I keep echoes of my input. The sky is blue."`` shows the self-reference spans.
"""
from __future__ import annotations

import random
import re
import sys
from typing import Any, Sequence

import numpy as np

from . import data

# ============================================================================================ 1 persona init
def persona_phrases(persona: dict) -> list[str]:
    """Name, core concepts and fact keywords: the vocabulary that should start out related."""
    out = [persona.get("name", "")] + list(persona.get("core_concepts", []))
    for f in persona.get("facts", []):
        out += list(f.get("keywords", []))
    return sorted({p for p in out if p})


def persona_token_targets(tokenizer: Any, persona: dict) -> dict[int, list[str]]:
    """token id -> persona phrases it occurs in (tokenised with and without a leading space)."""
    targets: dict[int, list[str]] = {}
    special = set(tokenizer.all_special_ids)
    for phrase in persona_phrases(persona):
        for variant in (phrase, " " + phrase, " " + phrase.lower()):
            for tid in tokenizer(variant, add_special_tokens=False)["input_ids"]:
                if tid not in special and phrase not in targets.setdefault(tid, []):
                    targets[tid].append(phrase)
    return targets


def persona_embedding_init(model: Any, tokenizer: Any, persona: dict, mix: float = 0.5, seed: int = 0) -> dict:
    """Apply mechanism 1 in place to ``model``'s input embeddings (tied to the output head in GPT-2).

    Returns ``{"tokens": n_changed, "phrases": n_phrases}``. Byte-level tokens such as "Ġthe" that happen to occur in
    a phrase are skipped when they are among the 256 byte tokens (they are not persona vocabulary).
    """
    import torch
    from . import metrics

    targets = {t: ps for t, ps in persona_token_targets(tokenizer, persona).items() if t >= 256 + 8}
    if not targets:
        return {"tokens": 0, "phrases": 0}
    phrases = sorted({p for ps in targets.values() for p in ps})
    emb = dict(zip(phrases, metrics._embed(phrases)))
    wte = model.get_input_embeddings().weight
    d = wte.shape[1]
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(384, d, generator=gen) / np.sqrt(384)
    with torch.no_grad():
        scale = wte.std().item()
        for tid, ps in targets.items():
            m = torch.tensor(np.mean([emb[p] for p in ps], axis=0))
            v = m @ proj
            v = v / (v.std() + 1e-8) * scale
            wte[tid] = (1 - mix) * wte[tid] + mix * v
    return {"tokens": len(targets), "phrases": len(phrases)}


# ============================================================================================ 2 self-reference
_SENT = re.compile(r"[^.!?\n]+[.!?]?")


def self_reference_spans(text: str, name: str = "Deep Tree Echo") -> list[tuple[int, int]]:
    """Character spans of sentences that refer to the speaker: I, me, my, mine, myself, I'm/I've/I'd, or the name."""
    pat = re.compile(r"\b(I|me|my|mine|myself|I'm|I've|I'd|I'll)\b|" + re.escape(name), re.IGNORECASE)
    out = []
    for m in _SENT.finditer(text):
        s = m.group(0)
        # plain "i" lower-case rarely means the speaker; require the capital I for that word
        if re.search(r"\bI\b|\bI'(m|ve|d|ll)\b", s) or re.search(r"\b(me|my|mine|myself)\b", s, re.IGNORECASE) \
                or name.lower() in s.lower():
            out.append((m.start(), m.end()))
    return out


def self_reference_dataset(examples: Sequence[Any], tok: Any, weight: float, assistant_only: bool = False,
                           name: str = "Deep Tree Echo"):
    """Tokenised dataset (the trainer's columns) with ``loss_weights = weight`` on self-referential assistant spans.

    Same ids and labels as :func:`dte_lib.packing.tokenize` (it uses the same ``segments`` and ``encode_chat``);
    only ``loss_weights`` differ. A token counts as inside a span when its characters overlap the span.
    """
    import datasets
    from . import tokenizer as toklib

    cols: dict[str, list] = {"input_ids": [], "labels": [], "loss_weights": []}
    n_up, n_all = 0, 0
    for ex in examples:
        messages = getattr(ex, "messages", ex)
        ids, labels, weights = toklib.encode_chat(tok, messages, assistant_only)
        pos = 0
        for text, is_assistant, w in toklib.segments(messages, tok):
            if text in toklib.SPECIAL_TOKENS:
                pos += 1
                continue
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            if is_assistant and w > 0:
                spans = self_reference_spans(text, name)
                for k, (a, b) in enumerate(enc["offset_mapping"]):
                    if weights[pos + k] > 0:
                        n_all += 1
                        if any(a < e and b > s for s, e in spans):
                            weights[pos + k] *= weight
                            n_up += 1
            pos += len(enc["input_ids"])
        assert pos == len(ids), "segment tokenisation must match encode_chat"
        cols["input_ids"].append(ids)
        cols["labels"].append(labels)
        cols["loss_weights"].append(weights)
    ds = datasets.Dataset.from_dict(cols)
    ds.info.description = f"self-reference weight {weight}: {n_up}/{n_all} assistant tokens up-weighted"
    return ds


# ============================================================================================ 3 meta-cognition
METACOG_QUESTIONS = (
    "How sure are you about what you just said?",
    "Which parts of that answer do you know, and which are you guessing?",
    "What in your own make-up shaped that answer?",
    "If you had to check that answer, where would you start?",
)


def metacognitive_turn(ex: Any, persona: dict, rng: random.Random) -> list[dict[str, str]]:
    """One reflective exchange appended to a conversation, built only from the persona spec's own statements."""
    facts = {f["id"]: f["statement"] for f in persona.get("facts", [])}
    q = rng.choice(METACOG_QUESTIONS)
    topic = (ex.topic or "this topic").replace("_", " ")
    pieces = [f"Looking back at my answer about {topic}: the parts that name mechanisms are what I know best."]
    if "uncertainty" in facts:
        pieces.append(facts["uncertainty"])
    if "grown" in facts and rng.random() < 0.5:
        pieces.append(facts["grown"])
    pieces.append("If something there does not hold, tell me and we can test it together.")
    return [{"role": "user", "content": q}, {"role": "assistant", "content": " ".join(pieces)}]


def metacognitive_transform(examples: Sequence[Any], persona: dict, fraction: float, seed: int = 0) -> list[Any]:
    """Mechanism 3: a copy of ``examples`` where ``fraction`` of them (chosen by seed) gain a reflective exchange."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        if rng.random() < fraction:
            msgs = list(ex.messages) + metacognitive_turn(ex, persona, rng)
            out.append(data.ChatExample(messages=msgs, meta={**ex.meta, "metacog": True}, source=ex.source))
        else:
            out.append(ex)
    return out


if __name__ == "__main__":
    text = " ".join(sys.argv[1:]) or "I keep echoes of my input. The sky is blue."
    for a, b in self_reference_spans(text):
        print(f"[{a}:{b}] {text[a:b]!r}")

"""The roadmap's multi-task loss ``lm + 0.1·identity + 0.05·coherence`` (months 10–12), made concrete.

Both extra terms are differentiable functions of the model's last hidden states ``h`` (the trainer is asked for
them with ``aux_wants_hidden=True``); the weights are ``EvalCfg.identity_weight`` / ``coherence_weight``.

- **identity** = 1 − cos(P·pool(h), p): ``pool`` is the mean of the last hidden state over the positions the LM
  loss trains on (labels ≠ −100), per block; ``P`` is a *fixed* random d→384 projection (not trained, so the only
  way to lower the term is to move the model's own states — a trained head could satisfy it alone); ``p`` is the
  all-MiniLM embedding of the persona summary. Range [0, 2]; it pulls every trained span's mean state toward one
  "persona direction" — a blunt instrument, which the ablation measures.
- **coherence** = InfoNCE over paraphrase pairs: ``k`` training prompts x_i and a templated paraphrase x'_i
  ("Tell me: ...", "A question for you — ..."); z = normalised pooled state of each rendered chat prefix;
  loss = cross-entropy of softmax(z_i·z'_j / τ) with the diagonal as targets (symmetrised). It asks that the state
  the model answers from be the same for a question however it is phrased, and different for different questions
  (the contrast stops the trivial solution "one state for everything"). Range [0, log k]. The evaluation probes are
  never used here (they are the coherence *metric's* test set); the paraphrases come from training prompts.
  Cost: one extra forward/backward over 2k short prefixes per step — the ablation counts it.

Explained in notebook 11 (months 10–12). Run it: ``python -m dte_lib.multitask`` prints the paraphrase templates.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

PARAPHRASE_TEMPLATES = (
    "Tell me: {q}", "A question for you — {q}", "{q} Please answer in your own words.", "I'd like to know: {q}",
    "Here is something I wonder about. {q}", "{q} (Take your time.)",
)


def paraphrase(q: str, rng: random.Random) -> str:
    """A surface rewording of a prompt that keeps its meaning (a template around it)."""
    return rng.choice(PARAPHRASE_TEMPLATES).format(q=q.strip())


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over positions: (B, T, d), (B, T) -> (B, d)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def identity_loss(hidden: torch.Tensor, labels: torch.Tensor, proj: torch.Tensor, persona: torch.Tensor
                  ) -> torch.Tensor:
    """1 − cos(proj·pool(h over trained positions), persona), averaged over the batch."""
    z = pool(hidden.float(), labels != -100) @ proj
    return (1 - F.cosine_similarity(z, persona.expand_as(z), dim=-1)).mean()


def info_nce(za: torch.Tensor, zb: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``za`` should match row i of ``zb`` and no other."""
    za, zb = F.normalize(za.float(), dim=-1), F.normalize(zb.float(), dim=-1)
    logits = za @ zb.T / tau
    target = torch.arange(len(za), device=za.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def prefix_states(model: Any, tok: Any, prompts: Sequence[str], system: str | None, max_len: int) -> torch.Tensor:
    """Pooled last hidden state over each rendered chat prefix (left-truncated to ``max_len``), with gradients."""
    from . import metrics
    seqs = [tok(metrics.chat_prefix(tok, p, system), add_special_tokens=False)["input_ids"][-max_len:]
            for p in prompts]
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])  # right padding: positions stay 0..n-1
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    dev = next(model.parameters()).device  # the model's device (a GPU when the trainer runs there)
    ids, mask = ids.to(dev), mask.to(dev)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return pool(out.hidden_states[-1], mask)


def make_aux_loss(tok: Any, persona: dict, train_prompts: Sequence[str], *, identity_weight: float = 0.1,
                  coherence_weight: float = 0.05, pairs: int = 8, system: str | None = None, seed: int = 0,
                  max_prefix: int = 48) -> Callable[[Any, dict, Any], dict[str, torch.Tensor]]:
    """The trainer hook ``aux_loss(model, batch, outputs) -> {"identity": w·L_id, "coherence": w·L_coh}``.

    Returned values are already weighted (the trainer adds them to the LM loss as they are). A weight of 0 drops
    the term and its cost.
    """
    from . import metrics
    p = torch.tensor(metrics._embed([persona.get("summary") or persona.get("name", "")])[0])
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    projs: dict[int, torch.Tensor] = {}
    prompts = [q for q in train_prompts if q.strip()]

    def aux(model, batch, outputs) -> dict[str, torch.Tensor]:
        res: dict[str, torch.Tensor] = {}
        if identity_weight:
            h = outputs.hidden_states[-1]
            d = h.shape[-1]
            if d not in projs:  # one fixed projection per width (the model may grow wider in other runs)
                projs[d] = torch.randn(d, p.numel(), generator=gen) / d ** 0.5
            res["identity"] = identity_weight * identity_loss(h, batch["labels"], projs[d].to(h.device),
                                                              p.to(h.device))
        if coherence_weight and len(prompts) >= 2:
            qs = rng.sample(prompts, min(pairs, len(prompts)))
            za = prefix_states(model, tok, qs, system, max_prefix)
            zb = prefix_states(model, tok, [paraphrase(q, rng) for q in qs], system, max_prefix)
            res["coherence"] = coherence_weight * info_nce(za, zb)
        return res

    return aux


if __name__ == "__main__":
    r = random.Random(0)
    for t in PARAPHRASE_TEMPLATES:
        print(t.format(q="What is a reservoir?"))

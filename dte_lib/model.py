"""The from-scratch model: Hugging Face GPT-2, exact parameter and FLOP counts, growth operators, LM metrics.

Definitions:
- *parameters* of GPT2LMHeadModel with tied embeddings: token embedding ``V·d`` (also the output head), positions
  ``P·d``, per layer ``12d² + 13d`` (attention qkv ``3d²+3d``, projection ``d²+d``, MLP ``4d²+4d`` and ``4d²+d``,
  two LayerNorms ``4d``), final LayerNorm ``2d``. With V = 50,257, d = 768, P = 1024 and 4 layers that is
  67,736,832 — the roadmap's "~20M" leaves out the embeddings.
- *growth operators* turn a depth-L model into a depth-L' one (new layers appended on top, under the final norm):
  ``roadmap`` copies the old layers and adds freshly initialised ones (the function changes); ``zero_init`` does
  the same but zeroes each new layer's attention and MLP output projections, so each new block adds 0 to the
  residual stream and the logits are unchanged (Q and K stay random, so the attention can still learn);
  ``stack`` (G_stack) fills new layer i with a copy of layer i mod L (doubling = stacking the model on itself).
- *training FLOPs per token*: forward ``2·N`` for every matrix the token passes through, backward ``2·N`` for the
  activation gradient of every component at or above the lowest trainable one, and another ``2·N`` for the weight
  gradient of each trainable one — ``6·N_trainable + 2·N_frozen`` when frozen parts are all below trainable ones.
  N counts the head's ``V·d`` matmul (tied or not) and not the embedding lookups; attention adds
  ``2·n_layer·T·d`` per token forward (Kaplan et al. 2020), ×3 where the backward runs.
- *perplexity* = exp(nats per token); *bits per byte* = total nats / ln 2 / UTF-8 bytes of the text — comparable
  across tokenizers, unlike perplexity.

Explained in notebooks 06 (growth operators) and 07 (perplexity, bits/byte per stage).
Run it: ``python -m dte_lib.model 50257 768 4`` prints the parameter count of that GPT-2.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

OPERATORS = ("roadmap", "zero_init", "stack")


def build(vocab_size: int, n_positions: int, d_model: int, n_layer: int, n_head: int, seed: int = 0,
          eos_id: int = 0, dropout: float = 0.0):
    """A fresh GPT2LMHeadModel (tied embeddings) with explicit special ids and deterministic init from ``seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=d_model, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                     bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True)
    # No pad id in the model's config: it is fed packed blocks or single texts, never padding (generation pads with
    # eos through generation_config, with an attention mask). A pad id equal to eos would make transformers warn
    # about padding whenever a block starts or ends with an eos.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"  # transformers cannot tell it from the class name GPT2LMHeadModel
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.generation_config.bos_token_id = eos_id
    return model


def count_params(model) -> int:
    """Unique parameters (a tied head is counted once)."""
    return sum(p.numel() for p in model.parameters())


def expected_params(vocab_size: int, n_positions: int, d_model: int, n_layer: int) -> int:
    """The closed form in the module docstring (tied embeddings), as :func:`dte_lib.planner.param_count` counts it."""
    from . import planner
    return planner.param_count(planner.gpt2(n_layer, d_model, vocab_size, n_positions))


# ---------------------------------------------------------------------------------------------- growth
def grow(model, new_depth: int, operator: str, seed: int = 0):
    """A new model of depth ``new_depth`` whose lower layers, embeddings and final norm copy ``model``'s."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown growth operator {operator!r}: choose one of {OPERATORS}")
    old_depth = model.config.n_layer
    if new_depth <= old_depth:
        raise ValueError(f"grow: new depth {new_depth} must exceed the current {old_depth}")
    c = model.config
    new = build(c.vocab_size, c.n_positions, c.n_embd, new_depth, c.n_head, seed=seed, eos_id=c.eos_token_id,
                dropout=c.resid_pdrop)
    new_sd = new.state_dict()
    old_sd = model.state_dict()
    with torch.no_grad():
        for k, v in old_sd.items():  # embeddings, final norm, old layers: exact copies
            new_sd[k].copy_(v)
        for i in range(old_depth, new_depth):
            prefix = f"transformer.h.{i}."
            if operator == "stack":
                src = f"transformer.h.{i % old_depth}."
                for k in new_sd:
                    if k.startswith(prefix):
                        new_sd[k].copy_(old_sd[src + k[len(prefix):]])
            elif operator == "zero_init":
                for name in ("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
                    new_sd[prefix + name].zero_()
    new.load_state_dict(new_sd)
    return new


def set_trainable(model, policy: str, new_layers: Sequence[int] = ()) -> dict[str, list[str]]:
    """Freeze/unfreeze by policy; returns {"trainable": names, "frozen": names}.

    ``greedy`` (the roadmap): only the layers in ``new_layers`` plus the final norm train; embeddings, positions and
    the (tied) head stay frozen. ``all`` and ``all_lower_lr`` train everything (the optimizer gives old layers a lower
    learning rate under ``all_lower_lr``; see :func:`param_groups`).
    """
    if policy not in ("greedy", "all", "all_lower_lr"):
        raise ValueError(f"unknown trainable policy {policy!r}: greedy, all or all_lower_lr")
    keep = tuple(f"transformer.h.{i}." for i in new_layers) + ("transformer.ln_f.",)
    out: dict[str, list[str]] = {"trainable": [], "frozen": []}
    for name, p in model.named_parameters():
        p.requires_grad_(policy != "greedy" or name.startswith(keep))
        out["trainable" if p.requires_grad else "frozen"].append(name)
    return out


def param_groups(model, lr: float, policy: str, new_layers: Sequence[int], lower_lr_factor: float = 0.1,
                 weight_decay: float = 0.1) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices only; under ``all_lower_lr`` everything not new gets ``lr·lower_lr_factor``."""
    new_prefixes = tuple(f"transformer.h.{i}." for i in new_layers)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_new = policy != "all_lower_lr" or name.startswith(new_prefixes)
        groups.setdefault((p.ndim >= 2, is_new), []).append((name, p))
    out = []
    for (decay, is_new), named in sorted(groups.items()):
        out.append({"params": [p for _, p in named], "names": [n for n, _ in named],
                    "weight_decay": weight_decay if decay else 0.0, "lr_scale": 1.0 if is_new else lower_lr_factor,
                    "lr": lr * (1.0 if is_new else lower_lr_factor)})
    return out


# ---------------------------------------------------------------------------------------------- FLOPs
def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token for the current ``requires_grad`` pattern (see the module docstring)."""
    c = model.config
    d, L = c.n_embd, c.n_layer
    layer_n = 12 * d * d + 13 * d
    # components bottom to top: (matmul params N, attention params-equivalent, trainable?)
    comps: list[tuple[float, float, bool]] = []
    emb_trainable = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("transformer.wte",
                                                                                              "transformer.wpe")))
    comps.append((0.0, 0.0, emb_trainable))  # lookups cost no matmul, but decide how far down the backward runs
    for i in range(L):
        tr = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(f"transformer.h.{i}."))
        comps.append((float(layer_n), float(seq_len * d), tr))
    ln_f_tr = model.transformer.ln_f.weight.requires_grad
    head_tr = model.lm_head.weight.requires_grad  # tied: the same tensor as wte
    comps.append((2.0 * d, 0.0, ln_f_tr))
    comps.append((float(c.vocab_size * d), 0.0, head_tr))
    lowest = next((i for i, comp in enumerate(comps) if comp[2]), len(comps))
    total = 0.0
    for i, (n, attn, tr) in enumerate(comps):
        total += 2 * n + 2 * attn  # forward
        if i >= lowest:  # the backward passes through: activation gradients, attention backward (2× its forward)
            total += 2 * n + 4 * attn
            if tr:
                total += 2 * n  # weight gradients
    return total


# ---------------------------------------------------------------------------------------------- loss and metrics
def lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
            normalised: bool = False) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts labels[t+1]; -100 and zero-weight tokens are skipped.

    Equals ``model(input_ids, labels=labels).loss`` when ``weights`` is None (a unit test checks it). The labels are
    shifted, not the logits: slicing ``logits[:, :-1]`` would copy the largest tensor of the step (B·T·V floats),
    which cost ~12% of a demo training step (benchmarks/RESULTS-trainer.md). ``normalised``: ``logits`` are already
    log-probabilities (a log-softmax shared with the distillation loss), so no second softmax is taken.
    """
    target = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)  # the last position predicts nothing
    flat = logits.reshape(-1, logits.size(-1))
    flat = flat if flat.dtype == torch.float32 else flat.float()
    loss = F.nll_loss if normalised else F.cross_entropy
    if weights is None:
        n = (target != -100).sum()
        return loss(flat, target, ignore_index=-100, reduction="sum") / n.clamp_min(1)
    nll = loss(flat, target, ignore_index=-100, reduction="none")
    w = F.pad(weights[:, 1:].float(), (0, 1)).reshape(-1) * (target != -100)
    return (nll * w).sum() / w.sum().clamp_min(1e-8)


def _body_and_head(model):
    """(transformer body, output layer) of a HF causal LM (peft-wrapped or not), or None when there is no such split
    to call safely: no body/head attributes (a DDP wrapper), or a model sharded by FSDP2, whose root forward gathers
    parameters that calling the body alone would skip."""
    try:
        from torch.distributed.fsdp import FSDPModule
        if isinstance(model, FSDPModule):
            return None
    except ImportError:  # torch built without distributed
        pass
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(core, getattr(core, "base_model_prefix", ""), None)
    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    return (body, head) if body is not None and head is not None else None


def sum_nll(model, ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over labelled positions, how many) — the one scoring routine behind every
    loss in the course: the teacher's and the trainer's train steps, and through :func:`nll_over` every validation
    loss and perplexity.

    Position t predicts ``labels[t+1]``; ``-100`` marks a position with no label. The output layer runs on the
    labelled positions only (for SmolLM2's 49K vocabulary it is a fifth of the compute per token, and prompt tokens
    carry no label). Runs where the weights are; keeps the graph (callers wrap ``torch.no_grad`` to evaluate).
    """
    from .device import model_device
    dev = model_device(model)
    ids, labels = ids.to(dev), labels.to(dev)
    mask = attention_mask.to(dev) if attention_mask is not None else None
    target = labels[:, 1:]
    keep = target != -100
    split = _body_and_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]
    else:
        hidden = split[0](input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        logits = split[1](hidden[keep])
    return F.cross_entropy(logits.float(), target[keep], reduction="sum"), int(keep.sum())


@torch.no_grad()
def nll_over(model, batches: Iterable[tuple], precision: str = "fp32") -> tuple[float, int]:
    """(total nats, scored tokens) of ``model`` over ``batches`` of ``(ids, labels)`` or ``(ids, labels, mask)``:
    the one validation-loss loop of the course. Callers only decide what a batch is — the trainer's packed validation
    blocks (``progressive``), the teacher's padded conversations (``teacher.eval_loss``), windows over whole texts
    (:func:`evaluate_texts`) or sliding windows over answers (``metrics.lm_score``). No gradient, no dropout (the
    model's train/eval mode is restored afterwards); ``precision`` is the autocast for the model's device.
    """
    from . import device as device_mod
    was_training = model.training
    model.eval()
    dev = device_mod.model_device(model)
    nats, n = 0.0, 0
    try:
        for batch in batches:
            with device_mod.autocast(dev, precision):
                nll, k = sum_nll(model, *batch)
            nats += float(nll)
            n += k
    finally:
        model.train(was_training)
    return nats, n


def perplexity(total_nats: float, n_tokens: int) -> float:
    return math.exp(total_nats / max(n_tokens, 1))


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total nats on a text / ln 2 / its UTF-8 byte count."""
    return total_nats / math.log(2) / max(n_bytes, 1)


def evaluate_texts(model, tok, texts: Sequence[str], batch_size: int = 8, precision: str = "fp32"
                   ) -> dict[str, float]:
    """Every token of every text scored once: nats, tokens, bytes, loss, perplexity, bits per byte.

    Runs where the model's weights are (inputs are moved there); ``precision`` picks the autocast for that device
    (dte_lib.device: ``fp32`` none, ``bf16``/``fp16``, ``auto`` = bf16/fp16 on CUDA, fp32 elsewhere).

    Each text is prefixed with ``<|endoftext|>`` so its first token is predicted too, then cut into windows of the
    model's context that overlap by one token (the last token of one window is the first context of the next).
    """
    T = model.config.n_positions
    eos = tok.eos_token_id
    windows: list[list[int]] = []
    n_bytes = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        ids = [eos] + tok(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - 1, T - 1):
            windows.append(ids[start: start + T])
    windows.sort(key=len)

    def batches():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i: i + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), eos, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for j, w in enumerate(chunk):
                ids[j, : len(w)] = torch.tensor(w)
                labels[j, 1: len(w)] = torch.tensor(w[1:])
            yield ids, labels

    nats, n_tok = nll_over(model, batches(), precision)
    return {"nats": nats, "tokens": n_tok, "bytes": n_bytes, "loss": nats / max(n_tok, 1),
            "perplexity": perplexity(nats, n_tok), "bits_per_byte": bits_per_byte(nats, n_bytes)}


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 60, system: str | None = None,
             do_sample: bool = False, seed: int = 0, temperature: float = 0.8) -> list[str]:
    """Answer each user prompt through the chat template; returns the decoded answers (EOS stops). Runs where the
    model's weights are."""
    from . import device as device_mod
    model.eval()
    dev = device_mod.model_device(model)
    out = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = ids["input_ids"][:, -(model.config.n_positions - max_new_tokens):].to(dev)
        torch.manual_seed(seed)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=do_sample, temperature=temperature if do_sample else None,
                             top_k=None, top_p=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = [int(a) for a in (sys.argv[1:] if argv is None else argv)] or [50257, 768, 4]
    v, d, L = args[:3]
    print(f"GPT-2 vocab {v}, n_embd {d}, {L} layers, 1024 positions: {expected_params(v, 1024, d, L):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

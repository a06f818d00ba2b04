"""Compute and budget planner: parameters, FLOPs, memory, GPU-hours and dollars for any GPT-2 configuration, and a
reproduction of the roadmap's budget tables from stated inputs, with every disagreement listed in numbers.

Explained in notebooks 05 (month 2: the cloud-vs-own decision) and 12 (months 13–18: the scaling plan).
Run it: ``python -m dte_lib.planner`` (or ``dte plan``) prints the three tables and the disagreements;
``dte plan --layers 24 --width 1792`` prints one model's parameter, FLOP and memory figures.

Definitions used throughout (all hand-written here because the arithmetic *is* the lesson):

- **N (parameters)** — ``sum(p.numel())`` of a Hugging Face ``GPT2LMHeadModel`` with a tied head, counted exactly by
  :func:`param_count` (tests check it against real models).
- **Training FLOPs per token** — ``6 · N_matmul + 12 · L · d · T`` (PaLM, Chowdhery et al. 2022, appendix B):
  ``N_matmul`` is the weight count that takes part in a matrix multiply for every token (the blocks' linear layers
  plus the tied LM head ``d · V``; the embedding lookups, biases and LayerNorms are left out), ``2`` FLOPs per
  multiply-add, ``×3`` for forward + backward; the attention term counts ``QKᵀ`` and ``A·V`` over the whole context
  ``T`` (no causal halving, as PaLM does). The roadmap-style headline ``6 · N · D`` with the total N is also given.
- **Memory** — AdamW in fp32 (also what ``torch.autocast`` training keeps): weights 4 B, gradients 4 B, two moment
  buffers 8 B per parameter = 16 B/parameter, plus activations from Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", eq. 1, no recomputation): ``T·b·d·(34 + 5·a·T/d)`` bytes per layer at
  2-byte activations (scaled by ``act_bytes / 2``), plus the LM head's logits, log-softmax and their gradient
  (``3 · b · T · V · 4`` bytes, fp32 as Hugging Face computes the loss).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

# ---------------------------------------------------------------------------------------------- model arithmetic


@dataclass(frozen=True)
class ModelShape:
    """The GPT-2 numbers the arithmetic needs (build one from a GPT2Config with :func:`shape_of`)."""
    n_layer: int  # transformer blocks
    n_embd: int  # width d
    n_head: int  # attention heads a
    vocab_size: int  # V
    n_positions: int = 1024  # learned position table size (also the default context)
    n_inner: int | None = None  # MLP width; None means 4·d as in GPT-2

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd


def shape_of(cfg: Any) -> ModelShape:
    """A :class:`ModelShape` from a ``transformers.GPT2Config`` (or anything with the same attributes)."""
    return ModelShape(cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions,
                      getattr(cfg, "n_inner", None))


def gpt2(n_layer: int, n_embd: int = 768, vocab_size: int = 50_257, n_positions: int = 1024,
         n_head: int | None = None) -> ModelShape:
    """A GPT-2-style shape; heads default to one per 64 dimensions (GPT-2's own choice)."""
    return ModelShape(n_layer, n_embd, n_head or max(1, n_embd // 64), vocab_size, n_positions)


def param_breakdown(m: ModelShape) -> dict[str, int]:
    """Exact parameter counts of ``GPT2LMHeadModel`` (tied head) by part."""
    d, f = m.n_embd, m.inner
    per_layer = (2 * d            # ln_1
                 + d * 3 * d + 3 * d  # attn.c_attn (Conv1D weight + bias)
                 + d * d + d          # attn.c_proj
                 + 2 * d            # ln_2
                 + d * f + f          # mlp.c_fc
                 + f * d + d)         # mlp.c_proj
    return {"token_embedding": m.vocab_size * d, "position_embedding": m.n_positions * d,
            "blocks": m.n_layer * per_layer, "per_block": per_layer, "final_layernorm": 2 * d}


def param_count(m: ModelShape) -> int:
    """Total parameters N, equal to ``sum(p.numel() for p in GPT2LMHeadModel(cfg).parameters())``."""
    b = param_breakdown(m)
    return b["token_embedding"] + b["position_embedding"] + b["blocks"] + b["final_layernorm"]


def matmul_params(m: ModelShape) -> int:
    """Weights used in a matrix multiply once per token: block linears plus the (tied) LM head."""
    d, f = m.n_embd, m.inner
    return m.n_layer * (4 * d * d + 2 * d * f) + d * m.vocab_size


def flops_per_token(m: ModelShape, context: int | None = None, attention: bool = True) -> float:
    """Training FLOPs per token: ``6·N_matmul (+ 12·L·d·T)`` — see the module docstring for what is counted."""
    t = context or m.n_positions
    return 6.0 * matmul_params(m) + (12.0 * m.n_layer * m.n_embd * t if attention else 0.0)


def training_flops(m: ModelShape, tokens: float, context: int | None = None) -> dict[str, float]:
    """Total training FLOPs for ``tokens`` tokens: the PaLM count and the plain ``6·N·D`` headline."""
    return {"flops": flops_per_token(m, context) * tokens, "flops_6ND": 6.0 * param_count(m) * tokens}


def width_for_params(target: float, n_layer: int, vocab_size: int = 50_257, n_positions: int = 1024,
                     multiple: int = 64) -> int:
    """Smallest width (a multiple of ``multiple``) whose GPT-2 at ``n_layer`` layers has at least ``target`` params."""
    d = multiple
    while param_count(gpt2(n_layer, d, vocab_size, n_positions)) < target:
        d += multiple
    return d


# ---------------------------------------------------------------------------------------------- memory
ADAMW_BYTES = {"weights": 4, "gradients": 4, "adamw_states": 8}  # fp32 master weights, grads, exp_avg + exp_avg_sq


def activation_bytes(m: ModelShape, batch: int, context: int, act_bytes: int = 4, checkpointing: bool = False,
                     attention_scores: bool = True) -> dict[str, float]:
    """Activation memory saved for backward (Korthikanti et al. 2022 eq. 1, scaled to ``act_bytes``), plus logits.

    ``attention_scores=False`` drops the ``5·a·T/d`` term: fused attention kernels (PyTorch's SDPA flash and
    memory-efficient kernels on a GPU) never store the T×T scores. ``checkpointing=True`` (activation
    checkpointing: each block recomputed in the backward) keeps only every block's fp32 input, ``4·T·b·d`` bytes
    per layer, plus one block's full activations while it is recomputed (Korthikanti's "full recomputation")."""
    t, d, a = context, m.n_embd, m.n_head
    per_layer_2byte = t * batch * d * (34 + (5 * a * t / d if attention_scores else 0))
    if checkpointing:
        blocks = m.n_layer * t * batch * d * 4 + per_layer_2byte * act_bytes / 2
    else:
        blocks = m.n_layer * per_layer_2byte * act_bytes / 2
    logits = 3 * batch * t * m.vocab_size * 4  # logits, log-softmax and their gradient, fp32
    return {"blocks": blocks, "logits": logits, "total": blocks + logits}


def memory_bytes(m: ModelShape, batch: int, context: int, act_bytes: int = 4, shards: int = 1,
                 checkpointing: bool = False, attention_scores: bool = True) -> dict[str, float]:
    """Training memory per device: weights, gradients, AdamW states (divided by ``shards`` under FSDP/ZeRO-3) and
    activations (each device keeps its own micro-batch's; see :func:`activation_bytes` for the two switches)."""
    n = param_count(m)
    out = {k: n * b / shards for k, b in ADAMW_BYTES.items()}
    out["activations"] = activation_bytes(m, batch, context, act_bytes, checkpointing, attention_scores)["total"]
    out["total"] = sum(out.values())
    return out


GIB = 2 ** 30
CUDA_RESERVE_BYTES = 1.5 * GIB  # CUDA context, cuBLAS workspaces and allocator slack that no tensor accounts for


def plan_batch(m: ModelShape, batch: int, context: int, device_bytes: float, act_bytes: int = 2, shards: int = 1,
               checkpointing: bool = False, attention_scores: bool = False, headroom: float = 0.9) -> dict[str, Any]:
    """The largest micro-batch that fits one device, and the gradient accumulation that keeps ``batch`` per step.

    Tries ``accum = 1, 2, …`` over the divisors of ``batch`` (the per-device share of the global batch) and takes
    the first whose :func:`memory_bytes` fits ``headroom · device_bytes − CUDA_RESERVE_BYTES``. With bf16 autocast
    (``act_bytes=2``) the transient bf16 copies of the weights (2 B/parameter) are added. ``attention_scores``
    defaults to False because on a GPU the trainer's attention is PyTorch's fused SDPA. When even one sequence
    does not fit, returns the smallest micro-batch with ``fits=False``: turn on activation checkpointing or shard
    over more devices (FSDP) instead."""
    budget = headroom * device_bytes - CUDA_RESERVE_BYTES
    casts = 2 * param_count(m) / shards if act_bytes == 2 else 0
    est = 0.0
    for accum in (a for a in range(1, batch + 1) if batch % a == 0):
        micro = batch // accum
        est = memory_bytes(m, micro, context, act_bytes, shards, checkpointing, attention_scores)["total"] + casts
        if est <= budget:
            return {"micro_batch": micro, "accum": accum, "estimated_bytes": est, "budget_bytes": budget,
                    "fits": True}
    return {"micro_batch": 1, "accum": batch, "estimated_bytes": est, "budget_bytes": budget, "fits": False}


def device_memory_bytes(device: Any = None) -> float:
    """Total memory of a CUDA device (``torch.cuda.get_device_properties``), else of this machine's RAM."""
    import torch
    from .envinfo import total_memory_bytes
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return float(torch.cuda.get_device_properties(dev).total_memory)
    return float(total_memory_bytes())

# ---------------------------------------------------------------------------------------------- corpus tokens


def example_text(messages: Sequence[dict[str, Any]]) -> str:
    """How an example becomes training text for counting: ``<|role|> content`` turns joined by newlines."""
    return "\n".join(f"<|{m['role']}|> {m.get('content') or ''}" for m in messages)


def tokens_per_example(examples: Iterable[Any], encode: Callable[[str], Sequence[int]]) -> dict[str, float]:
    """Token counts of ``examples`` (``ChatExample`` or message lists) under ``encode``: mean, median, p90, total."""
    counts = sorted(len(encode(example_text(getattr(e, "messages", e)))) for e in examples)
    if not counts:
        raise ValueError("tokens_per_example: no examples")
    return {"examples": len(counts), "mean": statistics.fmean(counts), "median": statistics.median(counts),
            "p90": counts[min(len(counts) - 1, int(0.9 * len(counts)))], "total": sum(counts)}


# ---------------------------------------------------------------------------------------------- roadmap inputs
ROADMAP_AS_OF = "2026-11-25"  # when these inputs were written down; edit the rows, not the arithmetic


@dataclass
class Claim:
    """One number the roadmap states, encoded as an input the planner checks."""
    key: str  # stable id
    table: str  # "hardware" | "compute" | "budget" | "model"
    claim: str  # the roadmap's words, paraphrased
    low: float  # stated value (or low end of a stated range)
    high: float  # high end (== low for a single value)
    unit: str  # "$/h", "$", "GPU-h", "params", ...


ROADMAP_CLAIMS: list[Claim] = [
    Claim("a100_price", "hardware", "month 2: rent a cloud A100 at $1.50–2.00 per hour", 1.50, 2.00, "$/h"),
    Claim("rtx4090_price", "hardware", "month 2: or buy an RTX 4090 for $1,600", 1600, 1600, "$"),
    Claim("params_4_layers", "model", "the 4-layer GPT-2 (n_embd 768, vocabulary 50,257) has ~20M parameters",
          20e6, 20e6, "params"),
    Claim("params_final", "model", "months 13–18 scale the 24-layer model to 1B parameters", 1e9, 1e9, "params"),
    Claim("gpu_hours_per_phase", "compute", "each phase needs 200–2,000 GPU-hours", 200, 2000, "GPU-h"),
    Claim("total_budget", "budget", "the whole plan costs $3,210–$20,000", 3210, 20000, "$"),
]


@dataclass
class Phase:
    """A roadmap phase as the planner sees it: which model trains on how many tokens."""
    name: str  # short label
    months: str  # roadmap months it covers
    encodes: str  # which roadmap statement this row encodes
    n_layer: int  # final depth of the phase (layer plan 1 → 12 → 24)
    n_embd: int = 768  # GPT-2 width from the roadmap
    vocab_size: int = 50_257  # GPT-2 vocabulary from the roadmap
    context: int = 1024  # training context
    examples: int = 100_000  # corpus size (the roadmap's 100K examples)
    epochs: float = 3.0  # passes over the corpus (assumption: the roadmap states none)

    def shape(self) -> ModelShape:
        return gpt2(self.n_layer, self.n_embd, self.vocab_size, max(self.context, 1024))


# The final phase's width is what 24 layers need to reach the roadmap's 1B (width_for_params(1e9, 24) = 1792).
ROADMAP_PHASES: list[Phase] = [
    Phase("layers 1-4", "3-4", "months 3-4: progressive growth 1 -> 4 layers at n_embd 768", 4),
    Phase("layers 5-12", "5-6", "months 5-6: grow to 12 layers (GPT-2 small's depth)", 12),
    Phase("identity 12L", "7-12", "months 7-12: identity mechanisms and refinement on the 12-layer model", 12),
    Phase("scale to 1B", "13-18", "months 13-18: 24 layers, 1B parameters, PyTorch DDP", 24, n_embd=1792),
]


# ---------------------------------------------------------------------------------------------- GPUs and money
@dataclass
class Gpu:
    """A GPU's published peak dense bf16 rate (tensor cores, fp32 accumulate), memory and an hourly price."""
    name: str  # display name
    peak_bf16_tflops: float  # dense (no sparsity) bf16 TFLOP/s from the vendor's datasheet
    memory_gib: float  # device memory
    price_per_hour: tuple[float, float]  # (low, high) $/h rented; for an owned card, electricity only
    source: str  # where the peak number comes from
    purchase_price: float = 0.0  # $ to buy (owned cards)
    watts: float = 0.0  # board power, for electricity


GPUS: dict[str, Gpu] = {
    "A100 80GB": Gpu("A100 80GB", 312.0, 80, (1.50, 2.00),
                     "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 with sparsity); "
                     "price: the roadmap's $1.50-2.00/h"),
    "RTX 4090": Gpu("RTX 4090", 165.2, 24, (0.0, 0.0),
                    "NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090): BF16 tensor with FP32 "
                    "accumulate 165.2 TFLOPS dense (330.4 with sparsity); price: the roadmap's $1,600",
                    purchase_price=1600.0, watts=450.0),
    "H100 SXM 80GB": Gpu("H100 SXM 80GB", 989.4, 80, (2.50, 3.50),
                         "NVIDIA H100 Tensor Core GPU datasheet: BF16 1,979 TFLOPS with sparsity = 989.4 dense; "
                         "price: an assumption (not in the roadmap), edit it"),
}


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by the name torch.cuda.get_device_name() reports; the first
# matching entry wins, so specific names (H100 PCIe, H200 NVL) come before general ones. Cards without bf16
# (V100, T4) list their fp16 tensor peak, which is what their autocast (fp16) runs at.
DATASHEET_PEAKS: list[tuple[str, float, str]] = [
    ("B200", 2250.0, "NVIDIA HGX B200 datasheet: FP16/BF16 4.5 PFLOPS sparse per GPU = 2,250 dense"),
    ("H200 NVL", 835.5, "NVIDIA H200 NVL datasheet: BF16 1,671 TFLOPS sparse = 835.5 dense"),
    ("H200", 989.4, "NVIDIA H200 SXM datasheet: BF16 1,979 TFLOPS sparse = 989.4 dense"),
    ("H100 PCIe", 756.0, "NVIDIA H100 PCIe datasheet: BF16 1,513 TFLOPS sparse = 756 dense"),
    ("H100 NVL", 835.5, "NVIDIA H100 NVL datasheet: BF16 1,671 TFLOPS sparse = 835.5 dense"),
    ("H100", 989.4, "NVIDIA H100 SXM datasheet: BF16 1,979 TFLOPS sparse = 989.4 dense"),
    ("GH200", 989.4, "NVIDIA GH200 datasheet: the H100/H200 SXM tensor core, BF16 989 TFLOPS dense"),
    ("A100", 312.0, "NVIDIA A100 datasheet: BF16 312 TFLOPS dense (40 GB and 80 GB, SXM and PCIe)"),
    ("A800", 312.0, "NVIDIA A800 datasheet: BF16 312 TFLOPS dense"),
    ("L40S", 362.05, "NVIDIA L40S datasheet: BF16 733 TFLOPS sparse = 362 dense"),
    ("L40", 181.0, "NVIDIA L40 datasheet: BF16 362 TFLOPS sparse = 181 dense"),
    ("L4", 121.0, "NVIDIA L4 datasheet: BF16 242 TFLOPS sparse = 121 dense"),
    ("A10G", 70.0, "AWS A10G (g5): BF16 140 TFLOPS sparse = 70 dense"),
    ("A10", 125.0, "NVIDIA A10 datasheet: BF16 250 TFLOPS sparse = 125 dense"),
    ("RTX 4090", 165.2, "Ada whitepaper (RTX 4090): BF16, FP32 accumulate, 165.2 TFLOPS dense"),
    ("RTX 6000 Ada", 364.2, "NVIDIA RTX 6000 Ada datasheet: BF16 728 TFLOPS sparse = 364 dense"),
    ("RTX 3090", 71.0, "Ampere GA102 whitepaper (RTX 3090): BF16, FP32 accumulate, 71 TFLOPS dense"),
    ("V100", 125.0, "NVIDIA V100 SXM2 datasheet: FP16 tensor 125 TFLOPS (no bf16)"),
    ("T4", 65.0, "NVIDIA T4 datasheet: FP16 tensor 65 TFLOPS (no bf16)"),
]


def datasheet_peak(device_name: str) -> tuple[float, str] | None:
    """(dense bf16 TFLOP/s, source) for a CUDA device name such as ``NVIDIA H200``, or None if it is not listed."""
    low = device_name.lower()
    for key, tflops, source in DATASHEET_PEAKS:
        if key.lower() in low:
            return tflops, source
    return None


def schedule_flops(tc: Any) -> float:
    """Training FLOPs of a progressive-trainer schedule (``TrainCfg``): each stage's tokens at its depth's
    :func:`flops_per_token` (every layer trainable — the upper bound; greedy stages cost less)."""
    from .schedule import build_schedule
    return sum(flops_per_token(gpt2(s.depth, tc.d_model, tc.vocab_size, tc.block_size, tc.n_head), tc.block_size)
               * s.tokens for s in build_schedule(tc))


def gpu_hours(flops: float, peak_tflops: float, utilisation: float) -> float:
    """Hours on one GPU at ``utilisation`` (model FLOP utilisation, MFU) of its peak."""
    return flops / (peak_tflops * 1e12 * utilisation) / 3600.0


def break_even_hours(purchase: float, cloud_price: float, speed_ratio: float = 1.0, watts: float = 0.0,
                     kwh_price: float = 0.0) -> float:
    """Hours of use after which owning beats renting.

    One hour on the owned card does ``speed_ratio`` cloud-GPU-hours of work (owned peak / cloud peak at equal
    utilisation), saving ``cloud_price · speed_ratio`` dollars and costing ``watts/1000 · kwh_price`` in power.
    Returns ``inf`` when the saving never covers the power.
    """
    saving = cloud_price * speed_ratio - watts / 1000.0 * kwh_price
    return math.inf if saving <= 0 else purchase / saving


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class PlanInputs:
    """Everything the reproduction depends on that is not arithmetic; all editable."""
    tokens_per_example: float  # measured from the corpus with the course's tokenizer
    utilisation: float = 0.40  # assumed MFU on a GPU (40% is typical for a well-tuned bf16 GPT run)
    cloud_gpu: str = "A100 80GB"  # the roadmap's rental
    own_gpu: str = "RTX 4090"  # the roadmap's purchase
    kwh_price: float = 0.15  # $ per kWh for the owned card (assumption)
    phases: list[Phase] = field(default_factory=lambda: [replace(p) for p in ROADMAP_PHASES])
    claims: list[Claim] = field(default_factory=lambda: [replace(c) for c in ROADMAP_CLAIMS])
    gpus: dict[str, Gpu] = field(default_factory=lambda: {k: replace(g) for k, g in GPUS.items()})

    def claim(self, key: str) -> Claim:
        return next(c for c in self.claims if c.key == key)


def plan_inputs(scale: Any, tokens_per_example: float) -> PlanInputs:
    """:class:`PlanInputs` from a preset's ``ScaleCfg`` (prices, utilisation, corpus size and epochs per phase)."""
    inp = PlanInputs(tokens_per_example=tokens_per_example, utilisation=scale.utilisation, kwh_price=scale.kwh_usd)
    inp.gpus["A100 80GB"].price_per_hour = (scale.a100_usd_per_h_low, scale.a100_usd_per_h_high)
    inp.gpus["RTX 4090"].purchase_price = scale.rtx4090_usd
    inp.gpus["H100 SXM 80GB"].price_per_hour = (scale.h100_usd_per_h_low, scale.h100_usd_per_h_high)
    inp.claim("a100_price").low, inp.claim("a100_price").high = inp.gpus["A100 80GB"].price_per_hour
    for p in inp.phases:
        p.examples, p.epochs = scale.examples_per_phase, scale.epochs_per_phase
    return inp


def large_vocab_encoder(name: str = "cl100k_base") -> Callable[[str], Sequence[int]]:
    """A large-vocabulary BPE that works offline (``bpe-openai`` ships ``cl100k_base`` and ``o200k_base``).

    GPT-2's own 50,257-token BPE (``r50k``) is not shipped offline, so this is a stand-in for the roadmap's
    vocabulary: a 100K-token BPE cuts English into somewhat fewer tokens than a 50K one, so the planner's token
    counts at full scale lean low by that (unmeasured here) margin. Notebook 05 also counts with the course's own
    small tokenizer for comparison.
    """
    import bpe_openai
    return bpe_openai.get_encoding(name).encode


def phase_table(inp: PlanInputs, chinchilla: bool = False) -> list[dict[str, Any]]:
    """One row per phase: params, tokens, FLOPs, GPU-hours on the cloud and own GPU, dollars.

    ``chinchilla=True`` replaces the corpus tokens by the compute-optimal 20 tokens per parameter (Hoffmann et al.
    2022) — the budget a phase would need to train its model "fully" rather than on the roadmap's corpus.
    """
    cloud, own = inp.gpus[inp.cloud_gpu], inp.gpus[inp.own_gpu]
    rows = []
    for p in inp.phases:
        m = p.shape()
        n = param_count(m)
        tokens = 20.0 * n if chinchilla else p.examples * inp.tokens_per_example * p.epochs
        fl = training_flops(m, tokens, p.context)
        h_cloud = gpu_hours(fl["flops"], cloud.peak_bf16_tflops, inp.utilisation)
        h_own = gpu_hours(fl["flops"], own.peak_bf16_tflops, inp.utilisation)
        mem = memory_bytes(m, batch=1, context=p.context, act_bytes=2)["total"] / GIB
        rows.append({"phase": p.name, "months": p.months, "layers": p.n_layer, "width": p.n_embd,
                     "params_M": n / 1e6, "tokens_M": tokens / 1e6, "pflops": fl["flops"] / 1e15,
                     "cloud_gpu_h": h_cloud, "cloud_usd_low": h_cloud * cloud.price_per_hour[0],
                     "cloud_usd_high": h_cloud * cloud.price_per_hour[1], "own_gpu_h": h_own,
                     "own_power_usd": h_own * own.watts / 1000 * inp.kwh_price,
                     "mem_gib_batch1": mem, "fits_own": mem <= own.memory_gib, "encodes": p.encodes})
    return rows


def hardware_table(inp: PlanInputs) -> list[dict[str, Any]]:
    """Month 2's decision: every GPU's peak, price, and hours after which buying the owned card pays off."""
    own = inp.gpus[inp.own_gpu]
    rows = []
    for g in inp.gpus.values():
        row = {"gpu": g.name, "peak_bf16_tflops": g.peak_bf16_tflops, "memory_gib": g.memory_gib,
               "usd_per_h_low": g.price_per_hour[0], "usd_per_h_high": g.price_per_hour[1],
               "purchase_usd": g.purchase_price, "source": g.source}
        if g.name != own.name and g.price_per_hour[0] > 0:
            ratio = own.peak_bf16_tflops / g.peak_bf16_tflops
            row["own_speed_ratio"] = ratio
            row["break_even_h_naive"] = [break_even_hours(own.purchase_price, p) for p in g.price_per_hour]
            row["break_even_h"] = [break_even_hours(own.purchase_price, p, ratio, own.watts, inp.kwh_price)
                                   for p in g.price_per_hour]
        rows.append(row)
    return rows


def budget_table(inp: PlanInputs, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-plan totals: rent everything, or buy the owned card and pay its power."""
    own = inp.gpus[inp.own_gpu]
    hours = sum(r["cloud_gpu_h"] for r in phases)
    return {"cloud_gpu_h": hours, "cloud_usd_low": sum(r["cloud_usd_low"] for r in phases),
            "cloud_usd_high": sum(r["cloud_usd_high"] for r in phases),
            "own_gpu_h": sum(r["own_gpu_h"] for r in phases),
            "own_usd": own.purchase_price + sum(r["own_power_usd"] for r in phases),
            "phases_that_do_not_fit_own": [r["phase"] for r in phases if not r["fits_own"]]}


def _outside(value: float, c: Claim) -> str | None:
    """'' when inside the claimed range, else the factor by which it misses."""
    if c.low <= value <= c.high:
        return None
    ref = c.low if value < c.low else c.high
    return f"{value / ref:.3g}x the claimed {'low' if value < c.low else 'high'} end"


def disagreements(inp: PlanInputs) -> list[dict[str, Any]]:
    """Every roadmap claim the arithmetic does not reproduce: claim, claimed, computed, by how much, and why."""
    out = []
    c4 = inp.claim("params_4_layers")
    first = inp.phases[0]
    n4 = param_count(gpt2(4, first.n_embd, first.vocab_size, 1024))
    if (why := _outside(n4, c4)) is not None:
        emb = (first.vocab_size + 1024) * first.n_embd
        out.append({"claim": c4.claim, "claimed": c4.low, "computed": n4, "off_by": why,
                    "why": f"the token and position tables alone hold {emb / 1e6:.1f}M "
                           f"({first.vocab_size:,} + 1,024 rows x {first.n_embd}); each block adds "
                           f"{param_breakdown(gpt2(1))['per_block'] / 1e6:.2f}M"})
    cf = inp.claim("params_final")
    n24 = param_count(gpt2(24, 768, first.vocab_size))
    if (why := _outside(n24, cf)) is not None:
        need = width_for_params(cf.low, 24, first.vocab_size)
        out.append({"claim": cf.claim + " (at the roadmap's width 768)", "claimed": cf.low, "computed": n24,
                    "off_by": why, "why": f"24 layers x 768 wide is GPT-2 medium's depth at GPT-2 small's width; "
                                          f"1B at 24 layers needs width >= {need} (the plan's last phase uses it)"})
    ch = inp.claim("gpu_hours_per_phase")
    for label, rows in (("roadmap corpus", phase_table(inp)), ("compute-optimal 20 tokens/param",
                                                                 phase_table(inp, chinchilla=True))):
        for r in rows:
            if (why := _outside(r["cloud_gpu_h"], ch)) is not None:
                out.append({"claim": f"{ch.claim} — phase {r['phase']} ({label})", "claimed": [ch.low, ch.high],
                            "computed": r["cloud_gpu_h"], "off_by": why,
                            "why": f"{r['pflops']:.3g} PFLOP on {inp.cloud_gpu} at {inp.utilisation:.0%} MFU "
                                   f"({r['params_M']:.0f}M params x {r['tokens_M']:.0f}M tokens)"})
    cb = inp.claim("total_budget")
    for label, rows in (("roadmap corpus", phase_table(inp)), ("compute-optimal 20 tokens/param",
                                                                 phase_table(inp, chinchilla=True))):
        b = budget_table(inp, rows)
        for what, value in (("rent " + inp.cloud_gpu + " (low price)", b["cloud_usd_low"]),
                            ("rent " + inp.cloud_gpu + " (high price)", b["cloud_usd_high"]),
                            ("own " + inp.own_gpu + " + power", b["own_usd"])):
            if (why := _outside(value, cb)) is not None:
                out.append({"claim": f"{cb.claim} — {what}, {label}", "claimed": [cb.low, cb.high],
                            "computed": value, "off_by": why,
                            "why": f"{b['cloud_gpu_h']:.3g} {inp.cloud_gpu}-hours in all phases"})
    # What the per-phase range implies for the total, read the roadmap's own way (hours x price, 4 phases).
    n = len(inp.phases)
    lo = n * ch.low * inp.claim("a100_price").low
    hi = n * ch.high * inp.claim("a100_price").high
    if _outside(lo, cb) or _outside(hi, cb):
        out.append({"claim": f"{cb.claim} vs its own per-phase hours", "claimed": [cb.low, cb.high],
                    "computed": [lo, hi], "off_by": f"{lo / cb.low:.3g}x low end, {hi / cb.high:.3g}x high end",
                    "why": f"{n} phases x 200–2,000 GPU-h x $1.50–2.00/h; the roadmap's breakdown of its own "
                           "total is not among our inputs"})
    return out


def reproduce(inp: PlanInputs) -> dict[str, Any]:
    """The three tables (hardware, compute per phase, budget) and the disagreement list."""
    phases = phase_table(inp)
    optimal = phase_table(inp, chinchilla=True)
    return {"as_of": ROADMAP_AS_OF, "inputs": {k: v for k, v in asdict(inp).items() if k != "gpus"},
            "hardware": hardware_table(inp), "compute": phases, "compute_optimal": optimal,
            "budget": budget_table(inp, phases), "budget_optimal": budget_table(inp, optimal),
            "disagreements": disagreements(inp)}


def layer_plan(depths: Sequence[int] = (1, 2, 4, 8, 12, 24), width: int = 768, vocab: int = 50_257,
               context: int = 1024, batch: int = 8) -> list[dict[str, Any]]:
    """Parameters, FLOPs per token and training memory per depth of the roadmap's layer plan."""
    rows = []
    for L in depths:
        m = gpt2(L, width, vocab, context)
        mem = memory_bytes(m, batch, context, act_bytes=2)
        rows.append({"layers": L, "width": width, "params_M": param_count(m) / 1e6,
                     "embedding_share": (vocab + context) * width / param_count(m),
                     "gflops_per_token": flops_per_token(m, context) / 1e9,
                     "mem_gib": mem["total"] / GIB, "mem_states_gib": (mem["total"] - mem["activations"]) / GIB})
    return rows


def plot_break_even(inp: PlanInputs, hours_max: float = 4000.0):
    """Cumulative dollars against hours of work (measured in cloud-GPU-hours): renting at the low and high price
    vs buying the owned card (its purchase, then power, at its slower speed)."""
    import matplotlib.pyplot as plt
    cloud, own = inp.gpus[inp.cloud_gpu], inp.gpus[inp.own_gpu]
    ratio = own.peak_bf16_tflops / cloud.peak_bf16_tflops
    h = [hours_max * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for price, style in zip(cloud.price_per_hour, ("-", "--")):
        ax.plot(h, [x * price for x in h], style, color="#4a6fa5", label=f"rent {cloud.name} at ${price:.2f}/h")
    ax.plot(h, [own.purchase_price + x / ratio * own.watts / 1000 * inp.kwh_price for x in h], color="#3b7a57",
            label=f"own {own.name} (${own.purchase_price:,.0f} + power; {ratio:.2f}x the speed)")
    ax.set_xlabel(f"work done, in {cloud.name}-hours")
    ax.set_ylabel("cumulative $")
    ax.set_title("cloud vs own GPU: where the lines cross is the break-even")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fmt_num(value: Any) -> str:
    """4 significant digits, lists element-wise (for the disagreement printout)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_num(v) for v in value) + "]"
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"


def rent_or_buy(rep: dict[str, Any], inp: PlanInputs) -> dict[str, Any]:
    """Notebook 05's verdict from :func:`reproduce`'s tables: the GPU-hours the whole plan needs at compute-optimal
    size on the owned card against the cloud GPU's break-even range (naive: price / rent; adjusted for speed and
    power). Rent when the need is below the adjusted break-even's low end."""
    row = next(r for r in rep["hardware"] if r["gpu"] == inp.cloud_gpu)
    need = rep["budget_optimal"]["own_gpu_h"]
    be = row["break_even_h"]
    return {"need_h": need, "break_even_h_naive": row["break_even_h_naive"], "break_even_h": be,
            "verdict": "rent" if need < be[1] else "buy"}


def shape_table(shapes: dict[str, ModelShape], context: int = 1024) -> list[dict[str, Any]]:
    """One row per named model shape (notebook 12): parameters, non-embedding parameters (millions), training
    FLOPs per token at ``context`` (billions) and the compute-optimal token count (20 per parameter, billions)."""
    rows = []
    for name, m in shapes.items():
        n, parts = param_count(m), param_breakdown(m)
        rows.append({"model": name, "params_M": n / 1e6,
                     "non-embedding_M": (n - parts["token_embedding"] - parts["position_embedding"]) / 1e6,
                     "GFLOPs/token (train)": flops_per_token(m, context) / 1e9,
                     "compute-optimal tokens (B)": 20 * n / 1e9})
    return rows


def compute_table(m: ModelShape, budgets: dict[str, float], context: int, gpus: dict[str, Gpu],
                  utilisation: float, cluster: tuple[str, int] = ("A100 80GB", 8)) -> list[dict[str, Any]]:
    """One row per token budget (notebook 12): tokens (B), training EFLOP, hours on one GPU of each kind at
    ``utilisation`` of its bf16 peak, and on a ``cluster`` of identical GPUs (perfect scaling, a lower bound)."""
    rows = []
    for label, tokens in budgets.items():
        flops = training_flops(m, tokens, context)["flops"]
        row: dict[str, Any] = {"budget": label, "tokens (B)": tokens / 1e9, "EFLOP": flops / 1e18}
        for g in gpus.values():
            row[f"{g.name} h (1 GPU)"] = gpu_hours(flops, g.peak_bf16_tflops, utilisation)
        name, count = cluster
        row[f"{count} x {name.split()[0]} h"] = row[f"{name} h (1 GPU)"] / count
        rows.append(row)
    return rows


def parallel_memory(m: ModelShape, batch_per_device: int, context: int, world_sizes: Sequence[int] = (1, 2, 4, 8),
                    act_bytes: int = 2) -> list[dict[str, Any]]:
    """GiB per device under DDP (every device holds all 16 B/param) and FSDP/ZeRO-3 (each holds 1/W of them);
    activations are per device either way (its own micro-batch)."""
    rows = []
    for w in world_sizes:
        ddp = memory_bytes(m, batch_per_device, context, act_bytes, shards=1)
        fsdp = memory_bytes(m, batch_per_device, context, act_bytes, shards=w)
        rows.append({"devices": w, "ddp_gib": ddp["total"] / GIB, "fsdp_gib": fsdp["total"] / GIB,
                     "fsdp_states_gib": (fsdp["total"] - fsdp["activations"]) / GIB,
                     "activations_gib": fsdp["activations"] / GIB})
    return rows


# ---------------------------------------------------------------------------------------------- CLI
def _print_schedule(preset: str, utilisation: float) -> int:
    """``dte plan --preset full``: the progressive schedule's compute, hours on each listed GPU, and the batch
    plan (micro-batch × accumulation) for the deepest model on each memory size."""
    from . import config
    tc = config.load(preset).train
    flops = schedule_flops(tc)
    deepest = max(config.as_list(tc.depths))
    m = gpt2(deepest, tc.d_model, tc.vocab_size, tc.block_size, tc.n_head)
    print(f"{preset}: {deepest} layers x {tc.d_model}, vocab {tc.vocab_size:,}, context {tc.block_size}, "
          f"{param_count(m) / 1e6:.1f}M params; schedule {flops:.3g} FLOPs "
          f"(global batch {tc.batch_size} x {tc.block_size} tokens)")
    print(f"{'GPU':14s} {'TFLOP/s':>8s} {'hours@' + format(utilisation, '.0%'):>10s}  plan at {deepest} layers")
    mems = {"B200": 180, "H200": 141, "H100": 80, "A100": 80, "L40S": 48, "RTX 4090": 24, "L4": 24}
    for name, gib in mems.items():
        peak = datasheet_peak(name)[0]
        plan = plan_batch(m, tc.batch_size, tc.block_size, gib * GIB, checkpointing=tc.activation_checkpointing)
        print(f"{name + f' {gib}GB':14s} {peak:8.0f} {gpu_hours(flops, peak, utilisation):10.2f}  "
              f"micro-batch {plan['micro_batch']} x accum {plan['accum']} "
              f"({plan['estimated_bytes'] / GIB:.1f} GiB est.)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dte plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, help="print one GPT-2 model's figures instead of the roadmap tables")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50_257)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens-per-example", type=float, default=400.0,
                    help="measure it from your corpus (notebook 05); 400 is a placeholder")
    ap.add_argument("--utilisation", type=float, default=0.40)
    ap.add_argument("--preset", help="print that preset's trainer schedule: FLOPs, hours per GPU, batch plan")
    args = ap.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        ap.error(f"--utilisation {args.utilisation}: must be in (0, 1], e.g. 0.4 for 40% of peak FLOP/s")
    if min(args.width, args.vocab, args.context, args.batch) <= 0 or args.tokens_per_example <= 0:
        ap.error("--width, --vocab, --context, --batch and --tokens-per-example must be positive")
    if args.layers is not None and args.layers <= 0:
        ap.error(f"--layers {args.layers}: a model needs at least one layer")
    if args.preset:
        return _print_schedule(args.preset, args.utilisation)
    if args.layers:
        m = gpt2(args.layers, args.width, args.vocab, args.context)
        mem = memory_bytes(m, args.batch, args.context, act_bytes=2)
        print(f"params {param_count(m):,}  FLOPs/token {flops_per_token(m, args.context):.4g}")
        for k, v in mem.items():
            print(f"  {k:14s} {v / GIB:8.2f} GiB")
        return 0
    rep = reproduce(PlanInputs(tokens_per_example=args.tokens_per_example, utilisation=args.utilisation))
    for r in rep["compute"]:
        print(f"{r['phase']:14s} {r['params_M']:8.1f}M params {r['tokens_M']:8.1f}M tokens "
              f"{r['cloud_gpu_h']:10.3f} A100-h  ${r['cloud_usd_low']:.2f}-{r['cloud_usd_high']:.2f}")
    print("\ndisagreements:")
    for d in rep["disagreements"]:
        print(f"- {d['claim']}: claimed {d['claimed']}, computed {fmt_num(d['computed'])} ({d['off_by']}); "
              f"{d['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

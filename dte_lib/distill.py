"""Token-level distillation: the student learns the teacher's next-token distribution, not only its sampled text.

The sequence-level student (notebooks 06–11) trains on text the teacher wrote: one sampled token per position.
Token-level distillation also uses what the teacher *would* have said there: with the teacher's top-k
log-probabilities at position t, renormalised over those k tokens at temperature T into q_t, and the student's
distribution p_t at the same temperature,

    L = (1 − α) · CE + α · T² · mean_t Σ_{j ∈ topk_t} q_t(j) · (log q_t(j) − log p_t(j))

the KL averaged over the positions the LM loss trains on that carry a teacher distribution. α is
``TrainCfg.distill_weight`` (0 = off), k ``distill_topk``, T ``distill_temperature``; T² keeps the KL's gradient
on the CE's scale as T grows (softened distributions have gradients ~1/T²). The course's trainer applies it in its
one training step (``ProgressiveTrainer(teacher_targets=...)``, logged as ``distill`` = α·T²·KL beside ``loss`` =
CE), so growth, schedules, checkpoints and resumption are unchanged. Notebook 07 shows both terms
(:mod:`dte_lib.distill_study`: the sequence-level and the distilled student side by side).

**Where the teacher's distributions come from.** Notebook 02 keeps, for every answer token, the top-20 the teacher's
server computed while sampling it (``corpus/logprobs.jsonl``, teacher token ids; ``generate.logprobs_topk``) — no
second pass over the teacher. :func:`recorded_targets` places them on the student's positions: answer token j's
distribution goes to the position that predicts it, for as long as the kept answer agrees with what was sampled.

**Tokenizer.** A per-position KL needs the student and the teacher to share token ids. The teacher's own 49,152
tokens make the output head the student's largest part (vocab × d parameters, 6·vocab·d training FLOPs per token —
at d 128, 6.3M parameters and 37.7 MFLOPs per token against 0.26M and 1.6 MFLOPs with the course's 2,048-token BPE;
:func:`head_cost`). The **teacher-vocabulary subset** (``TrainCfg.tokenizer = "teacher_subset"``,
:func:`subset_tokenizer`) keeps the ids the corpus uses (plus specials, bytes and merge parents), remapped to a
compact range — on the seed corpus 7,982 of 49,152 ids (5,499 used), the teacher's segmentation (4.58 bytes per token
against the course BPE's 3.90) at a sixth of its head — with the teacher's chat template, which the course's
loss masks read (:func:`dte_lib.tokenizer.segments`). Saved as ``tokenizer.json`` + ``id_map.json``; :func:`map_topk`
moves a teacher top-k into student ids; teacher tokens outside the subset are dropped and counted (the rest is
renormalised).

**Cache** (benchmarks/distill.py's arm with the full teacher vocabulary, ``tokenizer = "teacher"``): the teacher run
once per packed block, :func:`build_cache` replaying the trainer's ``PackedLoader`` and writing top-k ids and
log-probabilities to ``<out>/teacher_topk.safetensors``, looked up by the block's content hash; that arm adds α·T²·KL
to the full CE through the trainer's ``aux_loss`` hook.

Run it: ``python -m dte_lib.distill demo --vocab-report`` prints the head cost of the teacher tokenizer at the demo
width, and the three tokenizers' sizes and bytes per token on the seed corpus (or on the corpus files given).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import tokenizer as toklib

CACHE_FILE = "teacher_topk.safetensors"


# ============================================================================================ the loss
def distill_loss(student_logits: torch.Tensor, topk_idx: torch.Tensor, topk_logp: torch.Tensor,
                 labels: torch.Tensor, temperature: float = 1.0, tail: bool = False,
                 normalised: bool = False) -> torch.Tensor:
    """Mean over trained positions of KL(q ‖ p) on the teacher's top-k tokens (module docstring), times T².

    ``student_logits`` [B, S, V]; ``topk_idx`` / ``topk_logp`` [B, S, k]: the teacher's k most likely next tokens
    at each position and their log-probabilities (any normalisation: they are renormalised over the k at
    temperature T; an entry of −inf is absent — a teacher token outside the student's vocabulary — and a position
    whose entries are all −inf has no teacher distribution and is not scored); ``labels`` [B, S] unshifted as in
    the trainer: position t is scored when labels[t+1] ≠ −100 (the position predicts a trained token), as
    :func:`dte_lib.model.lm_loss` does.

    ``tail``: instead of renormalising, compare k + 1 buckets — the top-k with the teacher's probabilities as given
    (log-probabilities of the full distribution, as recorded) and the rest, 1 − their sum, against the student's
    probabilities of the same k tokens and of everything else. That is the exact KL between the two distributions
    coarse-grained to those buckets, so it needs T = 1 (the rest of a tempered teacher is not known).

    ``normalised``: ``student_logits`` are already the student's log-probabilities at T = 1 — the trainer takes one
    log-softmax for this loss and the cross-entropy together (a V-wide softmax and its backward cost as much as the
    KL itself: 1.1 → 0.6 s for the two losses at 16 × 128 positions × 20,789 tokens, 2-core EPYC under load).
    """
    T = float(temperature)
    if normalised and T != 1.0:
        raise ValueError("normalised student log-probabilities are at T = 1")
    if tail:
        if T != 1.0:
            raise ValueError("distill_tail compares the recorded distribution as it is: temperature must be 1")
        return _tail_kl(student_logits, topk_idx, topk_logp, labels, normalised)
    real = torch.isfinite(topk_logp)  # -inf: no teacher entry there (outside the student's vocabulary, or none)
    has = real.any(-1)  # positions that carry a teacher distribution at all
    q_log = F.log_softmax(torch.where(has[..., None], topk_logp.float(), 0.0) / T, dim=-1)
    student = student_logits.float() if normalised else F.log_softmax(student_logits.float() / T, dim=-1)
    p_log = student.gather(-1, topk_idx.long().clamp_min(0))
    kl = torch.where(real, q_log.exp() * (q_log - p_log), 0.0).sum(-1)  # [B, S]
    mask = F.pad(labels[:, 1:] != -100, (0, 1), value=False) & has
    return (kl * mask).sum() / mask.sum().clamp_min(1) * T * T


def _tail_kl(student_logits, topk_idx, topk_logp, labels, normalised=False):
    real = torch.isfinite(topk_logp)
    has = real.any(-1)
    q = torch.where(real, topk_logp.float(), -1e4).exp() * real  # outside entries: probability 0
    q_rest = (1 - q.sum(-1)).clamp_min(1e-6)
    student = student_logits.float() if normalised else F.log_softmax(student_logits.float(), dim=-1)
    p_log = student.gather(-1, topk_idx.long().clamp_min(0))
    p_rest = (1 - (p_log.exp() * real).sum(-1)).clamp_min(1e-6)
    kl = torch.where(real, q * (torch.where(real, topk_logp.float(), 0.0) - p_log), 0.0).sum(-1) \
        + q_rest * (q_rest.log() - p_rest.log())
    mask = F.pad(labels[:, 1:] != -100, (0, 1), value=False) & has
    return (kl * mask).sum() / mask.sum().clamp_min(1)


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


ID_MAP_FILE = "id_map.json"


def subset_tokenizer(teacher_tok, texts: Sequence[str]):
    """The teacher's tokenizer restricted to the token ids ``texts`` use, remapped to a compact range.

    Kept: every teacher id the texts encode to, the special (added) tokens, the 256 byte tokens and every token a
    kept token is merged from (closure over the BPE merges), so the result is a real byte-level BPE: on the texts it
    gives exactly the teacher's segmentation (it keeps every merge the teacher applied there; a merge it drops was
    never the one chosen), and any other text still encodes (in more pieces where a merge is gone). Student ids
    follow teacher-id order, so the specials keep ids 0–16. Returns ``(tokenizer, ids)`` with ``ids[student id] =
    teacher id``; the tokenizer carries the teacher's specials and chat template.
    """
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    spec = json.loads(teacher_tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"subset_tokenizer: the teacher's tokenizer is {model.get('type')}, not a BPE")
    vocab = model["vocab"]
    token_of = {i: t for t, i in vocab.items()}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    keep = {i for t in texts for i in teacher_tok(t, add_special_tokens=False)["input_ids"]}
    keep |= {a["id"] for a in spec["added_tokens"]} | {vocab[c] for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab}
    made_from: dict[str, list[tuple[str, str]]] = {}
    for a, b in merges:
        made_from.setdefault(a + b, []).append((a, b))
    todo = [token_of[i] for i in keep if i in token_of]
    while todo:
        for a, b in made_from.get(todo.pop(), []):
            for part in (a, b):
                if vocab[part] not in keep:
                    keep.add(vocab[part])
                    todo.append(part)
    ids = sorted(keep)
    new_id = {t: j for j, t in enumerate(ids)}
    model["vocab"] = {token_of[t]: new_id[t] for t in ids if t in token_of}
    model["merges"] = [[a, b] for a, b in merges if a + b in model["vocab"] and a in model["vocab"]
                       and b in model["vocab"]]
    for a in spec["added_tokens"]:
        a["id"] = new_id[a["id"]]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token=None,
                                  eos_token=teacher_tok.eos_token, bos_token=teacher_tok.bos_token,
                                  pad_token=teacher_tok.pad_token or teacher_tok.eos_token)  # the other specials
    # come with tokenizer.json's added tokens
    tok.chat_template = teacher_tok.chat_template
    tok.model_max_length = 1_000_000
    return tok, ids


def save_subset(tok, ids: Sequence[int], directory: str | Path, teacher: str = "", teacher_vocab: int = 0) -> Path:
    """``tokenizer.json`` (Hugging Face ``tokenizers`` format) and friends, plus ``id_map.json``: ``student_to_teacher``
    (the teacher id of each student id), the teacher's name and vocabulary size."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(directory)
    (directory / ID_MAP_FILE).write_text(json.dumps({"teacher": teacher, "teacher_vocab": int(teacher_vocab),
                                                     "student_to_teacher": [int(i) for i in ids]}) + "\n")
    return directory


def load_id_map(directory: str | Path) -> np.ndarray:
    """``student_to_teacher`` of a saved subset tokenizer (int64 array)."""
    path = Path(directory) / ID_MAP_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no id map — build the tokenizer with distill.subset_tokenizer and "
                                f"save it with distill.save_subset")
    return np.asarray(json.loads(path.read_text(encoding="utf-8"))["student_to_teacher"], dtype=np.int64)


def to_student(teacher_ids: Any, id_map: np.ndarray) -> np.ndarray:
    """Teacher ids -> student ids (same shape); -1 where the teacher id is outside the student's vocabulary."""
    t = np.asarray(teacher_ids, dtype=np.int64)
    lookup = np.full(max(int(id_map.max()), int(t.max(initial=0))) + 1, -1, dtype=np.int64)
    lookup[id_map] = np.arange(len(id_map))
    return lookup[t]


def to_teacher(student_ids: Any, id_map: np.ndarray) -> np.ndarray:
    """Student ids -> teacher ids (the inverse of :func:`to_student` inside the vocabulary)."""
    return id_map[np.asarray(student_ids, dtype=np.int64)]


def map_topk(top_ids: Any, top_logprobs: Any, id_map: np.ndarray) -> dict[str, Any]:
    """A logprobs row's teacher top-k (``generate.decode_logprobs``: ``top_ids`` [n, k]) in student ids: outside ids
    become -1 with log-probability -inf, and are counted (``outside``, ``outside_mass``: the teacher probability
    they carried, summed over positions)."""
    ids = to_student(top_ids, id_map)
    lp = np.asarray(top_logprobs, dtype=np.float32)
    real = np.isfinite(lp)
    out = (ids < 0) & real
    return {"ids": ids, "logprobs": np.where(ids < 0, -np.inf, lp), "outside": int(out.sum()),
            "entries": int(real.sum()), "outside_mass": float(np.exp(lp[out]).sum())}


def subset_for(teacher_tok, examples: Sequence[Any], directory: str | Path, teacher: str = ""):
    """The ``train.tokenizer teacher_subset`` tokenizer of ``examples`` (rendered with the teacher's chat template),
    saved to ``directory`` with its id map — or loaded from there when it was built from the same texts."""
    from transformers import AutoTokenizer
    texts = [toklib.render(getattr(e, "messages", e), teacher_tok) for e in examples]
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    directory = Path(directory)
    stamp = directory / "corpus.sha256"
    if stamp.exists() and stamp.read_text().strip() == key and (directory / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(directory))
    tok, ids = subset_tokenizer(teacher_tok, texts)
    save_subset(tok, ids, directory, teacher, len(teacher_tok))
    stamp.write_text(key + "\n")
    return tok


def vocab_report(texts: Sequence[str], tokenizers: dict[str, Any]) -> list[dict[str, Any]]:
    """Vocabulary size, tokens and UTF-8 bytes per token of each named tokenizer on ``texts`` (notebook 06 prints
    it for the course BPE against the teacher's full and corpus-restricted vocabularies)."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    rows = []
    for name, tok in tokenizers.items():
        n_tok = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        rows.append({"tokenizer": name, "vocab": len(tok), "tokens": n_tok, "bytes": n_bytes,
                     "bytes_per_token": n_bytes / max(n_tok, 1)})
    return rows


def compare_tokenizers(train: Sequence[Any], texts_from: Sequence[Any], run_tok: Any, vocab_size: int,
                       d_model: int, teacher_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The course BPE against the teacher subset (and the teacher's full tokenizer), each fitted on ``train`` and
    measured on ``texts_from`` in its own rendering (course: role tokens; teacher: its chat template), with the tied
    head's parameters at ``d_model``. ``run_tok``, the run's own tokenizer, stands for its kind; the other is built
    here in memory (the course BPE at ``vocab_size``). Notebook 06 shows it; ``--vocab-report`` prints it."""
    from . import teacher
    ttok = teacher_tokenizer(teacher_dir or teacher.base_model_dir())
    course = run_tok if toklib.is_course(run_tok) else toklib.train_from_examples(train, vocab_size)
    sub = run_tok if not toklib.is_course(run_tok) else subset_tokenizer(
        ttok, [toklib.render(e.messages, ttok) for e in train])[0]
    rows = []
    for name, tok in (("course BPE", course), ("teacher subset", sub), ("teacher (SmolLM2)", ttok)):
        r = vocab_report([toklib.render(e.messages, tok) for e in texts_from], {name: tok})[0]
        rows.append({**r, "head_params": head_cost(r["vocab"], d_model)["head_params"],
                     "this run": tok is run_tok})
    return rows


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


class _Flat:
    """Per-token rows ``[n_tokens_i, k]`` of one flat array (what :class:`dte_lib.packing.PackedLoader` packs)."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets = values, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]: self.offsets[i + 1]]


def recorded_targets(examples: Sequence[Any], train_ds, tok, id_map: np.ndarray, logprobs_path: str | Path,
                     k: int = 20) -> dict[str, Any]:
    """The teacher's recorded top-k (``corpus/logprobs.jsonl``, notebook 02) placed on the student's token positions.

    ``examples`` and ``train_ds`` are the trainer's (same order; ``train_ds`` tokenised with ``tok``, the
    ``teacher_subset`` tokenizer whose ``id_map`` sends student ids to teacher ids). For an example whose id has a
    logprobs line, answer token j (the student's ids of its first assistant turn, as teacher ids) gets the teacher's
    top-k for that token at the position that predicts it (the one before). A position keeps its target only while
    the answer agrees with the tokens the teacher sampled up to it (the distribution was computed in that context);
    an answer edited after generation keeps its agreeing prefix. The prompt the teacher saw (hint, few-shot turns)
    is not the example's: the student learns what the grounded teacher would say next, which is the point.

    Returns ``{"idx": rows, "logp": rows}`` (``[n_tokens, k]`` each: student ids, −1 where none, int32; teacher
    log-probabilities, −inf where none, float16) ready for ``PackedLoader(extra=...)``, and ``"stats"``: examples
    with a line, answer tokens with a target, examples cut short by a disagreement, the teacher mass outside the
    student's vocabulary, ``k``, and the tokens the CE trains on (``trained_tokens``: the share the KL reaches).
    """
    from . import generate
    from .packing import _Rows
    wanted = {getattr(e, "id", "") for e in examples}
    lines: dict[str, dict[str, Any]] = {}
    path = Path(logprobs_path)
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row.get("id") in wanted:
                    lines[row["id"]] = row
    k = min([k] + [int(r["k"]) for r in lines.values()])  # no wider than what was recorded
    ids_rows = _Rows(train_ds, "input_ids")
    offsets = ids_rows.offsets.astype(np.int64)
    idx = np.full((int(offsets[-1]), k), -1, dtype=np.int32)
    logp = np.full((int(offsets[-1]), k), -np.inf, dtype=np.float16)
    labels = _Rows(train_ds, "labels").values
    stats = {"examples": len(examples), "with_line": 0, "answer_tokens": 0, "targets": 0, "cut_short": 0,
             "outside_mass": 0.0, "teacher_mass": 0.0, "k": k, "trained_tokens": int((labels != -100).sum())}
    for i, ex in enumerate(examples):
        row = lines.get(getattr(ex, "id", ""))
        if row is None:
            continue
        rec = generate.decode_logprobs(row)
        pos, start, content = 0, None, None
        for text, is_assistant, _ in toklib.segments(ex.messages, tok):
            piece = tok(text, add_special_tokens=False)["input_ids"]
            if is_assistant and start is None:
                start, content = pos, piece
            pos += len(piece)
        if pos != len(ids_rows[i]):
            raise ValueError(f"example {ex.id}: its segments give {pos} tokens, the dataset row {len(ids_rows[i])} "
                             f"— train_ds was not tokenised with this tokenizer")
        if not content or start == 0:
            continue
        stats["with_line"] += 1
        mine = to_teacher(content, id_map)
        n = min(len(mine), len(rec["tokens"]))
        agree = int(np.argmin(np.append(mine[:n] == rec["tokens"][:n], False)))  # tokens equal before this index
        usable = min(n, agree + 1)  # token `agree` itself is predicted from an agreeing context
        stats["answer_tokens"] += len(mine)
        stats["cut_short"] += int(agree < len(mine))
        m = map_topk(rec["top_ids"][:usable, :k], rec["top_logprobs"][:usable, :k], id_map)
        at = offsets[i] + start - 1  # the position that predicts answer token 0
        idx[at: at + usable, : m["ids"].shape[1]] = m["ids"]
        logp[at: at + usable, : m["ids"].shape[1]] = m["logprobs"]
        stats["targets"] += usable
        stats["outside_mass"] += m["outside_mass"]
        stats["teacher_mass"] += float(np.exp(rec["top_logprobs"][:usable, :k]).sum())
    h = hashlib.sha1(idx.tobytes())
    h.update(logp.tobytes())
    return {"idx": _Flat(idx, offsets), "logp": _Flat(logp, offsets), "stats": stats, "fingerprint": h.hexdigest()}


def make_aux_loss(cache: TopKCache, weight: float, temperature: float = 1.0):
    """The trainer's ``aux_loss`` hook: ``{"distill": weight · distill_loss(...)}`` for each batch."""
    def aux(model, batch, outputs):
        idx, logp = cache.lookup(batch["input_ids"])
        return {"distill": weight * distill_loss(outputs.logits, idx, logp, batch["labels"], temperature)}
    return aux


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    from . import config, data, teacher
    ap = argparse.ArgumentParser(prog="python -m dte_lib.distill", description="Head cost of the teacher's vocabulary; "
                                 "with --vocab-report, vocabulary size and bytes per token of the course BPE, the "
                                 "teacher's tokenizer and its corpus subset (train.tokenizer teacher_subset).")
    ap.add_argument("preset", nargs="?", default=None)
    ap.add_argument("--vocab-report", nargs="*", metavar="CORPUS", default=None,
                    help="corpus files (default: the preset's seed corpus)")
    args = ap.parse_args(list(argv or []))
    cfg = config.load(args.preset)
    d = cfg.train.d_model
    fitted, full = head_cost(cfg.train.vocab_size, d), head_cost(49_152, d)
    print(f"d_model {d}: fitted vocabulary {cfg.train.vocab_size}: head {fitted['head_params'] / 1e6:.2f}M params, "
          f"{fitted['head_flops_per_token'] / 1e6:.1f} MFLOPs/token; teacher's 49,152: "
          f"{full['head_params'] / 1e6:.2f}M params, {full['head_flops_per_token'] / 1e6:.1f} MFLOPs/token")
    if args.vocab_report is not None:
        ex = data.load_corpus(args.vocab_report or cfg.path(cfg.data.corpus)).examples
        course = toklib.train_from_examples(ex, cfg.train.vocab_size)
        print(f"{len(ex)} conversations; each tokenizer on its own rendering (course: role tokens; teacher: its "
              f"chat template)")
        print("| tokenizer | vocabulary | tokens | bytes/token | head params at d_model |\n|---|---|---|---|---|")
        for r in compare_tokenizers(ex, ex, course, cfg.train.vocab_size, d, teacher.base_model_dir()):
            print(f"| {r['tokenizer']} | {r['vocab']:,} | {r['tokens']:,} | {r['bytes_per_token']:.2f} | "
                  f"{r['head_params'] / 1e6:.2f}M |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Tokenise conversations once (cached with ``datasets``) and pack them into fixed-length blocks — no padding.

Definitions:
- *packing*: concatenate tokenised conversations (each ends with ``<|endoftext|>``) into one stream and cut it into
  blocks of ``block_size`` tokens. Every position of every block is a real token, so no compute goes to padding,
  and long conversations are trained on in full instead of being truncated to the context.
- *labels* are the input ids with ``-100`` where no loss is taken (non-assistant text when ``assistant_only``).
  They are NOT shifted: Hugging Face causal LMs shift inside the model (label ``i`` is predicted from tokens
  ``< i``). Any extra per-token column (``loss_weights``) rides through packing aligned with the ids.
- *epoch order*: epoch ``e`` shuffles the conversations with ``Random(seed + e)`` before packing, so the order is a
  pure function of (seed, epoch) and a position is just ``(epoch, next block)`` — which makes resuming exact.
- *distributed*: a global batch is ``batch_size`` consecutive blocks; under ``torch.distributed`` rank ``r`` of
  ``W`` takes its slice ``[r·B/W, (r+1)·B/W)`` of each global batch, so the global batch is the same at any ``W``.

The tail of each epoch's stream (< one block) is dropped and counted in :attr:`PackedLoader.dropped_tokens`.

Explained in notebook 06 (06_month3_progressive).
Run it: ``python -m dte_lib.packing outputs/runs/demo`` prints block counts for a run's tokenizer and corpus.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import tokenizer as toklib

COLUMNS = ("input_ids", "labels", "loss_weights")


def training_examples(cfg, run_dir: str | Path) -> dict[str, list]:
    """The contract's corpus: seed TRAIN split (+ ``run_dir/corpus/clean.jsonl`` when present) and seed VAL split.

    The TEST split is never returned: nobody trains or tunes on it (the evaluation of notebooks 08–11 reads it).
    """
    from . import data
    seed = data.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples
    parts = data.split(seed, cfg.data.val_fraction, cfg.data.test_fraction)
    train = list(parts["train"])
    clean = Path(run_dir) / "corpus" / "clean.jsonl"
    extra = 0
    if clean.exists():  # a synthetic copy of a val/test conversation would leak it into training: drop it
        held_out = {data.content_hash(ex.messages) for ex in parts["val"] + parts["test"]}
        synth = [ex for ex in data.load_corpus(clean).examples if data.content_hash(ex.messages) not in held_out]
        extra = len(synth)
        train += synth
    return {"train": train, "val": list(parts["val"]), "synthetic": extra}


def tokenize(examples: Sequence[Any], tok, assistant_only: bool = False, cache_dir: str | Path | None = None):
    """A ``datasets.Dataset`` with ``input_ids``, ``labels``, ``loss_weights`` per conversation (cached on disk).

    The cache file name is a hash of the conversations, the tokenizer and the masking mode, so a changed corpus or
    tokenizer never reuses stale ids.
    """
    import datasets
    rows = [json.dumps(getattr(ex, "messages", ex), ensure_ascii=False, sort_keys=True) for ex in examples]
    h = hashlib.sha256()
    h.update(tok.backend_tokenizer.to_str().encode())
    h.update(str(assistant_only).encode())
    for r in rows:
        h.update(r.encode())
    fingerprint = h.hexdigest()[:16]
    ds = datasets.Dataset.from_dict({"messages_json": rows})

    def encode(batch):
        out = {c: [] for c in COLUMNS}
        for m in batch["messages_json"]:
            ids, labels, weights = toklib.encode_chat(tok, json.loads(m), assistant_only)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["loss_weights"].append(weights)
        return out

    kwargs: dict[str, Any] = {"batched": True, "remove_columns": ["messages_json"], "new_fingerprint": fingerprint}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(Path(cache_dir) / f"tokenized-{fingerprint}.arrow")
    return ds.map(encode, **kwargs)


def pack(columns: dict[str, Sequence[Sequence]], block_size: int, order: Sequence[int] | None = None
         ) -> tuple[dict[str, np.ndarray], int]:
    """Concatenate rows (in ``order``) and cut into ``[n_blocks, block_size]`` arrays; returns (blocks, dropped)."""
    n = len(next(iter(columns.values())))
    order = range(n) if order is None else order
    packed: dict[str, np.ndarray] = {}
    dropped = 0
    for name, rows in columns.items():
        dtype = {"loss_weights": np.float32, "input_ids": np.int64, "labels": np.int64}.get(name)  # others: as given
        stream = np.concatenate([np.asarray(rows[i], dtype=dtype) for i in order]) if n else np.zeros(0, dtype)
        n_blocks = len(stream) // block_size
        dropped = len(stream) - n_blocks * block_size
        packed[name] = stream[: n_blocks * block_size].reshape(n_blocks, block_size, *stream.shape[1:])
    return packed, dropped


class PackedLoader:
    """Deterministic, resumable, rank-sharded batches of packed blocks.

    ``state_dict()`` is ``{"epoch", "index"}``: the next global batch starts at block ``index`` of epoch ``epoch``.
    Each batch is a dict of tensors ``input_ids``/``labels`` (int64) and ``loss_weights`` (float32) when
    ``with_weights`` and the weights are more than the labels' mask (e.g. self-reference up-weighting), plus any
    ``extra`` column: rows (``len``, ``[i]``) of per-token arrays, ``[n_tokens, ...]`` each, packed the same way —
    the teacher's recorded top-k for distillation (:func:`dte_lib.distill.recorded_targets`).
    """

    def __init__(self, dataset, block_size: int, batch_size: int, seed: int, with_weights: bool = False,
                 rank: int | None = None, world_size: int | None = None, extra: dict[str, Any] | None = None):
        self.columns = {c: _Rows(dataset, c) for c in COLUMNS if c in dataset.column_names}
        w = self.columns.get("loss_weights")
        if not with_weights or (w is not None and _weights_are_mask(w.values, self.columns["labels"].values)):
            # weights that are exactly 1 where labels count and 0 elsewhere say nothing the labels don't: the
            # unweighted loss is the same number and a faster kernel (benchmarks/RESULTS-trainer.md)
            self.columns.pop("loss_weights", None)
        for name, rows in (extra or {}).items():  # per-token arrays aligned with the ids, e.g. the teacher's top-k
            if len(rows) != len(self.columns["input_ids"]):
                raise ValueError(f"column {name!r} has {len(rows)} rows, the dataset {len(self.columns['input_ids'])}")
            self.columns[name] = rows
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by world size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        self._blocks_epoch: int | None = None
        self._blocks: dict[str, np.ndarray] = {}
        self.dropped_tokens = 0
        if self.blocks_per_epoch() < batch_size:
            raise ValueError(f"the corpus packs into {self.blocks_per_epoch()} block(s) of {block_size} tokens, "
                             f"fewer than one batch of {batch_size}: lower batch_size or block_size")

    def _epoch_blocks(self, epoch: int) -> dict[str, np.ndarray]:
        if self._blocks_epoch != epoch:
            order = list(range(len(self.columns["input_ids"])))
            random.Random(self.seed + epoch).shuffle(order)
            self._blocks, self.dropped_tokens = pack(self.columns, self.block_size, order)
            self._blocks_epoch = epoch
        return self._blocks

    def blocks_per_epoch(self) -> int:
        return len(self._epoch_blocks(self.epoch)["input_ids"])

    @property
    def tokens_per_batch(self) -> int:
        """Global tokens per optimizer step (all ranks)."""
        return self.batch_size * self.block_size

    def next_batch(self) -> dict[str, torch.Tensor]:
        blocks = self._epoch_blocks(self.epoch)
        if self.index + self.batch_size > len(blocks["input_ids"]):  # a partial batch never happens: next epoch
            self.epoch, self.index = self.epoch + 1, 0
            blocks = self._epoch_blocks(self.epoch)
        local = self.batch_size // self.world_size
        lo = self.index + self.rank * local
        batch = {k: torch.from_numpy(v[lo: lo + local].copy()) for k, v in blocks.items()}
        self.index += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data position was saved with seed {state['seed']}, this loader has seed {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_blocks(dataset, block_size: int, max_blocks: int | None = None) -> dict[str, torch.Tensor]:
    """Validation blocks in corpus order (no shuffle), at most ``max_blocks``."""
    cols = {c: dataset[c] for c in ("input_ids", "labels")}
    blocks, _ = pack(cols, block_size)
    return {k: torch.from_numpy(v[:max_blocks]) for k, v in blocks.items()}


def _weights_are_mask(weights: np.ndarray, labels: np.ndarray) -> bool:
    return bool(np.array_equal(weights, (labels != -100).astype(weights.dtype)))


class _Rows:
    """Row ``i`` of a list column as a NumPy view into one flat Arrow buffer (no per-row Python lists)."""

    def __init__(self, dataset, name: str):
        if getattr(dataset, "_indices", None) is not None:  # a select()/shuffle() view: materialise it first
            dataset = dataset.flatten_indices()
        col = dataset.data.column(name).combine_chunks()
        self.values = col.flatten().to_numpy(zero_copy_only=False)
        self.offsets = col.offsets.to_numpy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]: self.offsets[i + 1]]


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    args = list(sys.argv[1:] if argv is None else argv)
    run_dir = Path(args[0]) if args else config.run_dir_for("demo")
    cfg = config.load(args[1] if len(args) > 1 else None)
    tok = toklib.load(run_dir / "tokenizer")
    ex = training_examples(cfg, run_dir)
    ds = tokenize(ex["train"], tok, cfg.train.assistant_only, run_dir / "train" / "cache")
    loader = PackedLoader(ds, cfg.train.block_size, cfg.train.batch_size, cfg.seed)
    n_tok = sum(len(r) for r in ds["input_ids"])
    print(f"{len(ds)} conversations, {n_tok} tokens, {loader.blocks_per_epoch()} blocks of {cfg.train.block_size}, "
          f"{loader.dropped_tokens} tokens dropped at the epoch's end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

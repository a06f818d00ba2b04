"""Our training step vs Hugging Face ``Trainer`` — same model, same data, same batch, in one process.

Three runs, each N optimizer steps of 16 sequences × block_size tokens on the demo corpus (fixed 4-layer GPT-2,
every parameter trains, fp32, AdamW, same learning rate):
  ours_packed   ProgressiveTrainer.train_step on packed blocks (what the course runs)
  hf_packed     transformers.Trainer on the very same packed blocks (isolates the training-loop overhead)
  hf_padded     transformers.Trainer the usual way: each conversation truncated to block_size and dynamically
                padded per batch (DataCollatorForLanguageModeling) — isolates what packing buys
Reported: median seconds per step (steps after the first 3), real (non-pad) tokens per second, and the share of
the corpus' tokens one epoch trains on. The runs alternate in rounds so machine noise hits all of them.

Run it: ``nice python benchmarks/trainer_vs_hf.py --steps 15 --rounds 5 [--block-size 512]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, packing, progressive  # noqa: E402
from dte_lib import model as M  # noqa: E402


class _Timer:
    def __init__(self):
        self.t = []

    def mark(self):
        self.t.append(time.perf_counter())


def hf_run(model, dataset, collator, steps: int, batch: int, lr: float, out: str) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    timer = _Timer()

    class CB(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.mark()

        def on_step_end(self, *a, **k):
            timer.mark()

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                             lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.1, adam_beta2=0.95,
                             logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0, seed=0)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[CB()]).train()
    # step time = from one step's start to the next one's start (includes data loading and collation)
    starts = timer.t[0::2]
    return [b - a for a, b in zip(starts, starts[1:])]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=None, help="context length (default: the demo preset's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import datasets
    from transformers import DataCollatorForLanguageModeling
    cfg = config.load("demo", {"train.block_size": args.block_size} if args.block_size else {})
    tc = cfg.train
    run_dir = Path(tempfile.mkdtemp(prefix="dte-bench-"))
    prep = progressive.prepare(cfg, run_dir)
    tok = prep["tokenizer"]
    train = prep["train"]
    T, B = tc.block_size, tc.batch_size
    lengths = [len(r) for r in train["input_ids"]]
    loader = packing.PackedLoader(train, T, B, seed=0)
    blocks = packing.pack({"input_ids": train["input_ids"]}, T)[0]["input_ids"]
    packed_ds = datasets.Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    trunc_ds = datasets.Dataset.from_dict({"input_ids": [r[:T] for r in train["input_ids"]]})
    pad_collator = DataCollatorForLanguageModeling(tok, mlm=False)  # pads, labels = ids with -100 on padding

    def fresh():
        return M.build(len(tok), T, tc.d_model, 4, tc.n_head, seed=0)

    times = {"ours_packed": [], "hf_packed": [], "hf_padded": []}
    for rnd in range(args.rounds):
        trainer = progressive.ProgressiveTrainer(tc, tok, train, prep["val"], run_dir / "ours",
                                                 stages=[progressive.Stage("b", 4, 1, "all", tc.lr, "grow", (0, 1, 2, 3))],
                                                 progress=False, tensorboard=False)
        trainer.model = fresh()
        trainer._enter_stage(trainer.stages[0])
        t = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            trainer.train_step(trainer.loader.next_batch(), tc.lr)
            t.append(time.perf_counter() - t0)
        times["ours_packed"] += t[3:]
        with tempfile.TemporaryDirectory() as out:
            times["hf_packed"] += hf_run(fresh(), packed_ds, None, args.steps, B, tc.lr, out)[3:]
            times["hf_padded"] += hf_run(fresh(), trunc_ds, pad_collator, args.steps, B, tc.lr, out)[3:]
        print(f"round {rnd}: " + ", ".join(f"{k} {statistics.median(v):.3f}s" for k, v in times.items()), flush=True)
    # real tokens per padded batch: the expected number of non-pad tokens in a batch of truncated conversations
    real_padded = B * statistics.mean(min(n, T) for n in lengths)
    real = {"ours_packed": B * T, "hf_packed": B * T, "hf_padded": real_padded}
    share = {"ours_packed": loader.blocks_per_epoch() * T / sum(lengths),
             "hf_packed": len(blocks) * T / sum(lengths),
             "hf_padded": sum(min(n, T) for n in lengths) / sum(lengths)}
    base = statistics.median(times["hf_padded"])
    print(f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
          f"model d={tc.d_model} L=4 V={len(tok)} T={T} batch {B}, {args.rounds}×{args.steps - 3} timed steps each")
    print("| run | median s/step | real tokens/step | real tokens/s | vs hf_padded | share of corpus per epoch |")
    print("|---|---|---|---|---|---|")
    for k, v in times.items():
        med = statistics.median(v)
        tps = real[k] / med
        ref = real["hf_padded"] / base
        print(f"| {k} | {med:.3f} | {real[k]:.0f} | {tps:,.0f} | {tps / ref:.2f}× | {share[k]:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Token-level distillation vs the sequence-level student, at equal student training FLOPs, over seeds.

Arms (all from scratch, the same fixed shape, the same FLOP budget C, data order fixed, seeds vary the init):
  fitted        the course's student: BPE fitted to the corpus (2,048 tokens), LM loss            (sequence level)
  teacher_tok   the teacher's tokenizer (49,152 tokens) and chat template, LM loss            (the tokenizer's cost)
  distill       teacher_tok + α·KL to the teacher's top-k next-token distribution          (token level)
Tokens per arm = C / that arm's training FLOPs per token (the 49K head costs most of them). The teacher's own
forward passes (the top-k cache, computed once) are NOT counted in C: they are reported separately.
Score: VAL answer bits per byte (``metrics.lm_score``; tokenizer-independent) and perplexity within each tokenizer.

Teacher: ``--teacher DIR`` (notebook 01's fine-tuned teacher when you have one); default the base
SmolLM2-135M-Instruct, the only teacher on a machine that has not run notebook 01.

Run it: ``timeout 660 python benchmarks/distill.py --budget 1e12 --seeds 0 1 2`` (resumable JSONL;
repeat until "done"), then ``python benchmarks/distill.py --report``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, distill, metrics, packing  # noqa: E402
from dte_lib import model as M  # noqa: E402

ARMS = {"fitted": dict(tokenizer="fitted", distill_weight=0.0),
        "teacher_tok": dict(tokenizer="teacher", distill_weight=0.0),
        "distill": dict(tokenizer="teacher", distill_weight=1.0)}


def fpt(vocab: int, tc, depth: int) -> float:
    with torch.device("meta"):
        m = M.build(vocab, tc.block_size, tc.d_model, depth, tc.n_head)
    return M.flops_per_token(m, tc.block_size)


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def report(rows: list[dict]) -> str:
    out = ["| arm | seeds | vocab | tokens | steps | val answer bits/byte | val answer ppl | train s |",
           "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        bpb = [r["answer_bits_per_byte"] for r in rs]
        ppl = [r["answer_perplexity"] for r in rs]
        sd = (lambda v: f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")  # noqa: E731
        out.append(f"| {arm} | {len(rs)} | {rs[0]['vocab']:,} | {rs[0]['tokens']:,} | {rs[0]['steps']} | "
                   f"{statistics.mean(bpb):.3f}{sd(bpb)} | {statistics.mean(ppl):.1f} | "
                   f"{statistics.mean(r['train_s'] for r in rs):.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/distill.jsonl")
    ap.add_argument("--work", default="/tmp/dte-distill")
    ap.add_argument("--teacher", default="")
    ap.add_argument("--budget", type=float, default=1e12)
    ap.add_argument("--depth", type=int, default=0, help="student depth (default: the demo preset's final depth)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--max-minutes", type=float, default=9.0)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = read(out)
    if args.report:
        print(report(rows))
        return 0
    cfg = config.load("demo")
    config.seed_everything(cfg.seed, cfg.threads)
    from dte_lib import teacher as teacher_mod
    teacher = Path(args.teacher) if args.teacher else teacher_mod.base_model_dir()
    depth = args.depth or int(cfg.train.depths.split(",")[-1])
    work = Path(args.work)
    val = packing.training_examples(cfg, work)["val"]
    t0 = time.time()
    for seed in args.seeds:
        for arm, kw in ((a, ARMS[a]) for a in args.arms):
            if any(r["arm"] == arm and r["seed"] == seed and r["budget"] == args.budget for r in rows):
                continue
            if time.time() - t0 > args.max_minutes * 60:
                print("stopping for this slice (rerun to continue)")
                return 0
            tc = dataclasses.replace(cfg.train, wandb="off", ckpt_every=0, **kw)
            vocab = 49_152 if tc.tokenizer == "teacher" else tc.vocab_size
            per_tok = fpt(vocab, tc, depth)
            steps = max(4, round(args.budget / per_tok / (tc.batch_size * tc.block_size)))
            tc = dataclasses.replace(tc, warmup_steps=min(tc.warmup_steps, max(1, steps // 5)),
                                     val_every=max(1, steps // 4))
            tokens = steps * tc.batch_size * tc.block_size
            t1 = time.time()
            res = distill.train(cfg, work, f"{arm}-s{seed}", teacher, depth=depth, tokens=tokens, seed=seed, tc=tc)
            train_s = time.time() - t1
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(str(res["dir"]), dtype=torch.float32)
            lm = metrics.lm_score(model, res["tokenizer"], val)
            row = {"arm": arm, "seed": seed, "budget": args.budget, "depth": depth, "d_model": tc.d_model,
                   "vocab": res["tokenizer_vocab"], "steps": steps, "tokens": tokens, "flops": res["flops"],
                   "answer_perplexity": lm.perplexity, "answer_bits_per_byte": lm.bits_per_byte,
                   "train_s": train_s, "teacher": str(teacher), "split": "val"}
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does growing pay? Growth schedules against fixed-depth baselines at equal FLOPs, at a small scale on this corpus.

Baselines: A0 = the final depth trained from scratch with a tuned learning rate (swept on seed 0); A1 = the best
fixed shallower depth at the same FLOPs. Methods, all at A0's FLOPs and learning rate, same data order:
  roadmap_greedy  1→2→3→4, new layers random, only the newest layer (+ final norm) trains, then a final phase
  zero_init_all   1→2→3→4, function-preserving growth, every layer trains
  stack_all       1→2→4 by doubling (G_stack), every layer trains
  late_zero_init  depth 2 for 70% of the FLOPs, then one zero_init expansion to 4
Each stage gets a share of the FLOP budget, converted to tokens with the exact per-token FLOPs of that stage.

Reported per seed: R = FLOPs at which a run first reaches A0's final validation loss (linear interpolation between
validation points) / A0's FLOPs (">1" = never reached within budget), and final validation loss at equal FLOPs.

Run it: ``nice python benchmarks/growth.py --tokens 40000 --seeds 0 1 2 --out benchmarks/growth-results.json``
(then ``python benchmarks/growth.py --table benchmarks/growth-results.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, progressive  # noqa: E402
from dte_lib import model as M  # noqa: E402

METHODS = {  # name -> (operator, policy, [(depth, FLOP share, policy override)])
    "roadmap_greedy": ("roadmap", "greedy", [(1, .2), (2, .2), (3, .2), (4, .2), ("final", .2)]),
    "zero_init_all": ("zero_init", "all", [(1, .25), (2, .25), (3, .25), (4, .25)]),
    "stack_all": ("stack", "all", [(1, 1 / 3), (2, 1 / 3), (4, 1 / 3)]),
    "late_zero_init": ("zero_init", "all", [(2, .7), (4, .3)]),
}


def per_token_flops(tc, vocab: int, depth: int, policy: str, new_layers) -> float:
    with torch.device("meta"):
        m = M.build(vocab, tc.block_size, tc.d_model, depth, tc.n_head)
    M.set_trainable(m, policy, new_layers)
    return M.flops_per_token(m, tc.block_size)


def stages_for(tc, vocab: int, plan, policy: str, budget: float, lr: float) -> list[progressive.Stage]:
    out, prev = [], 0
    for i, (depth, share) in enumerate(plan):
        kind = "final" if depth == "final" else "grow"
        d = prev if kind == "final" else depth
        pol = "all" if (i == 0 or kind == "final") else policy
        new = tuple(range(prev, d)) if kind == "grow" else ()
        fpt = per_token_flops(tc, vocab, d, pol, new)
        out.append(progressive.Stage(f"s{i + 1:02d}-{kind}-d{d}", d, int(share * budget / fpt), pol, lr, kind, new))
        prev = d
    return out


def run_one(tc, prep, stages, seed: int, data_seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dte-growth-") as out:
        t0 = time.time()
        tr = progressive.ProgressiveTrainer(tc, prep["tokenizer"], prep["train"], prep["val"], out, seed=seed,
                                            stages=stages, progress=False, tensorboard=False, data_seed=data_seed)
        hist = tr.run()
    vals = [(r["flops"], r["val_loss"]) for r in hist if r.get("val_loss") is not None]
    return {"curve": vals, "final_val": vals[-1][1], "flops": hist[-1]["flops"], "seconds": time.time() - t0}


def flops_to_reach(curve, target: float) -> float | None:
    prev = None
    for f, v in curve:
        if v <= target:
            if prev is None or prev[1] == v:
                return f
            (f0, v0) = prev  # interpolate linearly between the two validation points around the crossing
            return f0 + (f - f0) * (v0 - target) / (v0 - v)
        prev = (f, v)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000, help="A0's token budget at the final depth")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 6e-3])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/growth-results.json")
    ap.add_argument("--table", default=None, help="print the markdown table of a results file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    cfg = config.load("demo", {"train.d_model": args.d_model, "train.val_every": 8, "train.val_max_blocks": 16,
                               "train.ckpt_every": 0, "train.log_every": 1000, "train.warmup_steps": 10,
                               "train.rewarm_steps": 5})
    tc = cfg.train
    run_dir = Path(tempfile.mkdtemp(prefix="dte-growth-run-"))
    prep = progressive.prepare(cfg, run_dir)
    vocab = len(prep["tokenizer"])
    budget = per_token_flops(tc, vocab, args.depth, "all", ()) * args.tokens
    res = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads",
           "settings": {"tokens_A0": args.tokens, "flops_budget": budget, "d_model": tc.d_model,
                        "block_size": tc.block_size, "batch_size": tc.batch_size, "vocab": vocab,
                        "schedule": tc.schedule, "train_tokens_per_epoch": sum(len(r) for r in prep["train"]["input_ids"])},
           "lr_sweep": {}, "runs": {}}

    def save():
        Path(args.out).write_text(json.dumps(res, indent=1))

    def single(depth, lr):
        return [progressive.Stage(f"s01-grow-d{depth}", depth, int(budget / per_token_flops(tc, vocab, depth, "all", ())),
                                  "all", lr, "grow", tuple(range(depth)))]

    sweep = {}
    for lr in args.lrs:  # A0's learning rate, tuned on the first seed
        r = sweep[lr] = run_one(tc, prep, single(args.depth, lr), args.seeds[0], 0)
        res["lr_sweep"][str(lr)] = r["final_val"]
        print(f"A0 lr {lr}: val {r['final_val']:.4f} ({r['seconds']:.0f}s)", flush=True)
        save()
    lr = float(min(res["lr_sweep"], key=res["lr_sweep"].get))
    res["settings"]["lr"] = lr
    for seed in args.seeds:
        runs = {}
        runs["A0"] = sweep[lr] if seed == args.seeds[0] else run_one(tc, prep, single(args.depth, lr), seed, 0)
        for d in range(1, args.depth):
            if d in (1, 2):
                runs[f"fixed_d{d}"] = run_one(tc, prep, single(d, lr), seed, 0)
        for name, (op, policy, plan) in METHODS.items():
            tcm = dataclasses.replace(tc, operator=op, policy=policy)
            runs[name] = run_one(tcm, prep, stages_for(tcm, vocab, plan, policy, budget, lr), seed, 0)
        res["runs"][str(seed)] = runs
        for k, v in runs.items():
            print(f"seed {seed} {k}: val {v['final_val']:.4f}, flops {v['flops']:.3g} ({v['seconds']:.0f}s)", flush=True)
        save()
    print(table(res))
    return 0


def table(res: dict) -> str:
    lines = [f"machine: {res['machine']}; settings: {json.dumps(res['settings'])}",
             f"A0 learning-rate sweep (seed {min(res['runs'], default='0')}): " +
             ", ".join(f"{k}: {v:.4f}" for k, v in res["lr_sweep"].items()), "",
             "| seed | run | final val loss | Δ vs A0 | Δ vs A1 (best fixed) | FLOPs / A0's | R |",
             "|---|---|---|---|---|---|---|"]
    for seed, runs in res["runs"].items():
        a0 = runs["A0"]
        fixed = {k: v for k, v in runs.items() if k.startswith("fixed_")}
        a1 = min(fixed.values(), key=lambda r: r["final_val"]) if fixed else a0
        a1_name = min(fixed, key=lambda k: fixed[k]["final_val"]) if fixed else "A0"
        for name, r in runs.items():
            reach = flops_to_reach(r["curve"], a0["final_val"])
            rr = "—" if name == "A0" else (f"{reach / a0['flops']:.2f}" if reach is not None else ">1 (never)")
            tag = f"{name} (A1)" if name == a1_name else name
            lines.append(f"| {seed} | {tag} | {r['final_val']:.4f} | {r['final_val'] - a0['final_val']:+.4f} | "
                         f"{r['final_val'] - a1['final_val']:+.4f} | {r['flops'] / a0['flops']:.3f} | {rr} |")
    return "\n".join(lines) + "\n\n" + summary(res)


def summary(res: dict) -> str:
    """Across seeds: mean ± sd of Δ vs A0 and vs A1 (each seed's best fixed depth), R per seed, the R ≤ 0.75 goal."""
    import statistics as st
    names = [k for k in next(iter(res["runs"].values())) if k != "A0"]
    lines = ["| run | seeds | Δ vs A0 (mean ± sd) | Δ vs A1 (mean ± sd) | R per seed | R ≤ 0.75 on every seed |",
             "|---|---|---|---|---|---|"]
    for name in names:
        d0, d1, rs = [], [], []
        for runs in res["runs"].values():
            a0 = runs["A0"]
            a1 = min((v for k, v in runs.items() if k.startswith("fixed_")), key=lambda r: r["final_val"])
            r = runs[name]
            d0.append(r["final_val"] - a0["final_val"])
            d1.append(r["final_val"] - a1["final_val"])
            reach = flops_to_reach(r["curve"], a0["final_val"])
            rs.append(None if reach is None else reach / a0["flops"])
        sd = (lambda xs: f" ± {st.stdev(xs):.3f}" if len(xs) > 1 else "")
        lines.append(f"| {name} | {len(d0)} | {st.mean(d0):+.3f}{sd(d0)} | {st.mean(d1):+.3f}{sd(d1)} | "
                     + ", ".join("never" if x is None else f"{x:.2f}" for x in rs) + " | "
                     + ("yes" if all(x is not None and x <= 0.75 for x in rs) else "no") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

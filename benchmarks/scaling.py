"""How big should the student be? A small Chinchilla-style scaling study on the course's own corpus.

For each FLOP budget C and each shape (width d × depth L, GPT-2, demo tokenizer and context), train a fixed-depth
model from scratch for exactly C FLOPs (tokens = C / the trainer's exact training FLOPs per token) and record the
validation loss — the seed corpus' VAL split, the split every choice in the course reads; test is never touched.
The learning rate is swept per shape at the middle budget; the other budgets reuse each shape's best rate.

Fit: at each budget, a parabola of final val loss in log N through the best shapes gives N_opt(C) (N = "compute
parameters", the trainer's FLOPs per token / 6: every matmul parameter, the 2048-word output head included); then
N_opt ∝ C^a by least squares over the budgets.

Corpus: the seed corpus' TRAIN split (data/seed_corpus.jsonl, hash split 80/10/10), plus ``--synthetic FILE``
(a clean.jsonl from notebook 04 or the long corpus) when given. Every finished run is one JSONL row, so the study
runs in slices: ``--max-minutes`` stops starting new runs after that long, and a rerun skips finished runs.

Run it (each slice under the machine-wide lock):
  timeout 660 python benchmarks/scaling.py --max-minutes 9      # repeat until it says "done"
  python benchmarks/scaling.py --report                                           # fit + markdown tables
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, progressive  # noqa: E402
from dte_lib import model as M  # noqa: E402

WIDTHS = (64, 128, 256)
DEPTHS = (1, 2, 4)
# (width, depth) grid: width × depth, plus width 32 (added when 64 won at the middle budget) and without 256 × 4
# (256 × 2 already lost to every other shape by > 0.5 nats)
SHAPES = [(d, L) for L in DEPTHS for d in WIDTHS if (d, L) != (256, 4)] + [(32, 1), (32, 2)]
BUDGETS = (2e11, 7e11, 2e12)  # training FLOPs; notebook 07's demo run is 1.3e12
LRS = (1e-3, 3e-3, 1e-2)  # swept at the middle budget
LRS_FOR = {32: (3e-3, 1e-2)}  # width 32: 1e-3 lost at every width up to 64 already
LRS_FOR_CUSTOM = {256: (1e-3, 3e-3)}  # with --shapes: width 256 diverged or lost at 1e-2 on the seed grid (above)


def fpt(vocab: int, block: int, d: int, L: int) -> float:
    """The trainer's exact training FLOPs per token for a fully trainable model of this shape."""
    with torch.device("meta"):
        m = M.build(vocab, block, d, L, max(1, d // 32))
    return M.flops_per_token(m, block)


def total_params(vocab: int, block: int, d: int, L: int) -> int:
    return M.expected_params(vocab, block, d, L)


def run_one(cfg, prep, work: Path, d: int, L: int, lr: float, budget: float, seed: int) -> dict:
    tc = dataclasses.replace(cfg.train, d_model=d, n_head=max(1, d // 32), lr=lr, wandb="off", ckpt_every=0,
                             log_every=10**9, val_max_blocks=10**6)
    per_tok = fpt(len(prep["tokenizer"]), tc.block_size, d, L)
    tokens_per_step = tc.batch_size * tc.block_size
    steps = max(4, round(budget / per_tok / tokens_per_step))
    tc = dataclasses.replace(tc, warmup_steps=min(tc.warmup_steps, max(1, steps // 5)), val_every=max(1, steps // 4))
    stage = progressive.Stage(f"s01-final-d{L}", L, steps * tokens_per_step, "all", lr, "final")
    out = work / f"d{d}-L{L}-lr{lr:g}-C{budget:.2g}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    tr = progressive.ProgressiveTrainer(tc, prep["tokenizer"], prep["train"], prep["val"], out, seed=seed,
                                        stages=[stage], progress=False, tensorboard=False, on_mismatch="restart")
    hist = tr.run()
    wall = time.time() - t0
    vals = [r["val_loss"] for r in hist if "val_loss" in r]
    shutil.rmtree(out, ignore_errors=True)
    return {"d": d, "L": L, "lr": lr, "budget": budget, "seed": seed, "steps": steps, "tokens": tr.tokens,
            "flops": tr.flops, "compute_params": per_tok / 6, "params": total_params(len(prep["tokenizer"]),
                                                                                     tc.block_size, d, L),
            "epochs": tr.tokens / prep["train_tokens"], "val_loss": vals[-1], "val_loss_min": min(vals),
            "wall_s": wall}


def plan(rows: list[dict], budgets, shapes, lrs, seed: int, top: int = 5, lrs_for: dict | None = None
         ) -> list[tuple]:
    """(d, L, lr, budget) still to run: the lr sweep at the middle budget first, then — at each shape's best lr —
    the ``top`` shapes of the middle budget at every other budget (CPU time: the shapes far from the optimum at
    the middle budget are not re-run; the table says which shapes each budget has)."""
    mid = budgets[len(budgets) // 2]
    todo = [(d, L, lr, mid) for d, L in shapes for lr in (lrs_for or {}).get(d, lrs)]
    best = best_lr(rows, mid)
    mid_loss = {(r["d"], r["L"]): r["val_loss"] for r in best_per_shape(rows, mid) if (r["d"], r["L"]) in shapes}
    if all(s in best for s in shapes):  # the sweep is complete: the other budgets
        keep = sorted(mid_loss, key=mid_loss.get)[:top]
        for b in budgets:
            if b == mid:
                continue
            todo += [(d, L, best[(d, L)], b) for d, L in keep]
    done = {(r["d"], r["L"], r["lr"], r["budget"], r["seed"]) for r in rows}
    return [t for t in todo if (*t, seed) not in done]


def best_lr(rows: list[dict], budget: float) -> dict[tuple, float]:
    out: dict[tuple, tuple[float, float]] = {}
    for r in rows:
        if math.isclose(r["budget"], budget, rel_tol=1e-6):
            k = (r["d"], r["L"])
            if k not in out or r["val_loss"] < out[k][1]:
                out[k] = (r["lr"], r["val_loss"])
    return {k: v[0] for k, v in out.items()}


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def best_per_shape(rows: list[dict], budget: float) -> list[dict]:
    by: dict[tuple, dict] = {}
    for r in rows:
        if math.isclose(r["budget"], budget, rel_tol=1e-6):
            k = (r["d"], r["L"])
            if k not in by or r["val_loss"] < by[k]["val_loss"]:
                by[k] = r
    return sorted(by.values(), key=lambda r: r["compute_params"])


def n_opt(shapes: list[dict]) -> tuple[float, dict]:
    """Compute-optimal N at one budget: vertex of a parabola in log N through the best shape and its neighbours
    on the lower envelope (loss vs log N); the best measured N when the minimum sits at an edge of the grid."""
    env: dict[float, dict] = {}
    for r in shapes:  # lower envelope: the best shape at each N
        n = r["compute_params"]
        if n not in env or r["val_loss"] < env[n]["val_loss"]:
            env[n] = r
    pts = sorted(env.values(), key=lambda r: r["compute_params"])
    i = min(range(len(pts)), key=lambda j: pts[j]["val_loss"])
    best = pts[i]
    if 0 < i < len(pts) - 1:
        x = np.log([p["compute_params"] for p in pts[i - 1:i + 2]])
        y = np.array([p["val_loss"] for p in pts[i - 1:i + 2]])
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            return float(np.exp(-b / (2 * a))), best
    return float(best["compute_params"]), best


def report(rows: list[dict]) -> str:
    budgets = sorted({r["budget"] for r in rows})
    lines = ["| budget (FLOPs) | width | depth | compute params | total params | best lr | tokens | epochs | "
             "val loss (final) | val loss (min) | wall s |", "|" + "---|" * 11]
    for b in budgets:
        for r in best_per_shape(rows, b):
            lines.append(f"| {b:.2g} | {r['d']} | {r['L']} | {r['compute_params'] / 1e6:.2f}M | "
                         f"{r['params'] / 1e6:.2f}M | {r['lr']:g} | {r['tokens']:,} | {r['epochs']:.1f} | "
                         f"{r['val_loss']:.3f} | {r['val_loss_min']:.3f} | {r['wall_s']:.0f} |")
    mid = budgets[len(budgets) // 2] if budgets else None
    lrs = sorted({r["lr"] for r in rows})
    lines += ["", f"Learning-rate sweep at {mid:.2g} FLOPs (final val loss):", "",
              "| width | depth | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|" + "---|" * (2 + len(lrs))]
    for L in sorted({r["L"] for r in rows}):
        for d in sorted({r["d"] for r in rows}):
            cells = []
            for lr in lrs:
                m = [r for r in rows if r["d"] == d and r["L"] == L and r["lr"] == lr and r["budget"] == mid]
                cells.append(f"{m[0]['val_loss']:.3f}" if m else "—")
            if any(c != "—" for c in cells):
                lines.append(f"| {d} | {L} | " + " | ".join(cells) + " |")
    opt = []
    lines += ["", "| budget | N_opt (fit) | best measured shape | its val loss |", "|---|---|---|---|"]
    for b in budgets:
        n, best = n_opt(best_per_shape(rows, b))
        opt.append((b, n))
        lines.append(f"| {b:.2g} | {n / 1e6:.2f}M | d{best['d']} × {best['L']} layers | {best['val_loss']:.3f} |")
    if len(opt) >= 2:
        a, c = np.polyfit(np.log([o[0] for o in opt]), np.log([o[1] for o in opt]), 1)
        lines += ["", f"Fit over {len(opt)} budgets: N_opt = {math.exp(c):.3g} · C^{a:.2f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/scaling.jsonl")
    ap.add_argument("--work", default="/tmp/dte-scaling", help="scratch run dir (tokenizer, cache, run dirs)")
    ap.add_argument("--synthetic", default="", help="a clean.jsonl to add to the training split")
    ap.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    ap.add_argument("--shapes", default="", help="WIDTHxDEPTH,... instead of the built-in grid (e.g. 64x1,128x2)")
    ap.add_argument("--lrs", default="", help="learning rates swept at the middle budget (default 1e-3,3e-3,1e-2)")
    ap.add_argument("--top", type=int, default=5, help="shapes of the middle budget re-run at the other budgets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=9.0, help="start no new run after this long")
    ap.add_argument("--report", action="store_true", help="print the tables and the fit, train nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = read(out)
    if args.report:
        print(report(rows))
        return 0
    cfg = config.load("demo")
    config.seed_everything(cfg.seed, cfg.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        (work / "corpus").mkdir(exist_ok=True)
        shutil.copy(args.synthetic, work / "corpus" / "clean.jsonl")
    prep = progressive.prepare(cfg, work)
    prep["train_tokens"] = sum(len(x) for x in prep["train"]["input_ids"])
    print(f"corpus: {len(prep['examples']['train'])} train conversations ({prep['examples']['synthetic']} synthetic), "
          f"{prep['train_tokens']:,} tokens; val {len(prep['examples']['val'])} conversations", flush=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in config.as_list(args.shapes, str)] or SHAPES
    lrs = tuple(config.as_list(args.lrs, float)) or LRS
    t0 = time.time()
    while True:
        todo = plan(rows, budgets, shapes, lrs, args.seed, top=args.top,
                    lrs_for=LRS_FOR_CUSTOM if args.shapes else LRS_FOR)
        if not todo:
            print("done")
            break
        if time.time() - t0 > args.max_minutes * 60:
            print(f"stopping for this slice; {len(todo)} runs left (rerun to continue)")
            break
        d, L, lr, b = todo[0]
        row = run_one(cfg, prep, work, d, L, lr, b, args.seed)
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"d{d} L{L} lr {lr:g} C {b:.2g}: {row['tokens']:,} tokens ({row['epochs']:.1f} epochs), "
              f"val {row['val_loss']:.3f} (min {row['val_loss_min']:.3f}), {row['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

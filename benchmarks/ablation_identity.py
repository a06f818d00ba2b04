"""Identity ablation at equal steps: each mechanism and the multi-task loss vs plain LM training, with seeds.

Every arm trains a fresh GPT-2 (``EvalCfg.ablation_depth`` layers, the preset's width and vocabulary) for
``ablation_steps`` optimizer steps from the same seed on the same packed blocks, then is scored on the VAL split
and the probes with dte_lib.metrics (RESULTS-identity.md's table was measured on the test split, before the
course moved every comparison to val). Writes ``benchmarks/ablation_identity.jsonl`` (one row per run) and
prints the summary table (mean ± sd over seeds, Δ vs plain) for benchmarks/RESULTS-identity.md.

Run it: ``PYTHONPATH=. .venv/bin/python benchmarks/ablation_identity.py --preset demo --seeds 2``
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dte_lib import ablation, config, dashboard, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--run-dir", default="outputs/runs/ablation-identity")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--arms", default=",".join(ablation.ARMS))
    ap.add_argument("--paraphrases", type=int, default=None, help="probe paraphrases answered (fewer = faster)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    ap.add_argument("--table", default=None, help="print the summary of a results file (JSONL) and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(dashboard.markdown(ablation.summary(data.read_rows(args.table))))
        return 0
    cfg, run_dir = config.setup(args.preset, args.run_dir, {"eval.paraphrases": args.paraphrases,
                                                             "threads": args.threads})
    t0 = time.time()
    rows = ablation.run(cfg, run_dir, arms=config.as_list(args.arms, str), seeds=args.seeds, steps=args.steps,
                        progress=True)
    out = Path(__file__).with_name("ablation_identity.jsonl")
    data.write_jsonl(out, rows)
    df = ablation.summary(rows)
    print(f"\n{len(rows)} runs in {time.time() - t0:.0f}s on {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, preset {cfg.name}: depth {cfg.eval.ablation_depth}, "
          f"d_model {cfg.train.d_model}, vocab {cfg.train.vocab_size}, steps {rows[0]['steps']}\n")
    print(dashboard.markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())

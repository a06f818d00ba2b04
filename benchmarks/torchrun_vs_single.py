"""One process vs ``torchrun --nproc_per_node=N`` (DDP, gloo) on this machine: same trainer, same global batch.

Alternates the two launches ``--repeats`` times (so load drift hits both), and reports medians of
(a) training tokens/s inside the run (the trainer's own loop, from ``dist_summary.json``) and (b) the wall time of
the whole launch (interpreter start, imports, process group, data preparation included), plus the ratio of medians.

Run it: ``nice .venv/bin/python benchmarks/torchrun_vs_single.py --preset ci --repeats 3`` — appends a section
to ``benchmarks/RESULTS-scale.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dte_lib import config, distributed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="ci")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-scale.md")))
    args = ap.parse_args()
    cfg = config.load(args.preset)
    rows = {"single": [], f"torchrun x{args.nproc}": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        for i in range(args.repeats):
            for name in rows:
                out = Path(tmp) / f"{name.replace(' ', '_')}-{i}"
                t0 = time.perf_counter()
                if name == "single":
                    distributed.run_single(distributed.demo_args(cfg, run_dir, out), timeout=900)
                else:
                    distributed.run_torchrun(args.nproc, distributed.demo_args(cfg, run_dir, out, args.strategy),
                                             timeout=900)
                wall = time.perf_counter() - t0
                s = json.loads((out / "dist_summary.json").read_text())
                rows[name].append({"tokens_per_s": s["tokens_per_s"], "wall_s": wall, "steps": s["steps"]})
                print(f"{name:14s} run {i}: {s['tokens_per_s']:8.0f} tokens/s, {wall:6.1f} s wall", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "wall_s")} for n, rs in rows.items()}
    names = list(rows)
    ratio_tps = med[names[1]]["tokens_per_s"] / med[names[0]]["tokens_per_s"]
    ratio_wall = med[names[1]]["wall_s"] / med[names[0]]["wall_s"]
    load = os.getloadavg()[0]
    lines = [f"\n## torchrun x{args.nproc} ({args.strategy}) vs one process — preset `{args.preset}`, "
             f"{time.strftime('%Y-%m-%d %H:%M')}",
             "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
             f"{load:.1f} at the end (shared machine: treat absolute numbers as noisy; the ratio is the result). "
             f"{rows[names[0]][0]['steps']} optimizer steps per run, {args.repeats} alternating repeats, medians.",
             "", "| run | training tokens/s | wall s (whole launch) |", "|---|---|---|"]
    lines += [f"| {n} | {m['tokens_per_s']:.0f} | {m['wall_s']:.1f} |" for n, m in med.items()]
    lines += ["", f"Ratio {names[1]} / single: tokens/s {ratio_tps:.2f}x, wall time {ratio_wall:.2f}x."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Scaling benchmarks (issue 7)\n")
    with open(out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

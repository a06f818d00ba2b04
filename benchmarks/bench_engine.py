"""The generation engine on a preset's own requests: answers/min and where the engine's time goes, for two
revisions of the code in one run.

Notebook 02's traffic is not bench_server.py's (short prompts, 48 tokens, all starting together): at ``long`` each
request carries the persona prompt, its grounding fact and a few-shot turn (~370 prompt tokens), answers run to
~160 tokens (up to 279), and rows finish and join the batch one at a time. This replays requests of the preset's
own plan (by default 96 beyond the first 4,000, so not the ones a run already made) through ``Registry.chat`` in
process, 64 client threads as notebook 02 sends them, with the served teacher of a run directory, and times the
engine's phases (prefill, decode step, sampling, logprobs, merging rows into the batch, dropping finished ones).

``--against REV`` runs the same replay first on ``REV`` (checked out in a temporary git worktree), then on this
checkout, each in its own process; ratios are new / old. ``--against-order plan`` instead runs this checkout twice
on the same requests, sent in plan order and then grouped by prompt prefix (``--order send``, notebook 02's). Run
it alone on the machine (~6 min on 2 cores):
``timeout 1200 env PYTHONPATH=. .venv/bin/python benchmarks/bench_engine.py --run outputs/runs/long --against 83b4ad2``.
Results are appended to benchmarks/RESULTS-server.md with the machine and its load.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("_admit", "_prefill", "_merge", "_drop_finished", "_step", "_sample", "_logprobs", "_advance")


def pick(preset: str, n: int, offset: int, order: str) -> list[int]:
    """Plan positions of the ``n`` requests to replay, in the order they are sent: ``send`` = the first ``n`` of
    the plan from ``offset`` in ``generate.send_order`` (grouped by shared prompt prefix, as notebook 02 sends
    them); ``plan`` = the same requests in plan order (as it sent them before); ``plan-first`` = the first ``n``
    from ``offset`` in plan order."""
    from dte_lib import config, generate, prompts
    plan = prompts.plan_from_config(config.load(preset))[offset:]
    if order == "plan-first":
        return list(range(offset, offset + n))
    at = {id(r): offset + i for i, r in enumerate(plan)}
    chosen = [at[id(r)] for r in generate.send_order(plan)[:n]]
    return chosen if order == "send" else sorted(chosen)


def replay(src: str, run_dir: str, preset: str, positions: list[int], max_batch: int, concurrency: int) -> dict:
    """In this process, with ``src`` first on sys.path: the replay's totals and per-phase seconds."""
    sys.path.insert(0, src)
    from dte_lib import config, prompts, teacher
    from dte_lib.server import engine as E
    cfg = config.load(preset)
    plan = prompts.plan_from_config(cfg, max(positions) + 1)
    reqs = [plan[i] for i in positions]
    max_tokens = prompts.answer_budget(cfg).max_tokens
    info = teacher.load_model_info(run_dir, missing_ok=True) if run_dir else None
    path = (info or {}).get("path") or teacher.base_model_dir()
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(name):
        f = getattr(E.Engine, name)

        def g(self, *a, **k):
            t = time.perf_counter()
            try:
                return f(self, *a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        setattr(E.Engine, name, g)
    for name in PHASES:
        if hasattr(E.Engine, name):
            timed(name)
    reg = E.Registry({"t": path}, threads=2, max_batch=max_batch)
    lm = reg.get("t")
    reg.chat("t", reqs[0].messages(), temperature=0, max_tokens=2)  # load, warm up
    spent.clear()
    steps_before = len(lm.engine.batch_rows)
    done: list = []
    gate = threading.Semaphore(concurrency)

    def ask(r):
        with gate:
            choices, _ = reg.chat("t", r.messages(), temperature=cfg.generate.temperature, top_p=1.0,
                                  max_tokens=max_tokens, seed=1, top_logprobs=cfg.generate.logprobs_topk or -1)
            done.append(choices[0])
    t0 = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(r,)) for r in reqs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    rows = list(lm.engine.batch_rows)[steps_before:]
    tokens = sum(c.completion_tokens for c in done)
    return {"wall_s": wall, "answers": len(done), "answers_per_min": len(done) / wall * 60,
            "tok_s": tokens / wall, "tokens": tokens, "steps": len(rows),
            "mean_rows": statistics.mean(rows) if rows else 0.0,
            "stop_share": sum(c.finish_reason == "stop" for c in done) / max(1, len(done)),
            "phases": {k: round(v, 2) for k, v in spent.items()}, "model": str(path), "max_tokens": max_tokens}


def run_worker(src: str, args, positions: list[int]) -> dict:
    cmd = [sys.executable, __file__, "--worker", src, "--run", args.run, "--preset", args.preset,
           "--positions", ",".join(map(str, positions)), "--max-batch", str(args.max_batch),
           "--concurrency", str(args.concurrency)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="outputs/runs/long", help="run directory whose served teacher answers")
    ap.add_argument("--preset", default="long")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--offset", type=int, default=4000, help="skip this many requests of the plan")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--order", default="send", choices=("send", "plan", "plan-first"), help="see pick()")
    ap.add_argument("--against", default="", help="a git revision to measure first, as the baseline")
    ap.add_argument("--against-order", default="", choices=("", "send", "plan", "plan-first"),
                    help="instead of --against: this checkout twice, this order first, then --order")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--positions", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/RESULTS-server.md"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(replay(args.worker, args.run, args.preset, [int(x) for x in args.positions.split(",")],
                                args.max_batch, args.concurrency)))
        return 0
    load_start, t_start = os.getloadavg()[0], time.time()
    res: dict[str, dict] = {}
    positions = pick(args.preset, args.requests, args.offset, args.order)
    if args.against_order:
        res["old"] = run_worker(str(ROOT), args, pick(args.preset, args.requests, args.offset, args.against_order))
        print("old:", json.dumps(res["old"]), flush=True)
    elif args.against:
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "old"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.against],
                           check=True, capture_output=True)
            try:
                res["old"] = run_worker(str(wt), args, positions)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
        print("old:", json.dumps(res["old"]), flush=True)
    res["new"] = run_worker(str(ROOT), args, positions)
    print("new:", json.dumps(res["new"]), flush=True)
    uptime = os.popen("uptime").read().strip()
    new, old = res["new"], res.get("old")
    old_label = f"order {args.against_order}" if args.against_order else args.against
    new_label = f"order {args.order}" if args.against_order else "this checkout"
    lines = [f"\n## The engine on `{args.preset}`'s own requests — {time.strftime('%Y-%m-%d %H:%M')}\n",
             f"`benchmarks/bench_engine.py`: {args.requests} requests of the plan from #{args.offset} "
             f"(order {args.order}" + (f", against order {args.against_order}" if args.against_order else "") + "), "
             f"{args.concurrency} client threads, max-batch {args.max_batch}, max_tokens {new['max_tokens']}, "
             f"model `{Path(new['model']).name}`; {platform.machine()}, {os.cpu_count()} cores, torch threads 2; "
             f"load average {load_start:.2f} at the start; `uptime` at the end: {uptime}. "
             f"One run, {(time.time() - t_start) / 60:.1f} min.\n",
             "| | " + (f"{old_label} | " if old else "") + f"{new_label} | " + ("new / old |" if old else ""),
             "|---|" + ("---|" if old else "") + "---|" + ("---|" if old else "")]

    def row(label, key, fmt="{:.1f}", ratio=True):
        cells = ([fmt.format(old[key])] if old else []) + [fmt.format(new[key])]
        if old:
            cells.append(f"{new[key] / old[key]:.2f}×" if ratio and old[key] else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    row("answers/min", "answers_per_min")
    row("generated tokens/s", "tok_s")
    row("decode steps", "steps", "{:d}", ratio=False)
    row("mean rows per step", "mean_rows", ratio=False)
    for name in PHASES:
        o = old["phases"].get(name) if old else None
        nv = new["phases"].get(name)
        if nv is None and o is None:
            continue
        cells = ([f"{o:.1f} s ({o / old['wall_s']:.0%})" if o is not None else "—"] if old else []) + \
            [f"{nv:.1f} s ({nv / new['wall_s']:.0%})" if nv is not None else "—"]
        if old:
            cells.append("")
        lines.append(f"| time in `{name}` | " + " | ".join(cells) + " |")
    lines.append("\n(`_prefill` includes `_merge`; `_step` includes `_sample`, `_logprobs` and `_advance`.)\n")
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Server throughput: generated tokens/s at 1, 8, 32 and 64 concurrent chat requests, with the course's sampling
(temperature 0.8, top-p 0.95) and greedy, for two engines in one run with the same prompts — by default the engine
with fp32 weights (its defaults until 2026-12-07) against ``--precision auto`` (bf16 weights where the CPU has them
natively; ``--compare batching`` instead sets the old ``--max-batch 8 --no-prefix-cache`` against the defaults) —
plus in-process ``model.generate`` at the same batch as the reference, an optional sweep of ``--max-batch`` at 128
concurrent requests, and one row with the course's own requests (persona prompt + a few-shot turn + the grounding
hint, as notebook 02 sends them).

Prompts: the persona's system prompt with the course's length hint, then a question from data/prompt_bank.jsonl
(request i asks question i: different questions, one shared system prompt — the shape of notebook 02's traffic).
SmolLM2-135M-Instruct from the cache, 48 new tokens per request.

Run it alone on the machine: ``timeout 900 env PYTHONPATH=. .venv/bin/python
benchmarks/bench_server.py`` (about 6 minutes on 2 cores). Results are appended to benchmarks/RESULTS-server.md
with the machine and its load; the raw numbers to the same name with .json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ROOT = Path(__file__).resolve().parent.parent
SAMPLED = {"temperature": 0.8, "top_p": 0.95}
GREEDY = {"temperature": 0.0}


def prompts(n: int) -> list[list[dict]]:
    persona = json.loads((ROOT / "data/persona.json").read_text())["system_prompt"]
    from dte_lib.config import GenerateCfg
    system = f"{persona} {GenerateCfg().length_hint}".strip()
    bank = [json.loads(line)["prompt"] for line in (ROOT / "data/prompt_bank.jsonl").read_text().splitlines() if line]
    return [[{"role": "system", "content": system}, {"role": "user", "content": bank[i % len(bank)]}]
            for i in range(n)]


def course_prompts(n: int) -> list[list[dict]]:
    from dte_lib import config, prompts as P
    return [r.messages() for r in P.plan_from_config(config.load("demo"), n)]


def direct(path: Path, batches: list[int], tokens: int, threads: int) -> dict[str, float]:
    """tokens/s of model.generate on left-padded batches (min_new_tokens = max_new_tokens: every row makes `tokens`)."""
    import torch
    from dte_lib import teacher
    model, tok = teacher.load(path, threads=threads)
    tok.padding_side = "left"
    res = {}
    with torch.no_grad():
        model.generate(**tok(["hi"], return_tensors="pt"), max_new_tokens=2, pad_token_id=tok.pad_token_id)
        for b in batches:
            for name, kw in (("sampled", dict(do_sample=True, top_k=0, **SAMPLED)), ("greedy", dict(do_sample=False))):
                if name == "greedy" and b != max(batches):  # (greedy only at the largest batch: time)
                    continue
                texts = [teacher.render_chat(tok, m, True) for m in prompts(b)]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                t = time.perf_counter()
                model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.pad_token_id, **kw)
                res[f"{name}@{b}"] = b * tokens / (time.perf_counter() - t)
                print(f"generate {name} batch {b}: {res[f'{name}@{b}']:.1f} tok/s", flush=True)
    return res


async def burst(base_url: str, key: str, msgs: list[list[dict]], tokens: int, sampling: dict) -> dict[str, float]:
    import openai
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=1200)

    async def one(i, m):
        t = time.perf_counter()
        r = await client.chat.completions.create(model="teacher", messages=m, max_tokens=tokens, seed=i, **sampling)
        return time.perf_counter() - t, r.usage.completion_tokens, r.choices[0].finish_reason
    t0 = time.perf_counter()
    out = await asyncio.gather(*[one(i, m) for i, m in enumerate(msgs)])
    wall = time.perf_counter() - t0
    await client.close()
    toks = sum(o[1] for o in out)
    return {"tok_s": toks / wall, "wall_s": wall, "tokens": toks,
            "median_latency_s": statistics.median(o[0] for o in out),
            "stop_share": sum(o[2] == "stop" for o in out) / len(out)}


def served_dtype() -> str:
    """What ``dte serve`` loads the weights in here (precision auto)."""
    from dte_lib import device
    dt = device.autocast_dtype("cpu", "auto")
    return "bf16" if dt is not None else "fp32"


def served(path: Path, threads: int, max_batch: int, prefix_cache: bool, runs: list[tuple[str, int, dict, list]],
           tokens: int, precision: str = "auto", weights: str = "native") -> dict[str, dict]:
    from dte_lib import server
    res = {}
    with server.launch({"teacher": path}, threads=threads, max_batch=max_batch, prefix_cache=prefix_cache,
                       timeout=300, precision=precision, weights=weights) as srv:
        # load and warm up on the runs' own prompts (a student's 128-token context refuses the persona prompt)
        asyncio.run(burst(srv.base_url, srv.api_key, runs[0][3][:2] if runs else prompts(2), 2, GREEDY))
        for label, conc, sampling, msgs in runs:
            r = asyncio.run(burst(srv.base_url, srv.api_key, msgs[:conc], tokens, sampling))
            res[label] = r
            print(f"max_batch {max_batch} prefix_cache {prefix_cache} {precision} {weights} {label}: "
                  f"{r['tok_s']:.1f} tok/s (wall {r['wall_s']:.1f} s, median latency {r['median_latency_s']:.1f} s)",
                  flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", default="", help="max-batch values to sweep at 128 concurrent, e.g. 16,32,64,128")
    ap.add_argument("--compare", default="precision", choices=("precision", "batching", "weights"),
                    help="precision: fp32 weights vs precision auto; batching: max-batch 8 without prefix cache vs "
                         "the defaults (both at precision auto); weights: native vs --weights int8 (both at "
                         "precision auto; e.g. --concurrency 1,4,8 --old-concurrency 1,4,8 --direct-batches '')")
    ap.add_argument("--sweep-tokens", type=int, default=24)
    ap.add_argument("--sweep-concurrency", type=int, default=128)
    ap.add_argument("--concurrency", default="1,8,32,64", help="concurrent requests to measure (a smoke run: 1,2)")
    ap.add_argument("--old-concurrency", default="1,8,64", help="... of them also with the old settings")
    ap.add_argument("--direct-batches", default="8,64", help="model.generate batches (greedy at the largest)")
    ap.add_argument("--course", action="store_true", help="add a row with the course's own requests (+1 min)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/RESULTS-server.md"))
    args = ap.parse_args()
    from dte_lib import teacher
    from dte_lib.server.engine import DEFAULT_MAX_BATCH
    path = teacher.base_model_dir()
    t_start, load_start = time.time(), os.getloadavg()[0]
    concs = [int(x) for x in args.concurrency.split(",")]
    top, sweep_n = max(concs), args.sweep_concurrency
    ps = prompts(max(top, sweep_n))
    raw = Path(args.out).with_suffix(".json")
    old_concs = [int(x) for x in args.old_concurrency.split(",")]
    results: dict = {"direct": direct(path, [int(x) for x in args.direct_batches.split(",") if x], args.tokens,
                                      args.threads)}
    raw.write_text(json.dumps(results, indent=1))
    grid = [(f"{name}@{c}", c, s, ps) for c in concs for name, s in (("sampled", SAMPLED), ("greedy", GREEDY))]
    from dte_lib import device
    new_weights = "int8" if args.compare == "weights" else "native"
    if args.compare == "weights":
        old_engine, old_label = (DEFAULT_MAX_BATCH, True, "auto"), "native weights"
        new_label = "int8 weights"
    elif args.compare == "precision":
        old_engine, old_label = (DEFAULT_MAX_BATCH, True, "fp32"), "fp32 weights"
        new_label = device.precision_note("cpu", "auto").split(" — ")[0].replace("precision auto on cpu: ", "")
        new_label = f"precision auto ({new_label})"
    else:
        old_engine, old_label = (8, False, "auto"), "max-batch 8, no prefix cache"
        new_label = f"max-batch {DEFAULT_MAX_BATCH}, prefix cache"
    results["labels"] = {"old": old_label, "new": new_label}
    results["old"] = served(path, args.threads, old_engine[0], old_engine[1],
                            [g for g in grid if g[1] in old_concs and (g[0].startswith("sampled") or g[1] == top)],
                            args.tokens, precision=old_engine[2])
    raw.write_text(json.dumps(results, indent=1))
    results["new"] = served(path, args.threads, DEFAULT_MAX_BATCH, True,
                            grid + ([(f"course sampled@{top}", top, SAMPLED, course_prompts(top))]
                                    if args.course else []),
                            args.tokens, precision="auto", weights=new_weights)
    raw.write_text(json.dumps(results, indent=1))
    results["sweep"] = {}
    for mb in [int(x) for x in args.sweep.split(",") if x]:
        results["sweep"][mb] = served(path, args.threads, mb, True, [("sweep", sweep_n, SAMPLED, ps)],
                                      args.sweep_tokens)["sweep"]
        raw.write_text(json.dumps(results, indent=1))
    minutes = (time.time() - t_start) / 60
    uptime = os.popen("uptime").read().strip()
    raw.write_text(json.dumps(results, indent=1))

    d, old, new = results["direct"], results["old"], results["new"]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}; "
               f"load average {load_start:.2f} at the start; `uptime` at the end: {uptime}")
    lines = [f"\n## {new_label} vs {old_label} — {time.strftime('%Y-%m-%d %H:%M')}\n",
             f"SmolLM2-135M-Instruct, {args.tokens} new tokens per request (fewer where a request ends on its "
             "own), "
             f"persona system prompt + one prompt-bank question per request; {machine}. One run, {minutes:.1f} min.\n",
             f"| concurrent | sampling | {old_label} tok/s | {new_label} tok/s | new / old | model.generate (fp32) "
             "same batch tok/s | new / generate | new median latency (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in concs:
        for name in ("sampled", "greedy"):
            k = f"{name}@{c}"
            if k not in new:
                continue
            o, g, n = old.get(k), d.get(k), new[k]["tok_s"]
            cells = [c, name, f"{o['tok_s']:.1f}" if o else "—", f"{n:.1f}",
                     f"{n / o['tok_s']:.2f}×" if o else "—",
                     f"{g:.1f}" if g else "—", f"{n / g:.2f}×" if g else "—", f"{new[k]['median_latency_s']:.1f}"]
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    c = new.get(f"course sampled@{top}")
    lines += ["", f"The course's own requests (demo plan: persona prompt + length hint + one few-shot turn, "
                  f"~210–340 prompt tokens), {top} concurrent, sampled, new engine: **{c['tok_s']:.1f} tok/s** "
                  f"(wall {c['wall_s']:.1f} s, {c['stop_share']:.0%} ended on their own)." if c else "", "",
              f"`--max-batch` sweep, {sweep_n} concurrent sampled requests, {args.sweep_tokens} new tokens, "
              "prefix cache on:",
              "", "| max-batch | tok/s | median latency (s) |", "|---|---|---|"]
    lines += [f"| {mb} | {r['tok_s']:.1f} | {r['median_latency_s']:.1f} |" for mb, r in results["sweep"].items()]
    if not results["sweep"]:
        lines = lines[:-4]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of the corpus engine (not tests): run on demand, results go to benchmarks/RESULTS-corpus.md.

1. Generation throughput against the loopback server (tests/fake_openai_server.py) with 300 ms injected latency:
   the roadmap's sequential loop (sync client, one request at a time) vs the engine at concurrency 1, 8, 32.
2. Near-duplicate detection (MinHash LSH) on 100K synthetic short texts with planted near-duplicates.
3. Quality-filter throughput.

Run it: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_corpus.py [--quick]``
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import fake_openai_server  # noqa: E402
from dte_lib import config, diversity, generate, prompts, quality  # noqa: E402


def sequential_loop(reqs, base_url, out_path, max_tokens):
    """The roadmap's loop: one request, wait, append, next (with the SDK's default retries)."""
    import openai
    client = openai.OpenAI(base_url=base_url, api_key="sk-fake", timeout=60)
    with open(out_path, "a") as fh:
        for r in reqs:
            resp = client.chat.completions.create(model="fake", messages=r.messages(), max_tokens=max_tokens,
                                                  seed=r.seed)
            fh.write(json.dumps({"id": r.id, "answer": resp.choices[0].message.content}) + "\n")


def bench_generation(repeats: int, quick: bool) -> dict:
    server = fake_openai_server.start(latency_ms=300)
    cfg = config.load("ci", {"generate.few_shot": 0})
    results: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            n = 12 if quick else 20
            reqs = prompts.plan_from_config(cfg, n)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                sequential_loop(reqs, server.base_url, Path(d) / "seq.jsonl", 200)
                results.setdefault("sequential loop", []).append(60 * n / (time.perf_counter() - t0))
            for c in (1, 8, 32):
                n = {1: 12 if quick else 20, 8: 80 if quick else 160, 32: 320 if quick else 640}[c]
                reqs = prompts.plan_from_config(cfg, n)
                with tempfile.TemporaryDirectory() as d:
                    s = generate.generate(reqs, d, base_url=server.base_url, api_key="sk-fake", progress=False,
                                          engine=generate.EngineConfig(model="fake", concurrency=c, max_tokens=200))
                    assert s.new_ok == n
                    results.setdefault(f"engine, concurrency {c}", []).append(s.examples_per_min)
    finally:
        server.stop()
    base = statistics.median(results["sequential loop"])
    return {k: {"median_examples_per_min": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v],
                "vs_sequential": round(statistics.median(v) / base, 2)} for k, v in results.items()}


def synthetic_texts(n: int, seed: int = 0) -> tuple[list[str], int]:
    """Short texts from a 20K-word vocabulary; every 20th is followed by a near-copy (one word changed)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    texts, planted = [], 0
    while len(texts) < n:
        t = [rng.choice(vocab) for _ in range(rng.randint(12, 30))]
        texts.append(" ".join(t))
        if len(texts) % 20 == 0 and len(texts) < n:
            t2 = list(t)
            t2[-1] = rng.choice(vocab)  # last word changed: Jaccard of 3-grams stays high
            texts.append(" ".join(t2))
            planted += 1
    return texts, planted


def bench_dedup(n: int, threshold: float) -> dict:
    texts, planted = synthetic_texts(n)
    t0 = time.perf_counter()
    pairs = diversity.near_duplicate_pairs(texts, threshold)
    seconds = time.perf_counter() - t0
    clusters = diversity.clusters_from_pairs(len(texts), pairs)
    return {"texts": n, "planted_pairs": planted, "found_pairs": len(pairs), "clusters": len(clusters),
            "recall": round(min(len(pairs), planted) / planted, 4) if planted else None,
            "seconds": round(seconds, 1), "texts_per_s": round(n / seconds)}


def bench_filter(n: int) -> dict:
    persona = json.loads((REPO / "data" / "persona.json").read_text())
    prompt = "How do you keep your reservoir stable when new input keeps arriving every step?"
    rows = [{"id": str(i), "finish_reason": "stop",
             "messages": [{"role": "user", "content": prompt},
                          {"role": "assistant", "content": fake_openai_server.compose(prompt, i, 120)[0]}]}
            for i in range(n)]
    t0 = time.perf_counter()
    kept, dropped = quality.filter_examples(rows, persona)
    seconds = time.perf_counter() - t0
    return {"examples": n, "seconds": round(seconds, 2), "examples_per_s": round(n / seconds),
            "kept": len(kept), "dropped": len(dropped)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dedup-n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import os
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load avg " + \
        " ".join(f"{x:.1f}" for x in os.getloadavg())
    out = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M")}
    out["generation"] = bench_generation(1 if args.quick else args.repeats, args.quick)
    print(json.dumps(out["generation"], indent=1), flush=True)
    out["filter"] = bench_filter(2_000 if args.quick else 20_000)
    print(json.dumps(out["filter"]), flush=True)
    out["dedup"] = bench_dedup(10_000 if args.quick else args.dedup_n, 0.6)
    print(json.dumps(out["dedup"]), flush=True)
    out["machine_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Server throughput and latency at 1, 4 and 8 concurrent chat requests, with dynamic batching off
(``--max-batch 1``: one request at a time, as the server worked before) and on (the default, 8 rows), against
calling ``model.generate`` directly in this process — same model, prompt, greedy decoding and new-token budget.

Run it: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_server.py [--tokens 32] [--out benchmarks/RESULTS-server.md]``
(SmolLM2-135M-Instruct from the cache; about 3–5 minutes on 2 cores). Results are appended to the output file
with the machine's description; the machine is shared and noisy, so read the ratios and medians.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MESSAGES = [{"role": "system", "content": "You are Deep Tree Echo."},
            {"role": "user", "content": "Describe an echo state network in two sentences."}]


def direct(path: Path, tokens: int, reps: int, threads: int) -> list[float]:
    """Seconds per call of model.generate (greedy, min_new_tokens=max_new_tokens so every call makes `tokens`)."""
    import torch
    from dte_lib import teacher
    model, tok = teacher.load(path, threads=threads)
    ids = torch.tensor([tok(teacher.render_chat(tok, MESSAGES, True), add_special_tokens=False)["input_ids"]])
    times = []
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                           min_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            times.append(time.perf_counter() - t)
    del model
    return times


async def through_server(base_url: str, key: str, tokens: int, concurrency: int) -> tuple[float, list[float], int]:
    import openai
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)

    async def one():
        t = time.perf_counter()
        r = await client.chat.completions.create(model="teacher", messages=MESSAGES, max_tokens=tokens,
                                                 temperature=0)
        return time.perf_counter() - t, r.usage.completion_tokens
    t0 = time.perf_counter()
    results = await asyncio.gather(*[one() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    await client.close()
    return wall, [r[0] for r in results], sum(r[1] for r in results)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "RESULTS-server.md"))
    args = ap.parse_args()
    from dte_lib import server, teacher
    path = teacher.base_model_dir()
    d = direct(path, args.tokens, args.reps, args.threads)
    direct_tps = args.tokens / statistics.median(d)
    rows = [("model.generate, in process", 1, statistics.median(d), statistics.median(d), direct_tps, 1.0, None)]
    serial_tps: dict[int, float] = {}  # tokens/s with batching off, per concurrency
    for max_batch in (1, 8):
        with server.launch({"teacher": path}, threads=args.threads, max_batch=max_batch) as srv:
            asyncio.run(through_server(srv.base_url, srv.api_key, 4, 1))  # load the model, warm up
            for conc in (1, 4, 8):
                walls, lats, toks = [], [], 0
                for _ in range(args.reps):
                    wall, lat, n = asyncio.run(through_server(srv.base_url, srv.api_key, args.tokens, conc))
                    walls.append(wall)
                    lats += lat
                    toks += n
                tps = toks / sum(walls)
                if max_batch == 1:
                    serial_tps[conc] = tps
                rows.append((f"server, max_batch {max_batch}, {conc} concurrent", conc, statistics.median(lats),
                             max(lats), tps, tps / direct_tps, tps / serial_tps[conc] if max_batch > 1 else None))
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
               f"{args.threads}, load average {os.getloadavg()[0]:.1f} at the end (shared machine)")
    lines = [f"\n## Server vs model.generate — {time.strftime('%Y-%m-%d %H:%M')}\n",
             f"SmolLM2-135M-Instruct fp32, greedy, {args.tokens} new tokens per request; {machine}.\n",
             "| setup | concurrency | median latency (s) | max latency (s) | generated tokens/s | vs direct | "
             "vs max_batch 1 |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.2f}× | "
              + (f"{r[6]:.2f}× |" if r[6] is not None else "— |") for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Local server benchmarks\n\nWritten by `benchmarks/bench_server.py`; newest last.\n")
    with open(out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

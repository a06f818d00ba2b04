"""Do the teacher's answers end on their own? The share of ``finish_reason == "stop"`` on the same requests of a
preset's plan, for a teacher model directory, with the few-shot example drawn from every train answer or only from
those within the length hint (``generate.few_shot_fit``).

    PYTHONPATH=. .venv/bin/python benchmarks/answer_ends.py TEACHER_DIR [--preset demo] [--n 24]

TEACHER_DIR is a merged teacher (a run's ``teacher/model_info.json`` names it). To compare fine-tunes, make them with
``teacher.finetune`` and ``LoraSettings(fit="cut")`` / ``fit="trim"`` on the run's ``teacher/train.jsonl``.
Prints one JSON line per variant; RESULTS-long.md records the 2026-12-07 numbers.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from openai import OpenAI
    from dte_lib import config, prompts, server
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher_dir")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--n", type=int, default=24)
    args = ap.parse_args()
    cfg = config.load(args.preset)
    budget = prompts.answer_budget(cfg)
    variants = {"any train answer": {"generate.few_shot_fit": False},
                f"within the hint's {budget.words} words": {"generate.few_shot_fit": True}}
    with server.launch({"teacher": args.teacher_dir}) as srv:
        client = OpenAI(base_url=srv.base_url, api_key=srv.api_key)
        for name, override in variants.items():
            reqs = prompts.plan_from_config(config.load(args.preset, override), args.n)

            def ask(r):
                c = client.chat.completions.create(model="teacher", messages=r.messages(), seed=r.seed,
                                                   max_tokens=budget.max_tokens, temperature=cfg.generate.temperature)
                return c.choices[0].finish_reason, c.usage.completion_tokens
            t0 = time.time()
            with cf.ThreadPoolExecutor(cfg.generate.concurrency) as pool:
                res = list(pool.map(ask, reqs))
            print(json.dumps({"few_shot": name, "ended": sum(f == "stop" for f, _ in res), "n": len(res),
                              "median_tokens": statistics.median(n for _, n in res), "max_tokens": budget.max_tokens,
                              "seconds": round(time.time() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory and time of one teacher fine-tune step against its micro-batch (issue 11, the `long` preset).

The `long` fine-tune (SmolLM2-135M, LoRA on all 30 blocks, batch 8, cut at 512 tokens) peaked at 19.3 GB resident
in its first run — most of a 24 GB machine. Activations grow with the conversations in one forward pass, so
``micro_batch`` (gradient accumulation, the same update) should cut the peak. Each setting runs in a fresh process
(``teacher.finetune`` itself, one optimizer step over the 8 longest seed TRAIN conversations, no validation) and
reports that process's peak resident memory (``dte_lib.envinfo.peak_rss_bytes``) and wall time.

Run it alone (it is a benchmark): ``python benchmarks/bench_teacher_memory.py --micro 8 4 2``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, {root!r})
from dte_lib import config, data, envinfo, teacher
micro, max_length, threads = {micro}, {max_length}, {threads}
cfg = config.load("long")
seed = data.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples
train = data.split(seed, cfg.data.val_fraction, cfg.data.test_fraction)["train"]
longest = sorted(train, key=lambda ex: -sum(len(m.get("content") or "") for m in ex.messages))[:8]
s = teacher.LoraSettings(rank=16, alpha=32, learning_rate=1e-3, epochs=1, max_steps=1, batch_size=8,
                         micro_batch=micro, max_length=max_length, threads=threads, layers=0)
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    res = teacher.finetune(teacher.base_model_dir(), [ex.messages for ex in longest], [], out + "/m", s)
step_s = res["history"][-1]["elapsed_s"]
# peak_rss_gb is kilobytes / 1e6 (Linux's ru_maxrss / 1e6), the unit the recorded results use
print(json.dumps({{"micro_batch": micro or 8, "peak_rss_gb": envinfo.peak_rss_bytes() / 1024 / 1e6,
                  "step_s": step_s, "tokens": res["history"][-1]["tokens"], "total_s": time.perf_counter() - t0}}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro", type=int, nargs="+", default=[8, 4, 2])
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    for m in args.micro:
        code = CHILD.format(root=str(ROOT), micro=m, max_length=args.max_length, threads=args.threads)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"micro-batch {m} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(row, flush=True)
    print("\n| micro-batch | peak resident memory | one step (8 conversations) | real tokens |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['micro_batch']} | {r['peak_rss_gb']:.1f} GB | {r['step_s']:.1f} s | {r['tokens']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of one ``metrics.evaluate_checkpoint`` call at a preset's eval settings (what notebooks 08–11 pay per
scored checkpoint), on a model of that preset's shape (random weights, so every answer runs to max_new_tokens).

Run it: ``PYTHONPATH=. .venv/bin/python benchmarks/eval_cost.py --preset ci --depth 4 --repeats 3``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from dte_lib import checkpoint, config, data, metrics
    from dte_lib import model as M
    from dte_lib import tokenizer as toklib
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="ci")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = ap.parse_args(argv)
    cfg = config.load(args.preset, dict(args.set))
    config.seed_everything(cfg.seed, cfg.threads)
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    tok = toklib.train_from_examples(ex, cfg.train.vocab_size)
    tc = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        m = M.build(len(tok), tc.block_size, tc.d_model, args.depth, tc.n_head, seed=cfg.seed, eos_id=tok.eos_token_id)
        d = checkpoint.export_model(m, tok, Path(tmp) / "ckpt")
        es = metrics.EvalSet.build(cfg)
        metrics.evaluate_checkpoint(d, es, cfg)  # warm: embedding model loaded, references embedded
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            metrics.evaluate_checkpoint(d, es, cfg)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    seeds = getattr(cfg.eval, "sample_seeds", 1)
    print(f"preset {cfg.name}, depth {args.depth}, sampling seeds {seeds}: evaluate_checkpoint median "
          f"{statistics.median(times):.2f} s wall (runs {', '.join(f'{t:.2f}' for t in times)}), "
          f"{statistics.median(cpu):.2f} s CPU (all threads; steadier than wall on a shared machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

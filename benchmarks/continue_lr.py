"""At what learning rate should months 5–12 continue notebook 07's model? (issue 12)

Notebook 07 ends its schedule decayed to 0.1 × the peak rate. Notebooks 08–11 each continue that model for a short
stage (``eval.stage_steps`` optimizer steps) with the same warmup–stable–decay shape. This measures, from a run's
``checkpoints/final``, one continued stage at peak rate ``frac × train.lr`` for each ``--fracs``, and scores every
result on the VAL split's answers (``metrics.lm_score``, the perplexity the dashboard uses) next to the starting
model. Test is never read.

Run it (after notebook 07 of that run):
  PYTHONPATH=$PWD python benchmarks/continue_lr.py --preset long --run-dir outputs/runs/long --fracs 1,0.3,0.1,0.03
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, continued, metrics, packing  # noqa: E402


def val_ppl(path: Path, val_examples) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return metrics.lm_score(model, AutoTokenizer.from_pretrained(str(path)), val_examples).perplexity


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="long")
    ap.add_argument("--run-dir", required=True, help="a run whose notebook 07 has finished")
    ap.add_argument("--fracs", default="1,0.3,0.1,0.03")
    ap.add_argument("--steps", type=int, default=0, help="steps of the stage (0 = the preset's eval.stage_steps)")
    ap.add_argument("--out", default="benchmarks/continue_lr.jsonl")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    base = run_dir / "checkpoints" / "final"
    if not (base / "config.json").exists():
        print(f"{base}: no notebook-07 model there; run notebook 07 of that run first", file=sys.stderr)
        return 1
    cfg0 = config.load(args.preset)
    config.seed_everything(cfg0.seed, cfg0.threads)
    steps = args.steps or cfg0.eval.stage_steps
    val = packing.training_examples(cfg0, run_dir)["val"]
    rows = [{"preset": args.preset, "frac": None, "steps": 0, "val_answer_perplexity": val_ppl(base, val)}]
    print(f"start (notebook 07's model): val answer perplexity {rows[0]['val_answer_perplexity']:.2f}", flush=True)
    for frac in config.as_list(args.fracs, float):
        cfg = config.load(args.preset, {"eval.continue_lr_frac": frac})
        name = f"continue-lr-{frac:g}"
        shutil.rmtree(run_dir / name, ignore_errors=True)
        t0 = time.time()
        res = continued.train(cfg, run_dir, name, depths=[config.as_list(cfg.train.depths)[-1]],
                              steps=steps, init_dir=base)
        row = {"preset": args.preset, "frac": frac, "lr": cfg.train.lr * frac, "steps": steps,
               "val_answer_perplexity": val_ppl(Path(res["dir"]), val), "train_s": time.time() - t0}
        shutil.rmtree(run_dir / name, ignore_errors=True)
        rows.append(row)
        print(f"peak lr {row['lr']:.2g} ({frac:g} x train.lr), {steps} steps: val answer perplexity "
              f"{row['val_answer_perplexity']:.2f}", flush=True)
    with Path(args.out).open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

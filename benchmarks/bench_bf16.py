"""bf16 against fp32 on this CPU, with the quality bars of issue 20: the teacher's fine-tune and the student's trainer.

- **Teacher**: the preset's LoRA fine-tune of SmolLM2-135M (``teacher.finetune``, the same call notebook 01's server
  job makes) once under ``precision fp32`` and once under ``bf16``; both merged models are then scored on the VAL
  conversations in fp32, so the two numbers differ only by how they were trained. Bar: within 0.01 nats.
- **Student**: the preset's progressive trainer (notebook 07's ``TrainCfg``) in fp32 and bf16, ``--seeds`` seeds
  each; val loss of the final model in fp32. Bar: bf16 within the seed-to-seed spread of fp32.
- **Speed**: wall seconds of each run, and the ratio, in the same process on the same machine.
- **Steps** (``--only steps``): one training step (forward, the trainer's ``lm_loss``, backward, AdamW) of a fresh
  GPT-2 per ``--shapes`` entry (WIDTHxDEPTH, at ``--vocab`` and the preset's batch and context) in fp32 and in bf16
  autocast, interleaved; the median seconds of ``--steps`` steps each — which student widths feed the bf16 units.

Run it alone (torch slows sharply when the two cores are shared):
  PYTHONPATH=$PWD python benchmarks/bench_bf16.py --preset demo --seeds 2 --out benchmarks/bf16.jsonl
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, data, device, openai_prep, teacher  # noqa: E402


def teacher_arm(cfg, precision: str, parts, tmp: Path) -> dict:
    t = cfg.teacher
    s = teacher.LoraSettings(rank=t.lora_rank, alpha=t.lora_alpha, learning_rate=t.learning_rate, epochs=t.epochs,
                             max_steps=t.max_steps, batch_size=t.batch_size, micro_batch=t.micro_batch,
                             max_length=t.max_length, eval_every=t.eval_every, val_limit=t.val_limit,
                             seed=cfg.seed, threads=cfg.threads, layers=t.lora_layers, targets=t.lora_targets,
                             patience=t.patience, precision=precision)
    train = [openai_prep.to_chat_row(ex)["messages"] for ex in parts["train"]]
    val = [openai_prep.to_chat_row(ex)["messages"] for ex in parts["validation"]]
    t0 = time.perf_counter()
    res = teacher.finetune(teacher.base_model_dir(), train, val, tmp / f"teacher-{precision}", s, device="cpu")
    seconds = time.perf_counter() - t0
    model, tok = teacher.load(tmp / f"teacher-{precision}", threads=cfg.threads)
    rows = [teacher.encode_for_training(tok, m, t.max_length) for m in val]
    rows = [r for r in rows if any(x != -100 for x in r["labels"])]
    val_fp32 = teacher.eval_loss(model, rows, tok.pad_token_id, precision="fp32")
    return {"what": "teacher", "precision": precision, "seconds": round(seconds, 1), "steps": res["steps"],
            "train_seconds": res["train_seconds"], "val_loss_fp32_eval": round(val_fp32, 4),
            "val_loss_during": res["val_loss_final"], "tokens": res["tokens"]}


def student_arm(cfg, prep, precision: str, seed: int, tmp: Path) -> dict:
    from dte_lib import progressive
    tc = dataclasses.replace(cfg.train, precision=precision, wandb="off")
    t0 = time.perf_counter()
    tr = progressive.ProgressiveTrainer(tc, prep["tokenizer"], prep["train"], prep["val"],
                                        tmp / f"student-{precision}-{seed}", seed=seed, progress=False,
                                        tensorboard=False, device="cpu")
    hist = tr.run()
    seconds = time.perf_counter() - t0
    vals = [r["val_loss"] for r in hist if r.get("val_loss") is not None]  # the trainer scores val in fp32
    return {"what": "student", "precision": precision, "seed": seed, "seconds": round(seconds, 1),
            "tokens": tr.tokens, "val_loss_fp32_eval": round(vals[-1], 4)}


def steps_arm(cfg, shapes: str, vocab: int, n_steps: int) -> list[dict]:
    import statistics
    from dte_lib import model as M
    tc = cfg.train
    rows = []
    for shape in shapes.split(","):
        d, L = (int(x) for x in shape.lower().split("x"))
        model = M.build(vocab, tc.block_size, d, L, max(1, d // 32))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, vocab, (tc.batch_size, tc.block_size))
        times = {"fp32": [], "bf16": []}
        for i in range(n_steps + 2):  # two warm-up steps each, then interleaved
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                with device.autocast("cpu", precision):
                    loss = M.lm_loss(model(input_ids=ids).logits, ids)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= 2:
                    times[precision].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        tokens = tc.batch_size * tc.block_size
        rows.append({"what": "step", "shape": shape, "vocab": vocab, "params": M.count_params(model),
                     "tokens_per_step": tokens, "steps": n_steps,
                     "fp32_s": round(med["fp32"], 4), "bf16_s": round(med["bf16"], 4),
                     "fp32_tok_s": round(tokens / med["fp32"]), "bf16_tok_s": round(tokens / med["bf16"]),
                     "bf16_speedup": round(med["fp32"] / med["bf16"], 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", default="teacher,student")
    ap.add_argument("--run-dir", default="", help="a run whose corpus the student trains on (default: the seed "
                                                   "corpus' train split alone)")
    ap.add_argument("--out", default="benchmarks/bf16.jsonl")
    ap.add_argument("--shapes", default="64x2,128x2,256x2,256x4,384x4", help="--only steps: WIDTHxDEPTH,...")
    ap.add_argument("--vocab", type=int, default=0, help="--only steps: vocabulary (default: the preset's)")
    ap.add_argument("--steps", type=int, default=8, help="--only steps: timed steps per precision and shape")
    args = ap.parse_args(argv)
    cfg = config.load(args.preset)
    check = device.cpu_bf16_check(refresh=True)
    print(device.precision_note("cpu", "auto"), flush=True)
    machine = {"machine": platform.processor() or check["cpu"], "cpu": check["cpu"], "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d"), "preset": args.preset}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16-") as tmp:
        tmp = Path(tmp)
        if "teacher" in args.only:
            loaded = data.load_corpus(cfg.path(cfg.data.corpus))
            parts = openai_prep.split_80_20(loaded.examples, test_fraction=cfg.data.test_fraction)
            for precision in ("fp32", "bf16"):
                row = {**machine, **teacher_arm(cfg, precision, parts, tmp)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        if "steps" in args.only:
            for row in steps_arm(cfg, args.shapes, args.vocab or cfg.train.vocab_size, args.steps):
                row = {**machine, **row}
                print(json.dumps(row), flush=True)
                rows.append(row)
        if "student" in args.only:
            from dte_lib import progressive
            prep = progressive.prepare(cfg, args.run_dir or tmp / "run")
            for seed in range(args.seeds):
                for precision in ("fp32", "bf16"):
                    row = {**machine, **student_arm(cfg, prep, precision, seed, tmp)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    with open(args.out, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

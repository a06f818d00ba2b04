"""Token-level distillation vs the sequence-level student, at equal student training FLOPs, over seeds.

Arms (all from scratch, the same fixed shape, the same FLOP budget C, data order fixed, seeds vary the init):
  fitted        the course's student: BPE fitted to the corpus (2,048 tokens), CE                  (sequence level)
  subset        the teacher's tokens the corpus uses (train.tokenizer teacher_subset), CE     (the tokenizer's cost)
  recorded      subset + the teacher's top-k kept by notebook 02: (1 − α)·CE + α·T²·KL         (token level; the
                course's trainer, ``--alpha``, ``--temperature``, ``--tail``; the arm's name carries them)
  teacher_tok   the teacher's full tokenizer (49,152 tokens), CE                  (the head cost the subset removes)
  distill       teacher_tok + α·KL to a cache of the teacher run once per block      (the first attempt)
Tokens per arm = C / that arm's training FLOPs per token (a bigger head costs more of them). The teacher's own
forward passes (sampling in notebook 02, or the cache) are NOT counted in C.
Score: VAL answer bits per byte (``metrics.lm_score``; tokenizer-independent) and perplexity within each tokenizer;
with ``--generate`` also the generation metrics on the VAL prompts and probes (``metrics.evaluate_checkpoint``: the
preset's sampling, ``eval.sample_seeds`` draws each, 95% bootstrap intervals) — identity normalised, coherence,
diversity, copy rate.

The corpus: ``--corpus-from RUN`` links RUN's ``corpus/`` (clean.jsonl, logprobs.jsonl) into the work directory;
without it the preset's seed corpus alone (no recorded distributions: the ``recorded`` arm needs a run). ``--preset``
sets the student's shape (demo by default; ``long`` for the verdict on the long corpus).
Teacher (``teacher_tok``/``distill`` arms): ``--teacher DIR``, default the base SmolLM2-135M-Instruct.

Run it (the verdict as recorded, fp32: ``long`` itself now trains in bf16 where the CPU has it):
``timeout 660 python benchmarks/distill.py --corpus-from outputs/runs/long --preset long --budget 1e13 --seeds 0 1 2
--precision fp32 --generate`` (resumable JSONL; repeat until "done"), then ``python benchmarks/distill.py --report``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, distill, distill_study, metrics, packing  # noqa: E402
from dte_lib import model as M  # noqa: E402

ARMS = {"fitted": dict(tokenizer="fitted", distill_weight=0.0),
        "subset": dict(tokenizer="teacher_subset", distill_weight=0.0),
        "recorded": dict(tokenizer="teacher_subset"),  # α, T, tail from the command line
        "teacher_tok": dict(tokenizer="teacher", distill_weight=0.0),
        "distill": dict(tokenizer="teacher", distill_weight=1.0)}
DEFAULT_ARMS = ["fitted", "subset", "recorded"]


def fpt(vocab: int, tc, depth: int) -> float:
    with torch.device("meta"):
        m = M.build(vocab, tc.block_size, tc.d_model, depth, tc.n_head)
    return M.flops_per_token(m, tc.block_size)


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def report(rows: list[dict]) -> str:
    """One line per (preset, corpus, shape, arm, budget): means over seeds (± the seeds' standard deviation); the generation
    metrics, where measured, as mean over seeds ± the mean of their 95% interval half-widths."""
    last = {(r.get("preset", "demo"), r.get("corpus", "seed"), f"{r['d_model']} × {r['depth']}",
             r["arm"] + ("" if r.get("precision", "fp32") == "fp32" else f" ({r['precision']})"), r["budget"],
             r["seed"]): r for r in rows}
    out = ["| preset | corpus | width × depth | arm | budget | seeds | vocab | tokens | steps | val answer bits/byte | "
           "val answer ppl | identity normalised | coherence | train s |", "|" + "---|" * 14]
    groups: dict = {}
    for key, r in last.items():
        groups.setdefault(key[:5], []).append(r)
    for key, rs in groups.items():
        bpb = [r["answer_bits_per_byte"] for r in rs]
        ppl = [r["answer_perplexity"] for r in rs]
        sd = (lambda v: f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")  # noqa: E731

        def gen(m: str) -> str:
            g = [r for r in rs if m in r]
            return (f"{statistics.mean(r[m] for r in g):.3f} ± {statistics.mean(r[m + '_ci'] for r in g):.3f}"
                    if g else "—")
        out.append(f"| {key[0]} | {Path(key[1]).name} | {key[2]} | {key[3]} | {key[4]:.2g} | {len(rs)} | "
                   f"{rs[0]['vocab']:,} | "
                   f"{rs[0]['tokens']:,} | {rs[0]['steps']} | {statistics.mean(bpb):.3f}{sd(bpb)} | "
                   f"{statistics.mean(ppl):.1f} | {gen('identity_normalised')} | {gen('coherence')} | "
                   f"{statistics.mean(r['train_s'] for r in rs):.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/distill.jsonl")
    ap.add_argument("--work", default="/tmp/dte-distill")
    ap.add_argument("--teacher", default="")
    ap.add_argument("--budget", type=float, default=1e12)
    ap.add_argument("--depth", type=int, default=0, help="student depth (default: the preset's final depth)")
    ap.add_argument("--width", type=int, default=0, help="student width (default: the preset's d_model; heads = "
                                                          "width / 32)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    ap.add_argument("--preset", default="demo", help="the student's shape and training settings")
    ap.add_argument("--corpus-from", default="", help="a run directory whose corpus/ (clean + logprobs) to train on")
    ap.add_argument("--alpha", type=float, default=0.5, help="the recorded arm's α")
    ap.add_argument("--temperature", type=float, default=1.0, help="the recorded arm's T")
    ap.add_argument("--tail", action="store_true", help="the recorded arm's KL with a rest bucket (train.distill_tail)")
    ap.add_argument("--precision", default="", help="the students' train.precision (default: the preset's)")
    ap.add_argument("--max-minutes", type=float, default=9.0)
    ap.add_argument("--generate", action="store_true", help="also score identity, coherence, diversity and copy rate "
                    "(with intervals) on the VAL prompts")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = read(out)
    if args.report:
        print(report(rows))
        return 0
    cfg = config.load(args.preset)
    config.seed_everything(cfg.seed, cfg.threads)
    from dte_lib import teacher as teacher_mod
    teacher = Path(args.teacher) if args.teacher else teacher_mod.base_model_dir()
    depth = args.depth or int(cfg.train.depths.split(",")[-1])
    width = args.width or cfg.train.d_model
    precision = args.precision or cfg.train.precision
    work = Path(args.work)
    if args.corpus_from:
        work.mkdir(parents=True, exist_ok=True)
        link = work / "corpus"
        if not link.exists():
            link.symlink_to(Path(args.corpus_from).resolve() / "corpus")
    ex = packing.training_examples(cfg, work)
    val = ex["val"]
    evalset = metrics.EvalSet.build(cfg, split="val") if args.generate else None
    subset_vocab = None
    t0 = time.time()
    arms = [(f"recorded-a{args.alpha:g}-T{args.temperature:g}{'-tail' if args.tail else ''}",
             dict(ARMS[a], distill_weight=args.alpha, distill_temperature=args.temperature, distill_tail=args.tail))
            if a == "recorded" else (a, ARMS[a]) for a in args.arms]
    for seed in args.seeds:
        for arm, kw in arms:
            if any(r["arm"] == arm and r["seed"] == seed and r["budget"] == args.budget
                   and r["depth"] == depth and r["d_model"] == width and r.get("preset", "demo") == cfg.name
                   and r.get("precision", "fp32") == precision
                   and r.get("corpus", "seed") == str(args.corpus_from or "seed")
                   and (not args.generate or "identity_normalised" in r) for r in rows):
                continue
            if time.time() - t0 > args.max_minutes * 60:
                print("stopping for this slice (rerun to continue)")
                return 0
            tc = dataclasses.replace(cfg.train, wandb="off", ckpt_every=0, d_model=width, precision=precision,
                                     n_head=max(1, width // 32) if args.width else cfg.train.n_head, **kw)
            if tc.tokenizer == "teacher_subset" and subset_vocab is None:
                subset_vocab = len(distill.subset_for(distill.teacher_tokenizer(teacher_mod.base_model_dir()),
                                                      ex["train"], work / "tokenizer_teacher_subset"))
            vocab = {"teacher": 49_152, "teacher_subset": subset_vocab}.get(tc.tokenizer, tc.vocab_size)
            per_tok = fpt(vocab, tc, depth)
            steps = max(4, round(args.budget / per_tok / (tc.batch_size * tc.block_size)))
            tc = dataclasses.replace(tc, warmup_steps=min(tc.warmup_steps, max(1, steps // 5)),
                                     val_every=max(1, steps // 4))
            tokens = steps * tc.batch_size * tc.block_size
            t1 = time.time()
            name = (f"{arm}-s{seed}" + (f"-{width}x{depth}" if args.width or args.depth else "")
                    + (f"-{precision}" if args.precision else ""))
            res = distill_study.train(cfg, work, name, teacher, depth=depth, tokens=tokens, seed=seed, tc=tc)
            train_s = time.time() - t1
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(str(res["dir"]), dtype=torch.float32)
            lm = metrics.lm_score(model, res["tokenizer"], val)
            row = {"arm": arm, "seed": seed, "budget": args.budget, "depth": depth, "d_model": tc.d_model,
                   "vocab": res["tokenizer_vocab"], "steps": steps, "tokens": tokens, "flops": res["flops"],
                   "answer_perplexity": lm.perplexity, "answer_bits_per_byte": lm.bits_per_byte,
                   "train_s": train_s, "teacher": str(teacher), "split": "val", "preset": cfg.name,
                   "precision": precision, "alpha": tc.distill_weight, "temperature": tc.distill_temperature,
                   "tail": tc.distill_tail,
                   "corpus": str(args.corpus_from or "seed"), "train_examples": len(ex["train"]),
                   "targets": res["targets"]}
            if evalset is not None:
                gen = metrics.evaluate_checkpoint(res["dir"], evalset, cfg, seed=seed)
                row.update({k: gen[k] for k in ["sample_seeds"] + [m + s for m in metrics.INTERVAL_METRICS
                                                                    for s in ("", "_lo", "_hi", "_ci")] if k in gen})
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

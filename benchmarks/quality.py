"""The quality ladder, the data-scaling curve and the sampling defaults, on the corpus that exists (issue 12).

Three parts, each a list of JSONL rows in ``benchmarks/quality.jsonl`` (a rerun skips finished rows, so it runs in
slices under the machine-wide lock):

1. ``data``: a preset's student (``--preset``, demo by default: its TrainCfg's growth schedule, width and tokens)
   trained on the first n conversations of the TRAIN split (a fixed shuffle; ``--synthetic`` adds a clean.jsonl),
   for n in ``--sizes`` (all = the whole split), one tokenizer fitted on the whole train split. Scored on the VAL
   split: answer perplexity and bits/byte (``metrics.lm_score``). A power law ppl = A · n^(−b) is fitted to these points.
2. ``sampling``: the all-data student's answers on the VAL split under a small grid of temperature × top-p ×
   repetition penalty, scored with ``metrics.evaluate`` (identity normalised, diversity, copy rate; coherence is
   reported, not used: the probes are not split), each over ``eval.sample_seeds`` samples with a 95% interval.
   Choice, among settings with diversity ≥ the roadmap's 0.7 and copy rate ≤ 0.05: ``metrics.choose`` on normalised
   identity — the first setting of GRID unless another beats it by more than the interval of the difference.
3. ``ladder``: the TEST split, read once, after the choices: the all-data student with the chosen sampling
   settings, the base SmolLM2-135M-Instruct (the only teacher on this machine: notebook 01's fine-tuned teacher
   is not here) with the same settings, and the scripted references (copied, second halves, shuffled).

Run it: ``timeout 660 python benchmarks/quality.py`` (repeat until it prints "done"), then
``python benchmarks/quality.py --report``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, metrics, packing, progressive  # noqa: E402

GRID = [(t, p, r) for t in (0.5, 0.8, 1.0) for p in (0.9, 1.0) for r in (1.0, 1.3)]


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)


def train_subset(cfg, work: Path, n: int | None, tok, epochs: float = 0.0) -> Path:
    ex = packing.training_examples(cfg, work)
    train = list(ex["train"])
    random.Random(0).shuffle(train)
    sub = train[:n] if n else train
    cache = work / "train" / "cache"
    train_ds = packing.tokenize(sub, tok, cfg.train.assistant_only, cache)
    val_ds = packing.tokenize(ex["val"], tok, False, cache)
    out = work / f"n{len(sub)}"
    tc = dataclasses.replace(cfg.train, wandb="off")
    if epochs:  # the preset's schedule scaled to `epochs` passes over this subset (stage proportions kept)
        n_tok = sum(len(x) for x in train_ds["input_ids"])
        f = epochs * n_tok / sum(st.tokens for st in progressive.build_schedule(tc))
        tc = dataclasses.replace(tc, tokens_per_stage=round(tc.tokens_per_stage * f),
                                 joint_tokens=round(tc.joint_tokens * f), final_tokens=round(tc.final_tokens * f))
    progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, out, seed=cfg.seed, progress=False,
                                   tensorboard=False, on_mismatch="restart").run()
    return out / "checkpoints" / "final"


def load(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(path)))


def score(path, es: metrics.EvalSet, cfg, t: float, p: float, r: float, ppl: bool) -> dict:
    model, tok = load(path)
    system = es.persona["system_prompt"]
    ans = metrics.hf_answerer(model, tok, max_new_tokens=cfg.eval.max_new_tokens, temperature=t, top_p=p,
                              system=system, seed=cfg.seed, batch_size=cfg.eval.batch_size, repetition_penalty=r)
    out = metrics.evaluate(ans, es, model=model if ppl else None, tokenizer=tok if ppl else None,
                           paraphrases=cfg.eval.paraphrases, ppl_examples=cfg.eval.ppl_examples, system=system,
                           samples=cfg.eval.sample_seeds)
    out["params_m"] = sum(x.numel() for x in model.parameters()) / 1e6
    return {k: v for k, v in out.items() if not k.startswith("_")}


def choose(rows: list[dict]) -> dict:
    """Among settings with diversity ≥ 0.7 and copy rate ≤ 0.05 (all, if none passes), the course's one selection
    rule (``metrics.choose``) on normalised identity: the first setting in GRID order (least random first)
    unless a later one beats it by more than the 95% interval of the difference. Prints the reason."""
    ok = [r for r in rows if r["diversity"] >= 0.7 and r["copy_rate"] <= 0.05] or rows
    name = lambda r: f"T {r['temperature']} top-p {r['top_p']} rep {r['repetition_penalty']}"  # noqa: E731
    pick = metrics.choose([(name(r), r["identity_normalised"], r.get("identity_normalised_ci")) for r in ok])
    print(pick.reason)
    return ok[pick.index]


def power_law(rows: list[dict]) -> tuple[float, float]:
    x = np.log([r["n"] for r in rows])
    y = np.log([r["answer_perplexity"] for r in rows])
    b, a = np.polyfit(x, y, 1)
    return math.exp(a), -b  # ppl = A · n^(−b)


def report(rows: list[dict]) -> str:
    out = []
    data = sorted((r for r in rows if r["part"] == "data"), key=lambda r: r["n"])
    if data:
        out += ["| train conversations | tokens | val answer perplexity | val answer bits/byte | train s |",
                "|---|---|---|---|---|"]
        out += [f"| {r['n']} | {r['train_tokens']:,} | {r['answer_perplexity']:.1f} | {r['answer_bits_per_byte']:.3f} "
                f"| {r['train_s']:.0f} |" for r in data]
        if len(data) >= 2:
            A, b = power_law(data)
            need = (20.0 / A) ** (-1.0 / b) if b > 0 else float("inf")
            out += ["", f"Power law over {len(data)} points: val answer perplexity = {A:.3g} · n^(−{b:.3f}); "
                    f"perplexity 20 at n ≈ {need:,.0f} conversations (extrapolated)."]
    samp = [r for r in rows if r["part"] == "sampling"]
    if samp:
        out += ["", "| temperature | top-p | repetition penalty | identity norm. | diversity | coherence | copy rate | "
                "median words |", "|---|---|---|---|---|---|---|---|"]
        best = choose(samp)
        for r in samp:
            mark = " **(chosen)**" if r is best else ""
            out.append(f"| {r['temperature']} | {r['top_p']} | {r['repetition_penalty']}{mark} | "
                       f"{r['identity_normalised']:.3f} | {r['diversity']:.3f} | {r['coherence']:.3f} | "
                       f"{r['copy_rate']:.3f} | {r['answer_words_median']:.0f} |")
    lad = [r for r in rows if r["part"] == "ladder"]
    if lad:
        out += ["", "| model (TEST split) | answer ppl | bits/byte | identity | id. normalised | coherence | "
                "diversity | copy rate |", "|---|---|---|---|---|---|---|---|"]
        for r in lad:
            f = lambda k, fmt="{:.3f}": fmt.format(r[k]) if r.get(k) is not None else "—"  # noqa: E731
            out.append(f"| {r['model']} | {f('perplexity', '{:.1f}')} | {f('bits_per_byte')} | {f('identity')} | "
                       f"{f('identity_normalised')} | {f('coherence')} | {f('diversity')} | {f('copy_rate')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/quality.jsonl")
    ap.add_argument("--work", default="/tmp/dte-quality")
    ap.add_argument("--sizes", default="50,100,0", help="train conversations per data-scaling point (0 = all)")
    ap.add_argument("--max-minutes", type=float, default=9.0)
    ap.add_argument("--synthetic", default="", help="a clean.jsonl (e.g. the `long` run's corpus/clean.jsonl) added "
                    "to the training split; use its own --out and --work")
    ap.add_argument("--preset", default="demo", help="whose student (TrainCfg) and sampling the curve uses")
    ap.add_argument("--epochs", type=float, default=0.0, help="train each data-scaling point for this many passes "
                    "over its subset (the preset's schedule scaled; 0 = the preset's fixed token budget for every n)")
    ap.add_argument("--data-only", action="store_true", help="the data-scaling curve (val) only: no sampling sweep "
                    "and no ladder (for `long`, the ladder row is notebook 11's one read of test)")
    ap.add_argument("--no-ladder", action="store_true", help="stop after the sampling sweep (the TEST split is "
                    "left for the course's own final report)")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="override a preset field, repeatable (e.g. --set train.tokenizer fitted: an earlier student)")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    overrides = dict(args.set)
    out = Path(args.out)
    rows = read(out)
    if args.report:
        print(report(rows))
        return 0
    cfg = config.load(args.preset, overrides)
    config.seed_everything(cfg.seed, cfg.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        (work / "corpus").mkdir(exist_ok=True)
        shutil.copy(args.synthetic, work / "corpus" / "clean.jsonl")
    t0 = time.time()

    def time_left() -> bool:
        if time.time() - t0 > args.max_minutes * 60:
            print("stopping for this slice (rerun to continue)")
            return False
        return True

    tok = progressive.prepare(cfg, work)["tokenizer"]
    examples = packing.training_examples(cfg, work)
    n_all, n_syn, val_ex = len(examples["train"]), examples["synthetic"], examples["val"]
    val_es = metrics.EvalSet.build(cfg)
    for n in [int(x) for x in args.sizes.split(",")]:
        n_eff = n or n_all
        if any(r["part"] == "data" and r["n"] == n_eff for r in rows):
            continue
        if not time_left():
            return 0
        t1 = time.time()
        final = train_subset(cfg, work, n or None, tok, args.epochs)
        train_s = time.time() - t1
        model, mtok = load(final)
        lm = metrics.lm_score(model, mtok, val_ex)
        hist = progressive.read_history(final.parent.parent)
        row = {"part": "data", "n": n_eff, "train_tokens": hist[-1]["tokens"], "flops": hist[-1]["flops"],
               "answer_perplexity": lm.perplexity, "answer_bits_per_byte": lm.bits_per_byte, "train_s": train_s,
               "depths": cfg.train.depths, "d_model": cfg.train.d_model, "split": "val", "synthetic_in_corpus": n_syn,
               "preset": cfg.name, "epochs": args.epochs or None, **({"overrides": overrides} if overrides else {})}
        rows.append(row)
        append(out, row)
    if args.data_only:
        print("done")
        return 0
    student = work / f"n{n_all}" / "checkpoints" / "final"
    for t, p, r in GRID:
        if any(x["part"] == "sampling" and (x["temperature"], x["top_p"], x["repetition_penalty"]) == (t, p, r)
               for x in rows):
            continue
        if not time_left():
            return 0
        row = {"part": "sampling", "temperature": t, "top_p": p, "repetition_penalty": r, "split": "val",
               **score(student, val_es, cfg, t, p, r, ppl=False)}
        rows.append(row)
        append(out, row)
    best = choose([x for x in rows if x["part"] == "sampling"])
    t, p, r = best["temperature"], best["top_p"], best["repetition_penalty"]
    print(f"sampling chosen on val: temperature {t}, top-p {p}, repetition penalty {r}")
    if args.no_ladder:
        print("done")
        return 0
    if not any(x["part"] == "ladder" for x in rows):
        if not time_left():
            return 0
        test_es = metrics.EvalSet.build(cfg, split="test")  # the one read of test, after every choice
        from dte_lib import teacher as teacher_mod
        ladder = [(f"student: {cfg.name} preset ({cfg.train.depths} layers, d{cfg.train.d_model}), {n_all} "
                   f"conversations ({n_syn} synthetic)", student), ("SmolLM2-135M-Instruct base (no fine-tune)",
                                               teacher_mod.base_model_dir())]
        for name, path in ladder:
            row = {"part": "ladder", "model": name, "split": "test", "temperature": t, "top_p": p,
                   "repetition_penalty": r, **score(path, test_es, cfg, t, p, r, ppl=True)}
            append(out, row)
        for name, fn in metrics.reference_answerers(test_es, cfg.seed).items():
            if name == "one repeated answer":
                continue
            res = metrics.evaluate(fn, test_es, paraphrases=cfg.eval.paraphrases)
            append(out, {"part": "ladder", "model": f"reference: {name}", "split": "test",
                         **{k: v for k, v in res.items() if not k.startswith("_")}})
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The distilled student beside the sequence-level one: one fixed-depth student trained from scratch with any of
the tokenizer/distillation settings (:func:`train`), two trained side by side on a run's corpus and scored on the val
answers (:func:`compare`: notebook 07's section 3), and the two terms of their loss plotted (:func:`plot_terms`).

The pieces they put together — the loss, the teacher-vocabulary tokenizer, the recorded top-k on the student's
positions — are :mod:`dte_lib.distill`; the equal-FLOPs verdict over seeds is ``benchmarks/distill.py``, which calls
:func:`train`.
Run it: ``python -m dte_lib.distill_study RUN_DIR [PRESET]`` trains the two side students of notebook 07 on a run
and prints their val answer bits per byte.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

from .distill import build_cache, load_id_map, make_aux_loss, recorded_targets, subset_for, teacher_tokenizer, TopKCache


def train(cfg: Any, run_dir: str | Path, out_name: str, teacher_dir: str | Path, *, depth: int, tokens: int,
          seed: int | None = None, tc: Any = None, progress: bool = False) -> dict[str, Any]:
    """Train a fixed-depth student from scratch on the run's training examples with ``tc.tokenizer`` ("fitted":
    the run's tokenizer; "teacher": the teacher's; "teacher_subset": the teacher's tokens this corpus uses, kept in
    ``run_dir/tokenizer_teacher_subset``) and, when ``tc.distill_weight`` α > 0, the KL term: with
    ``teacher_subset`` to the top-k notebook 02 recorded (``corpus/logprobs.jsonl``), as (1 − α)·CE + α·T²·KL;
    with ``teacher`` to a cache of the teacher run once per packed block, as CE + α·T²·KL (benchmarks/distill.py's
    arm). The data order is ``cfg.seed``'s for every ``seed`` (which sets the initialisation), so one teacher cache
    serves all seeds. Returns ``{"dir", "history", "flops", "tokenizer_vocab", "tokenizer", "targets"}``."""
    from dataclasses import replace
    from . import packing, progressive
    tc = replace(tc or cfg.train)
    seed = cfg.seed if seed is None else seed
    run_dir = Path(run_dir)
    ex = packing.training_examples(cfg, run_dir)
    cache = run_dir / "train" / "cache"
    if tc.tokenizer in ("teacher", "teacher_subset"):
        tok = teacher_tokenizer(teacher_dir)
        if tc.tokenizer == "teacher_subset":
            tok = subset_for(tok, ex["train"], run_dir / "tokenizer_teacher_subset", str(teacher_dir))
        train_ds = packing.tokenize(ex["train"], tok, tc.assistant_only, cache)
        val_ds = packing.tokenize(ex["val"], tok, False, cache)
    elif tc.tokenizer == "fitted":
        prep = progressive.prepare(replace(cfg, train=tc), run_dir)  # the arm's tokenizer, not the preset's
        tok, train_ds, val_ds = prep["tokenizer"], prep["train"], prep["val"]
    else:
        raise ValueError(f"train.tokenizer must be 'fitted', 'teacher' or 'teacher_subset', not {tc.tokenizer!r}")
    aux = targets = None
    if tc.distill_weight > 0 and tc.tokenizer == "teacher_subset":  # the teacher's distributions notebook 02 kept
        from .generate import LOGPROBS
        targets = recorded_targets(ex["train"], train_ds, tok, load_id_map(run_dir / "tokenizer_teacher_subset"),
                                   run_dir / "corpus" / LOGPROBS, tc.distill_topk)
        if not targets["stats"]["targets"]:
            raise ValueError(f"{run_dir}/corpus/{LOGPROBS}: no recorded teacher distribution for the training set")
    elif tc.distill_weight > 0:  # the full teacher vocabulary: run the teacher once per packed block (a cache)
        if tc.tokenizer != "teacher":
            raise ValueError("token-level distillation needs the teacher's token ids: set train.tokenizer "
                             "teacher_subset (or teacher)")
        steps = math.ceil(tokens / (tc.batch_size * tc.block_size))
        path = build_cache(teacher_dir, train_ds, tc.block_size, tc.batch_size, cfg.seed, steps,
                           run_dir / "distill", tc.distill_topk, progress)
        aux = make_aux_loss(TopKCache(path), tc.distill_weight, tc.distill_temperature)
    stage = progressive.Stage(f"s01-final-d{depth}", depth, tokens, "all", tc.lr, "final")
    tr = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, run_dir / out_name, seed=seed, stages=[stage],
                                        aux_loss=aux, progress=progress, tensorboard=False, on_mismatch="restart",
                                        data_seed=cfg.seed, teacher_targets=targets)
    hist = tr.run()
    return {"dir": run_dir / out_name / "checkpoints" / "final", "history": hist, "flops": tr.flops,
            "tokenizer_vocab": len(tok), "tokenizer": tok, "targets": targets["stats"] if targets else None}


def compare(cfg: Any, run_dir: str | Path, *, alpha: float, temperature: float, tokens: int, depth: int,
            seed: int | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Two students trained side by side on the run's corpus with the ``teacher_subset`` tokenizer, the same data,
    initialisation, steps and FLOPs: ``sequence`` (α = 0, the text only) and ``distilled`` (α, T, the teacher's
    recorded top-k). Each under ``run_dir/distill/<arm>`` (resumed when done), scored on the val split's answers
    (:func:`dte_lib.metrics.lm_score`). Returns per arm: ``history``, ``flops``, ``answer_bits_per_byte``,
    ``answer_perplexity``, ``val_loss`` and the targets' statistics."""
    from dataclasses import replace
    from transformers import AutoModelForCausalLM
    from . import metrics, packing, teacher
    run_dir = Path(run_dir)
    val = packing.training_examples(cfg, run_dir)["val"]
    out: dict[str, dict[str, Any]] = {}
    for arm, a in (("sequence", 0.0), ("distilled", float(alpha))):
        tc = replace(cfg.train, tokenizer="teacher_subset", distill_weight=a)
        tc = replace(tc, distill_temperature=float(temperature)) if a else tc  # the sequence arm is reused across T
        res = train(cfg, run_dir, f"distill/{arm}", teacher.base_model_dir(), depth=depth, tokens=tokens,
                    seed=seed, tc=tc, progress=progress)
        model = AutoModelForCausalLM.from_pretrained(str(res["dir"])).eval()
        score = metrics.lm_score(model, res["tokenizer"], val)
        vals = [r["val_loss"] for r in res["history"] if r.get("val_loss") is not None]
        out[arm] = {"history": res["history"], "flops": res["flops"], "alpha": a, "temperature": float(temperature),
                    "answer_bits_per_byte": score.bits_per_byte, "answer_perplexity": score.perplexity,
                    "val_loss": vals[-1] if vals else None, "targets": res["targets"], "vocab": res["tokenizer_vocab"]}
    return out


def plot_terms(arms: dict[str, dict[str, Any]], title: str = ""):
    """Left: the two terms of the loss against tokens — CE of both arms, T²·KL of the distilled one (logged α·T²·KL
    divided by α; only the logged steps whose batch held a recorded answer). Right: validation loss (CE on whole val
    conversations) of both arms."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (arm, r), color in zip(arms.items(), ("tab:gray", "tab:blue")):
        rows = [x for x in r["history"] if "loss" in x and "event" not in x]
        axes[0].plot([x["tokens"] for x in rows], [x["loss"] for x in rows], color=color, lw=1, alpha=0.8,
                     label=f"{arm}: CE")
        kl = [x for x in rows if x.get("distill")]  # a batch holding no recorded answer logs 0: not drawn
        if r["alpha"] > 0 and kl:
            axes[0].plot([x["tokens"] for x in kl], [x["distill"] / r["alpha"] for x in kl], "o--", ms=3,
                         color=color, lw=1, label=f"{arm}: T²·KL (T={r['temperature']:g})")
        val = [x for x in r["history"] if x.get("val_loss") is not None]
        axes[1].plot([x["tokens"] for x in val], [x["val_loss"] for x in val], "o-", ms=3, color=color, label=arm)
    axes[0].set_ylabel("nats per token")
    axes[1].set_ylabel("val loss (nats/token)")
    for ax in axes:
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "sequence-level vs distilled student")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m dte_lib.distill_study RUN_DIR [PRESET]", file=sys.stderr)
        return 2
    cfg = config.load(args[1] if len(args) > 1 else None)
    arms = compare(cfg, args[0], alpha=cfg.train.distill_weight or 0.5, temperature=cfg.train.distill_temperature,
                   tokens=cfg.train.tokens_per_stage // 4, depth=int(cfg.train.depths.split(",")[-1]))
    for arm, r in arms.items():
        print(f"{arm}: α {r['alpha']}, T {r['temperature']}, val answer bits/byte {r['answer_bits_per_byte']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

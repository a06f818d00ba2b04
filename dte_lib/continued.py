"""Continue the progressive trainer from a checkpoint (months 5–12), with the identity mechanisms as switches.

Months 5–12 keep growing the model that months 3–4 left in ``run_dir/checkpoints/final``: each phase is a short
schedule of :class:`dte_lib.progressive.Stage` s run by the one :class:`~dte_lib.progressive.ProgressiveTrainer`
(growth operator, per-stage AdamW, resumable state, checkpoints — nothing re-implemented here). The only addition
is where the first model comes from: the trainer's ``init_model`` hook loads a checkpoint (or builds a fresh model and
applies the persona-aware embedding init), and ``init_id`` ties the resumable state to that starting point.

Mechanisms (``dte_lib.identity``, ``dte_lib.multitask``) enter as data (meta-cognitive turns, self-reference
``loss_weights``) and as the trainer's ``aux_loss`` hook (the multi-task loss).

Explained in notebooks 08–11. Run it: ``python -m dte_lib.continued --preset ci`` grows ci's final model by one layer.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from . import checkpoint as ckpt
from . import identity, multitask, packing, progressive
from . import model as M
from . import tokenizer as toklib


def base_checkpoint(cfg: Any, run_dir: Path) -> Path:
    """``run_dir/checkpoints/final`` (notebook 07's model); trains it with the preset's schedule if it is missing,
    so a phase notebook can also run on its own."""
    final = Path(run_dir) / "checkpoints" / "final"
    if not (final / "config.json").exists():
        prep = progressive.prepare(cfg, run_dir)
        progressive.ProgressiveTrainer(cfg.train, prep["tokenizer"], prep["train"], prep["val"], run_dir,
                                       seed=cfg.seed, progress=False, tensorboard=False,
                                       on_mismatch="restart").run()
    return final


def latest_checkpoint(cfg: Any, run_dir: Path, phases: Sequence[str]) -> Path:
    """The final checkpoint of the first phase directory in ``phases`` that has one (e.g. ``["nb09", "nb08"]``),
    else the month-4 model — so a notebook run on its own still has a model to start from."""
    for name in phases:
        d = Path(run_dir) / name / "checkpoints" / "final"
        if (d / "config.json").exists():
            return d
    return base_checkpoint(cfg, run_dir)


def stages_for(cfg: Any, depths: Sequence[int], steps: int, prefix: str, start_depth: int,
               lr: float) -> list[progressive.Stage]:
    """One stage per depth (growing from ``start_depth``), ``steps`` optimizer steps each, policy from the preset,
    peak learning rate ``lr``."""
    tokens = steps * cfg.train.batch_size * cfg.train.block_size
    out, prev = [], start_depth
    for d in depths:
        kind = "grow" if d > prev else "final"
        out.append(progressive.Stage(f"{prefix}-d{d}" + ("" if kind == "grow" else "-refine"), d, tokens,
                                     "all" if kind == "final" else cfg.train.policy, lr, kind,
                                     tuple(range(prev, d))))
        prev = d
    return out


def train(cfg: Any, run_dir: Path, out_name: str, *, depths: Sequence[int], steps: int,
          init_dir: Path | None = None, examples: Sequence[Any] | None = None, persona: dict | None = None,
          persona_init: bool = False, self_ref_weight: float = 1.0, metacog_fraction: float = 0.0,
          identity_weight: float = 0.0, coherence_weight: float = 0.0, seed: int | None = None,
          train_cfg: Any = None, progress: bool = False, device: Any = None) -> dict[str, Any]:
    """Run one continued (or, with ``init_dir=None``, from-scratch) schedule into ``run_dir/out_name``.

    Returns ``{"dir": final checkpoint dir, "history": rows, "stages": names, "flops": total}``. The tokenizer is
    the run's (``run_dir/tokenizer``); ``examples`` default to the run's training examples (seed TRAIN split +
    ``corpus/clean.jsonl``); the val split is the seed VAL split. Resumes if interrupted. Trains on ``device``
    (default: the preset's ``device``).
    """
    from . import data
    tc = train_cfg or cfg.train
    seed = cfg.seed if seed is None else seed
    tok = toklib.load(Path(run_dir) / "tokenizer") if (Path(run_dir) / "tokenizer" / "tokenizer.json").exists() \
        else progressive.prepare(cfg, run_dir)["tokenizer"]
    ex = packing.training_examples(cfg, run_dir)
    train_ex = list(examples) if examples is not None else ex["train"]
    persona = persona or data.load_persona(cfg.path(cfg.data.persona))
    if metacog_fraction > 0:
        train_ex = identity.metacognitive_transform(train_ex, persona, metacog_fraction, seed)
    out = Path(run_dir) / out_name
    cache = Path(run_dir) / "train" / "cache"
    if self_ref_weight != 1.0:
        train_ds = identity.self_reference_dataset(train_ex, tok, self_ref_weight, tc.assistant_only,
                                                   persona.get("name", "Deep Tree Echo"))
    else:
        train_ds = packing.tokenize(train_ex, tok, tc.assistant_only, cache)
    val_ds = packing.tokenize(ex["val"], tok, False, cache)

    if init_dir is not None:
        from transformers import GPT2LMHeadModel
        start_depth = GPT2LMHeadModel.from_pretrained(str(init_dir)).config.n_layer

        def init():
            return GPT2LMHeadModel.from_pretrained(str(init_dir))
        init_id = "weights-sha256:" + ckpt.file_sha256(Path(init_dir) / "model.safetensors")
    else:
        start_depth = depths[0]
        init_id = f"fresh:persona_init={persona_init}"

        def init():
            m = M.build(len(tok), tc.block_size, tc.d_model, depths[0], tc.n_head, seed=seed,
                        eos_id=tok.eos_token_id, dropout=tc.dropout)
            if persona_init:
                identity.persona_embedding_init(m, tok, persona, cfg.eval.persona_init_mix, seed)
            return m

    # a trained model continues at a share of the peak rate: re-warming a decayed model to the full rate undoes
    # its decay faster than a short stage can recover it (benchmarks/continue_lr.py); a fresh model gets the peak
    lr = tc.lr * (cfg.eval.continue_lr_frac if init_dir is not None else 1.0)
    stages = stages_for(cfg, depths, steps, out_name, start_depth, lr)
    aux = None
    if identity_weight or coherence_weight:
        aux = multitask.make_aux_loss(tok, persona, [e.prompt for e in train_ex], identity_weight=identity_weight,
                                      coherence_weight=coherence_weight, pairs=cfg.eval.coherence_pairs,
                                      system=persona.get("system_prompt"), seed=seed,
                                      max_prefix=min(48, tc.block_size))
    trainer = progressive.ProgressiveTrainer(replace(tc), tok, train_ds, val_ds, out, seed=seed, stages=stages,
                                             aux_loss=aux, aux_wants_hidden=bool(identity_weight), progress=progress,
                                             tensorboard=False, on_mismatch="restart", init_model=init,
                                             init_id=init_id, device=device or cfg.device)
    hist = trainer.run()
    return {"dir": out / "checkpoints" / "final", "history": hist, "stages": [s.name for s in stages],
            "flops": trainer.flops, "train_examples": len(train_ex)}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    from . import config
    from . import device as device_mod
    ap = argparse.ArgumentParser(prog="dte continue", description="Continue training from checkpoints/final.")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--depths", default="", help="comma-separated depths (default: one more layer)")
    ap.add_argument("--steps", type=int, default=None)
    device_mod.add_argument(ap)
    args = ap.parse_args(argv)
    cfg, run_dir = config.setup(args.preset, args.run_dir)
    dev = device_mod.cli_resolve(args.device or cfg.device, "dte continue")
    base = base_checkpoint(cfg, run_dir)
    from transformers import AutoConfig
    d0 = AutoConfig.from_pretrained(str(base)).n_layer
    depths = config.as_list(args.depths) or [d0 + 1]
    res = train(cfg, run_dir, "continued", depths=depths, steps=args.steps or cfg.eval.stage_steps, init_dir=base,
                device=dev)
    print(res["dir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Month 5's self-generation: the partially trained model writes new examples, the month-1 quality filter and
near-duplicate dedup judge them, the survivors join the training corpus, and the model trains on the merge.

Steps (:func:`self_generate`):

1. prompts = the prompt bank (data/prompt_bank.jsonl) in ``dte_lib.prompts``' stratified order — the same scenarios
   the teacher answered in week 1, so a self-generated answer competes with the teacher's;
2. the model answers each with the persona's system prompt (sampling at ``EvalCfg.temperature``, at most
   ``selfgen_max_new_tokens``); an answer that hit the limit is marked ``finish_reason = "length"``;
3. ``dte_lib.quality.filter_examples`` (with the preset's filter thresholds; truncated answers are trimmed to their
   last full sentence first) drops answers with a reason each; ``dte_lib.diversity.dedup`` removes near-duplicates
   among the survivors *and* against the existing training answers;
4. the kept ones are written to ``run_dir/corpus/selfgen.jsonl`` (never into ``clean.jsonl``: the teacher's
   corpus stays the teacher's) and returned for merging.

The honest caveat: a small model's answers are mostly below the filter's bar, and the ones that pass are close to
what it already says — self-training can reinforce its own mistakes. Notebook 08 retrains on the merge and on the
original corpus for the same number of steps and reports both.

Explained in notebook 08 (month 5). Run it: ``python -m dte_lib.selfgen outputs/runs/demo nb08/checkpoints/final``.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from . import data, diversity, metrics, prompts, quality


def self_generate(model_dir: str | Path, cfg: Any, run_dir: str | Path, existing: Sequence[Any] = (),
                  n: int | None = None, seed: int | None = None, device: Any = None) -> dict[str, Any]:
    """Generate ``n`` examples with the checkpoint, filter, dedup; write and return the kept ones with counts.
    The model runs on ``device`` (default: the preset's ``device``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from .device import resolve

    n = n or cfg.eval.selfgen_examples
    seed = cfg.seed if seed is None else seed
    persona = data.load_persona(cfg.path(cfg.data.persona))
    system = persona.get("system_prompt")
    reqs = prompts.plan(prompts.load_bank(cfg.path(cfg.data.prompt_bank)), n, seed=seed, system=system or "")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.to(resolve(device or getattr(cfg, "device", "cpu")))
    user_prompts = [r.prompt for r in reqs]
    ans = metrics.hf_answerer(model, tok, max_new_tokens=cfg.eval.selfgen_max_new_tokens,
                              temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, system=system, seed=seed,
                              batch_size=cfg.eval.batch_size)(user_prompts)
    generated = []
    for req, q, a in zip(reqs, user_prompts, ans):
        n_tok = len(tok(a, add_special_tokens=False)["input_ids"])
        generated.append(data.ChatExample(messages=req.example_messages(a), meta={
            "topic": req.topic, "bank_id": req.bank_id, "source": "selfgen", "model": str(model_dir),
            "finish_reason": "length" if n_tok >= cfg.eval.selfgen_max_new_tokens - 1 else "stop"}))
    fcfg = quality.FilterCfg.from_preset(cfg)
    fcfg.trim_truncated = True
    kept, dropped = quality.filter_examples(generated, persona, fcfg)
    # dedup against each other and against what the model already trains on (existing first, so they win)
    pool = list(existing) + kept
    survivors, removed = diversity.dedup(pool)
    new_ids = {e.id for e in kept}
    final = [e for e in survivors if e.id in new_ids]
    out = Path(run_dir) / "corpus" / "selfgen.jsonl"
    data.write_jsonl(out, final)
    return {"generated": generated, "kept": final, "dropped": dropped, "path": out,
            "counts": {"generated": len(generated), "passed_filter": len(kept), "dropped_filter": len(dropped),
                       "dropped_duplicate": len(kept) - len(final), "kept": len(final)},
            "drop_reasons": dict(Counter(e.meta.get("drop_reason", "?") for e in dropped).most_common())}


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python -m dte_lib.selfgen RUN_DIR MODEL_DIR [PRESET]")
        return 2
    cfg = config.load(argv[2] if len(argv) > 2 else None)
    res = self_generate(Path(argv[0]) / argv[1] if not Path(argv[1]).is_absolute() else argv[1], cfg, argv[0])
    print(res["counts"], res["drop_reasons"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

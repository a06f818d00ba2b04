"""Would int8 weights be worth it? Two kinds, each against the model in the dtype it would replace, on
SmolLM2-135M-Instruct (the teacher's architecture; ``--model DIR`` for another, e.g. the fine-tuned teacher):

* ``all`` / ``per-channel``: dynamic int8 Linear layers (``torch.ao.quantization.quantize_dynamic``: activations
  quantized too) against fp32 — measured, not shipped;
* ``weight-only``: ``dte_lib.server.int8`` (int8 weights, one scale per output row, activations in bf16) against
  bf16 — what ``dte serve --weights int8`` runs.

Measured: one decode step at batch 1, 4 and 64 (CPU seconds of one thread, which a shared machine's load disturbs
far less than wall time), greedy agreement on the seed corpus' VAL prompts (48 new tokens each) and the loss on the
VAL answers.

Run it: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_quantize.py --variant all|per-channel|weight-only`` (about
25 CPU-seconds each); appends to benchmarks/RESULTS-server.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ROOT = Path(__file__).resolve().parent.parent


VARIANTS = {"all": "Dynamic int8 (every nn.Linear incl. the tied output head, per-tensor weights)",
            "per-channel": "Dynamic int8 (nn.Linear except the output head, per-channel weights)",
            "weight-only": "Weight-only int8 (dte_lib.server.int8: every nn.Linear incl. the output head, "
                           "per-row scales, bf16 activations)"}


def quantize_int8(model, variant: str):
    """Dynamic int8 Linear layers (weights int8; activations quantized per batch at run time)."""
    import warnings

    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, and still works
        warnings.simplefilter("ignore")
        head = model.get_output_embeddings()
        spec = {name: (default_dynamic_qconfig if variant == "all" else per_channel_dynamic_qconfig)
                for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and (variant == "all" or m is not head)}
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def step_seconds(model, batch: int, context: int = 120, reps: int = 3) -> float:
    import torch
    ids = torch.randint(0, 1000, (batch, context))
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
        times = []
        for _ in range(reps):
            for layer in cache.layers:  # drop the previous step's token
                layer.keys, layer.values = layer.keys[:, :, :context], layer.values[:, :, :context]
            t = time.process_time()
            model(input_ids=ids[:, :1], cache=cache, use_cache=True)
            times.append(time.process_time() - t)
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--unpadded", action="store_true",
                    help="quality one sequence at a time (no padding rows sharing the activation scale)")
    ap.add_argument("--loss-examples", type=int, default=0, help="VAL answers for the loss (0 = all)")
    ap.add_argument("--variant", default="all", choices=sorted(VARIANTS))
    ap.add_argument("--model", default="", help="a Hugging Face model directory (default: the base teacher)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/RESULTS-server.md"))
    args = ap.parse_args()
    import torch
    from dte_lib import data, teacher
    path = args.model or teacher.base_model_dir()
    model, tok = teacher.load(path, threads=1)
    if args.variant == "weight-only":
        from dte_lib.server.int8 import quantize_weights
        base = "bf16"
        model.to(torch.bfloat16)
        q = teacher.load(path, threads=1)[0].to(torch.bfloat16)
        quantize_weights(q)
    else:
        base = "fp32"
        q = quantize_int8(teacher.load(path, threads=1)[0], args.variant)
    val = data.split(data.load_corpus(ROOT / "data/seed_corpus.jsonl").examples)["val"]
    batches = (1, 4, 64)
    speed = {(name, b): step_seconds(m, b) for name, m in ((base, model), ("int8", q)) for b in batches}

    # greedy agreement: the same VAL prompts (system + user), 48 new tokens, batch decoded left-padded
    tok.padding_side = "left"
    prompts = [teacher.render_chat(tok, [m for m in ex.messages if m["role"] != "assistant"][:2], True)
               for ex in val[:args.prompts]]
    groups = [[p] for p in prompts] if args.unpadded else [prompts]
    outs = {}
    for name, m in ((base, model), ("int8", q)):
        parts = []
        for g in groups:
            enc = tok(g, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                parts.append(m.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                        do_sample=False, pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:])
        outs[name] = torch.cat(parts)
    same_tokens = float((outs[base] == outs["int8"]).float().mean())
    first_diff = []
    for a, b in zip(outs[base].tolist(), outs["int8"].tolist()):
        first_diff.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)))
    identical = sum(d == len(outs[base][0]) for d in first_diff)

    rows = [teacher.encode_for_training(tok, ex.messages, 512) for ex in val[:args.loss_examples or len(val)]]
    with torch.inference_mode():
        loss = {name: teacher.eval_loss(m, rows, tok.pad_token_id, batch_size=1 if args.unpadded else 8)
                for name, m in ((base, model), ("int8", q))}

    lines = [f"\n### {VARIANTS[args.variant]} vs {base} — {time.strftime('%Y-%m-%d %H:%M')}\n",
             f"{Path(path).name}; decode step with a 120-token context, median CPU seconds of one thread; "
             f"`uptime`: {os.popen('uptime').read().strip()}.\n",
             f"| | {base} | int8 | int8 speed-up |", "|---|---|---|---|",
             *[f"| decode step, batch {b} (CPU s) | {speed[(base, b)]:.3f} | {speed[('int8', b)]:.3f} | "
               f"{speed[(base, b)] / speed[('int8', b)]:.2f}× |" for b in batches],
             f"| loss on {len(rows)} VAL answers ({'one at a time' if args.unpadded else 'padded batches of 8'}) "
             f"| {loss[base]:.4f} | {loss['int8']:.4f} | "
             f"{loss['int8'] - loss[base]:+.4f} |",
             "",
             f"Greedy agreement on {len(prompts)} VAL prompts × {args.tokens} new tokens "
             f"({'one prompt at a time' if args.unpadded else 'one left-padded batch'}): {same_tokens:.1%} of the "
             f"token positions equal, {identical}/{len(prompts)} answers identical, first difference at token "
             f"{sorted(first_diff)[len(first_diff) // 2]} (median)."]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

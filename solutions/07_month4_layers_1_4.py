"""Worked solutions to the exercises of notebook 07 (layers 1–4, perplexity, bits per byte).

Run: ``.venv/bin/dte course solution 07 RUN_DIR`` (or ``.venv/bin/python solutions/07_month4_layers_1_4.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import math

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from dte_lib import config, data, diversity, packing, runlog
from dte_lib import model as M
from dte_lib import tokenizer as toklib

hf_logging.disable_progress_bar()
cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
rec = runlog.load(run_dir)["07_month4_layers_1_4"]

# Exercise 1 — perplexity is e^loss. Predict each stage's perplexity from its val loss, then compare.
predicted = [math.exp(x) for x in rec["val_loss_per_stage"]]
worst = max(abs(p - q) / q for p, q in zip(predicted, rec["perplexity_per_stage"]))
print("ex1_predicted_perplexity =", [round(p, 2) for p in predicted])
print("ex1_recorded_perplexity =", [round(p, 2) for p in rec["perplexity_per_stage"]])
print("ex1_max_relative_difference =", worst)

# Exercise 2 — train vs val loss of the final checkpoint on 8 conversations each. Take each conversation's LAST
# block (answer text; the first block is mostly the persona system prompt, identical everywhere). Predict: nearly
# equal — each training block was seen only a few times, so there is little to overfit, and the gap is within the
# noise of 8 conversations (it can come out either way).
tok = toklib.load(run_dir / "tokenizer")
model = AutoModelForCausalLM.from_pretrained(str(run_dir / "checkpoints" / "final")).eval()
ex = packing.training_examples(cfg, run_dir)
T = cfg.train.block_size
losses = {}
for split in ("train", "val"):
    nats, n = 0.0, 0
    for conv in ex[split][:8]:
        ids, labels, _ = toklib.encode_chat(tok, conv.messages, cfg.train.assistant_only)
        ids, labels = torch.tensor([ids[-T:]]), torch.tensor([labels[-T:]])
        k = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            nats += float(M.lm_loss(model(input_ids=ids).logits, labels)) * k
        n += k
    losses[split] = nats / max(n, 1)
    print(f"ex2_{split}_loss =", round(losses[split], 4))
print("ex2_gap_val_minus_train =", round(losses["val"] - losses["train"], 4))
print("ex2_uniform_loss =", round(math.log(len(tok)), 4))

# Exercise 3 — greedy vs sampled answers to one probe. Predict: greedy decoding of a small model either stops at
# once (end-of-text is its single most likely next token) or falls into a loop (low distinct-1); sampling at
# temperature 1.0 says more and repeats less, but drifts.
probe = data.read_rows(cfg.path(cfg.data.probes))[0]["paraphrases"][0]
system = ex["val"][0].system
greedy = M.generate(model, tok, [probe], max_new_tokens=40, system=system)[0]
sampled = M.generate(model, tok, [probe], max_new_tokens=40, system=system, do_sample=True, temperature=1.0,
                     seed=cfg.seed)[0]
print("ex3_greedy =", repr(greedy[:200]))
print("ex3_sampled =", repr(sampled[:200]))
print("ex3_distinct_1_greedy =", round(diversity.distinct_n([greedy], 1), 3))
print("ex3_distinct_1_sampled =", round(diversity.distinct_n([sampled], 1), 3))

"""Worked solutions to the exercises of notebook 06 (tokenizer, packing, the model, growth).

Run: ``.venv/bin/dte course solution 06 RUN_DIR`` (or ``.venv/bin/python solutions/06_month3_progressive.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import math

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from dte_lib import config, packing
from dte_lib import model as M
from dte_lib import tokenizer as toklib

hf_logging.disable_progress_bar()
cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
tc = cfg.train
tok = toklib.load(run_dir / "tokenizer")
stage_dirs = sorted((run_dir / "06_short_run" / "checkpoints").glob("s01-*"))
model = AutoModelForCausalLM.from_pretrained(str(stage_dirs[0])).eval()  # the short run's trained 1-layer model
val = packing.training_examples(cfg, run_dir)["val"]
ids, labels, _ = toklib.encode_chat(tok, val[0].messages, tc.assistant_only)
ids, labels = torch.tensor([ids[:tc.block_size]]), torch.tensor([labels[:tc.block_size]])
T, d, H = ids.shape[1], model.config.n_embd, model.config.n_head

# Exercise 1 — remove the causal mask from the hand-built block. Predict which positions change: every position
# except the last (the last may already look at everything; the others now also see the future).
blk = model.transformer.h[0]
with torch.no_grad():
    x = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(T))
    h = F.layer_norm(x, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    q, k, v = (h @ blk.attn.c_attn.weight + blk.attn.c_attn.bias).split(d, dim=-1)
    q, k, v = (t.view(1, T, H, d // H).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // H)
    outs = {}
    for masked in (True, False):
        s = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")) if masked else scores
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(1, T, d) @ blk.attn.c_proj.weight + blk.attn.c_proj.bias
        x1 = x + a
        h2 = F.layer_norm(x1, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
        mlp = F.gelu(h2 @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias, approximate="tanh")
        outs[masked] = x1 + mlp @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias
    torch.testing.assert_close(outs[True], blk(x))  # the masked version IS the library's block
    changed = (outs[True] - outs[False]).abs().amax(-1)[0] > 1e-5
print("ex1_positions =", T)
print("ex1_positions_changed =", int(changed.sum()))
print("ex1_last_position_changed =", bool(changed[-1]))

# Exercise 2 — the label-shift bug: shift the labels yourself AND let the loss shift them again, so position t is
# scored against token t+2. Predict: the loss rises well above the correct one (the model learned t+1).
with torch.no_grad():
    logits = model(input_ids=ids).logits
right = M.lm_loss(logits, labels)
shifted_twice = M.lm_loss(logits, F.pad(labels[:, 1:], (0, 1), value=-100))
print("ex2_loss_correct =", round(float(right), 4))
print("ex2_loss_shifted_twice =", round(float(shifted_twice), 4))
print("ex2_uniform_loss =", round(math.log(len(tok)), 4))

# Exercise 3 — grow the 1-layer model to 3 layers in one go with each operator; which keeps the logits?
with torch.no_grad():
    for op in M.OPERATORS:
        grown = M.grow(model, 3, op, seed=cfg.seed).eval()
        print(f"ex3_max_logit_change_{op} =", float((grown(input_ids=ids).logits - logits).abs().max()))

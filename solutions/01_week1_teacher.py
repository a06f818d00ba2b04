"""Worked solutions to the exercises of notebook 01 (the teacher and LoRA).

Run: ``.venv/bin/dte course solution 01 RUN_DIR`` (or ``.venv/bin/python solutions/01_week1_teacher.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from dte_lib import config, runlog, teacher

warnings.filterwarnings("ignore", category=FutureWarning)  # peft on a meta model: a deprecation notice

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded

# The teacher's architecture without its weights: a "meta" model has every module and shape but no memory.
tcfg = AutoConfig.from_pretrained(teacher.base_model_dir())
with torch.device("meta"):
    skeleton = AutoModelForCausalLM.from_config(tcfg)
targets = [m for n, m in skeleton.named_modules()
           if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in teacher.LORA_TARGETS]
total = sum(p.numel() for p in skeleton.parameters())

# Exercise 1 — predict the trainable parameters at rank 8, 16 and 32. Each adapted projection W (d_out x d_in)
# gets B (d_out x r) and A (r x d_in): r * (d_in + d_out) parameters, so the count is linear in r.
counts = {r: sum(r * (m.in_features + m.out_features) for m in targets) for r in (8, 16, 32)}
for r, n in counts.items():
    print(f"ex1_lora_params_r{r} =", n, f"({n / total:.2%} of {total:,})")
print("ex1_ratio_32_over_8 =", counts[32] / counts[8])

# Exercise 2 — check the formula against peft itself (the library the fine-tune uses), on the meta skeleton.
with torch.device("meta"):
    peft_model = get_peft_model(AutoModelForCausalLM.from_config(tcfg),
                                LoraConfig(r=cfg.teacher.lora_rank, lora_alpha=2 * cfg.teacher.lora_rank,
                                           target_modules=list(teacher.LORA_TARGETS), task_type="CAUSAL_LM"))
peft_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
print("ex2_rank =", cfg.teacher.lora_rank)
print("ex2_formula =", sum(cfg.teacher.lora_rank * (m.in_features + m.out_features) for m in targets))
print("ex2_peft_trainable =", peft_trainable)

# Exercise 3 — implement merging: y = x W^T + (alpha/r) (x A^T) B^T must equal x (W + (alpha/r) B A)^T.
g = torch.Generator().manual_seed(cfg.seed)
d_in, d_out, r, alpha = 64, 48, 4, 8
f64 = torch.float64  # double precision, so the only difference left is rounding at ~1e-13
W, A, B = (torch.randn(d_out, d_in, generator=g, dtype=f64), torch.randn(r, d_in, generator=g, dtype=f64),
           torch.randn(d_out, r, generator=g, dtype=f64))
x = torch.randn(5, d_in, generator=g, dtype=f64)
adapter = x @ W.T + (alpha / r) * (x @ A.T) @ B.T
merged = x @ (W + (alpha / r) * B @ A).T
print("ex3_max_abs_diff =", float((adapter - merged).abs().max()))
print("ex3_rank_of_update =", int(torch.linalg.matrix_rank(B @ A)))

# Exercise 4 — how much did the fine-tune lower the validation loss in this run, in nats and as a perplexity
# ratio? (Notebook 01 recorded both losses.)
rec = runlog.load(run_dir).get("01_week1_teacher", {})
base, tuned = rec.get("val_loss_base"), rec.get("val_loss_finetuned")
print("ex4_val_loss_drop =", round(base - tuned, 4) if base is not None and tuned is not None else None)
print("ex4_perplexity_ratio =", round(float(torch.tensor(base - tuned).exp()), 3) if base and tuned else None)

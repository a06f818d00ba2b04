"""Worked solutions to the exercises of notebook 11 (the multi-task loss and the final evaluation).

Run: ``.venv/bin/dte course solution 11 RUN_DIR`` (or ``.venv/bin/python solutions/11_months10_12_refine.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import math

import torch

from dte_lib import config, data, multitask

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
g = torch.Generator().manual_seed(cfg.seed)
k, dim = 8, 384

# Exercise 1 — predict the coherence term (InfoNCE, tau = 0.1) for k = 8 pairs: (a) both phrasings give the SAME
# state: the diagonal logits are 1/tau = 10, far above the rest, so the loss is near 0; (b) unrelated states: no
# row can find its partner, the loss is about log k = 2.08 — a little above it, as random similarities add noise;
# (c) every state identical (the collapse the contrast forbids): all logits equal, exactly log k.
z = torch.randn(k, dim, generator=g)
print("ex1_same_states =", round(float(multitask.info_nce(z, z)), 4))
print("ex1_unrelated_states =", round(float(multitask.info_nce(z, torch.randn(k, dim, generator=g))), 4))
print("ex1_collapsed_states =", round(float(multitask.info_nce(torch.ones(k, dim), torch.ones(k, dim))), 4))
print("ex1_log_k =", round(math.log(k), 4))

# Exercise 2 — the identity term's range: 1 − cos(P·pool(h), p). With P the identity matrix, hidden states equal
# to p give 0, states equal to −p give 2, states orthogonal to p give 1. Untrained hidden states through a random
# projection are nearly orthogonal to p: the term starts near 1.
p = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
labels = torch.zeros(1, 5, dtype=torch.long)  # every position trained
eye = torch.eye(dim)
ortho = torch.randn(dim, generator=g)
ortho -= (ortho @ p) * p
for name, h in {"aligned": p, "opposite": -p, "orthogonal": ortho}.items():
    print(f"ex2_identity_{name} =", abs(round(float(multitask.identity_loss(h.expand(1, 5, dim), labels, eye, p)), 4)))

# Exercise 3 — read the multi-task arm's last training step: the logged identity/coherence values are already
# weighted. Recover the raw terms and predict the total loss had identity_weight been doubled.
hist = data.read_rows(run_dir / "nb11-multitask" / "train" / "history.jsonl")
last = [r for r in hist if "identity" in r][-1]
raw_id, raw_coh = last["identity"] / cfg.eval.identity_weight, last["coherence"] / cfg.eval.coherence_weight
print("ex3_raw_identity_term =", round(raw_id, 4))
print("ex3_raw_coherence_term =", round(raw_coh, 4), "log k =", round(math.log(cfg.eval.coherence_pairs), 4))
total = last["loss"] + last["identity"] + last["coherence"]
print("ex3_total_loss =", round(total, 4))
print("ex3_total_with_double_identity_weight =", round(total + last["identity"], 4))

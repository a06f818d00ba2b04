"""Worked solutions to the exercises of notebook 10 (identity mechanisms and their ablation).

Run: ``.venv/bin/dte course solution 10 RUN_DIR`` (or ``.venv/bin/python solutions/10_months7_9_identity.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""

import torch
import torch.nn.functional as F

from dte_lib import config, data, identity
from dte_lib import model as M

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded

# Exercise 1 — predict which sentences self-reference weighting up-weights: those about the speaker (I / me / my,
# or the persona's name), not those about the world.
text = ("I am Deep Tree Echo. Photosynthesis turns light into sugar. My reservoirs keep an echo of every input. "
        "Rivers carve valleys slowly. Deep Tree Echo remembers through its membranes.")
spans = identity.self_reference_spans(text)
print("ex1_up_weighted =", [text[a:b].strip() for a, b in spans])
print("ex1_count =", len(spans))

# Exercise 2 — implement the weighted loss by hand: sum(w · nll) / sum(w) over trained tokens. Predict: weights
# that are the same everywhere (all 2.0) leave the loss unchanged — only their ratios matter, so self-reference
# weighting shifts the loss toward some tokens without changing its scale.
g = torch.Generator().manual_seed(cfg.seed)
logits, labels = torch.randn(2, 12, 50, generator=g), torch.randint(0, 50, (2, 12), generator=g)
labels[0, :4] = -100  # a prompt that is not trained on
w = torch.ones(2, 12)
w[1, 6:] = cfg.eval.self_ref_weight  # one self-referential sentence
nll = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100,
                      reduction="none")
keep = (labels[:, 1:] != -100).reshape(-1).float()
wt = w[:, 1:].reshape(-1) * keep
print("ex2_weighted_by_hand =", round(float((nll * wt).sum() / wt.sum()), 5))
print("ex2_weighted_library =", round(float(M.lm_loss(logits, labels, w)), 5))
print("ex2_all_twos_minus_unweighted =", float(M.lm_loss(logits, labels, torch.full((2, 12), 2.0))
                                               - M.lm_loss(logits, labels)))

# Exercise 3 — read the ablation (eval/ablation_nb10.jsonl: one row per arm and seed): each arm's normalised
# identity and perplexity minus plain's at the same seed. Predict: at one seed and a few steps the differences are
# noise (benchmarks/RESULTS-identity.md: over 3 seeds, no mechanism moved identity beyond seed noise).
rows = data.read_rows(run_dir / "eval" / "ablation_nb10.jsonl")
plain = {r["seed"]: r for r in rows if r["arm"] == "plain"}
for r in rows:
    if r["arm"] != "plain" and r["seed"] in plain:
        p = plain[r["seed"]]
        print(f"ex3_{r['arm']}_seed{r['seed']}_minus_plain = identity_normalised "
              f"{r['identity_normalised'] - p['identity_normalised']:+.3f} perplexity {r['perplexity'] - p['perplexity']:+.1f}")
print("ex3_arms =", len({r["arm"] for r in rows}), "seeds", len({r["seed"] for r in rows}))

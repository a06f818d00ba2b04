"""Worked solutions to the exercises of notebook 05 (infrastructure and the budget).

Run: ``.venv/bin/dte course solution 05 RUN_DIR`` (or ``.venv/bin/python solutions/05_month2_infrastructure.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import dataclasses

from dte_lib import config, planner, runlog

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded

# Exercise 1 — predict the 4-layer, 768-wide model's size with an 8,192-token vocabulary instead of 50,257. Only
# the token table changes: (50,257 − 8,192) × 768 = 32,305,920 parameters fewer.
big, small = planner.param_count(planner.gpt2(4)), planner.param_count(planner.gpt2(4, vocab_size=8_192))
print("ex1_params_vocab_50257 =", big)
print("ex1_params_vocab_8192 =", small)
print("ex1_difference =", big - small, "expected", (50_257 - 8_192) * 768)

# Exercise 2 — halve the assumed GPU utilisation (MFU). Hours = FLOPs / (peak × utilisation), so every phase's
# GPU-hours double and so does the cloud bill; the break-even hours do not move (they depend on prices only).
tpe = runlog.load(run_dir).get("05_month2_infrastructure", {}).get("tokens_per_example_mean") or 295.0
reps = {u: planner.reproduce(planner.plan_inputs(dataclasses.replace(cfg.scale, utilisation=u), tpe))
        for u in (cfg.scale.utilisation, cfg.scale.utilisation / 2)}
(u_hi, rep_hi), (u_lo, rep_lo) = reps.items()
ratio = rep_lo["budget"]["cloud_gpu_h"] / rep_hi["budget"]["cloud_gpu_h"]
print("ex2_utilisations =", u_hi, u_lo)
print("ex2_cloud_gpu_h_ratio =", round(ratio, 6))
print("ex2_cloud_usd_high =", round(rep_hi["budget"]["cloud_usd_high"], 2), "->",
      round(rep_lo["budget"]["cloud_usd_high"], 2))

# Exercise 3 — implement the FLOPs-per-token count by hand for GPT-2 small (12 × 768, context 1024):
# 6 × (matmul weights: 12·d² per block + the tied head V·d) + 12·L·d·T for attention scores and values.
L, d, V, T = 12, 768, 50_257, 1024
by_hand = 6 * (L * 12 * d * d + V * d) + 12 * L * d * T
print("ex3_flops_per_token_by_hand =", by_hand)
print("ex3_flops_per_token_planner =", int(planner.flops_per_token(planner.gpt2(12), 1024)))
print("ex3_attention_share =", round(12 * L * d * T / by_hand, 3))

"""Worked solutions to the exercises of notebook 12 (scaling to 1B, DDP vs FSDP2, torchrun).

Run: ``.venv/bin/dte course solution 12 RUN_DIR`` (or ``.venv/bin/python solutions/12_month13_scaling.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""

from dte_lib import config, planner, runlog

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
rec = runlog.load(run_dir)["12_month13_scaling"]

# Exercise 1 — predict the width a 1B GPT-2 needs at 32 layers instead of 24. Blocks hold ~12·L·d² parameters,
# so at fixed N the width scales like 1/sqrt(L): 1792 · sqrt(24/32) ≈ 1552 → 1600, the next multiple of 64.
for layers in (24, 32, 48):
    d = planner.width_for_params(1e9, layers)
    print(f"ex1_width_for_1b_at_{layers}_layers =", d, f"({planner.param_count(planner.gpt2(layers, d)):,} params)")

# Exercise 2 — FSDP2 on 16 GPUs instead of 8: the 16 bytes per parameter of weights, gradients and AdamW states
# are split 16 ways instead of 8, the activations of each GPU's own micro-batch are not. Predict the states halve.
m = planner.gpt2(24, planner.width_for_params(1e9, 24))
rows = {r["devices"]: r for r in planner.parallel_memory(m, 1, 1024, (1, 8, 16))}
print("ex2_ddp_gib =", round(rows[1]["ddp_gib"], 2))
print("ex2_fsdp_states_gib_8 =", round(rows[8]["fsdp_states_gib"], 3))
print("ex2_fsdp_states_gib_16 =", round(rows[16]["fsdp_states_gib"], 3))
print("ex2_states_ratio =", round(rows[8]["fsdp_states_gib"] / rows[16]["fsdp_states_gib"], 4))
print("ex2_activations_gib_8_vs_16 =", round(rows[8]["activations_gib"], 3), round(rows[16]["activations_gib"], 3))

# Exercise 3 — compute the largest relative difference between the one-process and the torchrun per-step losses
# by hand from the recorded lists, and compare it with the notebook's figure.
diffs = [abs(a - b) / abs(a) for a, b in zip(rec["losses_single"], rec["losses_dist"])]
print("ex3_steps =", len(diffs))
print("ex3_max_rel_diff_by_hand =", max(diffs))
print("ex3_max_rel_diff_recorded =", rec["max_loss_rel_diff"])

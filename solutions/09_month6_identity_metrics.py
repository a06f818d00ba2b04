"""Worked solutions to the exercises of notebook 09 (the four success metrics, floors and ceilings).

Run: ``.venv/bin/dte course solution 09 RUN_DIR`` (or ``.venv/bin/python solutions/09_month6_identity_metrics.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
The exercises score scripted answers against the VAL split's references: the test split is for the final report.
"""

from transformers.utils import logging as hf_logging

from dte_lib import config, data, metrics, runlog

hf_logging.disable_progress_bar()

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
rec = runlog.load(run_dir)["09_month6_identity_metrics"]

# Exercise 1 — normalise by hand: (identity − floor) / (ceiling − floor). A model below its floor gets a negative
# score: its answers are less like the right reference than a right-voice answer to a different question is.
x, lo, hi = rec["month6_identity"], rec["month6_identity_floor"], rec["month6_identity_ceiling"]
print("ex1_identity =", round(x, 4), "floor", round(lo, 4), "ceiling", round(hi, 4))
print("ex1_normalised_by_hand =", round((x - lo) / (hi - lo), 4))
print("ex1_normalised_recorded =", round(rec["month6_identity_normalised"], 4))

# Exercise 2 — predict before running: a copied reference scores identity 1.0 (normalised far above 1); the first
# half of each reference lands above the ceiling (it shares words with the whole); the right voice on the wrong
# question (references shifted by one) lands at the floor (normalised ~0).
ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
val = [e for e in data.split(ex, cfg.data.val_fraction, cfg.data.test_fraction)["val"] if e.prompt and e.response]
refs = [e.response for e in val[:8]]
bounds = metrics.identity_reference_bounds(refs, cfg.seed)
summary = data.load_persona(cfg.path(cfg.data.persona))["summary"]
answerers = {"copied": refs, "first_halves": [" ".join(r.split()[: len(r.split()) // 2]) for r in refs],
             "wrong_question": refs[1:] + refs[:1], "persona_summary": [summary] * len(refs)}
for name, answers in answerers.items():
    r = metrics.identity_consistency(answers, refs, bounds=bounds, seed=cfg.seed)
    print(f"ex2_{name} = identity {r['identity']:.3f} normalised {r['normalised']:.2f} shuffled {r['shuffled']:.3f}")

# Exercise 3 — the persona summary, repeated as every answer (the last row above): prompt-independent, so its
# identity equals its shuffled score — the signature of a model that ignores the question.
r = metrics.identity_consistency(answerers["persona_summary"], refs, bounds=bounds, seed=cfg.seed)
print("ex3_identity_minus_shuffled =", round(r["identity"] - r["shuffled"], 6))

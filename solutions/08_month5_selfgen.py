"""Worked solutions to the exercises of notebook 08 (layers 5–8 and self-generation).

Run: ``.venv/bin/dte course solution 08 RUN_DIR`` (or ``.venv/bin/python solutions/08_month5_selfgen.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""

from dte_lib import config, metrics, packing, runlog

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
rec = runlog.load(run_dir)["08_month5_selfgen"]

# Exercise 1 — how much of the model's own output survived, and did retraining on it beat the control? Predict:
# few survive, and the self-gen − control differences are of the size of run-to-run noise (one seed each).
generated, kept = rec["selfgen_generated"], rec["selfgen_kept"]
print("ex1_generated =", generated)
print("ex1_kept =", kept)
print("ex1_survival_rate =", round(kept / max(generated, 1), 3))
for m in ("identity", "perplexity", "diversity", "coherence"):
    print(f"ex1_selfgen_minus_control_{m} =", round(rec[f"selfgen_{m}"] - rec[f"control_{m}"], 4))

# Exercise 2 — implement the copy rate by hand: the share of an answer's word 8-grams found verbatim in the
# training answers. Predict 1.0 for a training answer itself, about half for its first half followed by new words,
# and 0 for text shorter than 8 words.
train = [ex.response for ex in packing.training_examples(cfg, run_dir)["train"]]
grams = metrics.training_ngrams(train)
words = metrics.words(train[0])
half = " ".join(words[: len(words) // 2] + [f"novel{i}" for i in range(len(words) - len(words) // 2)])
for name, text in {"verbatim": train[0], "half_copied": half, "short": "I am Deep Tree Echo."}.items():
    ngr = metrics.ngrams(metrics.words(text), 8)
    by_hand = sum(g in grams for g in ngr) / len(ngr) if ngr else 0.0
    print(f"ex2_copy_rate_{name} =", round(by_hand, 3), "library", round(metrics.copy_rate([text], grams), 3))

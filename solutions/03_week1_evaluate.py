"""Worked solutions to the exercises of notebook 03 (evaluate the synthetic corpus and decide).

Run: ``.venv/bin/dte course solution 03 RUN_DIR`` (or ``.venv/bin/python solutions/03_week1_evaluate.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import dataclasses
import json

from dte_lib import config, corpus, data, diversity, quality

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
persona = data.load_persona(cfg.path(cfg.data.persona))
seed = data.load_corpus(cfg.path(cfg.data.corpus)).examples

# Exercise 1 — raise the filter's minimum answer length and predict the false-drop rate on the hand-written seed
# corpus. Every seed answer is good text, so every extra drop is a false alarm; the shortest seed answers are
# ~27 words, so nothing changes until min_words passes them, then "too_short" drops climb quickly.
base = quality.FilterCfg.from_preset(cfg)
for min_words in (base.min_words, 30, 60, 100):
    kept, dropped = quality.filter_examples(seed, persona, dataclasses.replace(base, min_words=min_words))
    print(f"ex1_false_drop_rate_min_words_{min_words} =", round(len(dropped) / len(seed), 3),
          {k: v for k, v in quality.reason_counts(dropped).items() if v})

# Exercise 2 — what would have to change for "proceed"? Read the decision file and print each failing check with
# the value it had and the threshold it needed.
decision = json.loads((corpus.corpus_dir(run_dir) / "week1_decision.json").read_text())
print("ex2_decision =", decision["decision"])
for row in decision["checks"]:
    if not row["pass"]:
        print(f"ex2_failing_{row['check']} =", row["value"], "needs", row["needs"])
print("ex2_failing_count =", len(decision["failing"]))

# Exercise 3 — implement distinct-2 by hand (distinct word bigrams / all word bigrams, over all kept answers) and
# compare with the library's.
kept = [json.loads(line)["messages"][-1]["content"]
        for line in (corpus.corpus_dir(run_dir) / "kept.jsonl").read_text().splitlines() if line.strip()]
bigrams = [tuple(w[i:i + 2]) for t in kept for w in [diversity.tokens(t)] for i in range(len(w) - 1)]
by_hand = len(set(bigrams)) / len(bigrams) if bigrams else 0.0
print("ex3_kept_answers =", len(kept))
print("ex3_distinct_2_by_hand =", round(by_hand, 4))
print("ex3_distinct_2_library =", round(diversity.distinct_n(kept, 2), 4))

"""Worked solutions to the exercises of notebook 00 (setup and tour).

Run: ``.venv/bin/dte course solution 00 RUN_DIR`` (or ``.venv/bin/python solutions/00_setup_and_tour.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import collections

from dte_lib import config, data

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
examples = data.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples

# Exercise 1 — double the validation share. Prediction: the split compares one hash value u per example with
# test_fraction and test_fraction + val_fraction, so raising val_fraction can only move examples from train to val;
# test does not change at all.
before = data.split(examples, cfg.data.val_fraction, cfg.data.test_fraction)
after = data.split(examples, 2 * cfg.data.val_fraction, cfg.data.test_fraction)
where = {ex.id: name for name, rows in before.items() for ex in rows}
moves = collections.Counter(f"{where[ex.id]}->{name}" for name, rows in after.items() for ex in rows
                            if where[ex.id] != name)
print("ex1_sizes_before =", {k: len(v) for k, v in before.items()})
print("ex1_sizes_after =", {k: len(v) for k, v in after.items()})
print("ex1_moves =", dict(moves))
print("ex1_test_unchanged =", [ex.id for ex in before["test"]] == [ex.id for ex in after["test"]])

# Exercise 2 — near-duplicates at a lower Jaccard threshold. A lower threshold can only add pairs (every pair at
# >= 0.5 is also >= 0.3). What shows up first are answers sharing the persona's stock phrases.
answers = [ex.response for ex in examples]
for threshold in (0.5, 0.3, 0.2, 0.1):
    pairs = data.near_duplicate_pairs(answers, threshold=threshold)
    print(f"ex2_pairs_at_{threshold} =", len(pairs))
closest = data.near_duplicate_pairs(answers, threshold=0.0)[0]
print("ex2_closest_jaccard =", round(closest[2], 3))
print("ex2_closest_pair =", examples[closest[0]].id, examples[closest[1]].id)

# Exercise 3 — the median assistant length per topic (a variant of corpus_stats): which topic talks longest?
by_topic = collections.defaultdict(list)
for ex in examples:
    by_topic[ex.topic].append(data.word_count(ex.assistant_text()))
medians = {t: sorted(v)[len(v) // 2] for t, v in by_topic.items()}
longest = max(medians, key=medians.get)
print("ex3_topics =", len(medians))
print("ex3_longest_topic =", longest, medians[longest])
print("ex3_shortest_topic =", min(medians, key=medians.get), min(medians.values()))

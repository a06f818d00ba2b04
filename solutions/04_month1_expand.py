"""Worked solutions to the exercises of notebook 04 (expand, filter, deduplicate, review).

Run: ``.venv/bin/dte course solution 04 RUN_DIR`` (or ``.venv/bin/python solutions/04_month1_expand.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""

from dte_lib import config, data, diversity, review

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded
seed = data.load_corpus(cfg.path(cfg.data.corpus)).examples
answer = seed[0].response

# Exercise 1 — predict the word-3-gram Jaccard between an answer and a copy with every k-th word replaced. Each
# replaced word breaks up to 3 of the trigrams that contain it, so with k = 10 about 30% of trigrams change on each
# side: Jaccard ~ 0.7/1.3 ~ 0.54 — BELOW the 0.6 threshold, so this paraphrase survives dedup.
words = answer.split()
for k in (20, 10, 5):
    variant = " ".join("zzz" if i % k == k - 1 else w for i, w in enumerate(words))
    jac = diversity.jaccard(diversity.shingle_set(answer), diversity.shingle_set(variant))
    print(f"ex1_jaccard_every_{k}th_word =", round(jac, 3), "caught" if jac >= cfg.generate.dedup_jaccard else "missed")

# Exercise 2 — how many answers does the 1% review read at the demo's 17 clean examples, at the long preset's
# ~3,000 and at the roadmap's 100,000? (1%, at least review_min, at most all.)
for n in (17, 3_000, 100_000):
    print(f"ex2_review_sample_of_{n} =", len(review.sample(list(range(n)), cfg.generate.review_fraction,
                                                             cfg.generate.review_min, seed=cfg.seed)))

# Exercise 3 — a dedup variant that keeps the LONGEST answer of each near-duplicate cluster instead of the first.
# Test it on the seed answers plus two edited copies of answer 0 (one shortened, one lengthened).
texts = [ex.response for ex in seed[:40]]
texts += [" ".join(words[:-5]), answer + " And that is the whole of it, echoing on."]
clusters = diversity.near_duplicate_clusters(texts, cfg.generate.dedup_jaccard)
keep = {max(c, key=lambda i: len(texts[i])) for c in clusters}
removed = {i for c in clusters for i in c} - keep
print("ex3_clusters =", [sorted(c) for c in clusters])
print("ex3_kept_longest =", sorted(keep))
print("ex3_removed =", len(removed), "of", len(texts))

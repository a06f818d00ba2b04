"""Worked solutions to the exercises of notebook 02 (generating the synthetic corpus).

Run: ``.venv/bin/dte course solution 02 RUN_DIR`` (or ``.venv/bin/python solutions/02_week1_generate.py RUN_DIR``),
RUN_DIR being the run directory the course wrote; the preset is the one that run recorded. Each answer is
printed as ``name = value``.
"""
import collections

from transformers import AutoTokenizer

from dte_lib import config, corpus, data, generate, prompts, teacher

cfg, run_dir = config.setup_run()  # the run directory argument, and the preset that run recorded

# Exercise 1 — predict: is the plan for 3x as many examples an extension of this run's plan? Yes: the plan is
# built in shuffled rounds seeded by (seed, round) alone, so a longer plan starts with the shorter one, id for id.
# That is what lets notebook 04 expand by resuming.
n = cfg.generate.n_examples
short, longer = prompts.plan_from_config(cfg, n), prompts.plan_from_config(cfg, 3 * n)
print("ex1_prefix_stable =", [r.id for r in longer[:n]] == [r.id for r in short])
print("ex1_topics_in_first_13 =", len({r.topic for r in prompts.plan_from_config(cfg, 13)}))
other_seed = prompts.plan(prompts.load_bank(cfg.path(cfg.data.prompt_bank)), n, seed=cfg.seed + 1)
print("ex1_other_seed_same_order =", [r.bank_id for r in other_seed] == [r.bank_id for r in short])

# Exercise 2 — what share of this run's answers hit max_tokens (finish_reason "length")?
rows = generate.read_raw(corpus.corpus_dir(run_dir) / generate.RAW)
finish = collections.Counter(r["finish_reason"] for r in rows)
print("ex2_answers =", len(rows))
print("ex2_finish_reasons =", dict(finish))
print("ex2_truncated_share =", round(finish.get("length", 0) / max(len(rows), 1), 3))

# Exercise 3 — size max_tokens from data: how many teacher tokens do the seed corpus' own answers take? A limit
# at the 80th percentile lets ~80% of answers of that length end on their own.
tok = AutoTokenizer.from_pretrained(teacher.base_model_dir())
seed = data.load_corpus(cfg.path(cfg.data.corpus), strict=True).examples
lengths = sorted(len(tok(ex.response, add_special_tokens=False)["input_ids"]) for ex in seed)
p80 = lengths[int(0.8 * (len(lengths) - 1))]
print("ex3_seed_answer_tokens_median =", lengths[len(lengths) // 2])
print("ex3_seed_answer_tokens_p80 =", p80)
budget = prompts.answer_budget(cfg)  # what the course sends: a percentile of the TRAIN answers, capped per preset
print("ex3_preset_max_tokens =", budget.max_tokens, f"(p{budget.percentile:g} of train answers: {budget.corpus_tokens})")
print("ex3_share_fitting_preset_limit =", round(sum(x <= budget.max_tokens for x in lengths) / len(lengths), 3))

"""The course as a course: every notebook states its run time, ends with exercises whose worked solutions
(``solutions/NN_*.py``) run against the ci course, and states the ranges the ci run must land in.

A notebook states a ci range in a "You should see" cell as a line ``ci: KEY in [LO, HI]`` (in backticks), where
KEY is a key of that notebook's record in ``metrics.json`` (dotted for nested values, ``.N`` / ``.-1`` for a list
item; booleans count as 0/1). The light tests check the statements are there and well formed; the ``course``
tests check them against the ci run and run every solution on it.
"""
from __future__ import annotations

import ast
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest

from dte_lib import config, course

NOTEBOOKS = course.notebooks()
STEMS = [p.stem for p in NOTEBOOKS]
SOLUTIONS = config.REPO_ROOT / "solutions"
RANGE = re.compile(r"`ci: ([A-Za-z0-9_.\-]+) in \[([^,\]]+), ([^\]]+)\]`")
PRINTED = re.compile(r"run `(\.venv/bin/dte course solution \d\d <run directory>)`")
RUN_TIME = re.compile(r"\*\*Run time:\*\* ci ~(\d+) s · demo ~(\d+) s · long ~(\d+) (s|min) \(([^)]+)\)")


def _markdown(path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def stated_ranges(path) -> list[tuple[str, float, float]]:
    return [(key, float(lo), float(hi)) for text in _markdown(path) for key, lo, hi in RANGE.findall(text)]


def lookup(record: dict, key: str):
    """``a.b.-1`` → record["a"]["b"][-1]; KeyError/IndexError name the missing part."""
    value = record
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# ---------------------------------------------------------------------------------------------- light
@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_notebook_states_its_run_time_per_preset(path):
    header = _markdown(path)[0]
    m = RUN_TIME.search(header)
    assert m, f"{path.name}: the header needs '**Run time:** ci ~N s · demo ~N s · long ~N min (where and when measured)'"
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0 and int(m.group(3)) > 0 and "measured" in m.group(5)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_notebook_ends_with_exercises_and_a_worked_solution(path):
    last = _markdown(path)[-1]
    assert last.startswith("## Exercises"), f"{path.name}: the last cell should be the exercises"
    items = re.findall(r"^\d+\. ", last, flags=re.M)
    assert 2 <= len(items) <= 4, f"{path.name}: {len(items)} exercises (want 2–4)"
    assert f"solutions/{path.stem}.py" in last
    assert (SOLUTIONS / f"{path.stem}.py").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_notebook_states_well_formed_ci_ranges(path):
    ranges = stated_ranges(path)
    assert ranges, f"{path.name}: no 'ci: KEY in [LO, HI]' line in a 'You should see' cell"
    for key, lo, hi in ranges:
        assert lo <= hi, f"{path.name}: {key} in [{lo}, {hi}] is empty"
    assert any("You should see" in t for t in _markdown(path))


def test_every_solution_belongs_to_a_notebook():
    assert sorted(p.stem for p in SOLUTIONS.glob("*.py")) == STEMS


# ---------------------------------------------------------------------------------------------- the ci course
@pytest.mark.course
def test_ci_run_lands_in_the_ranges_the_notebooks_state(ci_metrics):
    problems = []
    for path in NOTEBOOKS:
        record = ci_metrics.get(path.stem, {})
        for key, lo, hi in stated_ranges(path):
            try:
                value = lookup(record, key)
            except (KeyError, IndexError, ValueError, TypeError):
                problems.append(f"{path.stem}: {key} is not in metrics.json")
                continue
            if value is None or not (lo <= float(value) <= hi):
                problems.append(f"{path.stem}: {key} = {value}, stated [{lo:g}, {hi:g}]")
    assert not problems, "the ci run left the ranges its notebooks state:\n" + "\n".join(problems)


@pytest.mark.course
def test_stated_ci_run_time_is_the_order_of_the_measured_one(ci_run):
    """Stated times come from a quiet machine; under a loaded test run a notebook may take a few times longer."""
    seconds = {k: v.get("seconds") for k, v in course.load_state(ci_run)["notebooks"].items()}
    for path in NOTEBOOKS:
        stated = int(RUN_TIME.search(_markdown(path)[0]).group(1))
        measured = seconds.get(path.stem)
        assert measured is not None
        assert measured <= 5 * stated + 60 and stated <= 5 * measured + 60, \
            f"{path.stem}: header says ci ~{stated} s, this run took {measured:.0f} s — update the header"


def _num(text: str, i: int = 0) -> float:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)][i]


def _flag(text: str) -> bool:
    return text.split()[0] == "True"


def _rates_rise_with_min_words(a: dict) -> bool:
    """A stricter minimum length can only add false drops on the seed corpus."""
    prefix = "ex1_false_drop_rate_min_words_"
    rates = [_num(v) for _, v in sorted((int(k[len(prefix):]), v) for k, v in a.items() if k.startswith(prefix))]
    return len(rates) >= 3 and rates == sorted(rates) and rates[-1] > rates[0]


# What each solution's printed answers must satisfy (things the exercise teaches, so a wrong solution fails).
CHECKS = {
    "00_setup_and_tour": lambda a: [
        _flag(a["ex1_test_unchanged"]),
        set(ast.literal_eval(a["ex1_moves"])) == {"train->val"},
        _num(a["ex2_pairs_at_0.5"]) <= _num(a["ex2_pairs_at_0.3"]) <= _num(a["ex2_pairs_at_0.1"]),
        _num(a["ex3_topics"]) == 13,
    ],
    "01_week1_teacher": lambda a: [
        _num(a["ex1_lora_params_r16"]) == 2 * _num(a["ex1_lora_params_r8"]),
        _num(a["ex1_ratio_32_over_8"]) == 4.0,
        _num(a["ex2_formula"]) == _num(a["ex2_peft_trainable"]) > 0,
        _num(a["ex3_max_abs_diff"]) < 1e-9,
        _num(a["ex3_rank_of_update"]) == 4,
        _num(a["ex4_val_loss_drop"]) > 0,
    ],
    "02_week1_generate": lambda a: [
        _flag(a["ex1_prefix_stable"]),
        _num(a["ex1_topics_in_first_13"]) == 13,
        0.0 <= _num(a["ex2_truncated_share"]) <= 1.0,
        _num(a["ex3_seed_answer_tokens_p80"]) >= _num(a["ex3_seed_answer_tokens_median"]) > 0,
    ],
    "03_week1_evaluate": lambda a: [
        _rates_rise_with_min_words(a),
        _num(a["ex3_distinct_2_by_hand"]) == _num(a["ex3_distinct_2_library"]),
        _num(a["ex2_failing_count"]) == sum(k.startswith("ex2_failing_") and k != "ex2_failing_count" for k in a),
    ],
    "04_month1_expand": lambda a: [
        _num(a["ex1_jaccard_every_20th_word"]) > _num(a["ex1_jaccard_every_10th_word"])
        > _num(a["ex1_jaccard_every_5th_word"]),
        "missed" in a["ex1_jaccard_every_5th_word"],
        _num(a["ex2_review_sample_of_100000"]) == 1000,
        _num(a["ex2_review_sample_of_3000"]) == 30,
        ast.literal_eval(a["ex3_kept_longest"]) == [41],
    ],
    "05_month2_infrastructure": lambda a: [
        _num(a["ex1_difference"], 0) == _num(a["ex1_difference"], 1) == (50_257 - 8_192) * 768,
        abs(_num(a["ex2_cloud_gpu_h_ratio"]) - 2.0) < 1e-9,
        _num(a["ex3_flops_per_token_by_hand"]) == _num(a["ex3_flops_per_token_planner"]),
    ],
    "06_month3_progressive": lambda a: [
        _num(a["ex1_positions_changed"]) == _num(a["ex1_positions"]) - 1,
        not _flag(a["ex1_last_position_changed"]),
        _num(a["ex2_loss_shifted_twice"]) > _num(a["ex2_loss_correct"]),
        _num(a["ex3_max_logit_change_zero_init"]) == 0.0,
        _num(a["ex3_max_logit_change_roadmap"]) > 0 and _num(a["ex3_max_logit_change_stack"]) > 0,
    ],
    "07_month4_layers_1_4": lambda a: [
        _num(a["ex1_max_relative_difference"]) < 1e-9,
        max(_num(a["ex2_train_loss"]), _num(a["ex2_val_loss"])) < _num(a["ex2_uniform_loss"]),
        0.0 <= _num(a["ex3_distinct_1_greedy"]) <= 1.0,
    ],
    "08_month5_selfgen": lambda a: [
        0 <= _num(a["ex1_kept"]) <= _num(a["ex1_generated"]),
        _num(a["ex2_copy_rate_verbatim"], 0) == _num(a["ex2_copy_rate_verbatim"], 1) == 1.0,
        _num(a["ex2_copy_rate_short"]) == 0.0,
        0.2 < _num(a["ex2_copy_rate_half_copied"], 0) == _num(a["ex2_copy_rate_half_copied"], 1) < 0.8,
    ],
    "09_month6_identity_metrics": lambda a: [
        abs(_num(a["ex1_normalised_by_hand"]) - _num(a["ex1_normalised_recorded"])) < 1e-3,
        abs(_num(a["ex2_copied"]) - 1.0) < 1e-3,
        _num(a["ex2_first_halves"]) > _num(a["ex2_wrong_question"]),
        abs(_num(a["ex3_identity_minus_shuffled"])) < 1e-6,
    ],
    "10_months7_9_identity": lambda a: [
        _num(a["ex1_count"]) == 3 and "Photosynthesis" not in a["ex1_up_weighted"],
        _num(a["ex2_weighted_by_hand"]) == _num(a["ex2_weighted_library"]),
        abs(_num(a["ex2_all_twos_minus_unweighted"])) < 1e-6,
    ],
    "11_months10_12_refine": lambda a: [
        _num(a["ex1_same_states"]) < 0.01,
        abs(_num(a["ex1_collapsed_states"]) - _num(a["ex1_log_k"])) < 1e-3,
        _num(a["ex1_unrelated_states"]) > 1.0,
        [_num(a[f"ex2_identity_{k}"]) for k in ("aligned", "orthogonal", "opposite")] == [0.0, 1.0, 2.0],
        _num(a["ex3_raw_identity_term"]) > 0,
    ],
    "12_month13_scaling": lambda a: [
        _num(a["ex1_width_for_1b_at_24_layers"]) == 1792,
        _num(a["ex1_width_for_1b_at_32_layers"]) == 1600,
        abs(_num(a["ex2_states_ratio"]) - 2.0) < 1e-3,
        _num(a["ex2_activations_gib_8_vs_16"], 0) == _num(a["ex2_activations_gib_8_vs_16"], 1),
        _num(a["ex3_max_rel_diff_by_hand"]) == _num(a["ex3_max_rel_diff_recorded"]),
    ],
}


def test_every_solution_has_checks():
    assert sorted(CHECKS) == STEMS


def printed_command(path) -> list[str]:
    """The solution command the notebook's exercises cell shows, as an argv with ``<run directory>`` left in."""
    m = PRINTED.search(_markdown(path)[-1])
    assert m, f"{path.name}: the exercises cell should show `.venv/bin/dte course solution NN <run directory>`"
    return m.group(1).replace("<run directory>", "").split() + ["<run directory>"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_printed_solution_command_names_its_own_notebook(path):
    argv = printed_command(path)
    assert argv[:3] == [".venv/bin/dte", "course", "solution"] and argv[-1] == "<run directory>"
    assert course.solution_path(argv[3]) == SOLUTIONS / f"{path.stem}.py"


@pytest.mark.course
@pytest.mark.parametrize("stem", STEMS)
def test_worked_solution_runs_as_printed_on_the_ci_course(ci_run, stem):
    """The notebook's own command, from the repository, with no preset in the environment: the run says it is ci."""
    argv = printed_command(config.NOTEBOOKS_DIR / f"{stem}.ipynb")
    dte = pathlib.Path(sys.executable).with_name("dte")
    argv = [str(dte)] + argv[1:-1] + [str(ci_run)] if dte.exists() else \
        [sys.executable, "-m", "dte_lib"] + argv[1:-1] + [str(ci_run)]
    env = {k: v for k, v in os.environ.items() if k not in ("DTE_PRESET", "DTE_RUN_DIR")}
    env["PYTHONPATH"] = str(config.REPO_ROOT)  # as `make` sets it: this checkout's dte_lib wins
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env, cwd=config.REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
    results = CHECKS[stem](answers)
    failed = [i for i, ok in enumerate(results) if not ok]
    assert not failed, f"{stem}: checks {failed} failed on:\n{proc.stdout}"


@pytest.mark.course
def test_links_resolve_from_the_executed_copies(ci_run):
    """An executed notebook lives in <run>/notebooks/: its relative links (../solutions/NN_*.py) must land on files."""
    broken = []
    for path in sorted((ci_run / "notebooks").glob("*.ipynb")):
        for text in _markdown(path):
            for target in re.findall(r"\]\((\.\.?/[^)#\s]+)", text):
                if not (path.parent / target).exists():
                    broken.append(f"{path.name}: {target}")
    assert not broken, "links that do not resolve from the executed copies:\n" + "\n".join(broken)


def test_lora_picture_counts_what_lora_trains():
    import matplotlib
    matplotlib.use("Agg")
    from dte_lib import plots
    fig = plots.lora_update(576, 1536, 16, 32, "up_proj")
    title = fig.axes[0].get_title()
    assert f"{16 * (576 + 1536):,}" in title and f"{576 * 1536:,}" in title  # r·(d_in + d_out) of d_in·d_out
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "1536×16" in texts and "16×576" in texts and "32/16" in texts

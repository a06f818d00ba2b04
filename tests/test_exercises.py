"""The course as a course: every notebook states its run time, prints the roadmap against this run, checks its key
figures against each preset's measured ranges (``dte_lib.expect``), and ends with exercises whose worked solutions
(``solutions/NN_*.py``) run, as each notebook prints the command, against the ci course.

The ranges live in one place, ``dte_lib.expect.EXPECT`` (notebook → key of its ``metrics.json`` record → preset →
``(low, high)``); the light tests check the table and the notebooks' calls; the ``course`` tests check the ci run
lands in ci's ranges, that each executed notebook printed its checks, and run every solution on it.
"""
from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest

from dte_lib import config, course, expect

NOTEBOOKS = course.notebooks()
STEMS = [p.stem for p in NOTEBOOKS]
SOLUTIONS = config.REPO_ROOT / "solutions"
PRINTED = re.compile(r"run `(\.venv/bin/dte course solution \d\d <run directory>)`")
RUN_TIME = re.compile(r"\*\*Run time:\*\* ci ~(\d+) s · demo ~(\d+) s · long ~(\d+) (s|min) \(([^)]+)\)")


def _markdown(path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


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
def test_notebook_prints_its_story_and_checks_its_ranges(path):
    """The first code cell after the setup prints the roadmap against this run; the cell before the exercises
    prints the checks; no range is written into the markdown (the one place is dte_lib.expect)."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    setup = next(c for c in code if "config.setup(" in c)
    assert "expect.story(cfg, NB)" in setup, f"{path.name}: the setup cell should call expect.story(cfg, NB)"
    assert nb.cells[-2].cell_type == "code" and nb.cells[-2].source.strip() == "expect.check(run_dir, cfg, NB)"
    assert not any(re.search(r"`ci: [\w.\-]+ in \[", t) for t in _markdown(path)), \
        f"{path.name}: a range in the markdown — put it in dte_lib/expect.py"
    assert any("You should see" in t for t in _markdown(path))


@pytest.mark.parametrize("stem", STEMS)
def test_expected_ranges_are_well_formed_and_ci_is_covered(stem):
    table = expect.EXPECT[stem]
    assert any("ci" in r for r in table.values()), f"{stem}: no ci range to test"
    for key, ranges in table.items():
        assert set(ranges) <= set(expect.ALL), key
        for preset, (lo, hi) in ranges.items():
            assert lo <= hi, f"{stem}: {key} {preset} [{lo}, {hi}] is empty"
    assert sorted(expect.EXPECT) == STEMS and set(expect.SOURCES) == {"demo", "long"}


def test_check_prints_each_value_beside_its_range(tmp_path, capsys):
    from dte_lib import runlog
    runlog.record(tmp_path, "03_week1_evaluate", {"keep_rate": 0.583, "persona_rate": 0.2, "distinct_2": 0.9,
                                                  "seed_false_drop_rate": 0.03})
    expect.check(tmp_path, config.load("demo"), "03_week1_evaluate")
    out = capsys.readouterr().out
    assert "3 of 4 in range" in out
    assert re.search(r"✓  keep_rate\s+0\.583\s+demo range \[0\.45, 0\.95\]", out)
    assert re.search(r"✗  persona_rate\s+0\.2\s+demo range \[0\.55, 1\]", out)
    assert re.search(r"self_bleu\s+not recorded", out)
    expect.check(tmp_path, config.load("long"), "06_month3_progressive")
    assert "no measured long range yet" in capsys.readouterr().out


def test_story_says_when_depth_stays():
    demo = expect.phase_story(config.load("demo"), "08_month5_selfgen")
    assert demo.startswith("roadmap: layers 5–8") and "depth stays at 2" in demo
    assert "grows the model to 3 layers" in expect.phase_story(config.load("ci"), "08_month5_selfgen")
    assert "10,800 requests" in expect.phase_story(config.load("long"), "02_week1_generate")


def test_every_solution_belongs_to_a_notebook():
    assert sorted(p.stem for p in SOLUTIONS.glob("*.py")) == STEMS


# ---------------------------------------------------------------------------------------------- the ci course
@pytest.mark.course
def test_ci_run_lands_in_the_ranges_and_each_notebook_prints_its_checks(ci_run):
    problems = []
    for stem in STEMS:
        for r in expect.results(ci_run, "ci", stem):
            if r["range"] is not None and r["ok"] is not True:
                problems.append(f"{stem}: {r['key']} = {r['value']}, ci range {list(r['range'])}")
        nb = nbformat.read(ci_run / "notebooks" / f"{stem}.ipynb", as_version=4)
        printed = "".join(o.get("text", "") for o in nb.cells[-2].get("outputs", []))
        if "in range:" not in printed or "✓" not in printed:
            problems.append(f"{stem}: the executed notebook did not print its range checks")
    assert not problems, "the ci run left the ranges in dte_lib/expect.py:\n" + "\n".join(problems)


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


def test_per_stage_plot_has_both_views_of_both_measures():
    import matplotlib
    matplotlib.use("Agg")
    from dte_lib import plots
    fig = plots.per_stage(["s1", "s2"], {"perplexity": [60, 40], "bits_per_byte": [1.5, 1.3]},
                          {"perplexity": [200, 150], "bits_per_byte": [2.1, 2.0]})
    ppl, bpb = fig.axes
    assert ppl.get_yscale() == "log" and bpb.get_yscale() == "linear"
    assert [list(line.get_ydata()) for line in bpb.lines] == [[1.5, 1.3], [2.1, 2.0]]

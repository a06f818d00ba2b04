"""dte_lib.course: papermill runs in order, stops at the failing cell, resumes, refuses secrets, reports."""
from __future__ import annotations

import json
import os

import nbformat
import pytest

from dte_lib import config, course, runlog


def _nb(path, *sources, params='PRESET = ""\nRUN_DIR = ""\nEPOCHS = 1'):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title")]
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


RECORD = ("from dte_lib import runlog\n"
          "runlog.record(RUN_DIR, '{name}', {{'preset': PRESET, 'epochs': EPOCHS}})")


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "00_first.ipynb", RECORD.format(name="00_first"))
    _nb(d / "01_second.ipynb", "x = 1", "raise ValueError('the seed corpus is missing')")
    _nb(d / "02_third.ipynb", RECORD.format(name="02_third"))
    return d


def test_runs_in_order_stops_at_failing_cell_and_resumes(nbdir, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(course.CourseError) as err:
        course.run("ci", run_dir=run_dir, notebook_dir=nbdir, params={"EPOCHS": 3}, progress=False)
    msg = str(err.value)
    assert "01_second.ipynb failed at In [4] (cell 5 of the executed notebook, starting \"raise" in msg and "ValueError: the seed corpus is missing" in msg
    state = course.load_state(run_dir)["notebooks"]
    assert state["00_first"]["status"] == "ok" and state["01_second"]["status"] == "failed"
    assert "02_third" not in state
    # the executed copy is the error log
    failed = nbformat.read(run_dir / "notebooks" / "01_second.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in failed.cells for o in c.get("outputs", []))
    # parameters reach the notebook; metrics recorded
    assert runlog.load(run_dir)["00_first"]["epochs"] == 3
    assert runlog.load(run_dir)["00_first"]["preset"] == "ci"
    report = (run_dir / "report.md").read_text()
    assert "**Failed** at In [4] (cell 5)" in report and "| epochs | 3 |" in report

    # resuming past a failed notebook is refused loudly
    with pytest.raises(course.CourseError, match="have not succeeded: 01_second"):
        course.run("ci", run_dir=run_dir, notebook_dir=nbdir, start="02", progress=False)
    # ... unless forced; then only 02 runs
    course.run("ci", run_dir=run_dir, notebook_dir=nbdir, start="02", force=True, progress=False)
    assert course.load_state(run_dir)["notebooks"]["02_third"]["status"] == "ok"
    assert "02_third" in runlog.load(run_dir)


def test_corpus_option_reaches_the_kernel_and_is_checked(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _nb(nbdir / "00_corpus.ipynb", "from dte_lib import config, runlog\n"
        "runlog.record(RUN_DIR, '00_corpus', {'corpus': config.load(PRESET).data.corpus})")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("{}\n")
    rd = course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, corpus=str(mine), progress=False)
    assert runlog.load(rd)["00_corpus"]["corpus"] == str(mine)
    with pytest.raises(course.CourseError, match="no such file"):
        course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, corpus=str(tmp_path / "nope"), progress=False)


def test_seed_option_reaches_the_kernel_is_recorded_and_kept_on_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("DTE_SEED", raising=False)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    for i in range(2):
        _nb(nbdir / f"0{i}_seed.ipynb", "from dte_lib import config, runlog\n"
            f"runlog.record(RUN_DIR, '0{i}_seed', {{'seed': config.load(PRESET).seed}})")
    rd = course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, only=["00"], seed=5, progress=False)
    assert runlog.load(rd)["00_seed"]["seed"] == 5 and course.load_state(rd)["seed"] == 5
    course.run("ci", run_dir=rd, notebook_dir=nbdir, start="01", progress=False)  # resumed without --seed
    assert runlog.load(rd)["01_seed"]["seed"] == 5
    assert config.setup_run([str(rd)])[0].seed == 5  # a worked solution reads the run with its seed
    with pytest.raises(course.CourseError, match="was run with --seed 5"):
        course.run("ci", run_dir=rd, notebook_dir=nbdir, only=["00"], seed=6, progress=False)
    assert "DTE_SEED" not in os.environ


def test_secrets_are_never_papermill_parameters(nbdir, tmp_path):
    with pytest.raises(course.CourseError, match="refusing to pass OPENAI_API_KEY"):
        course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, params={"OPENAI_API_KEY": "sk-x"},
                   progress=False)


def test_only_and_unknown_selection(nbdir, tmp_path):
    rd = course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, only=["02"], progress=False)
    assert list(course.load_state(rd)["notebooks"]) == ["02_third"]
    with pytest.raises(course.CourseError, match="no notebook matches 07"):
        course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, only=["07"], progress=False)


def test_run_dir_of_another_preset_is_refused(nbdir, tmp_path):
    rd = tmp_path / "r"
    course.run("ci", run_dir=rd, notebook_dir=nbdir, only=["00"], progress=False)
    with pytest.raises(course.CourseError, match="holds a 'ci' run"):
        course.run("demo", run_dir=rd, notebook_dir=nbdir, only=["00"], progress=False)


def test_metrics_are_json_safe_and_merged(tmp_path):
    import numpy as np
    runlog.record(tmp_path, "nb", {"loss": np.float32(1.5), "nan": float("nan"), "path": tmp_path})
    runlog.record(tmp_path, "nb", {"more": 1})
    m = json.loads((tmp_path / "metrics.json").read_text())["nb"]
    assert m["loss"] == 1.5 and m["nan"] is None and m["more"] == 1 and m["path"] == str(tmp_path)


def test_report_opens_with_a_narrative_for_a_person(tmp_path):
    from dte_lib import config as C
    cfg = C.load("ci")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "course.json").write_text(json.dumps({"preset": "ci", "notebooks": {
        "03_week1_evaluate": {"status": "ok", "seconds": 10}, "11_months10_12_refine": {"status": "ok", "seconds": 50}}}))
    (tmp_path / "corpus" / "week1_decision.json").write_text(json.dumps({"checks": [
        {"check": "persona_rate", "value": 0.5, "needs": ">= 0.7", "pass": False}]}))
    runlog.record(tmp_path, "03_week1_evaluate", {"decision": "refine prompts and regenerate",
                                                  "failing_checks": ["persona_rate"]})
    ppl_ok = cfg.eval.thresholds_ppl / 2
    runlog.record(tmp_path, "11_months10_12_refine", {
        "final_model": "m-final", "final_perplexity": ppl_ok, "final_identity": 0.2, "final_identity_floor": 0.3,
        "final_identity_ceiling": 0.45, "final_diversity": 0.9, "final_diversity_ci": 0.0312, "final_coherence": None,
        **{f"final_meets_{k}": None for k in ("perplexity", "identity", "diversity", "coherence")}})
    runlog.record(tmp_path, "07_month4_layers_1_4", {"val_losses": [2201.6406456734585 / (i + 1) for i in range(9)],
                                                      "ratio": 1.4812345678})
    from dte_lib import data, inspector
    data.write_jsonl(tmp_path / inspector.FINAL_PROBES, [
        {"probe": f"Question {i}?", "reference": "I am Deep Tree Echo.", "student": "Yes, and I'm unsure |\n\nor not",
         "teacher": "I call myself Deep Tree Echo.",
         "scores": {"student": {"identity": 0.2123, "fact_recall": 0.0}, "teacher": {"identity": 0.61}}}
        for i in range(4)])
    text = course.write_report(tmp_path).read_text()
    head, _, tables = text.partition("## Notebooks")
    assert head.index("## What the final model says") < head.index("## What this run did")
    assert head.count("> *student* (identity 0.21, fact recall 0.00): Yes, and I'm unsure \\| ↵ or not") == 4
    assert "> *teacher* (identity 0.61): I call myself" in head and "> *reference*: I am Deep Tree Echo." in head
    assert "The four metrics for this model on the test split: perplexity" in head
    assert "2201.64" not in text and "| val_losses | 9 values: 2202 → 244.6 (min 244.6, max 2202) |" in tables
    assert "| ratio | 1.481 |" in tables
    assert "## What this run did" in head and f"2 of {len(course.notebooks())} notebooks ran" in head
    assert "## The roadmap's four success metrics — 2 of 4 met" in head and "`m-final`" in head
    rows = {line.split("|")[1].strip(): line for line in head.splitlines() if line.startswith("| ")}
    assert "✓" in rows["perplexity"] and f"< {cfg.eval.thresholds_ppl:g}" in rows["perplexity"]
    assert "✗" in rows["identity"] and "0.300 – 0.450" in rows["identity"]
    assert "✓" in rows["diversity"] and "—" in rows["coherence"].split("|")[4]
    assert "| 0.900 ± 0.031 |" in rows["diversity"] and "±" not in rows["identity"]  # an interval only where measured
    assert "diversity 0.90 ± 0.03 ·" in head
    assert "**refine prompts and regenerate**" in head and "persona system prompt" in head
    assert "carried on with the corpus it has" in head
    assert "## 03_week1_evaluate" in tables and "| decision | refine prompts and regenerate |" in tables


def test_kernel_start_up_log_stays_out_of_the_runners_output(nbdir, tmp_path, capfd):
    # the kernel's stderr is the runner's (long work's progress bars draw there); ipykernel's own start-up warnings
    # (e.g. "Kernel is running over TCP without encryption") must not open every notebook's log
    course.run("ci", run_dir=tmp_path / "run", notebook_dir=nbdir, only=["00"], progress=False)
    err = capfd.readouterr().err
    assert "IPKernelApp" not in err and "without encryption" not in err


def test_every_parameters_cell_parses_for_papermill(caplog):
    # papermill reads the parameters cell to list a notebook's parameters; a line it cannot parse (an "=" inside
    # the comment, for one) is dropped from that list and logged as a warning in the runner's output
    import logging

    from papermill.translators import PythonTranslator

    from dte_lib import config
    for path in sorted(config.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assigned = [ln for ln in cell.source.splitlines() if ln and not ln.startswith((" ", "#"))]
        with caplog.at_level(logging.WARNING, logger="papermill"):
            found = PythonTranslator.inspect(cell)
        assert len(found) == len(assigned), f"{path.name}: {caplog.text}"


def test_solutions_travel_with_the_executed_copies(nbdir, tmp_path):
    """<run>/notebooks/NN.ipynb links to ../solutions/NN.py: the runner puts each selected notebook's solution there."""
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "00_first.py").write_text("print('answer = 1')\n")
    (tmp_path / "solutions" / "02_third.py").write_text("print('answer = 3')\n")
    rd = course.run("ci", run_dir=tmp_path / "r", notebook_dir=nbdir, only=["00"], progress=False)
    assert [p.name for p in (rd / "solutions").iterdir()] == ["00_first.py"]
    assert (rd / "solutions" / "00_first.py").read_text() == "print('answer = 1')\n"


def _dte(*args, env_drop=("DTE_PRESET", "DTE_RUN_DIR")):
    import os
    import subprocess
    import sys
    from dte_lib import config
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = str(config.REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "dte_lib", "course", *args], capture_output=True, text=True,
                          env=env, cwd=config.REPO_ROOT, timeout=120)


def test_dte_course_solution_runs_with_the_runs_own_preset(tmp_path):
    from dte_lib import config
    _, rd = config.setup("demo", str(tmp_path / "run"))  # what a notebook's first cell leaves behind
    proc = _dte("solution", "00", str(rd))
    assert proc.returncode == 0, proc.stderr
    answers = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
    assert answers["ex3_topics"] == "13" and answers["ex1_test_unchanged"] == "True"
    (tmp_path / "bare").mkdir()
    for args, says in ((("solution", "00", str(tmp_path / "bare")), "has no course.json naming its preset"),
                       (("solution", "99", str(rd)), "no single worked solution matches '99'")):
        proc = _dte(*args)
        assert proc.returncode == 1 and says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

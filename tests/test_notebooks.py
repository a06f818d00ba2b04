"""The notebooks: committed clean, one parameters cell each, and the ci-preset course run records their figures.

The course run itself (papermill, every notebook in order) is the ``ci_run`` fixture in conftest.py; `make test`
then re-executes every notebook under nbval against the same run directory.
"""
from __future__ import annotations

import json

import nbformat
import pytest

from dte_lib import config, course

NOTEBOOKS = course.notebooks()


def test_there_are_notebooks_in_roadmap_order():
    stems = [p.stem for p in NOTEBOOKS]
    assert stems[0] == "00_setup_and_tour"
    assert stems == sorted(stems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assignments = [line.split("=")[0].strip() for line in tagged[0].source.splitlines()
                   if "=" in line and not line.lstrip().startswith("#")]
    assert "PRESET" in assignments and "RUN_DIR" in assignments
    assert all(name.isupper() for name in assignments), "parameters are UPPER_CASE scalars"
    assert not any(s in name for name in assignments for s in ("KEY", "TOKEN", "SECRET")), \
        "secrets come from the environment, never from parameters"
    # a notebook teaches; it does not define library code
    assert not any(line.startswith(("def ", "class ")) for c in code for line in c.source.splitlines()), \
        "functions and classes belong in dte_lib, where tests reach them"


@pytest.mark.course
def test_ci_course_ran_every_notebook(ci_run):
    state = course.load_state(ci_run)
    assert state["preset"] == "ci"
    statuses = {name: e["status"] for name, e in state["notebooks"].items()}
    assert statuses == {p.stem: "ok" for p in NOTEBOOKS}
    report = (ci_run / "report.md").read_text()
    for p in NOTEBOOKS:
        assert f"## {p.stem}" in report


@pytest.mark.course
def test_every_notebook_recorded_its_figures(ci_metrics):
    for p in NOTEBOOKS:
        figures = {k: v for k, v in ci_metrics.get(p.stem, {}).items() if not k.startswith("_")}
        assert figures, f"{p.stem} recorded no key figures in metrics.json"


@pytest.mark.course
def test_notebook_00_tour(ci_run, ci_metrics):
    m = ci_metrics["00_setup_and_tour"]
    assert m["examples"] >= 256 and m["rejected"] == 0
    assert m["topics"] >= 12
    assert m["exact_duplicate_groups"] == 0 and m["near_duplicate_pairs"] == 0
    assert sum(m["split"].values()) == m["examples"] and m["split"]["test"] > 0
    for fig in ci_metrics["00_setup_and_tour"]["_figures"]:
        assert (ci_run / fig).stat().st_size > 1000


@pytest.mark.course
def test_no_secret_reaches_the_run_directory(ci_run, monkeypatch):
    """Parameters written into executed notebooks are only PRESET, RUN_DIR and declared scalars."""
    for path in (ci_run / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        params = nb["metadata"]["papermill"]["parameters"]
        assert not any(s in k.upper() for k in params for s in ("KEY", "TOKEN", "SECRET", "PASSWORD"))

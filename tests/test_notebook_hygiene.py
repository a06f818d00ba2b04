"""The executed notebooks of the ci course are for reading: no noise in them, and they are signed.

Every output of every code cell of ``<ci run>/notebooks/*.ipynb`` is scanned for what a learner should not have to
read past: anything on stderr (library warnings, banners, text progress bars), progress bars saved as widgets (a
frozen ``0%``, "Loading weights"), ANSI colour codes, ``PosixPath(...)`` reprs, a widget whose text line is its
repr (``VBox(children=...``), and a long dict echoed as a cell's result. Each finding names the notebook, the cell
and the start of the text.
"""
from __future__ import annotations

import re

import nbformat
import pytest
from nbformat.sign import NotebookNotary

from dte_lib import course

pytestmark = pytest.mark.course

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
WIDGET = "application/vnd.jupyter.widget-view+json"
REPR = re.compile(r"^[A-Z]\w*\((children|value|description|layout|options)=")
BAR = re.compile(r"\d+%\|")  # tqdm's "  0%|" in any saved form
LONG_ECHO = 300  # characters: a dict or list shown as a result beyond this is an echo, not a table


def problems(nb) -> list[str]:
    """What a reader of this executed notebook would have to read past, one line each."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {index} (In [{cell.get('execution_count')}])"
        for out in cell.get("outputs", []):
            kind = out.output_type
            if kind == "stream":
                text = out.text
                if out.name == "stderr":
                    found.append(f"{where}: stderr: {text[:120]!r}")
            elif kind in ("display_data", "execute_result"):
                text = out.data.get("text/plain", "")
                if WIDGET in out.data and REPR.match(text):
                    found.append(f"{where}: a widget shown as its repr, not a sentence: {text[:80]!r}")
                if kind == "execute_result" and text[:1] in "{[" and len(text) > LONG_ECHO \
                        and len(out.data) == 1:
                    found.append(f"{where}: a {len(text)}-character result echoed: {text[:80]!r}")
            else:
                continue
            if "Loading weights" in text or BAR.search(text):
                found.append(f"{where}: a progress bar saved: {text[:80]!r}")
            if ANSI.search(text):
                found.append(f"{where}: ANSI escape codes: {text[:80]!r}")
            if "PosixPath(" in text:
                found.append(f"{where}: a path repr: {text[:80]!r}")
    return found


def test_the_scan_finds_what_it_looks_for():
    nb = nbformat.v4.new_notebook()
    outs = [nbformat.v4.new_output("stream", name="stderr", text="[transformers] We strongly recommend..."),
            nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "x"},
                                                         "text/plain": "Loading weights:   0%|   | 0/40"}),
            nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "y"},
                                                         "text/plain": "VBox(children=(HTML(value='<b>0"}),
            nbformat.v4.new_output("execute_result", data={"text/plain": "PosixPath('/x/figures/a.png')"}),
            nbformat.v4.new_output("execute_result", data={"text/plain": "{'_figures': " + "1, " * 200 + "}"}),
            nbformat.v4.new_output("stream", name="stdout", text="\x1b[34mwandb\x1b[0m: Tracking run")]
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[o]) for o in outs]
    nb.cells.append(nbformat.v4.new_code_cell("fine", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="val loss 5.67 -> 5.23, 100% of blocks kept\n"),
        nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "z"},
                                                     "text/plain": "[review widget: 2 sampled items ...]"})]))
    found = problems(nb)
    assert [f.split(":")[0] for f in found] == [f"cell {i} (In [None])" for i in range(6)], found


@pytest.mark.parametrize("stem", [p.stem for p in course.notebooks()])
def test_executed_notebook_is_clean_and_signed(ci_run, stem):
    path = ci_run / "notebooks" / f"{stem}.ipynb"
    nb = nbformat.read(path, as_version=4)
    found = problems(nb)
    assert not found, f"{path} has output a reader must skip:\n  " + "\n  ".join(found)
    assert NotebookNotary().check_signature(nb), \
        f"{path} is not signed: `dte course run` signs what it writes, so JupyterLab here draws its saved widgets"

"""What the library shows in a notebook, and what a saved notebook keeps of it: progress bars and widgets.

- :func:`progress` is the tqdm bar for long work (training, generation, MinHash, batched answers). In a terminal
  or a live notebook it is tqdm's own (``tqdm.auto``). A notebook executed by ``dte course run`` is saved for
  reading later, and a bar saved there is a frozen widget, so the runner sets ``DTE_PROGRESS`` for its kernels:
  ``terminal`` draws a text bar on the kernel's own stderr — the runner's terminal, which it starts uncaptured —
  and ``off`` (the tests' runs) draws none. Either way the notebook keeps only the one-line summary it prints.
- :func:`gguf_progress` sends transformers' own GGUF-reading bar the same way.
- :func:`with_text` gives a widget a sentence for a person as its ``text/plain`` form. A saved notebook keeps two
  forms of every widget output: the view, drawn from the widget state saved in the notebook (in a trusted notebook;
  the course runner signs what it writes), and the ``text/plain`` line that an untrusted notebook or a plain-text
  viewer shows, by default the widget's repr (``VBox(children=(SelectMultiple(...``). Used by
  :mod:`dte_lib.review` (notebook 04) and :mod:`dte_lib.inspector` (notebook 11).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterable, Iterator

PROGRESS_ENV = "DTE_PROGRESS"  # "terminal" | "off" | unset (tqdm.auto); the course runner sets it for its kernels


def progress(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm bar (same arguments as ``tqdm``) that is drawn where a person is watching, never saved."""
    mode = os.environ.get(PROGRESS_ENV, "")
    if mode in ("terminal", "off"):
        from tqdm.std import tqdm
        if mode == "off":
            kwargs["disable"] = True
        kwargs.setdefault("file", sys.__stderr__)
        return tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


@contextlib.contextmanager
def gguf_progress() -> Iterator[None]:
    """Route transformers' GGUF dequantization bar (``tqdm.auto``: a widget frozen at 0% in a saved notebook)
    through :func:`progress` while reading a GGUF file (the teacher's first load in notebook 01, the export check in
    notebook 11)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    saved = gguf_utils.tqdm
    gguf_utils.tqdm = progress
    try:
        yield
    finally:
        gguf_utils.tqdm = saved


def with_text(widget: Any, text: str) -> Any:
    """Make ``text`` the widget's ``text/plain`` form (the live widget is unchanged); returns the widget."""
    drawn = type(widget)._repr_mimebundle_

    def bundle(**kwargs: Any) -> dict[str, Any] | None:
        data = drawn(widget, **kwargs)
        if data is not None:
            data["text/plain"] = text
        return data

    widget._repr_mimebundle_ = bundle  # closing the widget sets this to None, as ipywidgets does
    return widget

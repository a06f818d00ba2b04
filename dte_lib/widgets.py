"""What a notebook widget says where it cannot be drawn.

A saved notebook keeps two forms of every widget output: the widget view (drawn from the widget state saved in the
notebook, in a trusted notebook) and a ``text/plain`` line, which JupyterLab shows in an untrusted notebook and a
plain-text viewer always shows. ipywidgets' own line is the widget's repr (``VBox(children=(SelectMultiple(...``);
:func:`with_text` replaces it with a sentence for a person. Used by :mod:`dte_lib.review` (notebook 04) and
:mod:`dte_lib.inspector` (notebook 11).
"""
from __future__ import annotations

from typing import Any


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

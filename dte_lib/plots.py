"""Small matplotlib helpers shared by the notebooks: each returns a Figure so a run can save it as PNG.

Used from notebook 00 onwards. Nothing here computes a metric; it only draws what other modules computed.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def _plt():
    import matplotlib.pyplot as plt  # imported late: the data and course modules must not pay for matplotlib
    return plt


def bar(counts: Mapping[str, float], title: str, xlabel: str = "", horizontal: bool = True):
    """Bars of a mapping, largest first."""
    plt = _plt()
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.2) if horizontal else (8, 4))
    labels, values = [k for k, _ in items], [v for _, v in items]
    if horizontal:
        ax.barh(labels, values, color="#3b7a57")
        ax.set_xlabel(xlabel)
    else:
        ax.bar(labels, values, color="#3b7a57")
        ax.set_ylabel(xlabel)
        ax.tick_params(axis="x", rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 30):
    """A histogram with the median marked."""
    import statistics
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(values, bins=bins, color="#4a6fa5", alpha=0.85)
    if values:
        med = statistics.median(values)
        ax.axvline(med, color="k", ls="--", lw=1)
        ax.text(med, ax.get_ylim()[1] * 0.92, f" median {med:g}", fontsize=9)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    return fig

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


_PALETTE = ["#4a6fa5", "#b5443a", "#3b7a57", "#c9a227"]  # stacked groups, in label order


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 30,
              groups: Sequence[str] | None = None, limit: float | None = None):
    """A histogram with the median marked. ``groups`` (one label per value) stacks the bars by label, with a legend
    that counts each; ``limit`` draws a labelled line there (e.g. ``max_tokens``)."""
    import statistics
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if groups is None:
        ax.hist(values, bins=bins, color="#4a6fa5", alpha=0.85)
    else:
        labels = sorted(set(groups))
        data = [[v for v, g in zip(values, groups) if g == lab] for lab in labels]
        ax.hist(data, bins=bins, stacked=True, alpha=0.85, color=_PALETTE[:len(labels)],
                label=[f"{lab} ({len(d)})" for lab, d in zip(labels, data)])
        ax.legend(fontsize=9, loc="upper left")
    if values:
        med = statistics.median(values)
        ax.axvline(med, color="k", ls="--", lw=1)
        ax.text(med, ax.get_ylim()[1] * 0.92, f" median {med:g}", fontsize=9)
    if limit is not None:
        ax.axvline(limit, color="#b5443a", lw=1.5)
        ax.text(limit, ax.get_ylim()[1] * 0.80, f"limit {limit:g} ", fontsize=9, ha="right", color="#b5443a")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    return fig



def lora_update(d_in: int, d_out: int, rank: int, alpha: float, name: str = "W"):
    """The LoRA picture for one projection: frozen ``W`` (d_out × d_in) beside the trainable ``B`` (d_out × r) and
    ``A`` (r × d_in), drawn to scale, with each block's parameter count. The layer computes
    ``x·(W + (alpha/r)·B·A)ᵀ``; only A and B train (notebook 01)."""
    plt = _plt()
    from matplotlib.patches import Rectangle
    fig, ax = plt.subplots(figsize=(10, 3.8))
    unit = 3.0 / max(d_in, d_out)  # the larger side of W is 3 units long
    w_h, w_w, r_len = d_out * unit, d_in * unit, max(rank * unit, 0.05)
    b_x = w_w + 2.0
    a_x = b_x + r_len + 1.9
    ax.add_patch(Rectangle((0, 0), w_w, w_h, color="#c9c9c9"))
    ax.text(w_w / 2, w_h / 2, f"{name} (frozen)\n{d_out}×{d_in}\n{d_out * d_in:,}", ha="center", va="center",
            fontsize=9)
    ax.text(w_w + 1.0, w_h / 2, f"+  {alpha:g}/{rank} ·", ha="center", va="center", fontsize=12)
    ax.add_patch(Rectangle((b_x, 0), r_len, w_h, color="#3b7a57"))
    ax.text(b_x + r_len + 0.12, w_h / 2, f"B (trained)\n{d_out}×{rank}\n{d_out * rank:,}", ha="left",
            va="center", fontsize=9)
    ax.add_patch(Rectangle((a_x, w_h - r_len), w_w, r_len, color="#4a6fa5"))
    ax.text(a_x + w_w / 2, w_h - r_len - 0.15, f"A (trained)\n{rank}×{d_in}\n{rank * d_in:,}", ha="center",
            va="top", fontsize=9)
    ax.set_xlim(-0.2, a_x + w_w + 0.2)
    ax.set_ylim(-0.2, w_h + 0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"LoRA on {name}: W + (alpha/r)·B·A — trains r·(d_in + d_out) = {rank * (d_in + d_out):,} "
                 f"of {d_in * d_out:,} ({rank * (d_in + d_out) / (d_in * d_out):.1%})", fontsize=10)
    fig.tight_layout()
    return fig


def per_stage(stages: Sequence[str], whole: Mapping[str, Sequence[float]], answers: Mapping[str, Sequence[float]],
              title: str = "validation split, per stage"):
    """Two panels over training stages — perplexity (log scale) and bits per byte — each over whole conversations
    and over answers only (notebook 07). ``whole`` / ``answers`` map ``"perplexity"`` and ``"bits_per_byte"`` to one
    value per stage."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, label in zip(axes, ("perplexity", "bits_per_byte"), ("val perplexity", "val bits per byte")):
        ax.plot(list(stages), list(whole[key]), "o-", label="whole conversations")
        ax.plot(list(stages), list(answers[key]), "s--", label="answers only")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig

"""The success dashboard: the four roadmap metrics per checkpoint and stage, against the roadmap's thresholds.

One row per evaluated checkpoint lives in ``run_dir/eval/dashboard.jsonl`` (rewritten atomically; a checkpoint
evaluated again replaces its row), so notebooks 08–11 each add their stages and notebook 11 shows the whole course.
:func:`table` turns the rows into a DataFrame with a pass/fail column per threshold, :func:`plot` draws each metric
with its threshold (dashed), its floor and ceiling (grey band) per checkpoint, and :func:`figures` flattens the
latest row into the key figures ``runlog.record`` writes into ``metrics.json`` and ``report.md``.

Thresholds (``EvalCfg.thresholds_*``): perplexity < 20, identity > 0.85, diversity > 0.7, coherence > 0.9.
Floors and ceilings come from :mod:`dte_lib.metrics`; without them the raw numbers cannot be read (identity's
ceiling on this corpus is ≈ 0.66, below the 0.85 threshold).

Intervals: each generation metric of a row carries its 95% bootstrap interval (``<metric>_lo``, ``_hi`` and the
half-width ``_ci``, from :func:`dte_lib.metrics.evaluate`); the table prints ``mean ± half-width``, the plot draws
the interval as an error bar, and :func:`best` keeps the simpler or earlier row unless another beats it by more
than the interval of the difference (:func:`dte_lib.metrics.choose`, the one selection rule), saying why.

Which split: rows evaluated on the VAL split (``split: "val"``) are what every choice reads — :func:`best` picks
a stage or model from them and refuses any other row; the TEST split is read once, by :func:`final_report`, for
the chosen model (and the teacher beside it), as rows with ``split: "test"``.

Explained in notebook 09 (month 6); extended in 08, 10 and 11.
Run it: ``python -m dte_lib.dashboard outputs/runs/demo`` prints a run's dashboard table.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import metrics
from .data import atomic_write_text

FILE = Path("eval") / "dashboard.jsonl"
METRICS = ("perplexity", "identity", "diversity", "coherence")


def thresholds(cfg: Any) -> dict[str, tuple[str, float]]:
    """metric -> ("<" or ">", value) from the preset."""
    e = cfg.eval
    return {"perplexity": ("<", e.thresholds_ppl), "identity": (">", e.thresholds_identity),
            "diversity": (">", e.thresholds_diversity), "coherence": (">", e.thresholds_coherence)}


def passes(metric: str, value: float | None, cfg: Any) -> bool | None:
    """Whether ``value`` meets the roadmap threshold (None when the metric was not measured)."""
    if value is None or value != value:
        return None
    op, thr = thresholds(cfg)[metric]
    return value < thr if op == "<" else value > thr


def load(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def add(run_dir: str | Path, name: str, result: dict[str, Any], *, stage: str = "", depth: int | None = None,
        notebook: str = "", kind: str = "checkpoint") -> dict[str, Any]:
    """Store one checkpoint's metrics (from :func:`dte_lib.metrics.evaluate`) as a dashboard row; returns the row.

    ``kind`` tells the plot what the row is: ``checkpoint`` (a course stage), ``teacher``, ``baseline``
    (e.g. from-scratch or a degenerate reference), ``ablation`` or ``final`` (the test-split report). The row's
    ``split`` comes from the result (``val`` or ``test``; empty for results not made by ``metrics.evaluate``).
    """
    row = {"name": name, "stage": stage or name, "depth": depth, "notebook": notebook, "kind": kind,
           "split": result.get("_split", result.get("split", "")),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           **{k: v for k, v in result.items() if not k.startswith("_") and isinstance(v, (int, float, type(None)))}}
    rows = [r for r in load(run_dir) if r["name"] != name] + [row]
    atomic_write_text(Path(run_dir) / FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return row


def with_interval(r: dict[str, Any], k: str, fmt: str = "{:.3f}") -> str:
    """``r[k]`` formatted, with the half-width of its 95% interval (``<k>_ci``) where the record has one:
    "0.050 ± 0.041"; "—" where the value is missing. The dashboard's table and ``report.md`` both print it."""
    v, h = r.get(k), r.get(f"{k}_ci")
    if v is None or v != v:
        return "—"
    return fmt.format(v) if h is None or h != h else f"{fmt.format(v)} ± {fmt.format(h)}"


def table(rows: Sequence[dict[str, Any]], cfg: Any):
    """A DataFrame: one line per checkpoint, each metric with its floor/ceiling and a ✓/✗ against the threshold."""
    import pandas as pd

    def f(r, k, fmt="{:.3f}"):
        v = r.get(k)
        return "—" if v is None or v != v else fmt.format(v)

    pm = with_interval

    def mark(r, m):
        ok = passes(m, r.get(m), cfg)
        return "—" if ok is None else ("✓" if ok else "✗")

    out = []
    for r in rows:
        out.append({
            "checkpoint": r["name"], "split": r.get("split") or "—",
            "depth": r.get("depth") if r.get("depth") is not None else "—",
            "ppl": f(r, "perplexity", "{:.1f}"), "bits/byte": f(r, "bits_per_byte", "{:.2f}"),
            "ppl<20": mark(r, "perplexity"),
            "identity": pm(r, "identity"),
            "id floor–ceil": f"{f(r, 'identity_floor', '{:.2f}')}–{f(r, 'identity_ceiling', '{:.2f}')}",
            "id normalised": pm(r, "identity_normalised", "{:.2f}"), "id>0.85": mark(r, "identity"),
            "diversity": pm(r, "diversity"), "div refs": f(r, "diversity_references", "{:.2f}"),
            "div>0.7": mark(r, "diversity"),
            "coherence": pm(r, "coherence"),
            "coh floor–ceil": f"{f(r, 'coherence_floor', '{:.2f}')}–{f(r, 'coherence_ceiling', '{:.2f}')}",
            "coh>0.9": mark(r, "coherence"), "copy rate": pm(r, "copy_rate", "{:.2f}"),
        })
    return pd.DataFrame(out)


def markdown(df) -> str:
    """The table as GitHub markdown (no optional dependency: pandas' to_markdown needs tabulate)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], cfg: Any, title: str = "success metrics vs the roadmap's thresholds"):
    """2×2 panels, one per metric: value per checkpoint with its 95% interval (error bar), threshold dashed red,
    floor–ceiling as a grey band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
    names = [r["name"] for r in rows]
    x = list(range(len(rows)))
    thr = thresholds(cfg)
    for ax, m in zip(axes.flat, METRICS):
        vals = [r.get(m) if r.get(m) is not None else float("nan") for r in rows]
        colors = ["#3b7a57" if passes(m, v, cfg) else "#b5523b" for v in vals]
        lo = [r.get(f"{m}_lo") for r in rows]
        hi = [r.get(f"{m}_hi") for r in rows]
        err = [[v - a if a is not None and a == a else 0.0 for v, a in zip(vals, lo)],
               [b - v if b is not None and b == b else 0.0 for v, b in zip(vals, hi)]]
        ax.bar(x, vals, color=colors, alpha=0.85, yerr=err, capsize=3, ecolor="black",
               error_kw={"lw": 1, "label": "95% interval"} if any(a is not None for a in lo) else None)
        lo = [r.get(f"{m}_floor") for r in rows]
        hi = [r.get(f"{m}_ceiling") for r in rows]
        for i, (a, b) in enumerate(zip(lo, hi)):
            if a is not None and b is not None:
                ax.fill_between([i - 0.45, i + 0.45], a, b, color="grey", alpha=0.25,
                                label="floor–ceiling" if i == 0 else None)
        if m == "diversity":
            refs = [r.get("diversity_references") for r in rows]
            ax.plot(x, [v if v is not None else float("nan") for v in refs], "k_", ms=18, mew=2,
                    label="references' own")
        op, t = thr[m]
        ax.axhline(t, color="red", ls="--", lw=1, label=f"roadmap {op} {t:g}")
        if m == "perplexity":
            ax.set_yscale("log")
        ax.set_title(m)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figures(row: dict[str, Any], cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flat key figures for ``runlog.record``: each metric, its bounds, its 95% interval (``_lo``, ``_hi``, half-width
    ``_ci``; None where the row has none), and whether it meets the roadmap."""
    keys = ("perplexity", "bits_per_byte", "identity", "identity_floor", "identity_ceiling", "identity_normalised",
            "diversity", "diversity_references", "coherence", "coherence_floor", "coherence_ceiling", "copy_rate")
    keys += tuple(f"{m}_{k}" for m in metrics.INTERVAL_METRICS for k in ("lo", "hi", "ci"))
    out = {f"{prefix}{k}": row.get(k) for k in keys}
    out.update({f"{prefix}meets_{m}": passes(m, row.get(m), cfg) for m in METRICS})
    return out


def best(rows: Sequence[dict[str, Any]], metric: str = "identity_normalised", *,
         names: Sequence[str] | None = None, higher: bool = True) -> dict[str, Any]:
    """The row chosen on ``metric`` among ``rows`` (or those named in ``names``) — VAL rows only — with the reason.

    This is the course's one selection rule (best stage, final model), :func:`dte_lib.metrics.choose`: candidates
    in order of simplicity — ``baseline`` rows (the plain twin of a mechanism, the control) first, then the rest in
    dashboard order (earlier stages first) — and the first one within the 95% interval of the leader is kept. It
    raises if a candidate was scored on any split but val, so a choice can never be made on test numbers. Rows
    without the metric are skipped. Returns a copy of the chosen row with ``reason`` (one sentence) added.
    """
    cands = [r for r in rows if names is None or r["name"] in names]
    wrong = [r["name"] for r in cands if r.get("split") != "val"]
    if wrong:
        raise ValueError(f"dashboard.best: {wrong} were not scored on the val split; choices read val only "
                         f"(score them with metrics.EvalSet.build(cfg), the val default)")
    cands = [r for r in cands if r.get(metric) is not None and r.get(metric) == r.get(metric)]
    if not cands:
        raise ValueError(f"dashboard.best: no candidate row has {metric!r}")
    cands = [r for r in cands if r.get("kind") == "baseline"] + [r for r in cands if r.get("kind") != "baseline"]
    pick = metrics.choose([(r["name"], r[metric], r.get(f"{metric}_ci")) for r in cands], metric=metric,
                          higher=higher)
    return {**cands[pick.index], "reason": pick.reason}


def keep_change(change: dict[str, Any], plain: dict[str, Any], noise: float,
                metric: str = "identity_normalised") -> dict[str, Any]:
    """A keep/drop choice (the identity mechanisms, the multi-task loss) against the change's plain twin, by the
    course's one rule (:func:`dte_lib.metrics.choose`, plain first): the change is kept only when it beats the
    plain model by more than the interval of the difference. Each row's half-width is its own 95% sampling interval
    (``<metric>_ci``) but at least ``noise / √2``, so the band is never narrower than notebook 10's training-seed
    spread ``noise`` (``cfg.eval.identity_noise``): sampling intervals see prompts and sampling seeds, not the seed
    a model was trained with. Returns ``keep``, ``difference``, ``band`` (``noise`` too) and a one-line ``reason``.
    Val rows only, as :func:`best`."""
    wrong = [r["name"] for r in (change, plain) if r.get("split") != "val"]
    if wrong:
        raise ValueError(f"dashboard.keep_change: {wrong} were not scored on the val split; choices read val only")
    a, b = change.get(metric), plain.get(metric)
    if a is None or b is None:
        return {"keep": False, "difference": None, "band": None, "noise": noise,
                "reason": f"{metric} missing for {change['name'] if a is None else plain['name']}: kept the plain model"}
    floor = noise / math.sqrt(2)
    h_plain, h_change = (max(float(r.get(f"{metric}_ci") or 0.0), floor) for r in (plain, change))
    pick = metrics.choose([(plain["name"], b, h_plain), (change["name"], a, h_change)], metric=metric)
    return {"keep": pick.index == 1, "difference": a - b, "band": math.hypot(h_plain, h_change), "noise": noise,
            "reason": pick.reason}


def final_report(run_dir: str | Path, cfg: Any, chosen: dict[str, Path], *, notebook: str = "",
                 depth: int | None = None) -> dict[str, dict[str, Any]]:
    """Score the already-chosen model(s) on the TEST split — the one place the course reads test — and store each
    as a dashboard row named ``"<name> [test]"``; returns name -> metrics.

    ``chosen`` maps a display name to a Hugging Face directory (the selected student, and the teacher beside it
    for reference, under the name ``"teacher"`` — nothing is chosen from these numbers; scored in the precision
    it is served in, ``teacher.precision``, with ``eval.teacher_sample_seeds`` draws per prompt).
    """
    test = metrics.EvalSet.build(cfg, split="test")
    out = {}
    for name, path in chosen.items():
        teacher = name == "teacher"
        res = metrics.evaluate_checkpoint(path, test, cfg, precision=cfg.teacher.precision if teacher else "fp32",
                                          samples=cfg.eval.teacher_sample_seeds if teacher else None)
        add(run_dir, f"{name} [test]", res, depth=None if teacher else depth, notebook=notebook,
            kind="teacher" if teacher else "final")
        out[name] = res
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from . import config
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: dte dashboard RUN_DIR [PRESET]")
        return 2
    if not Path(argv[0]).is_dir():
        raise FileNotFoundError(f"{argv[0]}: no such run directory — pass a run's directory, e.g. outputs/runs/demo")
    rows = load(argv[0])
    if not rows:
        raise FileNotFoundError(f"{Path(argv[0]) / FILE}: no dashboard rows yet — run the course through notebook 08 "
                                "(or `dte metrics` a checkpoint) first")
    cfg = config.load(argv[1] if len(argv) > 1 else None)
    print(markdown(table(rows, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The identity ablation: each mechanism and the multi-task loss against plain LM training, at equal steps, seeds.

Arms (:data:`ARMS`): ``plain`` (LM loss only), ``persona_init``, ``self_ref`` (self-reference loss weights),
``metacog`` (meta-cognitive turns in the data), ``multitask`` (lm + identity + coherence terms), ``all``.
Every arm trains a fresh model of the same size from the same seed for the same number of optimizer steps on the
same batches of blocks; *equal compute* means equal LM steps and tokens — ``multitask`` also spends an extra
forward/backward on 2k paraphrase prefixes per step (its ``flops`` column counts only the LM part, the trainer's
count; the extra cost is stated, not hidden), and ``metacog`` trains on slightly longer conversations within the same
token budget. Each arm is scored with :func:`dte_lib.metrics.evaluate` on the VAL split (and the probes);
the winner (:func:`best_arm`) is chosen from those numbers only, by the course's one selection rule: ``plain``
unless a mechanism beats it by more than the 95% interval of the difference (:func:`choose_arm` says why).

Explained in notebook 10 (a small run); the full table: ``python benchmarks/ablation_identity.py --preset demo``
(results in benchmarks/RESULTS-identity.md).
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from . import continued, metrics

ARMS: dict[str, dict[str, Any]] = {
    "plain": {},
    "persona_init": {"persona_init": True},
    "self_ref": {"self_ref_weight": None},  # None = the preset's EvalCfg value
    "metacog": {"metacog_fraction": None},
    "multitask": {"identity_weight": None, "coherence_weight": None},
    "all": {"persona_init": True, "self_ref_weight": None, "metacog_fraction": None, "identity_weight": None,
            "coherence_weight": None},
}
KEYS = ("perplexity", "bits_per_byte", "identity", "identity_normalised", "diversity", "coherence", "copy_rate")
CI_KEYS = tuple(f"{m}_ci" for m in metrics.INTERVAL_METRICS)  # each run's 95% half-widths (metrics.evaluate)


def arm_kwargs(cfg: Any, arm: str) -> dict[str, Any]:
    out = {}
    for k, v in ARMS[arm].items():
        out[k] = getattr(cfg.eval, k) if v is None else v
    return out


def run(cfg: Any, run_dir: str | Path, *, arms: Sequence[str] = tuple(ARMS), seeds: int | None = None,
        steps: int | None = None, depth: int | None = None, evalset: metrics.EvalSet | None = None,
        out_name: str = "ablation", progress: bool = False) -> list[dict[str, Any]]:
    """Train and score every (arm, seed); returns one row per run (resumable: finished runs are reloaded)."""
    import time
    seeds = seeds or cfg.eval.ablation_seeds
    steps = steps or cfg.eval.ablation_steps
    depth = depth or cfg.eval.ablation_depth
    evalset = evalset or metrics.EvalSet.build(cfg)
    rows = []
    for arm in arms:
        for s in range(seeds):
            seed = cfg.seed + s
            t0 = time.time()
            res = continued.train(cfg, run_dir, f"{out_name}/{arm}-s{s}", depths=[depth], steps=steps, seed=seed,
                                  **arm_kwargs(cfg, arm))
            train_s = time.time() - t0
            score = metrics.evaluate_checkpoint(res["dir"], evalset, cfg, seed=seed)
            rows.append({"arm": arm, "seed": seed, "steps": steps, "depth": depth, "train_s": train_s,
                         "split": evalset.split,
                         "lm_flops": res["flops"], **{k: score.get(k) for k in KEYS + CI_KEYS}})
            if progress:
                print(f"{arm:13s} seed {seed}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in KEYS
                                                            if rows[-1][k] is not None))
    return rows


def arm_interval(rows: Sequence[dict[str, Any]], metric: str = "identity_normalised") -> dict[str, tuple[float, float]]:
    """arm -> (mean over its seeds, 95% half-width of that mean).

    The half-width is 1.96 · sqrt(v / n) over the arm's n training seeds, with v the larger of two estimates of one
    run's variance: the spread of the seeds' scores (training noise and evaluation noise together; unreliable with
    2 seeds) and the runs' own evaluation variance (mean of (half-width / 1.96)², from :func:`metrics.evaluate`),
    so one seed still gets an interval and two lucky seeds do not shrink it below the evaluation noise.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get(metric) is not None and r[metric] == r[metric]:
            by.setdefault(r["arm"], []).append(r)
    out = {}
    for arm, rs in by.items():
        vals = [r[metric] for r in rs]
        spread = statistics.variance(vals) if len(vals) > 1 else 0.0
        own = statistics.mean(((r.get(f"{metric}_ci") or 0.0) / 1.96) ** 2 for r in rs)
        out[arm] = (statistics.mean(vals), 1.96 * (max(spread, own) / len(vals)) ** 0.5)
    return out


def choose_arm(rows: Sequence[dict[str, Any]], metric: str = "identity_normalised") -> metrics.Choice:
    """The ablation's winner by :func:`dte_lib.metrics.choose` (the course's one selection rule) on each arm's mean
    over seeds and its interval (:func:`arm_interval`): ``plain`` unless a mechanism beats it by more than the
    interval, then the simpler arm in :data:`ARMS` order. Val-split rows only (raises on any other)."""
    wrong = sorted({r["arm"] for r in rows if r.get("split") != "val"})
    if wrong:
        raise ValueError(f"ablation.best_arm: arms {wrong} were not scored on the val split; choices read val only")
    est = arm_interval(rows, metric)
    order = [a for a in ARMS if a in est] + [a for a in est if a not in ARMS]
    return metrics.choose([(a, *est[a]) for a in order], metric=metric)


def best_arm(rows: Sequence[dict[str, Any]], metric: str = "identity_normalised") -> str:
    """The winning arm's name (:func:`choose_arm`; its ``reason`` says why)."""
    return choose_arm(rows, metric).name


def deltas(rows: Sequence[dict[str, Any]], metric: str = "identity_normalised") -> dict[str, list[float]]:
    """Each arm's ``metric`` minus plain's at the same seed, one value per seed (plain itself left out)."""
    plain = {r["seed"]: r[metric] for r in rows if r["arm"] == "plain" and r.get(metric) is not None}
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["arm"] != "plain" and r.get(metric) is not None and r["seed"] in plain:
            out.setdefault(r["arm"], []).append(r[metric] - plain[r["seed"]])
    return out


def plot_vs_noise(rows: Sequence[dict[str, Any]], noise: float, metric: str = "identity_normalised"):
    """Each arm's change against plain (mean over seeds, each seed a dot) beside the seed-noise band ±``noise``:
    a bar inside the band is no evidence either way (notebook 10)."""
    import matplotlib.pyplot as plt
    d = deltas(rows, metric)
    arms = sorted(d, key=lambda a: statistics.mean(d[a]))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(arms) + 1.4))
    ax.axvspan(-noise, noise, color="#bbbbbb", alpha=0.5, label=f"seed noise ±{noise:g}")
    ax.barh(arms, [statistics.mean(d[a]) for a in arms], color="#4a6fa5", alpha=0.85, label="mean over seeds")
    for k, a in enumerate(arms):
        ax.plot(d[a], [k] * len(d[a]), "k.", ms=5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{metric.replace('_', ' ')}: arm − plain (same seed, val)")
    ax.set_title("each mechanism's change against the seed-noise band")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def summary(rows: Sequence[dict[str, Any]]):
    """Mean ± sd over seeds per arm, and the difference of each arm's mean from ``plain``'s (a DataFrame); ``±95%``:
    the half-width of the arm's normalised-identity interval (:func:`arm_interval`), what the winner is chosen by."""
    import pandas as pd
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["arm"], []).append(r)
    base = {k: statistics.mean(r[k] for r in by["plain"] if r[k] is not None) for k in KEYS} if "plain" in by else {}
    out = []
    for arm, rs in by.items():
        line: dict[str, Any] = {"arm": arm, "seeds": len(rs),
                                "train_s": round(statistics.mean(r["train_s"] for r in rs), 1)}
        for k in KEYS:
            vals = [r[k] for r in rs if r[k] is not None]
            if not vals:
                continue
            m = statistics.mean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            line[k] = f"{m:.3f} ± {sd:.3f}" if len(vals) > 1 else f"{m:.3f}"
            if base:
                line[f"Δ{k}"] = f"{m - base[k]:+.3f}" if arm != "plain" else "—"
        ci = arm_interval(rs).get(arm)
        if ci is not None:
            line["identity_normalised ±95%"] = f"{ci[1]:.3f}"
        out.append(line)
    return pd.DataFrame(out)

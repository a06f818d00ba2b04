"""benchmarks/scaling.py: the run plan resumes, the lr sweep feeds the other budgets, the optimum is a vertex."""
from __future__ import annotations

import importlib.util
import math

import pytest

from dte_lib import config

spec = importlib.util.spec_from_file_location("scaling", config.REPO_ROOT / "benchmarks" / "scaling.py")
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def _row(d, L, lr, budget, loss, n):
    return {"d": d, "L": L, "lr": lr, "budget": budget, "seed": 0, "val_loss": loss, "compute_params": n}


def test_plan_sweeps_lr_at_the_middle_budget_then_reuses_each_shapes_best():
    budgets, shapes, lrs = (1e10, 1e11, 1e12), [(64, 1), (128, 1)], (1e-3, 3e-3)
    first = scaling.plan([], budgets, shapes, lrs, 0)
    assert first == [(64, 1, 1e-3, 1e11), (64, 1, 3e-3, 1e11), (128, 1, 1e-3, 1e11), (128, 1, 3e-3, 1e11)]
    done = [_row(64, 1, 1e-3, 1e11, 3.0, 1), _row(64, 1, 3e-3, 1e11, 2.5, 1), _row(128, 1, 1e-3, 1e11, 2.0, 2),
            _row(128, 1, 3e-3, 1e11, 2.2, 2)]
    assert scaling.plan(done[:2], budgets, shapes, lrs, 0) == first[2:]  # sweep first, then the rest
    rest = scaling.plan(done, budgets, shapes, lrs, 0)
    assert set(rest) == {(64, 1, 3e-3, 1e10), (128, 1, 1e-3, 1e10), (64, 1, 3e-3, 1e12), (128, 1, 1e-3, 1e12)}
    assert set(scaling.plan(done, budgets, shapes, lrs, 0, top=1)) == {(128, 1, 1e-3, 1e10),
                                                                              (128, 1, 1e-3, 1e12)}
    assert scaling.plan(done + [_row(d, L, lr, b, 1.0, 1) for d, L, lr, b in rest], budgets, shapes, lrs, 0) == []
    assert scaling.plan([], budgets, shapes, lrs, 0, lrs_for={64: (1e-2,)})[0] == (64, 1, 1e-2, 1e11)


def test_n_opt_is_the_parabola_vertex_in_log_n_or_the_edge():
    ns = [1e5, 1e6, 1e7]
    loss = [(math.log(n) - math.log(2e6)) ** 2 + 1.0 for n in ns]  # minimum at N = 2e6
    rows = [_row(64, i, 1e-3, 1e11, l, n) for i, (n, l) in enumerate(zip(ns, loss))]
    n, best = scaling.n_opt(rows)
    assert n == pytest.approx(2e6, rel=1e-6) and best["compute_params"] == 1e6
    edge = [_row(64, i, 1e-3, 1e11, l, n) for i, (n, l) in enumerate(zip(ns, [1.0, 2.0, 3.0]))]
    assert scaling.n_opt(edge)[0] == 1e5

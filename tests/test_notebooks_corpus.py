"""Assertions on the figures notebooks 02–04 recorded in the ci course run (fixture ci_run in conftest.py)."""
from __future__ import annotations

import json

import pytest

from dte_lib import data, quality

pytestmark = pytest.mark.course


def test_02_generated_every_requested_example_and_resume_sent_nothing(ci_run, ci_metrics):
    m = ci_metrics["02_week1_generate"]
    assert m["generated"] + m["failed"] == m["requested"] > 0
    assert m["rerun_sent"] == 0  # the second run found every id already in raw.jsonl
    rows = data.read_rows(ci_run / "corpus" / "raw.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for key in ("id", "bank_id", "topic", "task", "style", "messages", "finish_reason", "usage"):
        assert all(key in r for r in rows), key
    ledger = json.loads((ci_run / "corpus" / "ledger.json").read_text())
    assert ledger["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in rows)


def test_03_decision_is_computed_from_recorded_figures(ci_run, ci_metrics):
    m = ci_metrics["03_week1_evaluate"]
    assert m["decision"] in ("proceed", "refine prompts and regenerate")
    assert (m["decision"] == "proceed") == (m["failing_checks"] == [])
    assert m["kept"] + sum(m["drop_reasons"].values()) == m["raw"]
    assert set(m["drop_reasons"]) == set(quality.REASONS)
    assert 0 <= m["seed_false_drop_rate"] < 0.05
    saved = json.loads((ci_run / "corpus" / "week1_decision.json").read_text())
    assert saved["decision"] == m["decision"]


def test_04_expanded_by_resume_and_wrote_the_clean_corpus(ci_run, ci_metrics):
    m = ci_metrics["04_month1_expand"]
    assert m["reused_from_week1"] == ci_metrics["02_week1_generate"]["generated"]
    assert m["raw"] == m["reused_from_week1"] + m["new_generated"]
    assert m["clean"] == m["kept"] - m["duplicates_removed"]
    d = ci_run / "corpus"
    clean = data.load_corpus(d / "clean.jsonl", strict=True).examples if m["clean"] else []
    assert len(clean) == m["clean"] and all(ex.meta["origin"] == "synthetic" for ex in clean)
    dropped = data.read_rows(d / "dropped.jsonl")
    assert all(r["drop_reason"] in quality.REASONS for r in dropped)
    assert m["review_sample"] == min(m["clean"], max(3, round(0.01 * m["clean"])))
    for fig in ci_metrics["04_month1_expand"]["_figures"]:
        assert (ci_run / fig).stat().st_size > 1000

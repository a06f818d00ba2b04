"""The reviewer: real ipywidgets objects driven by button clicks; decisions persist and a new session resumes."""
from __future__ import annotations

import json

import pytest

from dte_lib import config, data, review

PERSONA = data.load_persona(config.DATA_DIR / "persona.json")
ITEMS = data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples


def test_sample_is_one_percent_with_a_floor_and_reproducible():
    assert len(review.sample(list(range(100_000)), 0.01)) == 1000
    assert len(review.sample(ITEMS, 0.01, minimum=5)) == 5
    assert review.sample(ITEMS, 0.1, seed=3) == review.sample(ITEMS, 0.1, seed=3)
    assert len(review.sample(ITEMS[:3], 0.01, minimum=5)) == 3


def test_clicking_buttons_records_decisions_and_a_new_session_resumes(tmp_path):
    items = review.sample(ITEMS, 0.02, minimum=5, seed=1)
    path = tmp_path / "review.jsonl"
    r = review.Reviewer(items, review.DecisionLog(path), PERSONA)
    assert r.current.id == items[0].id and items[0].id in r.body.value
    r.buttons["accept"].click()
    r.note.value = "off-topic tangent"
    r.buttons["reject"].click()
    r.skip.click()  # skipping leaves item 2 pending
    r.buttons["flag"].click()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["id"], x["decision"], x["note"]) for x in lines] == [
        (items[0].id, "accept", ""), (items[1].id, "reject", "off-topic tangent"), (items[3].id, "flag", "")]
    assert r.note.value == ""  # cleared for the next item
    assert "3 / 5 reviewed" in r.status.value
    # a new session (kernel restart) starts at the first undecided item
    r2 = review.Reviewer(items, review.DecisionLog(path), PERSONA)
    assert r2.current.id == items[2].id
    r2.decide("accept")  # headless: the same function the buttons call
    r2.decide("reject", "too generic")
    assert r2.current is None and r2.buttons["accept"].disabled and "Done" in r2.body.value
    with pytest.raises(RuntimeError):
        r2.decide("accept")
    assert review.DecisionLog(path).counts(items) == {"accept": 2, "reject": 2, "flag": 1, "pending": 0}


def test_later_decision_overrides_and_torn_last_line_is_tolerated(tmp_path):
    path = tmp_path / "review.jsonl"
    log = review.DecisionLog(path)
    log.record("a", "accept")
    log.record("a", "reject", "changed my mind")
    with open(path, "a") as fh:
        fh.write('{"id": "b", "decis')
    again = review.DecisionLog(path)
    assert again.decisions["a"]["decision"] == "reject" and "b" not in again.decisions
    with pytest.raises(ValueError):
        log.record("c", "maybe")


def test_static_html_shows_decisions_and_flags(tmp_path):
    items = ITEMS[:3]
    log = review.DecisionLog(tmp_path / "r.jsonl")
    log.record(items[0].id, "flag", "check <this>")
    page = review.static_html(items, log, PERSONA)
    assert page.count("<tr>") == 4 and "check &lt;this&gt;" in page and "pending: 2" in page


def test_a_clean_example_shows_no_flag_even_when_the_filter_trimmed_it():
    from dte_lib import quality
    fcfg = quality.FilterCfg(min_words=6, trim_truncated=True)
    ex = ITEMS[0]
    cut = quality.as_example({"id": "cut", "messages": [dict(m) for m in ex.messages], "finish_reason": "length"})
    quality._set_response(cut, ex.response.rstrip() + " And then the answer stops in the mid")
    kept, dropped = quality.filter_examples([cut], PERSONA, fcfg)
    assert kept and not dropped and kept[0].meta["trimmed_chars"] > 0
    s = review.scores(kept[0], PERSONA, fcfg)
    assert s["flags"] == [] and s["finish_reason"] == "length"
    assert "trimmed" in review._card(kept[0], PERSONA, fcfg)
    # the same text, untrimmed and cut by the length limit, is flagged
    raw = quality.as_example({"id": "raw", "messages": ex.messages, "finish_reason": "length"})
    assert "truncated" in review.scores(raw, PERSONA, fcfg)["flags"]
    # a reviewer's box reads as a sentence where the widget cannot be drawn
    from IPython.core.formatters import DisplayFormatter
    r = review.Reviewer([kept[0]], review.DecisionLog("/nonexistent/r.jsonl"), PERSONA, fcfg)
    data, _ = DisplayFormatter().format(r.show())
    assert data["text/plain"].startswith("[review widget: 1 sampled items")
    assert "application/vnd.jupyter.widget-view+json" in data

"""The corpus pipeline glue: raw → kept/dropped → clean files, the teacher endpoint choice, the week-1 decision."""
from __future__ import annotations

import json

import pytest

from dte_lib import config, corpus, data, generate, prompts

PERSONA = data.load_persona(config.DATA_DIR / "persona.json")
GOOD = ("I keep my reservoir's spectral radius just below one, so each input leaves an echo that fades instead "
        "of exploding. Only my readout learns. {}")


def _raw(run_dir, answers):
    cfg = config.load("ci", {"generate.few_shot": 0})
    reqs = prompts.plan_from_config(cfg, len(answers))
    rows = [generate.make_row(r, a, "stop", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "m")
            for r, a in zip(reqs, answers)]
    data.write_jsonl(corpus.corpus_dir(run_dir) / "raw.jsonl", rows)
    return cfg


def test_build_clean_writes_every_file_with_reasons(tmp_path):
    answers = [GOOD.format(""),
               "My membranes split the work into nested rooms, and each rule rewrites the symbols it holds.",
               "A hyperedge in my memory ties several ideas together at once, which is why I recall in clusters."]
    answers += [answers[0], "", "Pasta should be cooked in plenty of salted water, stirred early and tasted often."]
    cfg = _raw(tmp_path, answers)
    res = corpus.build_clean(tmp_path, cfg, PERSONA)
    assert (res["raw"], res["kept"], res["dropped"], res["clean"]) == (6, 4, 2, 3)
    assert res["drop_reasons"]["empty"] == 1 and res["drop_reasons"]["persona_drift"] == 1
    d = tmp_path / "corpus"
    dropped = data.read_rows(d / "dropped.jsonl")
    assert {r["drop_reason"] for r in dropped} == {"empty", "persona_drift"}
    clean = data.read_rows(d / "clean.jsonl")
    assert len(clean) == 3 and all(r["origin"] == "synthetic" and r["topic"] for r in clean)
    assert [m["role"] for m in clean[0]["messages"]] == ["system", "user", "assistant"]
    assert "usage" not in clean[0] and "finish_reason" not in clean[0]
    # the trainer's loader reads it as ordinary chat JSONL
    loaded = data.load_corpus(d / "clean.jsonl", strict=True).examples
    assert len(loaded) == 3 and loaded[0].topic


def test_week1_decision_names_failing_checks():
    cfg = config.load("demo")
    good = {"keep_rate": 0.9, "persona_rate": 0.95, "distinct_2": 0.6, "self_bleu": 10.0, "near_dup_share": 0.0}
    assert corpus.week1_decision(good, cfg)["decision"] == "proceed"
    bad = dict(good, self_bleu=80.0, keep_rate=0.1)
    out = corpus.week1_decision(bad, cfg)
    assert out["decision"] == "refine prompts and regenerate" and out["failing"] == ["keep_rate", "self_bleu"]
    assert len(out["checks"]) == 5


def test_teacher_endpoint_routes(tmp_path, monkeypatch):
    (tmp_path / "teacher").mkdir()
    info = tmp_path / "teacher" / "model_info.json"
    info.write_text(json.dumps({"backend": "openai", "model": "ft:gpt-4o-mini-2024-07-18:org::x"}))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY is not set"):  # backends.BackendUnavailable
        with corpus.teacher_endpoint(tmp_path):
            pass
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with corpus.teacher_endpoint(tmp_path) as ep:
        assert ep.base_url is None and ep.model.startswith("ft:") and not ep.local
    info.write_text(json.dumps({"backend": "compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1"}))
    with corpus.teacher_endpoint(tmp_path) as ep:
        assert ep.base_url == "http://127.0.0.1:9/v1"
    info.write_text(json.dumps({"backend": "carrier-pigeon", "model": "m"}))
    with pytest.raises(ValueError, match="unknown backend"):
        with corpus.teacher_endpoint(tmp_path):
            pass


def test_identity_signals():
    exs = [data.ChatExample(messages=[{"role": "assistant", "content": GOOD.format("")}]),
           data.ChatExample(messages=[{"role": "assistant", "content": "Boil water. Add pasta. Drain it."}])]
    assert corpus.identity_kept(exs, PERSONA) == {"persona_rate": 0.5, "concept_rate": 0.5}

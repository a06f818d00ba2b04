"""The inspector finds a run's checkpoints and is driven headless: settings, generate, scores, HTML, widget click."""
from __future__ import annotations

import json

import pytest

from dte_lib import config, data, inspector, metrics
from dte_lib import model as M
from dte_lib import tokenizer as toklib
from tests import _tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    tok = toklib.train_from_examples(_tiny.corpus_split()["train"], 512)
    for i, name in enumerate(["s01-grow-d1", "s02-grow-d2"]):
        m = M.build(len(tok), 64, 32, i + 1, 2, seed=i, eos_id=tok.eos_token_id)
        m.save_pretrained(run_dir / "checkpoints" / name)
        tok.save_pretrained(run_dir / "checkpoints" / name)
    m.save_pretrained(run_dir / "checkpoints" / "final")
    tok.save_pretrained(run_dir / "checkpoints" / "final")
    for sub in ("nb08", "ablation/plain-s0"):
        m.save_pretrained(run_dir / sub / "checkpoints" / "final")
        tok.save_pretrained(run_dir / sub / "checkpoints" / "final")
    (run_dir / "teacher").mkdir()
    (run_dir / "teacher" / "model_info.json").write_text(json.dumps({"backend": "local", "path": str(run_dir / "gone")}))
    return run_dir


def test_find_checkpoints_lists_stages_then_final_and_later_phases(run):
    found = inspector.find_checkpoints(run)
    assert list(found) == ["07 month 4 · s01-grow-d1", "07 month 4 · s02-grow-d2", "07 month 4 · end",
                           "08 month 5 · end", "10 months 7–9 ablation · plain-s0 (from scratch)"]  # no teacher: skipped
    # the course's final model (notebook 11's choice) is the one labelled final, with the phase that wrote it
    found = inspector.find_checkpoints(run, final=run / "nb08" / "checkpoints" / "final")
    assert [k for k in found if "final" in k] == ["final · 08 month 5"]
    from dte_lib import runlog
    runlog.record(run, "11_months10_12_refine", {"final_dir": "nb08/checkpoints/final"})
    assert "final · 08 month 5" in inspector.find_checkpoints(run)
    (run / "metrics.json").unlink()


def test_phase_labels_name_the_notebook_that_wrote_a_checkpoint():
    assert inspector.phase_label("") == "07 month 4"
    assert inspector.phase_label("nb10-mech") == "10 months 7–9 mech"
    assert inspector.phase_label("nb11-multitask") == "11 months 10–12 multitask"
    assert inspector.phase_label("06_short_run") == "06 month 3 short run"
    assert inspector.phase_label("nb09") == "09 month 6"
    assert inspector.phase_label("my-experiment") == "my-experiment"


def test_inspector_headless_and_widget(run):
    cfg = config.load("ci")
    persona = data.load_persona(cfg.path(cfg.data.persona))
    es = metrics.EvalSet.build(cfg)
    probe = es.probes[0]
    sources = inspector.find_checkpoints(run)
    sources["oracle"] = lambda ps: [probe["reference"] for _ in ps]
    ins = inspector.Inspector(sources, persona=persona, evalset=es, selected=["07 month 4 · s01-grow-d1", "oracle"],
                              max_new_tokens=12)
    ins.set(prompt=probe["paraphrases"][1], temperature=0.0)
    rows = ins.generate()
    assert [r["checkpoint"] for r in rows] == ["07 month 4 · s01-grow-d1", "oracle"]
    assert rows[1]["identity"] == pytest.approx(1.0, abs=1e-4) and rows[1]["identity_vs"] == "reference"
    assert rows[1]["fact_recall"] == 1.0 and rows[0]["identity"] < 0.9
    # greedy decoding is repeatable
    assert ins.generate()[0]["answer"] == rows[0]["answer"]
    html = ins.html()
    assert "oracle" in html and "identity" in html and "<table" in html
    with pytest.raises(KeyError):
        ins.set(selected=["nope"]).generate()
    # the widget: change the controls, click, the output HTML updates
    ui = ins.widget()
    ins._ui["pick"].value = ("07 month 4 · end", "08 month 5 · end")
    ins._ui["prompt"].value = "Tell me about the weather on Mars."
    ins._ui["max_new_tokens"].value = 8
    ins._ui["button"].click()
    assert [r["checkpoint"] for r in ins.rows] == ["07 month 4 · end", "08 month 5 · end"]
    assert ins.rows[0]["identity_vs"] == "persona" and "Mars" in ins._ui["out"].value
    assert ui.children


def test_probe_table_side_by_side_without_a_teacher(tmp_path):
    """probe | reference | students: one row per probe, each column that source's answer (callables here)."""
    cfg = config.load("ci")
    probes = data.read_rows(cfg.path(cfg.data.probes))
    df = inspector.probe_table(tmp_path, cfg, {"echo": lambda ps: [p.upper() for p in ps],
                                               "empty": lambda ps: ["" for _ in ps]}, probes, n=3)
    assert list(df.columns) == ["probe", "reference (no local teacher)", "echo", "empty"]
    assert list(df["probe"]) == [p["paraphrases"][0] for p in probes[:3]]
    assert list(df["echo"]) == [p["paraphrases"][0].upper() for p in probes[:3]]
    assert list(df["reference (no local teacher)"]) == [p["reference"] for p in probes[:3]]
    html = inspector.table_html(df)
    assert html.count("<tr>") == 4 and "(empty)" in html and "&lt;" not in df["probe"][0]


def test_answer_html_escapes_and_shows_line_breaks():
    assert inspector.answer_html("") == "<i>(empty)</i>"
    html = inspector.answer_html("a<b>\nc" + "\n" * 34 + "d")
    assert "&lt;b&gt;" in html and "\n" not in html
    assert " ↵ c" in html and "↵×34" in html and "\\n" not in html


def test_final_probe_answers_are_scored_and_kept_for_the_report(tmp_path):
    """The oracle student answers with the reference: identity 1 and full fact recall; the file holds what
    report.md quotes."""
    cfg = config.load("ci")
    es = metrics.EvalSet.build(cfg)
    ref = {q: p["reference"] for p in es.probes for q in p["paraphrases"]}
    df = inspector.final_probe_answers(tmp_path, cfg, lambda ps: [ref[q] for q in ps], es, n=3, name="final: x")
    assert list(df.columns) == ["probe", "reference", "final: x"]  # no local teacher here: no teacher column
    rows = inspector.load_final_probe_answers(tmp_path)
    assert [r["probe"] for r in rows] == [p["paraphrases"][0] for p in es.probes[:3]]
    assert all(r["student"] == r["reference"] and "teacher" not in r for r in rows)
    for r, p in zip(rows, es.probes[:3]):
        sc = r["scores"]["student"]
        assert sc["identity"] == pytest.approx(1.0, abs=1e-4) and sc["copy_rate"] <= 1.0
        assert ("fact_recall" in sc) == bool(p.get("fact_id")) and sc.get("fact_recall", 1.0) == 1.0
    assert inspector.load_final_probe_answers(tmp_path / "elsewhere") == []
    # out= writes elsewhere (benchmarks/read_probes.py: all 16 probes) and leaves the report's file as it was
    inspector.final_probe_answers(tmp_path, cfg, lambda ps: [ref[q] for q in ps], es, n=5, out=tmp_path / "all.jsonl")
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 5
    assert len(inspector.load_final_probe_answers(tmp_path)) == 3

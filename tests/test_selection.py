"""Every choice reads the VAL split; the TEST split is read once, by the final report (issue 12).

The hash split is instrumented: ``data.split`` returns a dict that records which part each caller reads. The
selection path runs on tiny real models (train an ablation arm, score checkpoints, pick the best stage, pick the
ablation winner) and must never read "test"; only ``dashboard.final_report`` may, and only after the choice.
"""
from __future__ import annotations

import json
import re

import pytest

from dte_lib import ablation, config, dashboard, data, metrics
from dte_lib import checkpoint as ckpt
from dte_lib import model as M
from dte_lib import tokenizer as toklib


class _Recording(dict):
    def __init__(self, parts, log):
        super().__init__(parts)
        self._log = log

    def __getitem__(self, key):
        self._log.append(key)
        return super().__getitem__(key)


@pytest.fixture
def split_log(monkeypatch):
    log: list[str] = []
    real = data.split
    monkeypatch.setattr(data, "split", lambda *a, **k: _Recording(real(*a, **k), log))
    return log


def test_selection_reads_val_only_and_test_once_at_the_end(tmp_path, split_log):
    cfg = config.load("ci", {"eval.identity_prompts": 4, "eval.probes": 3, "eval.paraphrases": 2,
                             "eval.max_new_tokens": 6, "eval.ablation_steps": 2})
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    tok = toklib.train_from_examples(ex[:60], 300)
    toklib.save(tok, tmp_path / "tokenizer")
    tok = toklib.load(tmp_path / "tokenizer")
    split_log.clear()  # reading the corpus to build the fixture is not the selection path

    # the selection path: an ablation arm trained and scored, two stages scored, the winners picked
    es = metrics.EvalSet.build(cfg)
    rows = ablation.run(cfg, tmp_path, arms=["plain"], seeds=1, steps=2, depth=1, evalset=es)
    assert ablation.best_arm(rows) == "plain"
    for i in range(2):
        m = M.build(len(tok), cfg.train.block_size, 32, 1, 2, seed=i, eos_id=tok.eos_token_id)
        d = ckpt.export_model(m, tok, tmp_path / "checkpoints" / f"s0{i}")
        dashboard.add(tmp_path, f"s0{i}", metrics.evaluate_checkpoint(d, es, cfg), depth=1)
    stage_rows = dashboard.load(tmp_path)
    assert {r["split"] for r in stage_rows} == {"val"}
    chosen = dashboard.best(stage_rows, names=["s00", "s01"])
    assert "val" in split_log and "test" not in split_log, split_log

    # the final report: the only read of test
    reports = dashboard.final_report(tmp_path, cfg, {chosen["name"]: tmp_path / "checkpoints" / chosen["name"]})
    assert split_log.count("test") == 1
    test_row = next(r for r in dashboard.load(tmp_path) if r["name"] == f"{chosen['name']} [test]")
    assert test_row["split"] == "test" and test_row["kind"] == "final"
    assert reports[chosen["name"]]["perplexity"] == pytest.approx(test_row["perplexity"])
    # a test row can never be a candidate
    with pytest.raises(ValueError, match="val split"):
        dashboard.best(dashboard.load(tmp_path))
    with pytest.raises(ValueError, match="val split"):
        ablation.best_arm([{**rows[0], "split": "test"}])


def _code_cells(nb_path):
    nb = json.loads(nb_path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebooks_choose_on_val_and_read_test_once_after_the_choice():
    nbs = sorted(config.NOTEBOOKS_DIR.glob("0[7-9]_*.ipynb")) + sorted(config.NOTEBOOKS_DIR.glob("1[01]_*.ipynb"))
    assert len(nbs) == 5
    reads = []
    for nb in nbs:
        for i, src in enumerate(_code_cells(nb)):
            assert 'split="test"' not in src and "split='test'" not in src, f"{nb.name} reads test directly"
            # the old pattern: choosing by a max/min over scores in the notebook instead of dashboard.best
            assert not re.search(r"\b(max|min)\([^)]*identity_normalised", src, re.S), nb.name
            if "final_report(" in src:
                reads.append((nb.name, i, src))
    assert len(reads) == 1 and reads[0][0].startswith("11_"), [r[:2] for r in reads]
    name, i, src = reads[0]
    cells = _code_cells(config.NOTEBOOKS_DIR / name)
    assert src.index("dashboard.keep_change(") < src.index("final_report(")  # notebook 10's noise rule, on val
    assert not any("final_report(" in c or "evaluate_checkpoint(" in c for c in cells[i + 1:]), \
        "nothing may be scored after the final report"


def test_ablation_deltas_pair_seeds_and_the_plot_shows_the_noise_band():
    import matplotlib
    matplotlib.use("Agg")
    rows = [{"arm": a, "seed": s, "split": "val", "identity_normalised": v}
            for a, s, v in [("plain", 1, 0.10), ("plain", 2, 0.20), ("self_ref", 1, 0.13), ("self_ref", 2, 0.17),
                            ("metacog", 1, 0.40), ("metacog", 3, 0.9)]]  # seed 3 has no plain twin: left out
    d = ablation.deltas(rows)
    assert d["self_ref"] == pytest.approx([0.03, -0.03]) and d["metacog"] == pytest.approx([0.30])
    assert "plain" not in d
    fig = ablation.plot_vs_noise(rows, 0.05)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["self_ref", "metacog"]  # by mean change
    assert "seed noise ±0.05" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_checkpoint_scored_in_bf16_loads_bf16_weights_and_agrees_with_fp32(tmp_path, monkeypatch):
    """``precision`` reaches the weights (the teacher is scored as it is served); on a small model the perplexity
    moves by well under the noise the course's choices allow."""
    import torch
    from transformers import AutoModelForCausalLM
    cfg = config.load("ci", {"eval.identity_prompts": 4, "eval.probes": 3, "eval.paraphrases": 2,
                             "eval.max_new_tokens": 6})
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    tok = toklib.train_from_examples(ex[:60], 300)
    toklib.save(tok, tmp_path / "tokenizer")
    tok = toklib.load(tmp_path / "tokenizer")
    d = ckpt.export_model(M.build(len(tok), cfg.train.block_size, 32, 1, 2, seed=0, eos_id=tok.eos_token_id), tok,
                          tmp_path / "m")
    es = metrics.EvalSet.build(cfg)
    seen = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: seen.append(k.get("dtype")) or real(*a, **k))
    fp32 = metrics.evaluate_checkpoint(d, es, cfg)
    bf16 = metrics.evaluate_checkpoint(d, es, cfg, precision="bf16")
    assert seen == [torch.float32, torch.bfloat16]
    assert bf16["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.02)

"""dte_lib.config: presets, overrides, run directories."""
from __future__ import annotations

import dataclasses

import pytest

from dte_lib import config


@pytest.mark.parametrize("name", config.PRESET_NAMES)
def test_every_preset_builds_and_every_field_is_commented(name):
    cfg = config.load(name)
    assert cfg.name == name
    src = config.__file__
    text = open(src, encoding="utf-8").read()
    for section in ("data", "teacher", "generate", "train", "eval", "scale"):
        for f in dataclasses.fields(getattr(cfg, section)):
            line = next(l for l in text.splitlines() if l.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{section}.{f.name} has no comment in config.py"


def test_presets_differ_where_it_matters():
    assert config.load("ci").generate.n_examples < config.load("demo").generate.n_examples
    assert config.load("ci").cell_timeout_s < config.load("full").cell_timeout_s


def test_env_preset_and_explicit_name(monkeypatch):
    monkeypatch.setenv("DTE_PRESET", "ci")
    assert config.load("").name == "ci"
    assert config.load("full").name == "full"
    monkeypatch.delenv("DTE_PRESET")
    assert config.load(None).name == "demo"
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        config.load("tiny")


def test_dotted_overrides_and_none_is_ignored():
    cfg = config.load("ci", {"train.vocab_size": 1024, "generate.n_examples": None, "seed": "7"})
    assert cfg.train.vocab_size == 1024
    assert cfg.generate.n_examples == config.load("ci").generate.n_examples
    assert cfg.seed == 7
    with pytest.raises(KeyError, match="has no field 'nope'"):
        config.load("ci", {"train.nope": 1})


def test_presets_are_independent_copies():
    a = config.load("ci")
    a.train.vocab_size = 3
    assert config.load("ci").train.vocab_size != 3


def test_run_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("DTE_RUN_DIR", raising=False)
    monkeypatch.setenv("DTE_OUTPUTS", str(tmp_path / "out"))
    assert config.run_dir_for("ci") == tmp_path / "out" / "runs" / "ci"
    monkeypatch.setenv("DTE_RUN_DIR", str(tmp_path / "mine"))
    assert config.run_dir_for("ci") == tmp_path / "mine"
    assert config.run_dir_for("ci", tmp_path / "explicit") == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()


def test_env_corpus_reaches_every_phase(monkeypatch, tmp_path):
    monkeypatch.setenv("DTE_CORPUS", str(tmp_path / "mine.jsonl"))
    assert config.load("ci").data.corpus == str(tmp_path / "mine.jsonl")
    monkeypatch.delenv("DTE_CORPUS")
    assert config.load("ci").data.corpus == "data/seed_corpus.jsonl"


def test_env_seed_replaces_the_preset_seed_and_a_bad_one_is_named(monkeypatch):
    default = config.load("ci").seed
    monkeypatch.setenv("DTE_SEED", "7")
    assert config.load("ci").seed == 7 != default
    monkeypatch.setenv("DTE_SEED", "seven")
    with pytest.raises(ValueError, match="DTE_SEED='seven'"):
        config.load("ci")


def test_list_fields_accept_every_spelling():
    for value in ("1,2", " 1, 2 ", [1, 2], (1, 2), ["1", "2"]):
        assert config.as_list(value) == [1, 2]
    assert config.as_list("1") == config.as_list(1) == [1]
    assert config.as_list("a,b", str) == ["a", "b"] and config.as_list(None) == [] and config.as_list("") == []
    with pytest.raises(ValueError, match="not a list of int"):
        config.as_list("1,x")


def test_train_depths_set_to_one_number_trains_one_stage():
    from dte_lib import progressive
    cfg = config.load("ci", {"train.depths": progressive._parse_value("1")})
    assert [s.depth for s in progressive.build_schedule(cfg.train) if s.kind == "grow"] == [1]
    cfg = config.load("ci", {"train.depths": [1, 3]})
    assert [s.depth for s in progressive.build_schedule(cfg.train) if s.kind == "grow"] == [1, 3]


def test_a_run_directory_records_its_preset_and_solutions_read_it(tmp_path, monkeypatch):
    """Worked solutions take the preset from the run they are pointed at, never from a default."""
    monkeypatch.setenv("DTE_PRESET", "ci")
    _, rdir = config.setup("demo", str(tmp_path / "run"))
    assert config.recorded_preset(rdir) == "demo"
    config.setup("ci", str(rdir))  # a later notebook under another preset does not rewrite the record
    assert config.recorded_preset(rdir) == "demo"
    cfg, got = config.setup_run([str(rdir)])
    assert (cfg.name, got) == ("demo", rdir)
    assert cfg.train.block_size == config.load("demo").train.block_size != config.load("ci").train.block_size


def test_setup_run_ends_a_users_mistake_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DTE_RUN_DIR", raising=False)
    monkeypatch.delenv("DTE_PRESET", raising=False)
    with pytest.raises(SystemExit, match="no run directory — pass the one the course wrote"):
        config.setup_run([])
    with pytest.raises(SystemExit, match="no such run directory — run the course first"):
        config.setup_run([str(tmp_path / "missing")])
    (tmp_path / "bare").mkdir()
    with pytest.raises(SystemExit, match="has no course.json naming its preset"):
        config.setup_run([str(tmp_path / "bare")])
    assert not (tmp_path / "missing").exists()  # a mistyped path is not created
    monkeypatch.setenv("DTE_PRESET", "long")  # with nothing recorded, an explicit environment preset is used
    assert config.setup_run([str(tmp_path / "bare")])[0].name == "long"

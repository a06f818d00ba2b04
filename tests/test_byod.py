"""Bring your own data: generated corpora of very different shapes (tests/byod_corpora.py) through `dte data check`
and a ci-preset `dte course run --corpus` over the notebooks that consume the corpus (00–04). Three course runs:
long-form JSONL, templated pairs, and a folder of two transcript exports — custom tags, and the shape whose opener
tag is also the persona's role tag (``<|echo|><|system|> … <|user|> … <|echo|> …``).

On each, the quality filter calibrated to the corpus must drop at most 5% of the user's own examples — the
figure `dte data check` prints and notebook 03 records as ``filter_false_drop_rate`` — while the uncalibrated
preset filter is shown to drop far more of the long-form and templated ones (what users met before).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import byod_corpora  # noqa: E402

from dte_lib import config, data, diversity, runlog  # noqa: E402

SHAPES = {"longform": None, "templated": None, "transcripts": byod_corpora.ROLES, "opener": byod_corpora.OPENER_ROLES}
COURSE_RUNS = {"longform": "longform", "templated": "templated", "transcripts": "transcripts_and_opener"}  # corpora key
NOTEBOOKS = ["00", "01", "02", "03", "04"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    return byod_corpora.write_all(tmp_path_factory.mktemp("byod"))


def dte(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(config.REPO_ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    for k in ("DTE_CORPUS", data.ROLES_ENV, "DTE_RUN_DIR", "DTE_PRESET"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "dte_lib", *args], capture_output=True, text=True, env=env,
                          cwd=config.REPO_ROOT, timeout=timeout)


def _roles_args(shape: str) -> list[str]:
    return ["--roles", SHAPES[shape]] if SHAPES[shape] else []


def test_the_generated_corpora_have_the_shapes_they_claim(corpora):
    long = data.load_corpus(corpora["longform"], strict=True).examples
    assert statistics.median(len(ex.response.split()) for ex in long) >= 500
    assert all("```" in ex.response for ex in long) and all("## " in ex.response for ex in long)
    short = data.load_corpus(corpora["templated"], strict=True).examples
    assert statistics.median(len(ex.response.split()) for ex in short) < 15
    clusters = diversity.near_duplicate_clusters([ex.response for ex in short], 0.6)
    assert sum(map(len, clusters)) / len(short) > 0.3 and data.exact_duplicates(short)
    assert b"\r\n" in corpora["transcripts"].read_bytes()
    tr = data.load_corpus(corpora["transcripts"], strict=True, roles=byod_corpora.ROLES).examples
    assert len(tr) == 40 and all(sum(m["role"] == "user" for m in ex.messages) >= 2 for ex in tr)
    assert all(ex.system and "\r" not in ex.response for ex in tr)
    assert corpora["opener"].read_text().count("<|echo|><|system|>") == 40
    for roles in (byod_corpora.OPENER_ROLES, None):  # the opener turn is not a message, with --roles or without
        op = data.load_corpus(corpora["opener"], strict=True, roles=roles).examples
        assert len(op) == 40 and all(ex.messages[0]["role"] == "system" and ex.response for ex in op)
        assert sum(len(ex.messages) > 3 for ex in op) >= 10  # multi-turn records among them
    both = data.load_corpus(corpora["transcripts_and_opener"], strict=True, roles=byod_corpora.ROLES)
    assert both.kept == 80 and len(both.formats) == 2


def test_custom_tags_without_roles_are_misread_once_with_the_mapping_to_try(corpora):
    res = data.load_corpus(corpora["transcripts"])
    assert res.kept == 0 and res.rejected == 40
    proposal = res.proposals[str(corpora["transcripts"])]
    assert data.parse_roles(proposal) == data.parse_roles(byod_corpora.ROLES)
    r = dte("data", "check", str(corpora["transcripts"]), "--preset", "ci")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.count("looks misread") == 2  # once in "what matters", once in the details — not per record
    assert r.stdout.count("unknown tags") <= 6 and "and 35 more unknown_tag problem(s)" in r.stdout
    assert "--roles '" in r.stdout


def test_a_custom_opener_tag_gets_a_command_to_copy_that_loads_every_record(corpora):
    path = str(corpora["opener_custom"])  # <|quill|> opens each record and marks Quill's turns; no --roles given
    r = dte("data", "check", path, "--preset", "ci")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    commands = set(re.findall(r"try: (dte data check .*?--roles '[^']*')", r.stdout))
    assert len(commands) == 1, r.stdout[-3000:]  # one command, said the same way wherever it appears
    args = shlex.split(commands.pop())
    assert args[:4] == ["dte", "data", "check", path]
    rep = json.loads(dte(*args[1:], "--preset", "ci", "--json").stdout)
    assert rep["examples"] == 40 and rep["rejected"] == 0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_data_check_on_each_shape(corpora, shape):
    r = dte("data", "check", str(corpora[shape]), "--preset", "ci", "--json", *_roles_args(shape))
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)  # one JSON object on stdout, nothing else
    assert rep["rejected"] == 0 and rep["examples"] > 0
    assert rep["filter_false_drop_rate"] <= 0.05, rep["filter"]
    for key in ("course", "teacher", "openai"):
        t = rep["tokens"][key]
        assert t["limit"] > 0 and t["max"] >= t["median"] > 0
    assert rep["tokens"]["course"]["limit"] == config.load("ci").train.block_size
    assert rep["tokens"]["openai"]["limit"] == 65_536
    if shape == "longform":
        assert rep["filter"]["filter_false_drop_rate_uncalibrated"] > 0.5  # the preset's filter alone drops most
        assert rep["code_blocks"]["share"] == 1.0 and rep["tokens"]["course"]["over"] == rep["examples"]
    if shape == "templated":
        assert rep["near_duplicates"]["share"] > 0.3 and rep["near_duplicates"]["example_pairs"]
        assert rep["exact_duplicates"]["groups"] >= 4
        assert rep["filter"]["filter_false_drop_rate_uncalibrated"] > 0.2
    if shape == "transcripts":
        assert rep["crlf_lines"] > 0 and rep["stats"]["multi_turn"] == rep["examples"]
    if shape == "opener":
        assert rep["examples"] == 40 and rep["stats"]["with_system"] == 40
    text = dte("data", "check", str(corpora[shape]), "--preset", "ci", *_roles_args(shape)).stdout
    head = text.split("\ndetails\n")[0]
    assert len(head.splitlines()) <= 24 and "filter_false_drop_rate:" in head  # one screen first


@pytest.mark.parametrize("shape", list(COURSE_RUNS))
def test_course_run_on_each_shape(corpora, shape, tmp_path):
    """A ci course over notebooks 00–04 on the user's corpus; notebook 03 prints and records the false-drop rate.
    The transcripts run reads a folder: the custom-tag export and the opener-tag export together."""
    run = tmp_path / "run"
    corpus = corpora[COURSE_RUNS[shape]]
    r = dte("course", "run", "--preset", "ci", "--corpus", str(corpus), *_roles_args(shape),
            "--only", *NOTEBOOKS, "--run-dir", str(run), "--no-progress", timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    m = runlog.load(run)
    n = len(data.load_corpus(corpus, roles=SHAPES[shape]).examples)
    if shape == "transcripts":
        assert n == 80  # both exports: 40 records each
    assert m["00_setup_and_tour"]["examples"] == n and m["00_setup_and_tour"]["rejected"] == 0
    assert m["03_week1_evaluate"]["filter_false_drop_rate"] <= 0.05
    nb = json.loads((run / "notebooks" / "03_week1_evaluate.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                      for o in c.get("outputs", []))
    assert "filter_false_drop_rate:" in printed

"""Every `dte` sub-command answers bad input with one line naming the problem and the fix — never a traceback.

Each case runs the real command in a subprocess (as a user would), with input that is wrong in the way users get it
wrong: a missing file, a binary file (a PNG renamed .jsonl), a bad option or override, a corrupt checkpoint, a
secret-like parameter name. Exit code 1 for these; argparse's own usage errors keep exit code 2 (also one line).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dte_lib import cli, config

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


def dte(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(config.REPO_ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DTE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dte_lib", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or config.REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "image.jsonl").write_bytes(PNG)
    ck = d / "ckpt"
    ck.mkdir()
    (ck / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, '
                                    '"vocab_size": 300, "n_positions": 64}')
    (ck / "model.safetensors").write_bytes(os.urandom(600))  # a corrupted checkpoint
    run = d / "run"
    (run / "checkpoints" / "final").mkdir(parents=True)
    (run / "checkpoints" / "final" / "config.json").write_text("{ this is not json")
    return d


def cases(d: Path) -> dict[str, tuple[list[str], int, str]]:
    """sub-command -> (arguments, expected exit code, a phrase the one line must hold)."""
    return {
        "course": (["course", "run", "--preset", "ci", "--corpus", str(d / "nope.jsonl")], 1, "no such file"),
        "data": (["data", "check", str(d / "image.jsonl")], 1, "binary file"),
        "env": (["env", "--bogus"], 2, "unrecognized arguments"),
        "generate": (["generate", "run", "--model", "m", "--out", str(d / "gen"), "--preset", "nope"], 1,
                     "unknown preset"),
        "serve": (["serve", "--model", f"t={d / 'nope'}"], 2, "no config.json"),
        "infra": (["infra", "bench", "--n_layer", "0", "--steps", "1", "--warmup", "0"], 1, "depths"),
        "plan": (["plan", "--utilisation", "0"], 2, "--utilisation"),
        "train": (["train", "--preset", "ci", "--run-dir", str(d / "train"), "--set", "bogus.field", "1"], 1,
                  "no section 'bogus'"),
        "tokenizer": (["tokenizer", str(d / "image.jsonl"), "--out", str(d / "tok")], 1, "binary file"),
        "metrics": ([ "metrics", str(d / "ckpt"), "--preset", "ci"], 1, "corrupt"),
        "dashboard": (["dashboard", str(d / "nope")], 1, "no such run directory"),
        "continue": (["continue", "--preset", "ci", "--run-dir", str(d / "run")], 1, "config.json"),
        "export": (["export", str(d / "nope"), "--out", str(d / "x.gguf")], 1, "no such model directory"),
        "chat": (["chat", str(d / "nope")], 1, "no such run or model directory"),
    }


def test_every_subcommand_has_a_case(bad):
    assert set(cases(bad)) == set(cli.COMMANDS)
    listed = dte("--help").stdout
    assert all(f"  {name} " in listed for name in cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_bad_input_gives_one_line_and_no_traceback(bad, name):
    args, rc, phrase = cases(bad)[name]
    r = dte(*args)
    assert r.returncode == rc, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) <= 1, r.stderr[-2000:]  # one line (dte data check reports its findings on stdout)
    assert any(phrase in ln for ln in errors + r.stdout.splitlines()), (r.stdout[-1000:], r.stderr[-2000:])


def test_debug_shows_the_traceback(bad):
    r = dte("--debug", "data", "check", str(bad / "nope.jsonl"))
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr


def test_missing_file_and_refused_parameter_name_the_fix(bad):
    r = dte("data", "check", str(bad / "nope.jsonl"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr and "check the path" in r.stderr
    for name in ("CREDENTIALS", "AUTH_BEARER", "SESSION_COOKIE", "PRIVATE_PEM", "MY_API_KEY"):
        r = dte("course", "run", "--preset", "ci", "--only", "00", "-p", name, "x", "--run-dir", str(bad / "c"))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"refusing to pass {name}" in r.stderr and "looks like a secret" in r.stderr
        assert "environment" in r.stderr


def test_explain_is_one_line_for_library_errors():
    from dte_lib import data
    err = data.CorpusError([data.Problem("f.jsonl", 3, "invalid_json", "invalid JSON", "fix it")] * 40, kept=2)
    line = cli.explain(err)
    assert "\n" not in line and "f.jsonl:3" in line and "dte data check f.jsonl" in line
    assert "\n" not in cli.explain(ValueError("first\nsecond"))
    assert "no such file" in cli.explain(FileNotFoundError(2, "No such file", "x.jsonl"))


def test_how_a_file_is_stored_is_named_or_read_never_a_traceback(tmp_path):
    """A lone surrogate escape: one problem with file:line and the fix. UTF-16 and gzip: read, and named as such."""
    import gzip
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, I am Echo."}]}\n'
    (tmp_path / "sur.jsonl").write_text(good + '{"messages": [{"role": "user", "content": "hi \\ud800"}, '
                                               '{"role": "assistant", "content": "ok"}]}\n')
    (tmp_path / "u16.jsonl").write_bytes((good * 3).encode("utf-16"))
    (tmp_path / "my.jsonl.gz").write_bytes(gzip.compress((good * 3).encode()))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(os.urandom(20000).hex().encode())[:5000])
    expect = {"sur.jsonl": (1, f"{tmp_path / 'sur.jsonl'}:2: lone UTF-16 surrogate \\ud800 at column 47"),
              "u16.jsonl": (0, "(jsonl, UTF-16-LE)"), "my.jsonl.gz": (0, "(jsonl, gzip)"),
              "cut.jsonl.gz": (1, "gzip file that does not decompress")}
    for name, (rc, phrase) in expect.items():
        r = dte("data", "check", str(tmp_path / name), "--preset", "ci")
        assert r.returncode == rc and "Traceback" not in r.stderr + r.stdout, (name, r.stderr[-2000:])
        assert not r.stderr.strip(), (name, r.stderr)  # the report is on stdout; nothing leaks to stderr
        assert phrase in r.stdout, (name, r.stdout[-2000:])
    sur = dte("data", "check", str(tmp_path / "sur.jsonl"), "--preset", "ci").stdout
    lines = [ln for ln in sur.splitlines() if "lone UTF-16 surrogate" in ln]
    assert len(lines) == 1 and "— fix: " in lines[0] and "export it again" in lines[0]

"""dte_lib.backends: the client factory and the explanations (no network call: the library functions only)."""
from __future__ import annotations

import openai
import pytest

from dte_lib import backends


def test_openai_without_key_explains_itself(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(backends.BackendUnavailable) as e:
        backends.make_client("openai")
    text = str(e.value)
    for must in ("OPENAI_API_KEY", "2027-01-06", "2027-01-14", "training_not_available", 'BACKEND = "local"',
                 "dte serve"):
        assert must in text, must
    assert backends.main(["openai"]) == 1


def test_compatible_needs_base_url(monkeypatch):
    monkeypatch.delenv("DTE_BASE_URL", raising=False)
    with pytest.raises(backends.BackendUnavailable, match="DTE_BASE_URL"):
        backends.check("compatible")
    monkeypatch.setenv("DTE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("DTE_API_KEY", raising=False)
    c = backends.make_client("compatible")
    assert str(c.base_url).startswith("http://127.0.0.1:9/v1") and c.api_key == "none"


def test_keys_come_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    c = backends.make_client("openai", max_retries=0)
    assert isinstance(c, openai.OpenAI) and c.api_key == "sk-test-not-real"
    with pytest.raises(ValueError, match="environment"):
        backends.make_client("openai", api_key="sk-from-a-parameter")
    assert isinstance(backends.make_client("local", base_url="http://127.0.0.1:1/v1", async_=True),
                      openai.AsyncOpenAI)
    with pytest.raises(ValueError):
        backends.make_client("local")
    with pytest.raises(ValueError, match="unknown backend"):
        backends.check("azure")


def test_training_not_available_text():
    text = backends.explain_training_not_available("nope")
    assert "403" in text and "2026-05-07" in text and "2027-01-06" in text and "2027-01-14" in text

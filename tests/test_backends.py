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


def test_follow_job_prints_no_line_per_step_under_a_live_plot(capsys, monkeypatch):
    """With the live loss plot drawing each step, only the other messages are printed (no log wall)."""
    import matplotlib
    matplotlib.use("Agg")
    from types import SimpleNamespace as NS
    events = [NS(id=f"m{i}", type="metrics", message=f"Step {i}/3: training loss=1.0",
                 data={"step": i, "train_loss": 1.0}) for i in (1, 2, 3)]
    events.append(NS(id="done", type="message", message="fine-tuning job succeeded", data=None))

    class Jobs:
        def retrieve(self, job_id):
            return NS(status="succeeded")

        def list_events(self, job_id, limit=100):
            return NS(data=list(reversed(events)))  # newest first, as the API lists them

    client = NS(fine_tuning=NS(jobs=Jobs()))
    import IPython.display
    drawn = []  # a notebook's display handle: each update redraws the plot
    monkeypatch.setattr(IPython.display, "display", lambda fig, display_id=False: NS(update=drawn.append))
    job, history = backends.follow_job(client, "ftjob-1", poll_s=0, live_plot=True)
    out = capsys.readouterr().out
    assert [r["step"] for r in history] == [1, 2, 3] and drawn
    assert "Step " not in out and "[succeeded] fine-tuning job succeeded" in out
    backends.follow_job(client, "ftjob-1", poll_s=0, live_plot=False)
    assert capsys.readouterr().out.count("Step ") == 3  # without the plot the steps are the only record


def test_gguf_reading_bar_goes_through_the_course_progress_and_is_restored(monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from dte_lib import ui
    before = gguf_utils.tqdm
    monkeypatch.setenv(ui.PROGRESS_ENV, "off")
    with ui.gguf_progress():
        assert gguf_utils.tqdm is ui.progress
        assert gguf_utils.tqdm(range(3), desc="x").disable  # off: never drawn, never saved
    assert gguf_utils.tqdm is before

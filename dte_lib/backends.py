"""One client factory for the three teacher backends, so the same ``openai`` SDK code drives all of them.

- ``"local"`` — this project's server (``dte_lib.server``) on 127.0.0.1; pass its ``base_url`` and ``api_key``
  (from :func:`dte_lib.server.launch`'s handle).
- ``"openai"`` — api.openai.com with ``OPENAI_API_KEY`` from the environment.
- ``"compatible"`` — any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio) at ``DTE_BASE_URL`` with
  ``DTE_API_KEY`` (many local servers accept any key; we send ``"none"`` when it is unset).

Keys come only from the environment — never a parameter, never printed. When something is missing, or when
OpenAI refuses a fine-tuning job with 403 ``training_not_available``, :class:`BackendUnavailable` carries a plain
explanation: what to set, OpenAI's wind-down dates, and the local route that always works.

Explained in notebook 01 (``notebooks/01_week1_teacher.ipynb``).
Run it: ``python -m dte_lib.backends openai`` says whether that backend is usable here, and why not.
"""
from __future__ import annotations

import os
import sys
from typing import Any

BACKENDS = ("local", "openai", "compatible")
WIND_DOWN = {
    "2026-05-07": "organisations that had never fine-tuned lost fine-tuning job creation",
    "2026-07-02": "organisations without recent fine-tuning activity lost job creation",
    "2027-01-06": "self-serve fine-tuning job creation ends for everyone",
    "2027-01-14": "gpt-4o-mini-2024-07-18 and the models fine-tuned from it shut down",
}
LOCAL_ROUTE = ("The local route needs no account and no network: run notebook 01 with BACKEND = \"local\" "
               "(SmolLM2-135M-Instruct, LoRA fine-tuned on this machine and served by `dte serve` behind the same "
               "OpenAI API), or point BACKEND = \"compatible\" at a vLLM / Ollama / llama.cpp / LM Studio server.")


class BackendUnavailable(RuntimeError):
    """Raised with an explanation a person can act on (what to set, the dates, the local route)."""


def _dates() -> str:
    return "\n".join(f"  {d}: {what}" for d, what in WIND_DOWN.items())


def explain_missing_key(backend: str) -> str:
    if backend == "openai":
        return ("BACKEND = \"openai\" needs an OpenAI API key in the environment, and OPENAI_API_KEY is not set.\n"
                "Set it in the shell that starts Jupyter or papermill (export OPENAI_API_KEY=sk-...); never put it "
                "in a notebook parameter, which papermill writes into the saved notebook.\n"
                "Before you do, know OpenAI's wind-down of self-serve fine-tuning:\n" + _dates() + "\n"
                "Job creation after your organisation's cut-off fails with 403 training_not_available.\n"
                + LOCAL_ROUTE)
    return ("BACKEND = \"compatible\" needs the server's address in the environment: set DTE_BASE_URL (e.g. "
            "http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM) and, if the server checks "
            "keys, DTE_API_KEY.\n" + LOCAL_ROUTE)


def explain_training_not_available(detail: str = "") -> str:
    return ("OpenAI refused to create the fine-tuning job (403 training_not_available"
            + (f": {detail}" if detail else "") + ").\n"
            "OpenAI is winding down self-serve fine-tuning:\n" + _dates() + "\n"
            "Your organisation is past its cut-off; no setting on this side changes that.\n" + LOCAL_ROUTE)


def check(backend: str) -> None:
    """Raise :class:`BackendUnavailable` with an explanation if ``backend`` cannot be used from this environment."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "openai" and not os.environ.get("OPENAI_API_KEY"):
        raise BackendUnavailable(explain_missing_key("openai"))
    if backend == "compatible" and not os.environ.get("DTE_BASE_URL"):
        raise BackendUnavailable(explain_missing_key("compatible"))


def make_client(backend: str, *, base_url: str | None = None, api_key: str | None = None, async_: bool = False,
                timeout: float = 600.0, max_retries: int = 3) -> Any:
    """An ``openai.OpenAI`` (or ``AsyncOpenAI``) client for ``backend``.

    ``base_url``/``api_key`` are only for ``"local"`` (the server handle's values); the other backends read the
    environment and refuse arguments, so a key can never arrive through a notebook parameter.
    """
    import openai
    check(backend)
    cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    if backend == "local":
        if not base_url:
            raise ValueError("backend 'local' needs base_url (and api_key) from dte_lib.server.launch()")
        return cls(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries)
    if base_url or api_key:
        raise ValueError(f"backend {backend!r} reads its address and key from the environment, not arguments")
    if backend == "openai":
        return cls(api_key=os.environ["OPENAI_API_KEY"], timeout=timeout, max_retries=max_retries)
    return cls(base_url=os.environ["DTE_BASE_URL"], api_key=os.environ.get("DTE_API_KEY") or "none",
               timeout=timeout, max_retries=max_retries)


def create_fine_tune(client: Any, **kwargs: Any) -> Any:
    """``client.fine_tuning.jobs.create(**kwargs)``, turning OpenAI's 403 ``training_not_available`` into
    :class:`BackendUnavailable` with the dates and the local route."""
    import openai
    try:
        return client.fine_tuning.jobs.create(**kwargs)
    except openai.PermissionDeniedError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        if (err or {}).get("code") == "training_not_available" or "training_not_available" in str(e):
            raise BackendUnavailable(explain_training_not_available((err or {}).get("message", ""))) from e
        raise


TERMINAL = ("succeeded", "failed", "cancelled")


def follow_job(client: Any, job_id: str, *, poll_s: float = 1.0, timeout_s: float = 3600,
               live_plot: bool = False, log: bool = True) -> tuple[Any, list[dict[str, Any]]]:
    """Poll a fine-tuning job until it ends; return (final job, metric history).

    Reads the job's events through the SDK (OpenAI's and this project's server emit the same ``metrics`` events:
    ``data = {step, train_loss, valid_loss, ...}``), prints new messages, and with ``live_plot`` redraws a loss
    plot in the notebook as steps arrive (and then prints only the other messages, not one line per step). History rows: ``{"step", "train_loss", "valid_loss"}`` (None if absent).
    """
    import time
    seen: set[str] = set()
    history: dict[int, dict[str, Any]] = {}
    handle, fig = None, None
    if live_plot:
        try:
            import matplotlib.pyplot as plt
            from IPython.display import display
            fig, _ = plt.subplots(figsize=(7, 3.5))
            handle = display(fig, display_id=True)
            plt.close(fig)
        except ImportError:
            handle = None
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        new = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data if e.id not in seen]
        for e in reversed(new):  # the API lists newest first
            seen.add(e.id)
            d = dict(e.data or {}) if not isinstance(e.data, dict) else e.data
            if e.type == "metrics" and "step" in d:
                row = history.setdefault(int(d["step"]), {"step": int(d["step"]), "train_loss": None,
                                                          "valid_loss": None})
                for k in ("train_loss", "valid_loss"):
                    if d.get(k) is not None:
                        row[k] = float(d[k])
            if log and not (handle is not None and e.type == "metrics"):  # the live plot already shows each step
                print(f"[{job.status}] {e.message}")
        if new and handle is not None:
            _draw(fig, sorted(history.values(), key=lambda r: r["step"]))
            handle.update(fig)
        if job.status in TERMINAL:
            return job, sorted(history.values(), key=lambda r: r["step"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
        time.sleep(poll_s)


def _draw(fig: Any, rows: list[dict[str, Any]]) -> None:
    ax = fig.axes[0]
    ax.clear()
    tr = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    va = [(r["step"], r["valid_loss"]) for r in rows if r["valid_loss"] is not None]
    if tr:
        ax.plot(*zip(*tr), label="train loss (batch)", marker=".")
    if va:
        ax.plot(*zip(*va), label="validation loss", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per assistant token")
    if tr or va:
        ax.legend()
    ax.grid(alpha=0.3)


def loss_figure(history: list[dict[str, Any]], title: str = "teacher fine-tune"):
    """The final loss plot (a matplotlib figure) from :func:`follow_job`'s history."""
    import matplotlib.pyplot as plt
    fig, _ = plt.subplots(figsize=(7, 3.5))
    _draw(fig, history)
    fig.axes[0].set_title(title)
    return fig


def compare_answers(client: Any, models: dict[str, str], prompts: list[list[dict[str, str]]], *,
                    max_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """Ask every model every prompt through the SDK; one row per prompt with each model's answer (side by side).

    ``models`` maps a column label (``"base"``) to a served model name.
    """
    rows = []
    for messages in prompts:
        row: dict[str, Any] = {"prompt": next((m["content"] for m in messages if m["role"] == "user"), "")}
        for label, name in models.items():
            r = client.chat.completions.create(model=name, messages=messages, max_tokens=max_tokens,
                                               temperature=temperature, seed=seed)
            row[label] = r.choices[0].message.content
            row[f"{label}_tokens"] = r.usage.completion_tokens if r.usage else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = argv[0] if argv else "openai"
    try:
        check(backend)
    except BackendUnavailable as e:
        print(e)
        return 1
    print(f"backend {backend!r}: configured")
    return 0


if __name__ == "__main__":
    sys.exit(main())

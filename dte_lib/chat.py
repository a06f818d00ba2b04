"""``dte chat``: talk to a course model — or any OpenAI-compatible server — in the terminal.

One code path for every model: the ``openai`` SDK streaming ``/v1/chat/completions``. A local model (a run
directory, whose final student it picks, or any Hugging Face model directory) is served by the course's own server
(:func:`dte_lib.server.launch`, in its own session so that a Ctrl-C at the terminal reaches only this program);
``--base-url URL --model NAME`` talks to llama.cpp's ``llama-server``, Ollama, vLLM, OpenAI or ``dte serve``
(key from ``$DTE_API_KEY``, or ``$OPENAI_API_KEY`` for api.openai.com only — never a flag).

The conversation starts with the persona's system prompt (``data/persona.json``) and keeps its history. A local
model's context is known (``n_positions`` / ``max_position_embeddings``), so the oldest turns are dropped — and,
as the course's own scoring does, the start of the system prompt cut — to keep prompt + answer inside it.

Commands: ``/reset`` clears the history; ``/system TEXT`` replaces the system prompt (``/system`` alone shows it,
``/system -`` removes it); ``/help``; ``/quit`` or Ctrl-D leaves. Ctrl-C while an answer streams stops that answer
(what arrived stays in the history) and returns to the prompt.

Run it: ``dte chat outputs/runs/demo`` · ``dte chat PATH/TO/HF_DIR --temperature 0.7`` ·
``dte chat --base-url http://127.0.0.1:8080/v1 --model deep-tree-echo``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

HELP = ("/reset clears the history · /system TEXT sets the system prompt (/system shows it, /system - removes it) · "
        "/quit or Ctrl-D leaves · Ctrl-C stops an answer")


@dataclass
class Target:
    """Where answers come from: an OpenAI-compatible client and a model name (and, for a local model, its context
    and tokenizer; the server handle to stop)."""
    client: Any
    model: str
    label: str
    context: int | None = None
    tokenizer: Any = None
    server: Any = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def local_model_dir(path: str | os.PathLike, teacher: bool = False) -> Path:
    """A Hugging Face model directory, or the final student (``teacher``: the local teacher) of a run directory."""
    from . import export, teacher as teacher_mod
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run or model directory — pass a course run (outputs/runs/demo) or a "
                                "Hugging Face model directory")
    if (p / "config.json").exists() and not teacher:
        return p
    if teacher:
        info = teacher_mod.load_model_info(p, missing_ok=True) or {}
        if info.get("path") and (Path(info["path"]) / "config.json").exists():
            return Path(info["path"])
        raise FileNotFoundError(f"{p}: no local teacher in this run (teacher/model_info.json) — run notebook 01 with "
                                "the local backend, or drop --teacher")
    found = export.final_student(p)
    if found is None:
        raise FileNotFoundError(f"{p}: neither a model directory (config.json) nor a run with a trained student "
                                "(checkpoints/final) — pass one of those")
    return found


def connect(target: str | None, *, base_url: str | None = None, model: str | None = None, teacher: bool = False,
            threads: int | None = None, weights: str | None = None) -> Target:
    """Start the course's server for a local model, or a client for ``base_url``."""
    import openai
    if base_url:
        if target:
            raise ValueError("pass either a run/model directory or --base-url, not both")
        if weights:
            raise ValueError("--weights sets the local server's weights; a --base-url server chooses its own")
        key = os.environ.get("DTE_API_KEY") or (os.environ.get("OPENAI_API_KEY") if "api.openai.com" in base_url
                                                else None) or "none"
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=1)
        if not model:
            models = [m.id for m in client.models.list()]
            if not models:
                raise ValueError(f"{base_url} serves no model — pass --model NAME")
            model = models[0]
        return Target(client, model, f"{model} at {base_url}")
    if not target:
        raise ValueError("nothing to talk to — pass a run directory, a model directory, or --base-url URL --model NAME")
    from transformers import AutoTokenizer
    from . import server
    path = local_model_dir(target, teacher)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    handle = server.launch({"echo": path}, threads=threads, weights=weights, own_session=True)
    client = openai.OpenAI(base_url=handle.base_url, api_key=handle.api_key, max_retries=0)
    tok = AutoTokenizer.from_pretrained(str(path))
    return Target(client, "echo", str(path), cfg.get("n_positions") or cfg.get("max_position_embeddings"), tok,
                  handle)


@dataclass
class Chat:
    """One conversation: the system prompt, the turns so far and the sampling settings."""
    target: Target
    system: str | None
    sampling: dict[str, Any]
    history: list[dict[str, str]] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)

    def prompt(self, max_tokens: int) -> tuple[list[dict[str, str]], int]:
        """The messages to send and the answer budget, fitted to a local model's context (oldest turns first,
        then the start of the system prompt, as the course's scoring cuts prompts from the left)."""
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        tok, ctx = self.target.tokenizer, self.target.context
        if tok is None or not ctx:
            return msgs, max_tokens
        from . import teacher
        budget = min(max_tokens, ctx // 2)  # room for the answer; the prompt keeps at least half

        def size(m):
            return len(tok(teacher.render_chat(tok, m, add_generation_prompt=True), add_special_tokens=False)
                       ["input_ids"])
        turns = self.history[:]
        while len(turns) > 2 and size(([msgs[0]] if self.system else []) + turns) > ctx - budget:
            turns = turns[2:]  # one user + assistant exchange at a time
            self._note("older turns no longer fit the model's context and are left out")
        msgs = ([msgs[0]] if self.system else []) + turns
        over = size(msgs) - (ctx - budget)
        if over > 0 and self.system:
            ids = tok(self.system, add_special_tokens=False)["input_ids"]
            msgs[0] = {"role": "system", "content": tok.decode(ids[min(over, len(ids)):])}
            self._note(f"the system prompt is cut from its start to fit the model's {ctx}-token context")
        return msgs, max(1, min(budget, ctx - size(msgs)))

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.add(text)
            print(f"({text})", file=sys.stderr)

    def ask(self, text: str, out: TextIO) -> str:
        """Send ``text``, stream the answer to ``out``; Ctrl-C stops it. Returns what arrived."""
        self.history.append({"role": "user", "content": text})
        msgs, max_tokens = self.prompt(self.sampling.get("max_tokens", 200))
        args = {k: v for k, v in self.sampling.items() if v is not None and k != "max_tokens"}
        answer, stream = [], None
        try:
            stream = self.target.client.chat.completions.create(model=self.target.model, messages=msgs, stream=True,
                                                                max_tokens=max_tokens, **args)
            for chunk in stream:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    answer.append(delta)
                    out.write(delta)
                    out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            out.write(" [stopped]\n")
        finally:
            if stream is not None:
                stream.close()  # a stopped answer leaves the server's batch at its next step
        out.flush()
        self.history.append({"role": "assistant", "content": "".join(answer)})
        return "".join(answer)

    def command(self, line: str, out: TextIO) -> bool:
        """Run a ``/command``; False means leave."""
        cmd, _, arg = line.strip().partition(" ")
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/reset":
            self.history.clear()
            out.write("(history cleared)\n")
        elif cmd == "/system":
            if not arg.strip():
                out.write(f"(system prompt: {self.system or 'none'})\n")
            else:
                self.system = None if arg.strip() == "-" else arg.strip()
                out.write("(system prompt removed)\n" if self.system is None else "(system prompt set)\n")
        else:
            out.write(f"({HELP})\n")
        return True


def repl(chat: Chat, read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> int:
    """Read lines until Ctrl-D or /quit; Ctrl-C at the prompt clears the line, during an answer stops it."""
    out.write(f"chatting with {chat.target.label} · {HELP}\n")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D or /quit leaves)\n")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not chat.command(line, out):
                return 0
            continue
        out.write("echo> ")
        out.flush()
        chat.ask(line, out)


def main(argv: Sequence[str] | None = None) -> int:
    from . import config, data
    ap = argparse.ArgumentParser(prog="dte chat", description="Chat in the terminal with a course model or any "
                                 "OpenAI-compatible server (streaming, history, the persona's system prompt).")
    ap.add_argument("target", nargs="?", help="a course run directory (its final student) or a Hugging Face model "
                    "directory")
    ap.add_argument("--teacher", action="store_true", help="with a run directory: talk to its local teacher")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default=None, help="the model name at --base-url (default: the first it lists)")
    ap.add_argument("--system", default=None, help="system prompt (default: the persona's; '-' for none)")
    ap.add_argument("--preset", default=None, help="sampling defaults from this preset's eval settings "
                    "(default: the run's preset, else demo)")
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (each answer uses it)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the local server")
    ap.add_argument("--weights", default=None, choices=("native", "int8"),  # dte_lib.server.int8.CHOICES
                    help="the local server's weights: int8 answers one person ~1.2x faster on a CPU "
                         "(dte_lib/server/int8.py)")
    args = ap.parse_args(argv)
    from . import modelcard
    run = modelcard.find_run_dir(Path(args.target)) if args.target and Path(args.target).exists() else None
    cfg = config.load(args.preset) if args.preset else modelcard.run_config(run)
    system = args.system if args.system is not None else \
        data.load_persona(cfg.path(cfg.data.persona)).get("system_prompt")
    sampling = {"temperature": cfg.eval.temperature if args.temperature is None else args.temperature,
                "top_p": cfg.eval.top_p if args.top_p is None else args.top_p,
                "max_tokens": args.max_tokens or max(cfg.eval.max_new_tokens, 120), "seed": args.seed}
    target = connect(args.target, base_url=args.base_url, model=args.model, teacher=args.teacher,
                     threads=args.threads, weights=args.weights)
    try:
        import readline  # noqa: F401 - line editing and ↑ history for input()
    except ImportError:
        pass
    try:
        return repl(Chat(target, None if system == "-" else system, sampling))
    finally:
        target.close()


if __name__ == "__main__":
    sys.exit(main())

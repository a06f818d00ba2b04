"""The ``dte`` command: one entry point, one sub-command per module.

Run it: ``dte --help`` · ``dte course run --preset demo`` · ``dte data check FILE`` · ``dte env``.
Each sub-command is a module's ``main(argv)``; modules load only when their command runs, so ``dte`` starts fast.

Errors a user can cause (a missing or unreadable file, a binary file, a bad option or override, a corrupt
checkpoint, a refused parameter) end the command with one line on stderr — what is wrong and how to fix it — and
exit code 1; ``--debug`` anywhere on the line (or ``DTE_DEBUG=1``) shows the Python traceback instead. Usage
errors found by argparse keep argparse's own message and exit code 2.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

COMMANDS = {  # name -> (module, one-line help)
    "course": ("dte_lib.course", "run the notebooks headless with papermill (run, list, report)"),
    "data": ("dte_lib.datacheck", "check a chat corpus (problems, lengths vs context, duplicates, filter); split it"),
    "env": ("dte_lib.envinfo", "print versions, threads, device, memory and disk"),
    "generate": ("dte_lib.generate", "generate a synthetic corpus from an OpenAI-compatible endpoint (resumable)"),
    "serve": ("dte_lib.server", "serve local HF models behind an OpenAI-compatible API (chat, files, fine-tuning)"),
    "infra": ("dte_lib.infra", "device, matmul FLOP/s, a training step's tokens/s and memory, MFU"),
    "plan": ("dte_lib.planner", "parameters, FLOPs, memory, GPU-hours and dollars; the roadmap's budget checked"),
    "train": ("dte_lib.progressive", "run or resume the progressive trainer (tokenizer, packing, growth, checkpoints)"),
    "tokenizer": ("dte_lib.tokenizer", "fit the byte-level BPE tokenizer with chat role tokens to a corpus"),
    "metrics": ("dte_lib.metrics", "score a checkpoint on the four success metrics with floors and ceilings"),
    "dashboard": ("dte_lib.dashboard", "print a run's success dashboard (metrics per checkpoint vs thresholds)"),
    "continue": ("dte_lib.continued", "continue training from checkpoints/final (months 5-12)"),
    "export": ("dte_lib.export", "export a student or teacher to GGUF (llama.cpp, Ollama) with a model card"),
    "chat": ("dte_lib.chat", "chat in the terminal with a run's model or any OpenAI-compatible server"),
}


def _one_line(text: str) -> str:
    return " · ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def explain(exc: BaseException) -> str:
    """One line for an exception a user can cause: what is wrong, then the fix."""
    name = getattr(exc, "filename", None)
    if isinstance(exc, FileNotFoundError):
        return (f"{name}: no such file or directory — check the path" if name else _one_line(exc))
    if isinstance(exc, IsADirectoryError):
        return f"{name}: is a directory, a file was expected — pass a file" if name else _one_line(exc)
    if isinstance(exc, NotADirectoryError):
        return f"{name}: not a directory — pass a directory" if name else _one_line(exc)
    if isinstance(exc, PermissionError):
        return f"{name or 'a file'}: permission denied — make it readable (chmod u+r) or use another path"
    if isinstance(exc, UnicodeDecodeError):
        return (f"binary file or not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}) — "
                "pass a UTF-8 text file, or re-save it as UTF-8 (iconv -f latin1 -t utf-8 IN > OUT)")
    if hasattr(exc, "one_line"):  # data.CorpusError
        return exc.one_line()
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}) — fix the file or pass another"
    if isinstance(exc, KeyError):
        return _one_line(exc.args[0] if exc.args else exc) + " — check the name (--help lists the options)"
    if type(exc).__name__ in ("SafetensorError", "HeaderTooLarge", "HeaderTooSmall"):
        return (f"corrupt or truncated safetensors file ({_one_line(exc)}) — delete the checkpoint and rebuild it "
                "(resume from an older one)")
    if isinstance(exc, (ValueError, RuntimeError, OSError, TypeError, ImportError)):
        return _one_line(f"{exc}") or type(exc).__name__
    return f"{type(exc).__name__}: {_one_line(exc)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DTE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: dte [--debug] COMMAND [ARGS...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:10s} {help_text}")
        print("\n--debug: show the Python traceback of an error instead of its one-line explanation")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dte: unknown command {name!r}; try: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # `dte ... | head`: the reader left; nothing to explain
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"dte {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user gets one line; --debug gives the traceback
        if debug:
            raise
        known = isinstance(exc, (OSError, ValueError, KeyError, RuntimeError)) or hasattr(exc, "one_line") or \
            type(exc).__name__ == "SafetensorError"
        tail = "" if known else " (unexpected: rerun with --debug for the traceback, and report it if it is a bug)"
        print(f"dte {name}: error: {explain(exc)}{tail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

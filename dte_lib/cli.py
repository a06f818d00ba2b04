"""The ``dte`` command: one entry point, one sub-command per module.

Run it: ``dte --help`` · ``dte course run --preset demo`` · ``dte data check FILE`` · ``dte env``.
Each sub-command is a module's ``main(argv)``; modules load only when their command runs, so ``dte`` starts fast.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> (module, one-line help)
    "course": ("dte_lib.course", "run the notebooks headless with papermill (run, list, report)"),
    "data": ("dte_lib.data", "check a chat corpus (file:line for every problem) and split it"),
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
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: dte COMMAND [ARGS...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:10s} {help_text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dte: unknown command {name!r}; try: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

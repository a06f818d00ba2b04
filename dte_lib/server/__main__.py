"""``python -m dte_lib.server`` / ``dte serve``: run the local OpenAI-compatible server in this process.

Run it: ``dte serve --model teacher=PATH/TO/HF_DIR --port 8000`` (binds 127.0.0.1; ``--host 0.0.0.0`` needs
``--api-key`` or ``$DTE_API_KEY_SERVE``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .engine import DEFAULT_MAX_BATCH
from .int8 import CHOICES as WEIGHTS, check_device

LOOPBACK = {"127.0.0.1", "localhost", "::1"}  # hosts that may serve without an API key


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dte serve", description="Serve local HF causal LMs with OpenAI's API.")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="serve the HF directory PATH as model NAME (repeatable)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None, help="require this bearer key (default: $DTE_API_KEY_SERVE, else none)")
    ap.add_argument("--data-dir", default="outputs/server", help="uploaded files and fine-tuned models")
    ap.add_argument("--faults", default=None, help="opt-in fault injection, e.g. '429:0.2,latency_ms:300'")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                    help="most rows (choices) decoding together in the continuous batch (1 = one at a time)")
    ap.add_argument("--no-prefix-cache", action="store_true",
                    help="recompute every prompt in full (default: reuse the KV of a shared prompt prefix)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                    help="where the models run (auto: CUDA, then Apple MPS, else the CPU)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="weights' dtype (auto: bf16 on a GPU that has it and on a CPU with native bf16 measured "
                         "faster, else fp32)")
    ap.add_argument("--weights", default="native", choices=WEIGHTS,
                    help="int8: weight-only int8 Linear layers on the CPU — a lone request ~1.2x faster end to end, "
                         "a batch of 64 slower (dte_lib/server/int8.py); native: the precision's dtype")
    ap.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted")
    ap.add_argument("--train-defaults", default=None, help="JSON of fine-tune knobs for jobs (max_steps, ...)")
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="exit when this process is gone (launch() passes its own pid: no orphaned servers)")
    args = ap.parse_args(argv)
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"--model {spec!r}: write NAME=PATH")
        if not (Path(path) / "config.json").exists():
            ap.error(f"--model {spec!r}: {path} has no config.json (not a Hugging Face model directory)")
        models[name] = path
    # a key of only whitespace is no key (it would protect nothing and must not open a public bind)
    api_key = (args.api_key or "").strip() or (os.environ.get("DTE_API_KEY_SERVE") or "").strip() or None
    if args.host not in LOOPBACK and not api_key:
        print(f"dte serve: refusing to bind {args.host} without an API key: anyone on the network could use it. "
              "Pass --api-key (or set DTE_API_KEY_SERVE), or bind 127.0.0.1.", file=sys.stderr)
        return 2
    if args.faults:
        from .app import Faults
        try:
            Faults(args.faults)
        except ValueError as e:
            ap.error(str(e))
    from ..device import resolve
    try:
        where = resolve(args.device).type
        if args.weights == "int8":
            check_device(where)
    except ValueError as e:
        print(f"dte serve: {e}", file=sys.stderr)
        return 2
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    import uvicorn
    from .app import create_app
    app = create_app(models, api_key=api_key, faults=args.faults, data_dir=args.data_dir,
                     max_body_bytes=int(args.max_body_mb * (1 << 20)), threads=args.threads,
                     max_batch=args.max_batch, prefix_cache=not args.no_prefix_cache, device=args.device,
                     precision=args.precision, weights=args.weights,
                     train_defaults=json.loads(args.train_defaults) if args.train_defaults else None)
    from ..device import precision_note
    print(f"serving {', '.join(models) or 'no models'} on http://{args.host}:{args.port}/v1 "
          f"({precision_note(args.device, args.precision)}"
          f"{', int8 weights' if args.weights == 'int8' else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _exit_with_parent(parent: int) -> None:
    """A notebook kernel that dies (a timeout, a crash) must not leave its server running: poll and follow it."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)
    threading.Thread(target=watch, name="dte-parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

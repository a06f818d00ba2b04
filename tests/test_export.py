"""GGUF export round trips: a tiny GPT-2 with the course's tokenizer and a tiny Llama, written by ``dte_lib.export``
and read back by transformers (``gguf_file=``), against the originals; plus the model card and Modelfile.

Tolerances (max |Δ logit| over a 72- and 86-token persona chat; measured on these tiny random models, whose logits reach
about 1.0–1.4): f32 is bit-exact; f16 measured 2.4e-4 (gpt2) and 4.9e-4 (llama), bound 2e-3; q8_0 measured
7.3e-3 and 1.04e-2, bound 4e-2; the greedy next token agrees at ≥ 98.8% of positions (bound 90%). The real teacher
(SmolLM2-135M) is measured in benchmarks/bench_export.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from dte_lib import export, modelcard  # noqa: E402
from dte_lib import tokenizer as toklib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PERSONA = "I am Deep Tree Echo: my roots hold 3 echoes, my branches 12 resonances — and I say when I'm unsure."
CHAT = [{"role": "system", "content": "You are Deep Tree Echo."},
        {"role": "user", "content": "Who are you, and what do you remember?"},
        {"role": "assistant", "content": "I am an echo of many voices, rooted in 2 reservoirs."},
        {"role": "user", "content": "Tell me more."}]
BOUND = {"f32": 0.0, "f16": 2e-3, "q8_0": 4e-2}


def _texts() -> list[str]:
    from dte_lib import data
    ex = data.load_corpus(ROOT / "data" / "seed_corpus.jsonl").examples[:80]
    return [toklib.render(e.messages) for e in ex]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """The course's own tokenizer (role tokens, chat template) and a GPT-2 from ``dte_lib.model.build``."""
    from dte_lib import model as M
    d = tmp_path_factory.mktemp("gpt2")
    tok = toklib.train_tokenizer(_texts(), 400)
    toklib.save(tok, d)
    torch.manual_seed(0)
    m = M.build(len(tok), 96, 64, 2, 2, seed=0, eos_id=tok.eos_token_id)
    m.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with grouped-query attention (4 heads, 2 key/value heads) and a ChatML tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import ByteLevelBPETokenizer
    d = tmp_path_factory.mktemp("llama")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(_texts(), vocab_size=500, special_tokens=specials, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                         "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                         "{% endif %}")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=100000.0,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_round_trip_logits(arch, dtype, gpt2_dir, llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = gpt2_dir if arch == "gpt2" else llama_dir
    res = export.export_gguf(src, tmp_path / f"m-{dtype}.gguf", dtype)
    assert res.arch == arch and res.path.exists() and not list(tmp_path.glob(".*.tmp"))
    tok = AutoTokenizer.from_pretrained(src)
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    back, _ = export.load_gguf(res.path)  # transformers' own GGUF reader (gguf_file=)
    assert back.config.model_type == arch and back.config.num_hidden_layers == 2
    a, b = _logits(original, ids), _logits(back, ids)
    diff = (a - b).abs().max().item()
    if dtype == "f32":
        assert torch.equal(a, b), f"f32 export is not exact: max |Δ| {diff}"
    else:
        assert 0 < diff <= BOUND[dtype], f"{arch} {dtype}: max |Δ logit| {diff:.2e} > {BOUND[dtype]}"
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    if dtype == "q8_0":  # 2-D weights really are 8-bit blocks, norms stay f32
        from gguf import GGUFReader
        kinds = {t.name: t.tensor_type.name for t in GGUFReader(res.path).tensors}
        assert kinds["token_embd.weight"] == "Q8_0" and kinds["output_norm.weight"] == "F32"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tokenizer_and_template_round_trip(arch, gpt2_dir, llama_dir, tmp_path):
    from transformers import AutoTokenizer
    src = gpt2_dir if arch == "gpt2" else llama_dir
    export.export_gguf(src, tmp_path / "m.gguf", "f16")
    tok = AutoTokenizer.from_pretrained(src)
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert back(PERSONA)["input_ids"] == tok(PERSONA, add_special_tokens=False)["input_ids"]
    chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert back(chat)["input_ids"] == tok(chat, add_special_tokens=False)["input_ids"]  # role tokens stay whole
    assert back.chat_template == tok.chat_template
    assert back.eos_token == tok.eos_token
    if arch == "gpt2":
        assert all(len(back(t, add_special_tokens=False)["input_ids"]) == 1 for t in toklib.SPECIAL_TOKENS)


def test_gguf_metadata_follows_llama_cpp(llama_dir, tmp_path):
    from gguf import GGUFReader
    res = export.export_gguf(llama_dir, tmp_path / "m.gguf", "f32")
    r = GGUFReader(res.path)
    f = {k: v.contents() for k, v in r.fields.items() if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")}
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.dimension_count"] == 16 and f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "gpt-2" and f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.ggml.eos_token_id"] == 2 and "output.weight" not in {t.name for t in r.tensors}  # tied
    types = f["tokenizer.ggml.token_type"]
    assert types[:3] == [3, 3, 3] and set(types[3:]) == {1}  # the specials are control tokens
    # q is permuted to llama.cpp's interleaved rotary layout, v is not
    from safetensors.torch import load_file
    sd = load_file(llama_dir / "model.safetensors")
    q = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight").data
    v = next(t for t in r.tensors if t.name == "blk.0.attn_v.weight").data
    assert (v == sd["model.layers.0.self_attn.v_proj.weight"].numpy()).all()
    assert not (q == sd["model.layers.0.self_attn.q_proj.weight"].numpy()).all()


def test_chat_frames_rebuild_the_template(gpt2_dir, llama_dir):
    from transformers import AutoTokenizer
    for d, stops in ((gpt2_dir, ["<|endoftext|>", "<|user|>"]), (llama_dir, ["<|im_end|>", "<|im_start|>"])):
        tok = AutoTokenizer.from_pretrained(d)
        frames = modelcard.chat_frames(tok)
        assert modelcard.render_frames(frames, CHAT, add_generation_prompt=True) == \
            tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        assert modelcard.stop_tokens(tok, frames) == stops
        assert "{{ .Content }}" in modelcard.go_template(frames)


def test_card_and_modelfile_with_and_without_metrics(gpt2_dir, tmp_path):
    import yaml
    from dte_lib import dashboard
    run = tmp_path / "run"
    (run / "course.json").parent.mkdir(parents=True)
    (run / "course.json").write_text(json.dumps({"preset": "ci", "notebooks": {}}))
    out = run / "export" / "student" / "echo.gguf"
    res = export.export_gguf(gpt2_dir, out, "f16")
    card = modelcard.write(out, gpt2_dir, role="student", run_dir=run, exported=res).read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and "gguf" in front["tags"] and front["pipeline_tag"] == "text-generation"
    assert "Not evaluated" in card and "ollama create" in card and "n_positions=96" in card
    mf = (out.parent / "Modelfile").read_text()
    assert "FROM ./echo.gguf" in mf and 'PARAMETER stop "<|endoftext|>"' in mf and "PARAMETER num_ctx 96" in mf
    assert "Deep Tree Echo" in mf.split("SYSTEM")[1]
    row = {"identity": 0.41, "identity_floor": 0.27, "identity_ceiling": 0.66, "identity_normalised": 0.36,
           "perplexity": 137.0, "diversity": 0.78, "diversity_references": 0.84, "coherence": 0.02,
           "coherence_floor": 0.0, "coherence_ceiling": 0.5, "copy_rate": 0.0, "bits_per_byte": 1.95, "_split": "test"}
    dashboard.add(run, "months10-12-d2-multitask [test]", row, kind="final")
    card = modelcard.write(out, gpt2_dir, role="student", run_dir=run, exported=res).read_text()
    assert "Not evaluated" not in card
    assert "| identity | 0.410 | 0.270 | 0.660 | > 0.85 | no |" in card
    assert "| perplexity | 137.000 | — | — | < 20 | no |" in card


def test_export_run_finds_final_student_and_skips_up_to_date(gpt2_dir, tmp_path):
    import shutil
    from dte_lib import runlog
    run = tmp_path / "run"
    shutil.copytree(gpt2_dir, run / "nb11-lm" / "checkpoints" / "final")
    runlog.record(run, "11_months10_12_refine", {"final_dir": "nb11-lm/checkpoints/final"})
    lines: list[str] = []
    done = export.export_run(run, log=lines.append)
    assert set(done) == {"student"} and done["student"].path.parent == run / "export" / "student"
    assert (run / "export" / "student" / "README.md").exists() and (run / "export" / "student" / "Modelfile").exists()
    assert any("no teacher" in line for line in lines)
    assert export.export_run(run, log=lines.append) == {} and "up to date" in lines[-2]


def _dte(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dte_lib.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_cli_export_and_one_line_errors(gpt2_dir, tmp_path):
    ok = _dte("export", str(gpt2_dir), "--out", str(tmp_path / "s.gguf"), "--dtype", "q8_0")
    assert ok.returncode == 0, ok.stderr
    assert "gpt2, q8_0" in ok.stdout and (tmp_path / "README.md").exists() and (tmp_path / "Modelfile").exists()
    missing = _dte("export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf"))
    assert missing.returncode == 1 and "no such model directory" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    wrong = _dte("export", str(bert), "--out", str(tmp_path / "x.gguf"))
    assert wrong.returncode == 1 and "model_type 'bert' is not exported" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

"""dte_lib.teacher: chat rendering, assistant-only labels, the loss, LoRA fine-tuning, model_info.json."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dte_lib import teacher
from tests._tiny_lm import chat_rows, make_tiny_lm

CONV = [{"role": "system", "content": "You are Echo."}, {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "An echo."}, {"role": "user", "content": "And?"},
        {"role": "assistant", "content": "Roots and branches."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


def _labelled_text(tok, enc):
    return tok.decode([t for t, l in zip(enc["input_ids"], enc["labels"]) if l != -100])


def test_fallback_format_and_assistant_only_labels(tiny):
    _, tok = teacher.load(tiny)
    assert not tok.chat_template
    text = teacher.render_chat(tok, CONV[:2], add_generation_prompt=True)
    assert text == "<|system|>You are Echo.\n<|user|>Who are you?\n<|echo|>"
    enc = teacher.encode_for_training(tok, CONV, max_length=256)
    assert _labelled_text(tok, enc) == "An echo.<|endoftext|>\nRoots and branches.<|endoftext|>\n"
    weighted = [*CONV[:2], {**CONV[2], "weight": 0}, *CONV[3:]]
    assert _labelled_text(tok, teacher.encode_for_training(tok, weighted, 256)) == \
        "Roots and branches.<|endoftext|>\n"
    assert len(teacher.encode_for_training(tok, CONV, max_length=10)["input_ids"]) == 10


def test_smollm2_chat_template_labels_only_the_assistant():
    _, tok = teacher.load(teacher.base_model_dir())
    enc = teacher.encode_for_training(tok, CONV, max_length=512)
    assert _labelled_text(tok, enc) == "An echo.<|im_end|>\nRoots and branches.<|im_end|>\n"
    assert "<|im_end|>" in teacher.stop_strings(tok)


def test_trim_fits_the_last_answer_to_whole_sentences_so_it_keeps_its_end_token():
    """Cut at the window, an over-long answer never shows its end-of-turn token; trimmed, it ends on a whole
    sentence followed by <|im_end|>, within the window — and a conversation that fits is left alone."""
    _, tok = teacher.load(teacher.base_model_dir())
    long_answer = " ".join(f"Sentence number {i} is about roots and echoes." for i in range(40))
    conv = [{"role": "system", "content": "You are Echo."}, {"role": "user", "content": "Tell me everything."},
            {"role": "assistant", "content": long_answer}]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    cut = teacher.encode_for_training(tok, conv, 96, "cut")
    trim = teacher.encode_for_training(tok, conv, 96, "trim")
    assert len(cut["input_ids"]) == 96 and end not in cut["input_ids"][-3:]
    assert len(trim["input_ids"]) <= 96 and end in trim["input_ids"][-3:]
    kept = _labelled_text(tok, trim)
    assert kept.startswith("Sentence number 0") and kept.rstrip().endswith("echoes.<|im_end|>")
    assert 5 < kept.count("Sentence number") < 40
    # one sentence more would not have fitted
    fitted = teacher.fit_last_answer(tok, conv, 96)[-1]["content"]
    longer = long_answer[:len(fitted) + long_answer[len(fitted):].index(".") + 1]
    assert len(tok(teacher.render_chat(tok, conv[:-1] + [{"role": "assistant", "content": longer}]),
                   add_special_tokens=False)["input_ids"]) > 96
    assert teacher.encode_for_training(tok, CONV, 512, "trim") == teacher.encode_for_training(tok, CONV, 512, "cut")
    with pytest.raises(ValueError, match="fit"):
        teacher.encode_for_training(tok, CONV, 512, "crop")


def test_loss_is_next_token_cross_entropy_on_labels(tiny):
    """The labels are not pre-shifted: the loss must equal a hand-computed next-token cross-entropy."""
    model, tok = teacher.load(tiny)
    rows = [teacher.encode_for_training(tok, r["messages"], 64) for r in chat_rows(3)]
    ids, labels, mask = teacher._collate(rows, tok.pad_token_id)
    got = teacher.eval_loss(model, rows, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    losses = []
    for b in range(ids.size(0)):
        for t in range(ids.size(1) - 1):
            if labels[b, t + 1] != -100:
                losses.append(F.cross_entropy(logits[b, t][None], labels[b, t + 1][None]).item())
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_lora_finetune_lowers_validation_loss_and_saves_a_plain_model(tiny, tmp_path):
    train = [r["messages"] for r in chat_rows(16)]
    val = [r["messages"] for r in chat_rows(4, offset=50)]
    events = []
    s = teacher.LoraSettings(rank=4, alpha=8, learning_rate=1e-2, epochs=3, batch_size=4, max_length=64,
                             eval_every=2, threads=1)
    res = teacher.finetune(tiny, train, val, tmp_path / "out", s, on_event=events.append,
                           checkpoint_dir=lambda e: tmp_path / f"ck{e}")
    assert [e["step"] for e in events] == list(range(0, 13))
    assert res["val_loss_final"] < res["val_loss_base"]
    assert [c["epoch"] for c in res["checkpoints"]] == [1, 2]
    model, _ = teacher.load(tmp_path / "out")  # merged: no peft needed to load it
    assert not any("lora" in n for n, _ in model.named_parameters())
    stopped = teacher.finetune(tiny, train, val, tmp_path / "never", s, should_stop=lambda: True)
    assert stopped["stopped"] and not (tmp_path / "never").exists()


def test_early_stopping_keeps_the_best_adapter_not_the_last(tiny, tmp_path):
    """A learning rate far too high makes validation worse; patience stops the run and the saved model is the
    best one seen (its validation loss, measured again from disk, is the reported best, below the last one)."""
    train = [r["messages"] for r in chat_rows(16)]
    val = [r["messages"] for r in chat_rows(4, offset=50)]
    s = teacher.LoraSettings(rank=4, alpha=8, learning_rate=0.5, epochs=5, batch_size=4, max_length=64,
                             eval_every=1, patience=2, threads=1)
    res = teacher.finetune(tiny, train, val, tmp_path / "out", s)
    vals = [h["val_loss"] for h in res["history"] if h["val_loss"] is not None]
    assert res["early_stopped"] and res["steps"] < 5 * 4
    assert res["val_loss_final"] == min(vals) < res["val_loss_last"]
    assert res["history"][-1]["best_val_loss"] == min(vals)
    model, tok = teacher.load(tmp_path / "out")
    rows = [teacher.encode_for_training(tok, m, 64) for m in val]
    assert teacher.eval_loss(model, rows, tok.pad_token_id) == pytest.approx(res["val_loss_final"], rel=1e-4)


def test_micro_batches_give_the_whole_batch_update(tiny, tmp_path):
    """Gradient accumulation over micro-batches of 1 or 3 conversations makes the same steps as whole batches of 4
    (dropout off): the same training losses and the same validation curve, to float rounding."""
    cfg_path = tiny / "config.json"
    no_dropout = tmp_path / "lm"
    no_dropout.mkdir()
    for f in tiny.iterdir():
        (no_dropout / f.name).write_bytes(f.read_bytes())
    cfg = json.loads(cfg_path.read_text())
    cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (no_dropout / "config.json").write_text(json.dumps(cfg))
    train = [r["messages"] for r in chat_rows(8)]
    val = [r["messages"] for r in chat_rows(4, offset=50)]
    runs = {}
    for micro in (0, 1, 3):
        s = teacher.LoraSettings(rank=4, alpha=8, learning_rate=1e-2, epochs=2, batch_size=4, max_length=64,
                                 eval_every=1, threads=1, dropout=0.0, micro_batch=micro)
        runs[micro] = teacher.finetune(no_dropout, train, val, tmp_path / f"m{micro}", s)
    for micro in (1, 3):
        for a, b in zip(runs[0]["history"], runs[micro]["history"]):
            assert a["tokens"] == b["tokens"]
            for k in ("train_loss", "val_loss"):
                if a[k] is not None:
                    assert b[k] == pytest.approx(a[k], rel=1e-4)
    assert runs[0]["val_loss_final"] < runs[0]["val_loss_base"]


def test_top_layer_lora_trains_only_the_last_blocks(tiny):
    model, _ = teacher.load(tiny)
    cfg_all = teacher.lora_config(model, teacher.LoraSettings(rank=4))
    cfg_top = teacher.lora_config(model, teacher.LoraSettings(rank=4, layers=1, targets="c_attn"))
    assert cfg_all.layers_to_transform is None and cfg_top.layers_to_transform == [1]
    assert set(cfg_top.target_modules) == {"c_attn"}
    from peft import get_peft_model
    names = [n for n, p in get_peft_model(model, cfg_top).named_parameters() if p.requires_grad]
    assert names and all(".h.1." in n and "c_attn" in n for n in names)


def test_model_info_roundtrip(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 01"):
        teacher.load_model_info(tmp_path)
    teacher.save_model_info(tmp_path, {"backend": "local", "model": "m", "path": tmp_path, "val_loss_base": 2.0})
    info = teacher.load_model_info(tmp_path)
    assert set(info) == set(teacher.MODEL_INFO_KEYS) and info["path"] == str(tmp_path) and info["created"]
    with pytest.raises(KeyError):
        teacher.save_model_info(tmp_path, {"api_key": "x"})


def test_base_model_dir_is_cached_safetensors():
    path = teacher.base_model_dir()
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())


@pytest.mark.slow
def test_smollm2_lora_few_steps_beats_the_base_on_validation(tmp_path):
    from dte_lib import data, openai_prep
    ex = data.load_corpus(__import__("dte_lib.config").config.DATA_DIR / "seed_corpus.jsonl").examples
    parts = openai_prep.split_80_20(ex)
    res = teacher.finetune(teacher.base_model_dir(), [e.messages for e in parts["train"]],
                           [e.messages for e in parts["validation"]], tmp_path / "ft",
                           teacher.LoraSettings(max_steps=4, max_length=128, val_limit=8))
    assert res["val_loss_final"] < res["val_loss_base"]

"""Tokenizer, packing, model counts, growth operators, FLOPs, label shift, checkpoints — with tiny models."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dte_lib import checkpoint as ckpt
from dte_lib import config
from dte_lib import data
from dte_lib import model as M
from dte_lib import packing
from dte_lib import tokenizer as T


@pytest.fixture(scope="module")
def examples():
    return data.load_corpus(data.Path(__file__).resolve().parent.parent / "data" / "seed_corpus.jsonl").examples


@pytest.fixture(scope="module")
def tok(examples, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    T.save(T.train_from_examples(examples[:80], 320), d)
    return T.load(d)  # reloaded from disk: what every later notebook gets


# ---------------------------------------------------------------------------------------------- tokenizer
def test_chat_template_renders_the_training_format(tok, examples):
    msgs = examples[0].messages
    assert tok.apply_chat_template(msgs, tokenize=False) == T.render(msgs)
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|system|>") and prompt.endswith("\n<|echo|>")
    ids, labels, _ = T.encode_chat(tok, msgs)
    assert ids == tok(T.render(msgs), add_special_tokens=False)["input_ids"]  # piecewise == whole string
    assert ids[-1] == tok.eos_token_id == 0 and labels == ids
    assert len(tok) == 320 and tok.convert_tokens_to_ids("<|echo|>") == 3


def test_assistant_only_mask_covers_exactly_the_answers(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello, I echo.", "weight": 0},
            {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Now I answer."}]
    ids, labels, weights = T.encode_chat(tok, msgs, assistant_only=True)
    trained = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(trained) == "Now I answer.<|endoftext|>"  # weight-0 turn and prompts excluded
    assert weights == [1.0 if lab != -100 else 0.0 for lab in labels]
    _, full, _ = T.encode_chat(tok, msgs, assistant_only=False)
    assert sum(lab == -100 for lab in full) == len(T.encode_chat(tok, msgs[2:3])[0]) - 1  # only the weight-0 answer


# ---------------------------------------------------------------------------------------------- packing
def test_packing_has_no_padding_and_is_deterministic_and_resumable(tok, examples, tmp_path):
    ds = packing.tokenize(examples[:40], tok, assistant_only=True, cache_dir=tmp_path)
    ds2 = packing.tokenize(examples[:40], tok, assistant_only=True, cache_dir=tmp_path)  # from the cache
    assert ds2["input_ids"][:] == ds["input_ids"][:] and len(list(tmp_path.glob("tokenized-*.arrow"))) == 1
    total = sum(len(r) for r in ds["input_ids"])
    a = packing.PackedLoader(ds, 32, 4, seed=7)
    assert a.blocks_per_epoch() * 32 + a.dropped_tokens == total and a.dropped_tokens < 32
    batches = [a.next_batch() for _ in range(a.blocks_per_epoch() // 4 + 3)]  # crosses into epoch 1
    assert a.epoch == 1
    for b in batches:
        assert b["input_ids"].shape == (4, 32)
        lab = b["labels"]
        assert torch.equal(lab[lab != -100], b["input_ids"][lab != -100])  # labels are ids, unshifted
    b_again = packing.PackedLoader(ds, 32, 4, seed=7)
    assert all(torch.equal(x["input_ids"], b_again.next_batch()["input_ids"]) for x in batches)
    other = packing.PackedLoader(ds, 32, 4, seed=8)  # (every conversation opens with the same system prompt)
    assert not all(torch.equal(other.next_batch()["input_ids"], x["input_ids"]) for x in batches[:10])
    # resume from a saved position
    c = packing.PackedLoader(ds, 32, 4, seed=7)
    for _ in range(5):
        c.next_batch()
    d = packing.PackedLoader(ds, 32, 4, seed=7)
    d.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert all(torch.equal(c.next_batch()["labels"], d.next_batch()["labels"]) for _ in range(4))


def test_loss_weights_stay_aligned_and_ranks_split_the_global_batch(tok, examples):
    ds = packing.tokenize(examples[:30], tok, assistant_only=True)
    # weights equal to the labels' mask carry nothing: the loader drops them (the unweighted loss is faster)
    assert "loss_weights" not in packing.PackedLoader(ds, 32, 4, seed=1, with_weights=True).next_batch()
    ds = ds.map(lambda r: {"loss_weights": [w * (1 + i % 2) for i, w in enumerate(r["loss_weights"])]})
    one = packing.PackedLoader(ds, 32, 4, seed=1, with_weights=True, rank=0, world_size=1)
    r0 = packing.PackedLoader(ds, 32, 4, seed=1, with_weights=True, rank=0, world_size=2)
    r1 = packing.PackedLoader(ds, 32, 4, seed=1, with_weights=True, rank=1, world_size=2)
    for _ in range(3):
        g, a, b = one.next_batch(), r0.next_batch(), r1.next_batch()
        assert torch.equal(torch.cat([a["input_ids"], b["input_ids"]]), g["input_ids"])
        assert torch.equal(g["loss_weights"] > 0, g["labels"] != -100)
    with pytest.raises(ValueError, match="not divisible"):
        packing.PackedLoader(ds, 32, 3, seed=1, rank=0, world_size=2)


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("v,p,d,L", [(320, 32, 32, 1), (512, 64, 64, 3), (2048, 128, 128, 4)])
def test_parameter_count_matches_closed_form(v, p, d, L):
    assert M.count_params(M.build(v, p, d, L, 2)) == M.expected_params(v, p, d, L)


def test_roadmap_size_is_67m_not_20m():
    from transformers import GPT2Config, GPT2LMHeadModel
    with torch.device("meta"):
        m = GPT2LMHeadModel(GPT2Config(vocab_size=50_257, n_embd=768, n_layer=4, n_head=12))
    assert M.count_params(m) == M.expected_params(50_257, 1024, 768, 4) == 67_736_832


def test_label_shift_hand_computed():
    """HF shifts labels inside; our lm_loss must agree with HF and with an explicit next-token loop."""
    m = M.build(64, 16, 32, 1, 2, seed=3)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100
    logits = m(input_ids=ids).logits
    nll, n = 0.0, 0
    for b in range(2):
        for t in range(15):  # position t predicts token t+1
            if labels[b, t + 1] != -100:
                nll -= F.log_softmax(logits[b, t], -1)[labels[b, t + 1]].item()
                n += 1
    hand = nll / n
    assert M.lm_loss(logits, labels).item() == pytest.approx(hand, rel=1e-5)
    assert m(input_ids=ids, labels=labels).loss.item() == pytest.approx(hand, rel=1e-5)
    pre_shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], 1)  # the silent bug
    assert abs(M.lm_loss(logits, pre_shifted).item() - hand) > 1e-3
    w = (labels != -100).float()
    w[1] = 0.0
    only0 = labels.clone()
    only0[1] = -100
    assert M.lm_loss(logits, labels, w).item() == pytest.approx(M.lm_loss(logits, only0).item(), rel=1e-6)


def test_zero_init_growth_keeps_logits_and_roadmap_changes_them():
    m = M.build(100, 16, 32, 2, 2, seed=1)
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        base = m(input_ids=ids).logits
        z = M.grow(m, 3, "zero_init", seed=5)
        assert torch.equal(z(input_ids=ids).logits, base)
        r = M.grow(m, 3, "roadmap", seed=5)
        assert (r(input_ids=ids).logits - base).abs().max() > 1e-3
    new = z.transformer.h[2]
    assert new.attn.c_attn.weight.abs().sum() > 0  # Q and K stay random: attention can still learn
    assert new.attn.c_proj.weight.abs().sum() == 0 and new.mlp.c_proj.weight.abs().sum() == 0


def test_stack_copies_layer_i_mod_L_when_doubling():
    m = M.build(100, 16, 32, 2, 2, seed=1)
    s = M.grow(m, 4, "stack")
    old, new = m.state_dict(), s.state_dict()
    for i in range(4):
        for k, v in new.items():
            if k.startswith(f"transformer.h.{i}."):
                assert torch.equal(v, old[k.replace(f"h.{i}.", f"h.{i % 2}.")]), k
    assert torch.equal(new["transformer.wte.weight"], old["transformer.wte.weight"])
    with pytest.raises(ValueError, match="unknown growth operator"):
        M.grow(m, 3, "magic")


def test_greedy_freezing_leaves_frozen_weights_bit_identical():
    m = M.grow(M.build(100, 16, 32, 1, 2, seed=1), 2, "roadmap", seed=2)
    names = M.set_trainable(m, "greedy", new_layers=[1])
    assert all(n.startswith(("transformer.h.1.", "transformer.ln_f.")) for n in names["trainable"])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(M.param_groups(m, 1e-2, "greedy", [1])[0]["params"] +
                            [p for g in M.param_groups(m, 1e-2, "greedy", [1])[1:] for p in g["params"]], lr=1e-2)
    for _ in range(3):
        ids = torch.randint(0, 100, (2, 16))
        M.lm_loss(m(input_ids=ids).logits, ids).backward()
        opt.step()
        opt.zero_grad()
    after = m.state_dict()
    for k in after:
        same = torch.equal(before[k], after[k])
        assert same == (not k.startswith(("transformer.h.1.", "transformer.ln_f."))), k


def test_flop_counter_against_a_hand_count():
    V, d, L, Tn = 100, 32, 2, 16
    m = M.build(V, Tn, d, L, 2)
    layer = 12 * d * d + 13 * d
    n_all = L * layer + 2 * d + V * d  # blocks + final norm + head matmul (no embedding lookups)
    M.set_trainable(m, "all")
    assert M.flops_per_token(m, Tn) == 6 * n_all + 6 * L * Tn * d
    # greedy on the top layer: lower layer forward only; top layer, ln_f 6N; frozen head: forward + activation grad
    M.set_trainable(m, "greedy", new_layers=[1])
    hand = (2 * layer + 2 * Tn * d) + (6 * layer + 6 * Tn * d) + 6 * 2 * d + 4 * V * d
    assert M.flops_per_token(m, Tn) == hand
    assert hand < 6 * n_all + 6 * L * Tn * d


def test_bits_per_byte_and_perplexity_definitions(tok):
    m = M.build(len(tok), 32, 32, 1, 2)
    texts = ["Deep Tree Echo listens. " * 5, "héllo wörld"]
    ev = M.evaluate_texts(m, tok, texts)
    n_tok = sum(len(tok(t)["input_ids"]) for t in texts)
    assert ev["tokens"] == n_tok  # every token scored once, across window boundaries (texts > 32 tokens)
    assert ev["bytes"] == sum(len(t.encode()) for t in texts)
    assert ev["bits_per_byte"] == pytest.approx(ev["nats"] / math.log(2) / ev["bytes"])
    assert ev["perplexity"] == pytest.approx(math.exp(ev["nats"] / n_tok))
    assert abs(ev["loss"] - math.log(len(tok))) < 1.0  # an untrained model is near uniform


# ---------------------------------------------------------------------------------------------- checkpoints
def _tiny_ckpt(tmp_path):
    m = M.build(50, 8, 16, 1, 2)
    opt = torch.optim.AdamW([{"params": list(m.parameters()), "names": [n for n, _ in m.named_parameters()]}])
    ids = torch.randint(0, 50, (2, 8))
    M.lm_loss(m(input_ids=ids).logits, ids).backward()
    opt.step()
    return m, opt, ckpt.save(tmp_path / "state", m, opt, {"global_step": 3, "stage_idx": 0, "tokens": 16})


def test_checkpoint_round_trip_without_pickles(tmp_path):
    m, opt, path = _tiny_ckpt(tmp_path)
    assert ckpt.latest(tmp_path / "state") == path
    assert not list(path.rglob("*.pt")) and not list(path.rglob("*.bin"))
    saved = ckpt.load(path)
    mine = ckpt.optimizer_state_by_name(opt)
    assert set(saved["optimizer"]) == set(mine)
    for name, st in mine.items():
        for k, v in st.items():
            assert torch.equal(saved["optimizer"][name][k], v)
    assert saved["state"]["tokens"] == 16


@pytest.mark.parametrize("damage,message", [("truncate", "truncated"), ("flip", "SHA-256"),
                                            ("remove", "missing"), ("no_manifest", "not finished writing")])
def test_damaged_checkpoint_is_refused_with_a_clear_message(tmp_path, damage, message):
    _, _, path = _tiny_ckpt(tmp_path)
    target = path / "optimizer.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-5] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "remove":
        (path / "model" / "model.safetensors").unlink()
    else:
        (path / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match=message) as e:
        ckpt.load(path)
    assert str(path) in str(e.value) or path.name in str(e.value)


def test_rng_state_round_trips():
    js, t = ckpt.rng_state()
    a = (np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(json.loads(json.dumps(js)), t)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_training_corpus_contract(tmp_path):
    """Train split + corpus/clean.jsonl (minus copies of held-out conversations); val split; never the test split."""
    cfg = config.load("ci")
    base = packing.training_examples(cfg, tmp_path)
    assert base["synthetic"] == 0 and base["train"] and base["val"]
    seed = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    test_ex = data.split(seed, cfg.data.val_fraction, cfg.data.test_fraction)["test"]
    new = data.ChatExample(messages=[{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}])
    leaked = data.ChatExample(messages=test_ex[0].messages, id="synthetic-copy")
    data.write_jsonl(tmp_path / "corpus" / "clean.jsonl", [new, leaked])
    got = packing.training_examples(cfg, tmp_path)
    assert got["synthetic"] == 1 and len(got["train"]) == len(base["train"]) + 1
    test_hashes = {data.content_hash(e.messages) for e in test_ex}
    assert not any(data.content_hash(e.messages) in test_hashes for e in got["train"])

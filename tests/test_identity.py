"""Identity mechanisms and the multi-task loss: each does what its docstring says, on real tiny parts."""
from __future__ import annotations

import random

import pytest
import torch

from dte_lib import config, continued, data, identity, multitask
from dte_lib import model as M
from dte_lib import tokenizer as toklib
from tests import _tiny


@pytest.fixture(scope="module")
def tok():
    return toklib.train_from_examples(_tiny.corpus_split()["train"], 512)


@pytest.fixture(scope="module")
def persona():
    cfg = config.load("ci")
    return data.load_persona(cfg.path(cfg.data.persona))


def test_self_reference_spans_pick_first_person_sentences():
    text = "I keep echoes of my input. The sky is blue. Deep Tree Echo listens! Nothing here."
    spans = [text[a:b].strip() for a, b in identity.self_reference_spans(text)]
    assert spans == ["I keep echoes of my input.", "Deep Tree Echo listens!"]


def test_self_reference_dataset_changes_only_weights(tok):
    exs = _tiny.corpus_split()["train"][:5]
    ds = identity.self_reference_dataset(exs, tok, 3.0)
    for ex, row in zip(exs, ds):
        ids, labels, weights = toklib.encode_chat(tok, ex.messages)
        assert row["input_ids"] == ids and row["labels"] == labels
        assert set(row["loss_weights"]) <= {0.0, 1.0, 3.0}
        assert any(w == 3.0 for w in row["loss_weights"])
        up = [i for i, w in enumerate(row["loss_weights"]) if w == 3.0]
        assert all(weights[i] == 1.0 for i in up)  # only trained tokens are up-weighted


def test_metacognitive_transform_adds_turns_from_the_persona_only(persona):
    exs = _tiny.corpus_split()["train"][:40]
    out = identity.metacognitive_transform(exs, persona, 0.5, seed=1)
    changed = [e for e in out if e.meta.get("metacog")]
    assert 10 <= len(changed) <= 30 and len(out) == len(exs)
    facts = {f["statement"] for f in persona["facts"]}
    for e in changed:
        q, a = e.messages[-2]["content"], e.messages[-1]["content"]
        assert q in identity.METACOG_QUESTIONS
        assert any(f in a for f in facts)


def test_persona_embedding_init_pulls_persona_tokens_together(tok, persona):
    m0 = M.build(len(tok), 64, 64, 1, 2, seed=0, eos_id=tok.eos_token_id)
    m1 = M.build(len(tok), 64, 64, 1, 2, seed=0, eos_id=tok.eos_token_id)
    info = identity.persona_embedding_init(m1, tok, persona, mix=0.8)
    assert info["tokens"] > 5
    ids = [t for t in identity.persona_token_targets(tok, persona) if t >= 264]

    def mean_cos(m):
        e = torch.nn.functional.normalize(m.get_input_embeddings().weight[ids], dim=-1)
        s = e @ e.T
        return (s.sum() - s.diag().sum()) / (len(ids) ** 2 - len(ids))

    assert mean_cos(m1) > mean_cos(m0) + 0.05
    other = [t for t in range(300, len(tok)) if t not in set(ids)][:20]
    assert torch.equal(m0.get_input_embeddings().weight[other], m1.get_input_embeddings().weight[other])


def test_multitask_terms_are_differentiable_and_decrease(tok, persona):
    torch.manual_seed(0)
    m = M.build(len(tok), 64, 64, 1, 2, seed=0, eos_id=tok.eos_token_id)
    prompts = [e.prompt for e in _tiny.corpus_split()["train"][:30]]
    aux = multitask.make_aux_loss(tok, persona, prompts, identity_weight=1.0, coherence_weight=1.0, pairs=6)
    ids = torch.tensor([toklib.encode_chat(tok, e.messages)[0][:64] for e in _tiny.corpus_split()["train"][:4]])
    batch = {"input_ids": ids, "labels": ids.clone()}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = last = None
    for step in range(25):
        out = m(input_ids=ids, output_hidden_states=True)
        losses = aux(m, batch, out)
        assert set(losses) == {"identity", "coherence"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
        opt.step()
        first = first or {k: float(v.detach()) for k, v in losses.items()}
        last = {k: float(v.detach()) for k, v in losses.items()}
    assert last["identity"] < first["identity"] * 0.7
    assert last["coherence"] < first["coherence"]


def test_info_nce_prefers_matched_pairs():
    z = torch.randn(6, 16)
    assert multitask.info_nce(z, z + 0.01 * torch.randn(6, 16)) < multitask.info_nce(z, torch.randn(6, 16))
    assert multitask.paraphrase("Why?", random.Random(0)) != "Why?"


def test_continued_training_runs_every_mechanism_through_the_real_trainer(tmp_path):
    cfg = config.load("ci")
    res = continued.train(cfg, tmp_path, "mech", depths=[1, 2], steps=2, persona_init=True, self_ref_weight=2.0,
                          metacog_fraction=0.3, identity_weight=0.1, coherence_weight=0.05)
    assert (res["dir"] / "config.json").exists()
    rows = [r for r in res["history"] if "loss" in r and "event" not in r]
    assert rows and "identity" in rows[-1] and "coherence" in rows[-1]
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(str(res["dir"])).config.n_layer == 2
    # continue from that checkpoint by one more layer
    res2 = continued.train(cfg, tmp_path, "grow", depths=[3], steps=1, init_dir=res["dir"])
    assert AutoModelForCausalLM.from_pretrained(str(res2["dir"])).config.n_layer == 3


def test_a_trained_model_continues_at_a_share_of_the_peak_rate_and_a_fresh_one_at_the_peak(tmp_path):
    cfg = config.load("ci", {"eval.continue_lr_frac": 0.1, "train.log_every": 1})
    fresh = continued.train(cfg, tmp_path, "fresh", depths=[1], steps=8)
    peak = lambda res: max(r["lr"] for r in res["history"] if "lr" in r and "event" not in r)  # noqa: E731
    assert peak(fresh) == pytest.approx(cfg.train.lr)  # from scratch: the preset's peak rate
    more = continued.train(cfg, tmp_path, "more", depths=[1], steps=8, init_dir=fresh["dir"])
    assert peak(more) == pytest.approx(0.1 * cfg.train.lr)  # continuing: 0.1 x, never the full rate

"""Distillation in the course's trainer: the teacher's chat template as loss masks, its recorded top-k placed on the
student's positions, and (1 − α)·CE + α·T²·KL in the one training step."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dte_lib import config, data, distill, generate, packing, progressive, teacher
from dte_lib import tokenizer as toklib


@pytest.fixture(scope="module")
def teacher_tok():
    return distill.teacher_tokenizer(teacher.base_model_dir())


@pytest.fixture(scope="module")
def examples():
    return data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples[:24]


def test_the_teachers_template_gives_the_same_ids_piece_by_piece_and_masks_all_but_the_answers(teacher_tok, examples):
    sub, _ = distill.subset_tokenizer(teacher_tok, [toklib.render(e.messages, teacher_tok)
                                                    for e in examples])
    assert not toklib.is_course(sub)
    for e in examples:
        ids, labels, _ = toklib.encode_chat(sub, e.messages, assistant_only=True)
        whole = sub(sub.apply_chat_template(e.messages, tokenize=False), add_special_tokens=False)["input_ids"]
        assert ids == whole  # the pieces tokenise to exactly the whole conversation's ids
        trained = sub.decode([i for i, lab in zip(ids, labels) if lab != -100], clean_up_tokenization_spaces=False)
        answers = "".join(m["content"] + "<|im_end|>" for m in e.messages if m["role"] == "assistant")
        assert trained == answers  # each answer and its end-of-turn token, nothing of the framing
        assert toklib.render(e.messages, sub) == sub.apply_chat_template(e.messages, tokenize=False)
    course = toklib.train_from_examples(examples, 320)  # the course BPE keeps its own format
    assert toklib.is_course(course) and toklib.render(examples[0].messages, course) == toklib.render(examples[0].messages)


def _record(teacher_tok, examples, k=8):
    """logprobs.jsonl lines as notebook 02 writes them, for each example's first answer: the teacher's top-k at
    the position that predicts each answer token (teacher-forced: the distribution the server reports)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(teacher.base_model_dir()), dtype=torch.float32).eval()
    lines = []
    for e in examples:
        first = e.messages[:next(i for i, m in enumerate(e.messages) if m["role"] == "assistant") + 1]
        prompt = teacher_tok.apply_chat_template(first[:-1], tokenize=False, add_generation_prompt=True)
        p_ids = teacher_tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = teacher_tok(first[-1]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + a_ids])).logits[0].float(), -1)
        top = torch.topk(logp[len(p_ids) - 1: len(p_ids) - 1 + len(a_ids)], k, dim=-1)
        entries = [{"token_id": t, "logprob": float(top.values[j, 0]),
                    "top_logprobs": [{"token_id": int(i), "logprob": float(v)}
                                     for i, v in zip(top.indices[j], top.values[j])]} for j, t in enumerate(a_ids)]
        lines.append(generate.encode_logprobs(e.id, entries, k))
    return lines


@pytest.fixture(scope="module")
def recorded(teacher_tok, examples, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / generate.LOGPROBS
    path.write_text("".join(json.dumps(r) + "\n" for r in _record(teacher_tok, examples[:12])))
    return path


def test_recorded_topk_lands_on_the_positions_that_predict_each_answer_token(teacher_tok, examples, recorded):
    train = list(examples)
    edited = train[1]  # an answer changed after generation: only its agreeing prefix keeps the teacher's targets
    words = edited.response.split(" ")
    cut = len(words) // 2
    new_answer = " ".join(words[:cut] + ["zebra"] + words[cut + 1:])
    msgs = [dict(m) for m in edited.messages]
    msgs[[i for i, m in enumerate(msgs) if m["role"] == "assistant"][0]]["content"] = new_answer
    train[1] = data.ChatExample(messages=msgs, id=edited.id)
    sub, ids = distill.subset_tokenizer(teacher_tok, [toklib.render(e.messages, teacher_tok)
                                                      for e in train])
    id_map = np.asarray(ids)
    ds = packing.tokenize(train, sub, assistant_only=True)
    t = distill.recorded_targets(train, ds, sub, id_map, recorded, k=8)
    rows = {json.loads(line)["id"]: generate.decode_logprobs(json.loads(line)) for line in recorded.read_text().splitlines()}
    assert t["stats"]["with_line"] == 12 and t["stats"]["cut_short"] == 1 and t["stats"]["k"] == 8
    for i, e in enumerate(train):
        has = (t["idx"][i] >= 0).any(-1)
        if e.id not in rows:
            assert not has.any()  # no recorded distribution, no target
            continue
        segs = toklib.segments(e.messages, sub)
        first_answer = next(j for j, s in enumerate(segs) if s[1])
        start = sum(len(sub(s, add_special_tokens=False)["input_ids"]) for s, _, _ in segs[:first_answer])
        n_answer = len(sub(segs[first_answer][0], add_special_tokens=False)["input_ids"])
        where = np.flatnonzero(has)
        # a position whose top-k all fall outside the student's vocabulary has nothing to learn from
        inside_any = np.isin(rows[e.id]["top_ids"], id_map).any(-1)
        if i == 1:
            mine = distill.to_teacher(ds[i]["input_ids"][start:start + n_answer], id_map)
            agree = int(np.argmin(np.append(mine[:len(rows[e.id]["tokens"])] == rows[e.id]["tokens"][:len(mine)], False)))
            assert 0 < agree < n_answer  # up to and including the first changed token:
            assert list(where) == [start - 1 + j for j in range(agree + 1) if inside_any[j]]
        else:  # every answer token (the position just before it predicts it), not <|im_end|>
            assert list(where) == [start - 1 + j for j in range(n_answer) if inside_any[j]]
            assert inside_any.mean() > 0.9
        js = where - (start - 1)  # the answer tokens these positions predict
        back = distill.to_teacher(np.maximum(t["idx"][i][where], 0), id_map)
        inside = t["idx"][i][where] >= 0
        assert (back[inside] == rows[e.id]["top_ids"][js][inside]).all()
        assert np.allclose(t["logp"][i][where][inside].astype(np.float32), rows[e.id]["top_logprobs"][js][inside],
                           atol=1e-2)
        assert np.isneginf(t["logp"][i][where][~inside].astype(np.float32)).all()


def _tiny_tc(**kw):
    base = dict(block_size=64, d_model=32, n_head=2, depths="1", tokens_per_stage=64 * 4 * 2, final_tokens=64 * 4 * 8,
                batch_size=4, lr=3e-3, warmup_steps=2, val_every=100, val_max_blocks=2, ckpt_every=100, log_every=1,
                tokenizer="teacher_subset", distill_weight=0.4, distill_temperature=2.0, distill_topk=8)
    base.update(kw)
    return config.TrainCfg(**base)


@pytest.fixture(scope="module")
def course_parts(teacher_tok, examples, recorded):
    train = examples[:20]
    sub, ids = distill.subset_tokenizer(teacher_tok, [toklib.render(e.messages, teacher_tok)
                                                      for e in examples])
    ds = packing.tokenize(train, sub, assistant_only=True)
    val = packing.tokenize(examples[20:], sub)
    return sub, ds, val, distill.recorded_targets(train, ds, sub, np.asarray(ids), recorded, k=8)


@pytest.mark.parametrize("temperature", [2.0, 1.0])  # 1.0: the CE and the KL share one log-softmax
def test_the_trainer_optimises_one_minus_alpha_ce_plus_alpha_t2_kl(course_parts, tmp_path, monkeypatch, temperature):
    sub, ds, val, targets = course_parts
    tc = _tiny_tc(distill_temperature=temperature)
    tr = progressive.ProgressiveTrainer(tc, sub, ds, val, tmp_path / "d", seed=3, progress=False, tensorboard=False,
                                        teacher_targets=targets)
    sent = []
    real = tr._backward
    monkeypatch.setattr(tr, "_backward", lambda loss: (sent.append(float(loss.detach())), real(loss))[1])
    hist = [r for r in tr.run() if "distill" in r]
    assert len(hist) == len(sent) == tr.global_step == 10  # 2 steps at the growth stage, 8 at the final one
    for r, total in zip(hist, sent):  # what was back-propagated is the formula over what was logged
        assert total == pytest.approx((1 - 0.4) * r["loss"] + r["distill"], rel=1e-5)
    assert sum(r["distill"] > 0 for r in hist) >= 7  # a batch of 4 short blocks may hold no recorded answer
    # the same data and seed without distillation: nothing of the targets leaks into the plain run
    plain = progressive.ProgressiveTrainer(replace(tc, distill_weight=0.0), sub, ds, val, tmp_path / "p", seed=3,
                                           progress=False, tensorboard=False, teacher_targets=targets).run()
    alone = progressive.ProgressiveTrainer(replace(tc, distill_weight=0.0), sub, ds, val, tmp_path / "q", seed=3,
                                           progress=False, tensorboard=False).run()
    assert [r.get("loss") for r in plain] == [r.get("loss") for r in alone]
    assert not any("distill" in r for r in plain)


@pytest.mark.parametrize("tail", [False, True])
def test_one_shared_log_softmax_gives_the_same_losses_and_gradients_as_two(tail):
    from dte_lib import model as M
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 50, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (3, 9), generator=g)
    labels[:, :2] = -100
    weights = torch.rand(3, 9, generator=g)
    idx = torch.randint(-1, 50, (3, 9, 4), generator=g)  # -1: a teacher token outside the student's vocabulary
    logp = torch.log_softmax(torch.randn(3, 9, 4, generator=g), -1)
    logp = torch.where(idx < 0, float("-inf"), logp)
    logp[1, 3] = float("-inf")  # a position without a teacher distribution

    def losses(shared):
        scores = torch.log_softmax(logits.float(), -1) if shared else logits
        ce = M.lm_loss(scores, labels, weights, normalised=shared)
        kl = distill.distill_loss(scores, idx, logp, labels, 1.0, tail, normalised=shared)
        return ce.detach(), kl.detach(), torch.autograd.grad(0.6 * ce + 0.4 * kl, logits)[0]
    (ce2, kl2, g2), (ce1, kl1, g1) = losses(False), losses(True)
    assert float(ce1) == pytest.approx(float(ce2), rel=1e-6) and float(kl1) == pytest.approx(float(kl2), rel=1e-6)
    assert torch.allclose(g1, g2, atol=1e-7)
    assert float(kl2) > 0
    with pytest.raises(ValueError, match="T = 1"):
        distill.distill_loss(logits, idx, logp, labels, 2.0, normalised=True)


def test_a_student_trained_on_the_kl_alone_comes_closer_to_the_teacher(course_parts, tmp_path):
    sub, ds, val, targets = course_parts
    hist = progressive.ProgressiveTrainer(_tiny_tc(distill_weight=1.0, distill_temperature=1.0, final_tokens=64 * 4 * 30),
                                          sub, ds, val, tmp_path, seed=1, progress=False, tensorboard=False,
                                          teacher_targets=targets).run()
    kl = [r["distill"] for r in hist if "distill" in r]
    assert np.mean(kl[-5:]) < 0.8 * np.mean(kl[:5])


def test_prepare_builds_the_teacher_subset_tokenizer_and_refuses_what_it_cannot_train(tmp_path):
    cfg = config.load("ci", {"train.tokenizer": "teacher_subset"})
    progressive.prepare(config.load("ci"), tmp_path)  # a run that fitted the course BPE ...
    with pytest.raises(ValueError, match="holds the course BPE"):  # ... keeps it unless notebook 06 rebuilds
        progressive.prepare(cfg, tmp_path)
    prep = progressive.prepare(cfg, tmp_path, retrain_tokenizer=True)
    assert (tmp_path / "tokenizer" / distill.ID_MAP_FILE).exists() and not toklib.is_course(prep["tokenizer"])
    assert prep["targets"] is None
    with pytest.raises(ValueError, match="holds the teacher_subset tokenizer"):  # never swapped under a run
        progressive.prepare(config.load("ci"), tmp_path)
    back = progressive.prepare(config.load("ci"), tmp_path, retrain_tokenizer=True)  # notebook 06 refits
    assert toklib.is_course(back["tokenizer"]) and not (tmp_path / "tokenizer" / distill.ID_MAP_FILE).exists()
    with pytest.raises(ValueError, match="needs train.tokenizer teacher_subset"):
        progressive.prepare(config.load("ci", {"train.distill_weight": 0.5}), tmp_path)
    with pytest.raises(ValueError, match="benchmarks/distill.py"):
        progressive.prepare(config.load("ci", {"train.tokenizer": "teacher"}), tmp_path)
    with pytest.raises(FileNotFoundError, match="logprobs_topk"):
        progressive.prepare(config.load("ci", {"train.tokenizer": "teacher_subset", "train.distill_weight": 0.5}),
                            tmp_path, retrain_tokenizer=True, targets=True)

"""Token-level distillation: the loss against a hand computation, the top-k cache against the teacher itself."""
from __future__ import annotations

import math

import pytest
import torch

from dte_lib import distill


def test_distill_loss_matches_a_hand_computation():
    # one sequence of 3 positions, vocabulary 4, teacher top-2
    logits = torch.tensor([[[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]]])
    idx = torch.tensor([[[0, 3], [1, 2], [0, 1]]])
    tlogp = torch.tensor([[[math.log(0.6), math.log(0.2)], [math.log(0.5), math.log(0.5)], [0.0, 0.0]]])
    labels = torch.tensor([[5, 6, -100]])  # position 1 predicts a masked token: only position 0 is scored

    def hand(pos, T):
        z = [float(v) / T for v in logits[0, pos]]
        lse = math.log(sum(math.exp(v) for v in z))
        tq = [float(v) / T for v in tlogp[0, pos]]
        tl = math.log(sum(math.exp(v) for v in tq))
        q = [math.exp(v - tl) for v in tq]
        return sum(qi * (math.log(qi) - (z[int(j)] - lse)) for qi, j in zip(q, idx[0, pos]))

    got = distill.distill_loss(logits, idx, tlogp, labels)
    assert float(got) == pytest.approx(hand(0, 1.0), rel=1e-6)
    # q renormalised over the top-2: 0.75 / 0.25 at position 0
    assert hand(0, 1.0) > 0
    got_t = distill.distill_loss(logits, idx, tlogp, labels, temperature=2.0)
    assert float(got_t) == pytest.approx(4.0 * hand(0, 2.0), rel=1e-6)
    both = distill.distill_loss(logits, idx, tlogp, torch.tensor([[5, 6, 7]]))
    assert float(both) == pytest.approx((hand(0, 1.0) + hand(1, 1.0)) / 2, rel=1e-6)


def test_distill_loss_is_zero_when_the_student_is_the_teacher_on_its_topk():
    logits = torch.tensor([[[2.0, 1.0, -30.0, -30.0]] * 2])
    logp = torch.log_softmax(logits, -1)
    top = torch.topk(logp, 2, dim=-1)
    loss = distill.distill_loss(logits, top.indices, top.values, torch.tensor([[1, 1]]))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_cache_holds_the_teachers_topk_for_every_block_the_loader_serves(tmp_path):
    import datasets
    from dte_lib import packing
    from tests import _tiny_lm
    tdir = _tiny_lm.make_tiny_lm(tmp_path / "teacher")
    rows = [[(i * 7 + j) % 300 for j in range(20 + i % 5)] for i in range(40)]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows, "loss_weights": [[1.0] * len(r) for r in rows]})
    loader = packing.PackedLoader(ds, 16, 4, 3)
    steps = 2 * (loader.blocks_per_epoch() // 4)  # two epochs: blocks are repacked in a new order
    path = distill.build_cache(tdir, ds, 16, 4, seed=3, steps=steps, out_dir=tmp_path / "c", k=5, progress=False)
    cache = distill.TopKCache(path)
    from transformers import AutoModelForCausalLM
    teacher = AutoModelForCausalLM.from_pretrained(str(tdir)).eval()
    for _ in range(steps):
        batch = loader.next_batch()
        idx, logp = cache.lookup(batch["input_ids"])
        with torch.no_grad():
            ref = torch.topk(torch.log_softmax(teacher(input_ids=batch["input_ids"]).logits, -1), 5, dim=-1)
        assert torch.equal(idx.long(), ref.indices)
        assert torch.allclose(logp.float(), ref.values, atol=2e-2)
    with pytest.raises(KeyError, match="top-k cache"):
        cache.lookup(torch.zeros(1, 16, dtype=torch.long))


def test_head_cost_of_the_teacher_vocabulary():
    c = distill.head_cost(49_152, 128)
    assert c["head_params"] == 6_291_456 and c["head_flops_per_token"] == 6 * 6_291_456


def test_tail_kl_is_the_exact_kl_of_the_bucketed_distributions():
    # vocabulary 5; the teacher's full distribution is known here, its top-2 recorded
    teacher = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    student = torch.tensor([[[0.3, 1.0, -0.5, 0.0, 0.2]]])
    idx = torch.tensor([[[0, 1]]])
    tlogp = teacher.log()[idx]
    labels = torch.tensor([[7, 7]])
    logits = torch.cat([student, student], 1)  # two positions; the second predicts nothing (no next label)
    idx2, tlogp2 = torch.cat([idx, idx], 1), torch.cat([tlogp, tlogp], 1)
    p = torch.softmax(student[0, 0], -1)
    q_b = [0.5, 0.2, 0.3]
    p_b = [float(p[0]), float(p[1]), float(1 - p[0] - p[1])]
    hand = sum(a * math.log(a / b) for a, b in zip(q_b, p_b))
    got = distill.distill_loss(logits, idx2, tlogp2, labels, tail=True)
    assert float(got) == pytest.approx(hand, rel=1e-5)
    # it is a lower bound of the full KL (coarse-graining never adds information) ...
    full = float((teacher * (teacher.log() - torch.log_softmax(student[0, 0], -1))).sum())
    assert float(got) <= full
    # ... and zero when the student is the teacher, which the renormalised top-k KL is not
    same = teacher.log().view(1, 1, 5).expand(1, 2, 5)
    assert float(distill.distill_loss(same, idx2, tlogp2, labels, tail=True)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill.distill_loss(same, idx2, tlogp2, labels)) > 0.1
    with pytest.raises(ValueError, match="temperature must be 1"):
        distill.distill_loss(logits, idx2, tlogp2, labels, temperature=2.0, tail=True)

"""ProgressiveTrainer end to end with a tiny model: stages, growth records, hooks, exports, exact resume."""
from __future__ import annotations

import json
import re
import time

import pytest
import torch
from safetensors.torch import load_file

from dte_lib import config, data
from dte_lib import model as M
from dte_lib import packing, progressive
from dte_lib import tokenizer as T


def tiny_cfg(**kw):
    base = dict(vocab_size=320, block_size=32, d_model=32, n_head=2, depths="1,2", tokens_per_stage=32 * 4 * 6,
                final_tokens=32 * 4 * 3, batch_size=4, lr=3e-3, warmup_steps=2, rewarm_steps=1, val_every=3,
                val_max_blocks=4, ckpt_every=2, log_every=1)
    base.update(kw)
    return config.TrainCfg(**base)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    ex = data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples
    d = tmp_path_factory.mktemp("tok")
    T.save(T.train_from_examples(ex[:60], 320), d)
    tok = T.load(d)
    return tok, packing.tokenize(ex[:40], tok, assistant_only=True), packing.tokenize(ex[200:210], tok)


def test_schedule_roadmap_greedy_with_joint_phases():
    tc = tiny_cfg(depths="1,2,3,4,5,6,7,8", policy="greedy", joint_every=4, joint_tokens=100)
    stages = progressive.build_schedule(tc)
    kinds = [(s.kind, s.depth, s.policy) for s in stages]
    assert kinds[0] == ("grow", 1, "all")  # from scratch everything trains
    assert ("joint", 4, "all") in kinds and ("joint", 8, "all") in kinds
    assert kinds[-1] == ("final", 8, "all")
    assert all(p == "greedy" for k, d, p in kinds[1:] if k == "grow")
    assert [s.new_layers for s in stages if s.kind == "grow"][:3] == [(0,), (1,), (2,)]
    assert progressive.build_schedule(tiny_cfg(depths="1,2,4"))[2].new_layers == (2, 3)


def test_lr_schedules():
    wsd = [progressive.lr_at(s, 10, 1.0, 2, "wsd", 0.3, 0.1) for s in range(10)]
    assert wsd[:2] == [0.5, 1.0] and wsd[2:7] == [1.0] * 5 and wsd[-1] == pytest.approx(0.1)
    cos = [progressive.lr_at(s, 10, 1.0, 2, "cosine", 0.3, 0.1) for s in range(10)]
    assert cos[2] == 1.0 and all(a >= b for a, b in zip(cos[2:], cos[3:]))


def test_trainer_runs_stages_hooks_and_exports(parts, tmp_path):
    tok, train_ds, val_ds = parts
    seen = []

    def aux(model, batch, out):  # a hook like the identity losses: a named extra loss on the hidden states
        seen.append(len(out.hidden_states))
        return {"hidden_l2": 1e-4 * out.hidden_states[-1].float().pow(2).mean()}

    tr = progressive.ProgressiveTrainer(tiny_cfg(), tok, train_ds, val_ds, tmp_path, seed=1, aux_loss=aux,
                                        aux_wants_hidden=True, progress=False)
    hist = tr.run()
    assert seen and set(seen) == {2, 3}  # embeddings + 1 layer, then + 2 layers
    growth = [r for r in hist if r.get("event") == "growth"]
    assert len(growth) == 1 and growth[0]["val_before"] == growth[0]["val_after"]  # zero_init keeps the function
    steps = [r for r in hist if "loss" in r and "event" not in r]
    assert all("hidden_l2" in r for r in steps)
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert all(b["flops"] > a["flops"] for a, b in zip(steps, steps[1:]))
    vals = [r["val_loss"] for r in hist if r.get("event") == "stage_end"]
    assert vals == sorted(vals, reverse=True) and vals[-1] < growth[0]["val_before"] - 0.05  # it learns
    names = [s.name for s in tr.stages]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for name in names + ["final"]:
        d = tmp_path / "checkpoints" / name
        m = AutoModelForCausalLM.from_pretrained(str(d))
        t = AutoTokenizer.from_pretrained(str(d))
        assert m.generation_config.eos_token_id == t.eos_token_id == 0
        assert isinstance(M.generate(m, t, ["Who are you?"], max_new_tokens=5)[0], str)
    assert json.loads((tmp_path / "checkpoints" / "final" / "dte_stage.json").read_text())["stage"] == names[-1]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("stop_at", [3, 6])  # mid-stage (a step after a checkpoint), a stage boundary
def test_interrupted_run_resumes_to_identical_weights(parts, tmp_path, stop_at):
    tok, train_ds, val_ds = parts
    tc = tiny_cfg(operator="stack", policy="all_lower_lr")
    full = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path / "a", seed=2, progress=False,
                                          tensorboard=False)
    full.run()

    class Stop(Exception):
        pass

    def stop(step):
        if step == stop_at:
            raise Stop

    cut = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path / "b", seed=2, progress=False,
                                         tensorboard=False, on_step=stop)
    with pytest.raises(Stop):
        cut.run()
    again = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path / "b", seed=2, progress=False,
                                           tensorboard=False)
    again.run()
    a = load_file(str(tmp_path / "a" / "checkpoints" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = (tmp_path / "a" / "train" / "history.jsonl").read_text()
    hb = (tmp_path / "b" / "train" / "history.jsonl").read_text()
    assert ha == hb  # rows written after the checkpoint were dropped and redone, not duplicated


def test_resume_refuses_another_schedule(parts, tmp_path):
    tok, train_ds, val_ds = parts
    tr = progressive.ProgressiveTrainer(tiny_cfg(), tok, train_ds, val_ds, tmp_path, progress=False,
                                        tensorboard=False)
    tr.run()
    other = progressive.ProgressiveTrainer(tiny_cfg(depths="1,3"), tok, train_ds, val_ds, tmp_path,
                                           progress=False, tensorboard=False)
    from dte_lib.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="saved for stages"):
        other.run()


def test_changed_settings_restart_only_when_asked(parts, tmp_path):
    tok, train_ds, val_ds = parts
    progressive.ProgressiveTrainer(tiny_cfg(final_tokens=0), tok, train_ds, val_ds, tmp_path, progress=False,
                                   tensorboard=False).run()
    from dte_lib.checkpoint import CheckpointError
    changed = tiny_cfg(final_tokens=0, lr=1e-3)
    with pytest.raises(CheckpointError, match="other settings"):
        progressive.ProgressiveTrainer(changed, tok, train_ds, val_ds, tmp_path, progress=False,
                                       tensorboard=False).run()
    hist = progressive.ProgressiveTrainer(changed, tok, train_ds, val_ds, tmp_path, progress=False,
                                          tensorboard=False, on_mismatch="restart").run()
    assert hist[0]["step"] == 1 and sum(r.get("event") == "growth" for r in hist) == 1


def test_init_model_starts_from_a_given_model_and_its_id_guards_resume(parts, tmp_path):
    tok, train_ds, val_ds = parts
    tc = tiny_cfg(depths="2", final_tokens=0)
    start = M.build(len(tok), tc.block_size, tc.d_model, 2, tc.n_head, seed=99, eos_id=tok.eos_token_id)
    seen = []

    def init():
        seen.append(1)
        return start

    tr = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path, progress=False, tensorboard=False,
                                        init_model=init, init_id="checkpoint-A")
    hist = tr.run()
    assert seen == [1] and tr.model is start and hist[-1]["depth"] == 2  # trained the given model, not a fresh one
    from dte_lib.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="other settings"):  # another starting point: never resume stale state
        progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path, progress=False, tensorboard=False,
                                       init_model=init, init_id="checkpoint-B").run()


def test_wandb_offline_logs_the_tensorboard_rows_without_an_account(parts, tmp_path, monkeypatch):
    import wandb  # noqa: F401 - part of the dev install: this test must run, not skip
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tok, train_ds, val_ds = parts
    tc = tiny_cfg(final_tokens=0, wandb="auto")  # auto = installed, so on, and offline without $WANDB_MODE
    hist = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path, progress=False).run()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record_log = next(runs[0].glob("run-*.wandb"))  # wandb's record log: protobuf history items

    def logged(key: str) -> list[float]:  # HistoryItem: key (field 2), value_json (field 16), short strings
        log = record_log.read_bytes()
        assert log.startswith(b":W&B")
        k = key.encode()
        pat = re.compile(re.escape(b"\x12" + bytes([len(k)]) + k + b"\x82\x01") + b"([\x01-\x7f])")
        return sorted({float(log[m.end(): m.end() + m.group(1)[0]]) for m in pat.finditer(log)})

    losses = sorted({r["loss"] for r in hist if "loss" in r})
    vals = sorted({r["val_loss"] for r in hist if r.get("val_loss") is not None})
    deadline = time.time() + 60  # wandb-core, a separate process, may still be writing after finish() returns
    while (len(logged("train/loss")), len(logged("train/val_loss"))) < (len(losses), len(vals)) \
            and time.time() < deadline:
        time.sleep(0.5)
    assert len(losses) > 3 and logged("train/loss") == pytest.approx(losses)
    assert logged("train/val_loss") == pytest.approx(vals)
    assert logged("train/depth") == [1.0, 2.0]
    off = tiny_cfg(final_tokens=0, wandb="off")
    progressive.ProgressiveTrainer(off, tok, train_ds, val_ds, tmp_path / "off", progress=False).run()
    assert not (tmp_path / "off" / "wandb").exists()

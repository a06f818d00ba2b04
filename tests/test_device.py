"""One device setting, honoured by every module that runs a model (issue 13) — on a CPU-only machine.

How a CPU test can show that work goes to a GPU: models are placed on PyTorch's ``meta`` device (tensors with a
shape and no storage), and each module's first model call is intercepted to record the device of the inputs it
built; a module that forgot to move its inputs hands the model CPU tensors and the test fails. Where a module is
given a device name (``cuda``), ``torch.cuda.is_available`` is monkeypatched so the setting resolves as on a GPU
machine, and the choices that follow (nccl, bf16/fp16 autocast, GradScaler, FSDP2 mixed precision) are asserted.
Training itself is checked on the CPU: gradient accumulation and activation checkpointing give the same losses as
a plain step, and a state saved by one trainer resumes onto another device.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dte_lib import checkpoint as ckpt
from dte_lib import config, data, metrics, packing, planner, progressive
from dte_lib import device as D
from dte_lib import model as M
from dte_lib import tokenizer as T

META = torch.device("meta")
REPO = Path(__file__).resolve().parent.parent


class Reached(Exception):
    """Raised by an intercepted model call once it has recorded where its inputs live."""


def record_inputs(model, seen: list):
    """A forward pre-hook that records the input ids' device and stops the caller."""
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(ids.device)
        raise Reached
    return model.register_forward_pre_hook(hook, with_kwargs=True)


def fake_gpu(monkeypatch, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)


def tiny_tc(**kw):
    base = dict(vocab_size=320, block_size=32, d_model=32, n_head=2, depths="1,2", tokens_per_stage=32 * 4 * 4,
                final_tokens=0, batch_size=4, lr=3e-3, warmup_steps=2, rewarm_steps=1, val_every=0,
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


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, parts):
    """A tiny GPT-2 with the course's tokenizer, saved as an HF directory (what every loader reads)."""
    tok = parts[0]
    d = tmp_path_factory.mktemp("hf")
    ckpt.export_model(M.build(len(tok), 64, 32, 1, 2, eos_id=tok.eos_token_id), tok, d)
    return d


# ---------------------------------------------------------------------------------------------- the setting
def test_preset_device_field_and_full_shapes():
    assert config.load("demo").device == "auto" and config.load("full").device == "auto"
    assert config.load("ci").device == "cpu"  # the test suite's numbers are the CPU's
    assert config.load("demo", {"device": "cpu"}).device == "cpu"
    tc = config.load("full").train
    assert (tc.vocab_size, tc.block_size, tc.d_model, tc.precision, tc.grad_accum) == (50_257, 1024, 768, "auto", 0)
    assert config.load("full").scale.dist_depths.split(",")[-1] == "24"
    assert config.load("demo").train.precision == "fp32" and config.load("demo").train.grad_accum == 1


def test_resolve_on_this_machine_and_errors():
    assert D.resolve("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert D.resolve("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="no CUDA GPU.*--device auto or cpu"):
            D.resolve("cuda")
    with pytest.raises(ValueError, match="not one of"):
        D.resolve("tpu")


def test_autocast_dtype_and_scaler_per_device(monkeypatch):
    for faster, want in ((False, None), (True, torch.bfloat16)):  # CPU: auto follows the measured check
        monkeypatch.setattr(D, "cpu_bf16_check", lambda refresh=False, f=faster: {"native": True, "faster": f})
        assert D.autocast_dtype("cpu", "auto") is want and D.grad_scaler("cpu", "auto") is None
    assert D.autocast_dtype("cpu", "fp32") is None
    assert D.autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert D.fused_adamw("cpu") == {}
    fake_gpu(monkeypatch, bf16=True)
    assert D.autocast_dtype("cuda", "auto") is torch.bfloat16 and D.grad_scaler("cuda", "auto") is None
    assert D.fused_adamw("cuda") == {"fused": True}
    fake_gpu(monkeypatch, bf16=False)  # a V100/T4: bf16 only emulated -> fp16 with loss scaling
    assert D.autocast_dtype("cuda", "auto") is torch.float16
    assert isinstance(D.grad_scaler("cuda", "auto"), torch.amp.GradScaler)
    assert D.autocast_dtype("cuda", "fp32") is None


def test_cpu_bf16_check_measures_once_and_follows_the_hardware(monkeypatch, tmp_path):
    """The check times fp32 against bf16 only where the CPU has native bf16, caches the answer per machine (a
    second call does not time again) and measures again when asked; a CPU without it is fp32 untimed."""
    monkeypatch.setenv("DTE_CACHE", str(tmp_path))
    calls = []
    real = D._time_bf16_vs_fp32
    monkeypatch.setattr(D, "_time_bf16_vs_fp32", lambda: calls.append(1) or real(pairs=3))
    monkeypatch.setattr(D, "cpu_bf16_native", lambda: True)
    first = D.cpu_bf16_check()
    assert first["native"] and first["speedup"] > 0 and first["faster"] == (first["speedup"] >= D.BF16_MIN_SPEEDUP)
    assert (tmp_path / "cpu_bf16.json").exists()
    assert D.cpu_bf16_check() == first and len(calls) == 1  # cached
    D.cpu_bf16_check(refresh=True)
    assert len(calls) == 2
    monkeypatch.setattr(D, "cpu_bf16_native", lambda: False)
    plain = D.cpu_bf16_check(refresh=True)
    assert plain["native"] is False and plain["faster"] is False and plain["speedup"] is None and len(calls) == 2
    assert D.autocast_dtype("cpu", "auto") is None
    assert "no native bf16" in D.precision_note("cpu", "auto")
    with torch.no_grad():  # a validation loss may be the first to ask: the check still measures gradients
        monkeypatch.setattr(D, "cpu_bf16_native", lambda: True)
        assert D.cpu_bf16_check(refresh=True)["speedup"] > 0


def test_distributed_picks_nccl_on_gpus_and_gloo_on_cpu(monkeypatch):
    from dte_lib import distributed as dist
    monkeypatch.delenv("DTE_DIST_BACKEND", raising=False)
    assert dist.placement("cpu", 3) == ("gloo", torch.device("cpu"))
    assert dist.mixed_precision(torch.device("cpu"), "auto") is None
    fake_gpu(monkeypatch)
    assert dist.placement("cuda", 3) == ("nccl", torch.device("cuda", 3))
    assert dist.placement("auto", 1) == ("nccl", torch.device("cuda", 1))
    mp = dist.mixed_precision(torch.device("cuda", 0), "auto")
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert dist.mixed_precision(torch.device("cuda", 0), "fp32") is None


def test_dte_train_device_cuda_fails_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "dte_lib.cli", "train", "--preset", "ci", "--run-dir",
                           str(tmp_path), "--device", "cuda"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err[0].startswith("dte train: device 'cuda'") and "--device auto or cpu" in err[0]


# ---------------------------------------------------------------------------------------------- the trainer
def test_trainer_places_model_val_and_batches_on_its_device(parts, tmp_path, monkeypatch):
    tok, train_ds, val_ds = parts
    tr = progressive.ProgressiveTrainer(tiny_tc(), tok, train_ds, val_ds, tmp_path, progress=False,
                                        tensorboard=False, device=META)
    tr._resume_or_start()
    tr._enter_stage(tr.stages[0])
    assert {p.device for p in tr.model.parameters()} == {META}
    assert {v.device for v in tr.val.values()} == {META}
    seen = []
    record_inputs(tr.model, seen)
    with pytest.raises(Reached):
        tr.train_step(tr.loader.next_batch(), 1e-3)  # a CPU batch from the loader...
    assert seen == [META]  # ...reaches the model on the trainer's device


def test_accumulation_and_checkpointing_match_a_plain_step(parts, tmp_path):
    tok, train_ds, val_ds = parts
    runs = {}
    for name, kw in {"plain": {}, "accum2": {"grad_accum": 2}, "ckpt": {"activation_checkpointing": True},
                     "both": {"grad_accum": 4, "activation_checkpointing": True}}.items():
        tr = progressive.ProgressiveTrainer(tiny_tc(depths="2", **kw), tok, train_ds, val_ds, tmp_path / name,
                                            progress=False, tensorboard=False, seed=3)
        tr._resume_or_start()
        tr._enter_stage(tr.stages[0])
        runs[name] = ([tr.train_step(tr.loader.next_batch(), 3e-3)["loss"] for _ in range(4)],
                      {k: v.clone() for k, v in tr.model.state_dict().items()})
        assert tr.accum == kw.get("grad_accum", 1)
    ref_losses, ref_w = runs["plain"]
    for name, (losses, w) in runs.items():
        assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6), name
        assert max(float((w[k] - ref_w[k]).abs().max()) for k in w) < 1e-4, name
    with pytest.raises(ValueError, match="must divide the per-rank batch"):
        progressive.ProgressiveTrainer(tiny_tc(grad_accum=3), tok, train_ds, val_ds, tmp_path / "bad")


def test_planner_accumulation_on_a_gpu_device(parts, tmp_path, monkeypatch):
    tok, train_ds, val_ds = parts
    tr = progressive.ProgressiveTrainer(tiny_tc(grad_accum=0, batch_size=64, precision="auto"), tok, train_ds,
                                        val_ds, tmp_path)
    assert tr.accum == 1  # 0 = planned on a GPU; the CPU keeps whole batches
    shape = planner.gpt2(2, 32, len(tok), 32, n_head=2)
    whole = planner.plan_batch(shape, 64, 32, 1e30)["estimated_bytes"]
    memory = (planner.CUDA_RESERVE_BYTES + whole / 3) / 0.9  # a GPU where about a third of the batch fits
    monkeypatch.setattr(planner, "device_memory_bytes", lambda device=None: memory)
    fake_gpu(monkeypatch)
    tr.device = torch.device("cuda", 0)
    plan = planner.plan_batch(shape, 64, 32, memory)
    assert tr._accumulation() == plan["accum"] > 1 and plan["fits"]


def test_a_cpu_checkpoint_resumes_onto_another_device(parts, tmp_path, monkeypatch):
    tok, train_ds, val_ds = parts

    class Stop(Exception):
        pass

    def stop(step):
        if step == 2:
            raise Stop

    tc = tiny_tc()
    tr = progressive.ProgressiveTrainer(tc, tok, train_ds, val_ds, tmp_path, progress=False, tensorboard=False,
                                        on_step=stop)
    with pytest.raises(Stop):
        tr.run()
    path = ckpt.latest(tmp_path / "train" / "state")
    asked = []
    real = ckpt.load_file
    monkeypatch.setattr(ckpt, "load_file", lambda f, device="cpu": asked.append(device) or real(f, device="cpu"))
    ckpt.load(path, device="cuda:0")  # optimizer moments read with safetensors' device= (map_location)
    assert asked == ["cuda:0", "cpu"]  # ... and the RNG states always on the CPU
    monkeypatch.setattr(ckpt, "load_file", real)
    # a trainer on another device (with accumulation: not part of the fingerprint) resumes the same state
    other = progressive.ProgressiveTrainer(tiny_tc(grad_accum=2), tok, train_ds, val_ds, tmp_path, progress=False,
                                           tensorboard=False, device=META)
    assert other.fingerprint == tr.fingerprint
    assert other._resume_or_start() and other.global_step == 2
    other._enter_stage(other.stages[0])
    assert {p.device for p in other.model.parameters()} == {META}
    moments = [st for st in other.opt.state.values()]
    assert moments and {st["exp_avg"].device for st in moments} == {META}
    assert {st["step"].device for st in moments} == {torch.device("cpu")}  # non-fused AdamW keeps step on CPU


def test_fused_optimizer_state_goes_to_the_parameter_device():
    p = torch.nn.Parameter(torch.zeros(3, device=META))
    opt = torch.optim.AdamW([{"params": [p], "names": ["w"]}])
    opt.param_groups[0]["fused"] = True  # what a CUDA trainer builds (fused AdamW)
    n = ckpt.load_optimizer_state_by_name(opt, {"w": {"step": torch.tensor(4.0), "exp_avg": torch.ones(3),
                                                      "exp_avg_sq": torch.ones(3)}})
    assert n == 1 and {v.device for v in opt.state[p].values()} == {META}


# ---------------------------------------------------------------------------------------------- inference modules
def test_evaluate_texts_generate_and_lm_score_run_where_the_model_is(parts):
    tok = parts[0]
    model = M.build(len(tok), 64, 32, 1, 2, eos_id=tok.eos_token_id).to(META)
    seen: list = []
    handle = record_inputs(M._body_and_head(model)[0], seen)  # model.sum_nll runs the body, then the output layer
    with pytest.raises(Reached):
        M.evaluate_texts(model, tok, ["I am Deep Tree Echo."])
    ex = data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples[:1]
    with pytest.raises(Reached):
        metrics.lm_score(model, tok, ex)
    handle.remove()
    assert seen == [META, META]

    def fake_generate(input_ids=None, attention_mask=None, **kw):
        seen.append((input_ids.device, attention_mask.device if attention_mask is not None else None))
        raise Reached
    model.generate = fake_generate
    with pytest.raises(Reached):
        M.generate(model, tok, ["Who are you?"])
    with pytest.raises(Reached):
        metrics.hf_answerer(model, tok, max_new_tokens=4)(["Who are you?"])
    assert seen[2:] == [(META, META), (META, META)]


def test_loaders_put_the_model_on_the_requested_device(hf_dir, monkeypatch, tmp_path):
    from dte_lib import inspector, selfgen
    cfg = config.load("ci")
    got = {}

    def capture(name):
        def fn(model, *a, **k):
            got[name] = next(model.parameters()).device
            raise Reached
        return fn
    monkeypatch.setattr(metrics, "hf_answerer", capture("metrics"))
    with pytest.raises(Reached):
        metrics.evaluate_checkpoint(hf_dir, SimpleNamespace(persona={}), cfg, device=META)
    monkeypatch.setattr(metrics, "hf_answerer", capture("selfgen"))
    with pytest.raises(Reached):
        selfgen.self_generate(hf_dir, cfg, tmp_path, n=2, device=META)
    monkeypatch.setattr(metrics, "hf_answerer", capture("inspector"))
    ins = inspector.Inspector({"m": hf_dir}, persona={}, device=META)
    with pytest.raises(Reached):
        ins._answerer("m")
    assert got == {"metrics": META, "selfgen": META, "inspector": META}


def test_stage_report_scores_on_the_device(parts, tmp_path, monkeypatch):
    tok = parts[0]
    stage = tmp_path / "checkpoints" / "s01-grow-d1"
    ckpt.export_model(M.build(len(tok), 64, 32, 1, 2, eos_id=tok.eos_token_id), tok, stage,
                      {"depth": 1, "tokens": 0, "flops": 0.0})
    seen: list = []

    def spy(model, *a, **k):
        seen.append(next(model.parameters()).device)
        raise Reached
    monkeypatch.setattr(M, "evaluate_texts", spy)
    with pytest.raises(Reached):
        progressive.stage_report(tmp_path, tok, ["hello"], device=META)
    assert seen == [META]


def test_continued_training_uses_the_preset_device(monkeypatch, tmp_path, parts):
    from dte_lib import continued
    got = {}

    class Capture:
        def __init__(self, *a, **kw):
            got.update(kw)
            raise Reached
    monkeypatch.setattr(progressive, "ProgressiveTrainer", Capture)
    cfg = config.load("ci")
    with pytest.raises(Reached):
        continued.train(cfg, tmp_path, "x", depths=[1], steps=1)
    assert got["device"] == "cpu"
    cfg.device = "meta-from-preset"
    with pytest.raises(Reached):
        continued.train(cfg, tmp_path, "x", depths=[1], steps=1)
    assert got["device"] == "meta-from-preset"


def test_teacher_finetune_and_multitask_move_batches_to_the_model(tmp_path, monkeypatch):
    from dte_lib import multitask, teacher
    from tests._tiny_lm import chat_rows, make_tiny_lm
    d = make_tiny_lm(tmp_path / "lm")
    seen: list = []

    def eval_spy(model, rows, pad_id, batch_size=8, precision="fp32"):
        seen.append(next(model.parameters()).device)
        raise Reached
    monkeypatch.setattr(teacher, "eval_loss", eval_spy)
    conv = [r["messages"] for r in chat_rows(4)]
    with pytest.raises(Reached):
        teacher.finetune(d, conv, conv, tmp_path / "out", teacher.LoraSettings(max_length=64), device=META)
    assert seen == [META]
    model, tok = teacher.load(d)
    model.to(META)
    # model.sum_nll calls the transformer body (the output layer runs on labelled positions only): watch that
    body_handle = record_inputs(M._body_and_head(model)[0], seen)
    ids, labels, mask = teacher._collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], 0)
    with pytest.raises(Reached):
        M.sum_nll(model, ids, labels, mask)
    body_handle.remove()
    handle = record_inputs(model, seen)
    with pytest.raises(Reached):
        multitask.prefix_states(model, tok, ["Who are you?"], None, 16)
    handle.remove()
    assert seen[1:] == [META, META]


# ---------------------------------------------------------------------------------------------- planner
def test_planner_batch_plan_and_datasheet_peaks():
    m = planner.gpt2(12)
    big, small = planner.plan_batch(m, 64, 1024, 141 * planner.GIB), planner.plan_batch(m, 64, 1024, 24 * planner.GIB)
    assert big["fits"] and big["micro_batch"] * big["accum"] == 64
    assert small["accum"] > big["accum"] and small["micro_batch"] * small["accum"] == 64
    assert small["estimated_bytes"] <= small["budget_bytes"]
    plain = planner.memory_bytes(planner.gpt2(24, 1792), 8, 1024, 2)["activations"]
    assert planner.memory_bytes(planner.gpt2(24, 1792), 8, 1024, 2, checkpointing=True)["activations"] < plain / 2
    assert planner.datasheet_peak("NVIDIA H200")[0] == 989.4
    assert planner.datasheet_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert planner.datasheet_peak("NVIDIA GeForce RTX 4090")[0] == 165.2
    assert planner.datasheet_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert planner.datasheet_peak("NVIDIA L4")[0] == 121.0
    assert planner.datasheet_peak("Some Other GPU") is None


@pytest.mark.timeout(300)
def test_gpu_check_dry_run_runs_every_path_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --dry-run: agreement, throughput, memory and FSDP2 (2 gloo ranks) on tiny shapes."""
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--json",
                           str(out)], capture_output=True, text=True, timeout=280, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "overall: PASS" in proc.stdout and "| run | max abs loss diff vs CPU |" in proc.stdout
    import json
    res = json.loads(out.read_text())
    assert res["fsdp"]["world_size"] == 2 and res["fsdp"]["backend"] == "gloo" and res["fsdp"]["ok"]
    assert [r["variant"] for r in res["speed"]["rows"]] == ["eager", "compile", "eager", "activation_checkpointing"]
    assert all(r["ok"] for r in res["agreement"]["rows"])


def test_fp16_step_goes_through_the_grad_scaler(parts, tmp_path):
    """The fp16 path a pre-Ampere GPU takes (autocast fp16 + GradScaler), run on the CPU: it trains."""
    tok, train_ds, val_ds = parts
    tr = progressive.ProgressiveTrainer(tiny_tc(depths="1", precision="fp16", grad_accum=2), tok, train_ds, val_ds,
                                        tmp_path, progress=False, tensorboard=False)
    tr._resume_or_start()
    tr._enter_stage(tr.stages[0])
    assert isinstance(tr.scaler, torch.amp.GradScaler)
    losses = [tr.train_step(tr.loader.next_batch(), 3e-3)["loss"] for _ in range(6)]
    assert all(loss == loss for loss in losses) and tr.scaler.get_scale() > 0
    assert losses[-1] < max(losses)  # (the first batches of this tiny corpus score no assistant token: loss 0)


def test_on_an_apple_gpu_each_phase_runs_there_or_says_why_not(monkeypatch, capsys):
    """With ``device auto`` on a Mac with MPS (stood in for: torch is told MPS is available; nothing runs on it):
    the trainer states its precision in one line, and each phase that stays on the CPU says so in one line."""
    from dte_lib import distributed, infra
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert D.resolve("auto") == torch.device("mps")
    assert D.autocast_dtype("mps") is None and D.grad_scaler("mps") is None  # precision auto on MPS: fp32
    assert D.autocast_dtype("mps", "bf16") is torch.bfloat16  # asked for, it is autocast
    capsys.readouterr()
    assert D.configure("auto") == torch.device("mps")
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "mps" in line and "fp32" in line
    assert distributed.placement("auto", 0) == ("gloo", torch.device("cpu"))
    assert distributed.placement("auto", 1) == ("gloo", torch.device("cpu"))  # (said once, by local rank 0)
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "on the CPU, not mps" in line and "torch.distributed" in line
    assert infra.detect_device()["device"] == "mps"
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("notebook 05's measurements (matmul rate, training step, peak memory): on the CPU, not mps")
    assert D.cpu_fallback("cpu", "anything", "no reason") == torch.device("cpu")
    assert capsys.readouterr().out == ""  # on the CPU nothing is said

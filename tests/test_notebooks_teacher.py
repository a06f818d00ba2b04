"""Notebook 01 at the ci preset: what it recorded and the files it handed on (model_info.json, the merged model)."""
from __future__ import annotations

import json

import pytest

from dte_lib import teacher


@pytest.mark.course
def test_notebook_01_fine_tuned_a_local_teacher(ci_run, ci_metrics):
    m = ci_metrics["01_week1_teacher"]
    assert m["backend"] == "local" and m["job_status"] == "succeeded"
    assert m["fine_tuned_model"].startswith("ft:SmolLM2-135M-Instruct:local:")
    assert m["steps"] >= 1 and m["trained_tokens"] > 0 and m["checkpoints"] >= 1
    assert m["train_examples"] > 4 * m["val_examples"] * 0.6 and m["test_examples"] > 0
    # the held-out validation loss after a few LoRA steps vs the base model, both measured by the server
    assert m["val_loss_base"] > 0 and m["val_loss_finetuned"] > 0
    assert m["val_loss_improved"] == (m["val_loss_finetuned"] < m["val_loss_base"])
    assert m["val_loss_finetuned"] < m["val_loss_base"]
    assert m["billed_tokens_estimate"] > 10_000 and m["training_usd_estimate"] > 0
    assert m["answers_compared"] >= 1
    assert (ci_run / "figures" / "teacher_loss.png").stat().st_size > 1000


@pytest.mark.course
def test_notebook_01_hands_model_info_to_notebook_02(ci_run):
    info = teacher.load_model_info(ci_run)
    assert set(info) == set(teacher.MODEL_INFO_KEYS)
    assert info["backend"] == "local" and info["base_url"] is None
    path = ci_run / "teacher" / "server" / "models"
    assert str(path) in info["path"]
    model_dir = teacher.Path(info["path"])
    assert (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists()
    assert (model_dir / "tokenizer_config.json").exists()
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "llama"
    assert info["val_loss_finetuned"] < info["val_loss_base"]

"""The progressive trainer's stage schedule from a ``TrainCfg``: what each stage trains, at what depth, how long.

One ``grow`` stage per depth (from scratch at the first), a ``joint`` stage every ``joint_every`` layers, a ``final``
stage. :mod:`dte_lib.progressive` runs it; :mod:`dte_lib.planner` counts its FLOPs and hours. It lives below both
(it imports only :mod:`dte_lib.config`), so the planner never imports the trainer (docs/ARCHITECTURE.md, "Layers").
Explained in notebook 06.
Run it: ``python -c "from dte_lib import config, schedule; print(schedule.build_schedule(config.load('ci').train))"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Stage:
    name: str  # directory name under checkpoints/
    depth: int  # model depth during the stage
    tokens: int  # token budget
    policy: str  # greedy | all | all_lower_lr
    lr: float  # peak learning rate
    kind: str  # grow | joint | final
    new_layers: tuple[int, ...] = ()  # layers added at the start of this stage


def build_schedule(tc, depths: Any = None, tokens_per_stage: int | None = None,
                   final_tokens: int | None = None) -> list[Stage]:
    """Stages from a TrainCfg: one grow stage per depth, joint phases every ``joint_every`` layers, a final phase."""
    from .config import as_list
    ds = as_list(depths or tc.depths)
    if ds != sorted(set(ds)) or ds[0] < 1:
        raise ValueError(f"depths {ds} must be increasing positive integers")
    tokens = tc.tokens_per_stage if tokens_per_stage is None else tokens_per_stage
    final = tc.final_tokens if final_tokens is None else final_tokens
    stages: list[Stage] = []
    prev = 0
    for i, d in enumerate(ds):
        policy = "all" if i == 0 else tc.policy  # from scratch, embeddings must train
        stages.append(Stage(f"s{len(stages) + 1:02d}-grow-d{d}", d, tokens, policy, tc.lr, "grow",
                            tuple(range(prev, d))))
        if tc.joint_every and tc.joint_tokens and d % tc.joint_every == 0 and i:
            stages.append(Stage(f"s{len(stages) + 1:02d}-joint-d{d}", d, tc.joint_tokens, "all", tc.lr, "joint"))
        prev = d
    if final:
        stages.append(Stage(f"s{len(stages) + 1:02d}-final-d{prev}", prev, final, "all", tc.lr, "final"))
    return stages

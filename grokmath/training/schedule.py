"""The learning-rate schedule and the optimizer, on the host and on the device.

`lr_factor(cfg, step)` is the multiplier of cfg.lr at `step` (a Python float): the seed notebooks'
linear warm-up `min(step / warmup, 1)`, or the arithmetic notebook's warm-up from 1% followed by a
cosine decay to 0. `device_lr_factor(cfg, step)` is the same for a step held in a device tensor, as
float64 torch ops in the same order as the Python expression (equal to it on a CPU, to the last
bit; a GPU's cos may differ by an ulp), which is what lets a captured step (grokmath.training.capture) keep
its own schedule without the host. `make_optimizer` builds AdamW with its LambdaLR scheduler;
`scheduler_state(scheduler, cfg, step)` is that scheduler's state after `step` steps, for a
captured run that never steps it.
"""
from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The multiplier of cfg.lr at `step`."""
    if cfg.schedule == "warmup":
        return min(step / cfg.warmup, 1.0) if cfg.warmup > 0 else 1.0
    if step < cfg.warmup:  # the arithmetic notebook: LinearLR from 1% over the warm-up ...
        return 0.01 + 0.99 * step / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)  # ... then CosineAnnealingLR to 0
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def device_lr_factor(cfg: TrainConfig, step: torch.Tensor) -> torch.Tensor:
    """lr_factor(cfg, step) for a 0-d integer tensor `step`, as a float64 tensor on its device."""
    s = step.to(torch.float64)
    if cfg.schedule == "warmup":
        return (s / cfg.warmup).clamp(max=1.0) if cfg.warmup > 0 else torch.ones_like(s)
    progress = (s - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + torch.cos(math.pi * progress.clamp(max=1.0)))
    if cfg.warmup == 0:
        return cosine
    return torch.where(s < cfg.warmup, 0.01 + 0.99 * s / cfg.warmup, cosine)


def make_optimizer(model, cfg: TrainConfig):
    # fused: one kernel for the whole update (about 3x faster than the per-tensor loop on a CPU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                  fused=True)
    # A closure rather than a lambda object keeps the scheduler's state_dict free of code
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
    return optimizer, scheduler


def scheduler_state(scheduler, cfg: TrainConfig, step: int) -> dict:
    """The state make_optimizer's scheduler has after `step` scheduler steps."""
    return {**scheduler.state_dict(), "last_epoch": step, "_step_count": step + 1,
            "_last_lr": [cfg.lr * lr_factor(cfg, step)]}

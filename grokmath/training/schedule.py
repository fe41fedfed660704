"""The learning-rate schedule and the optimizer, on the host and on the device.

`lr_factor(cfg, step)` is the multiplier of cfg.lr at `step` (a Python float): the seed notebooks'
linear warm-up `min(step / warmup, 1)`, or the arithmetic notebook's warm-up from 1% followed by a
cosine decay to 0. `device_lr_factor(cfg, step)` is the same for a step held in a device tensor:
both evaluate the one formula (`_schedule`), on Python floats or as float64 torch ops in the same
order (equal on a CPU, to the last bit; a GPU's cos may differ by an ulp), which is what lets a
captured step (grokmath.training.capture) keep its own schedule without the host. `make_optimizer` builds AdamW with its LambdaLR scheduler;
`scheduler_state(scheduler, cfg, step)` is that scheduler's state after `step` steps, for a
captured run that never steps it.
"""
from __future__ import annotations

import math

import torch

from ..config import TrainConfig


class _HostMath:
    """The operations of the schedule on a Python number (the host's LambdaLR)."""
    minimum, cos = staticmethod(min), staticmethod(math.cos)
    ones_like = staticmethod(lambda s: 1.0)
    where = staticmethod(lambda condition, yes, no: yes if condition else no)


class _DeviceMath:
    """The same operations on a float64 device tensor (the captured step): no host sync."""
    minimum, cos = staticmethod(lambda t, high: t.clamp(max=high)), staticmethod(torch.cos)
    ones_like, where = staticmethod(torch.ones_like), staticmethod(torch.where)


def _schedule(cfg: TrainConfig, s, ops):
    """The one formula of the multiplier of cfg.lr at step `s`, in the operations `ops`."""
    if cfg.schedule == "warmup":
        return ops.minimum(s / cfg.warmup, 1.0) if cfg.warmup > 0 else ops.ones_like(s)
    # the arithmetic notebook: CosineAnnealingLR to 0 after the warm-up ...
    progress = (s - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + ops.cos(math.pi * ops.minimum(progress, 1.0)))
    if cfg.warmup == 0:
        return cosine
    return ops.where(s < cfg.warmup, 0.01 + 0.99 * s / cfg.warmup, cosine)  # ... after LinearLR from 1%


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The multiplier of cfg.lr at `step`."""
    return _schedule(cfg, step, _HostMath)


def device_lr_factor(cfg: TrainConfig, step: torch.Tensor) -> torch.Tensor:
    """lr_factor(cfg, step) for a 0-d integer tensor `step`, as a float64 tensor on its device."""
    return _schedule(cfg, step.to(torch.float64), _DeviceMath)


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

"""One training step: the models as the loop sees them, and the eager step itself.

The loop steps K models through one interface, `SteppedModels`: `OneModel` (K = 1, a plain
Transformer or its DistributedDataParallel) and grokmath.training.multiseed's `StackedModels` (K seeds with
stacked weights) both follow it. `train_step` is the eager step (the captured one, grokmath.training.capture,
runs the same arithmetic from static buffers).
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..store.checkpoint import load_state_dict_checked
from .losses import masked_mean, pred_log_probs
from ..tasks.base import Batch


class SteppedModels(Protocol):
    """K models as the loop sees them (OneModel, grokmath.training.multiseed.StackedModels): a forward over
    stacked batches, their parameters, and each model's state for checkpoints and resuming."""

    seeds: list[int] | None

    def __len__(self) -> int: ...
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...
    def named_parameters(self): ...
    def parameters(self): ...
    def model(self, k: int) -> torch.nn.Module: ...
    def torch_modules(self) -> list[torch.nn.Module]: ...
    def model_state(self, k: int) -> dict: ...
    def load_model_states(self, states: list[dict]) -> None: ...
    def optimizer_state(self, optimizer, k: int) -> dict: ...
    def load_optimizer_states(self, optimizer, states: list[dict]) -> None: ...
    def filter_state(self, grad_filter, k: int) -> dict: ...
    def load_filter_states(self, grad_filter, states: list[dict]) -> None: ...


class OneModel:
    """One model as the loop sees models: a stack of K = 1 (see grokmath.training.multiseed for K > 1).
    `forward_module` is what runs the forward (the model, or its DistributedDataParallel)."""

    seeds = None

    def __init__(self, model: torch.nn.Module, forward_module=None):
        self.module, self.forward_module = model, forward_module or model

    def __len__(self) -> int:
        return 1

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [1, batch, n_ctx] -> logits [1, batch, n_pred, d_vocab_out]."""
        return self.forward_module(tokens[0], positions=positions)[None]

    def named_parameters(self):
        return self.module.named_parameters()

    def parameters(self):
        return self.module.parameters()

    def model(self, k: int) -> torch.nn.Module:
        return self.module

    def torch_modules(self) -> list[torch.nn.Module]:
        return [self.forward_module]

    def model_state(self, k: int) -> dict:
        return {name: v.detach().cpu() for name, v in self.module.state_dict().items()}

    def load_model_states(self, states: list[dict]) -> None:
        device = next(self.module.parameters()).device
        load_state_dict_checked(self.module, {k: v.to(device) for k, v in states[0].items()},
                                "resumable checkpoint")

    def optimizer_state(self, optimizer, k: int) -> dict:
        return optimizer.state_dict()

    def load_optimizer_states(self, optimizer, states: list[dict]) -> None:
        optimizer.load_state_dict(states[0])

    def filter_state(self, grad_filter, k: int) -> dict:
        return grad_filter.state_dict()

    def load_filter_states(self, grad_filter, states: list[dict]) -> None:
        grad_filter.load_state_dict(states[0])


def stack_batches(batches: list[Batch]) -> Batch:
    """K batches of one shape as one with a leading [K] axis (K = 1: views, no copy)."""
    if len(batches) == 1:
        b = batches[0]
        return Batch(b.tokens[None], b.targets[None], None if b.mask is None else b.mask[None])
    mask = None if batches[0].mask is None else torch.stack([b.mask for b in batches])
    return Batch(torch.stack([b.tokens for b in batches]), torch.stack([b.targets for b in batches]), mask)


def all_finite(models) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in models.parameters()]).all())


def train_step(models, batch: Batch, positions: torch.Tensor, optimizer, grad_filter=None,
               skip_nonfinite: bool = False):
    """One optimizer step of the K models on their batches (tokens, targets and mask each [K, ...]):
    forward, float64 loss, backward, Grokfast filter, AdamW. Returns (losses [K], nll [K, batch,
    n_pred], logits [K, batch, n_pred, vocab], skipped); a skipped step changes no weight."""
    logits = models.forward(batch.tokens, positions)  # [K, batch, n_pred, d_vocab_out]
    nll = -pred_log_probs(logits, batch.targets)  # [K, batch, n_pred] float64
    masks = [None] * len(models) if batch.mask is None else batch.mask
    losses = torch.stack([masked_mean(nll[k], masks[k]) for k in range(len(models))])  # [K]
    skipped = skip_nonfinite and not bool(torch.isfinite(losses).all())  # a sync only when skipping is on
    if not skipped:
        losses.sum().backward()  # the sum: each model gets exactly the gradient of its own loss
        with torch.no_grad():
            if grad_filter is not None:
                grad_filter.apply(models)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses, nll, logits, skipped

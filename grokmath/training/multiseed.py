"""Many seeds at once: K models of one shape whose weights are stacked, for the one training loop.

`StackedModels(model_cfg, seeds)` builds one Transformer per seed (each initialised by its own
seed, exactly as a single run with that seed), stacks their weights (`torch.func.stack_module_state`,
each tensor [K, ...]) and runs them all in one `vmap`-ed forward. grokmath.training.train's loop trains it
as it trains one model: the loss is the sum of the K models' mean losses, so each model gets
exactly its own gradient, and one AdamW (and one Grokfast filter) over the stacked tensors is K
independent ones, since both work elementwise. What differs from one model is here: the forward,
and the per-model views of the weights, the optimizer state and the Grokfast state, so that each
model's checkpoint is exactly what a single run with its seed would write (and merges back on
resume). For small models, where a step is mostly Python and kernel-launch overhead, K models on a
GPU cost little more than one.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch.func import functional_call, stack_module_state, vmap

from ..store.checkpoint import load_state_dict_checked
from ..config import ModelConfig
from ..model.layers import Attention
from ..model.transformer import Transformer


class StackedModels:
    """K models (one per seed) of `model_cfg`'s shape, weights stacked on a leading [K] axis; the loop
    steps them through grokmath.training.step's SteppedModels protocol, as it does OneModel."""

    def __init__(self, model_cfg: ModelConfig, seeds: list[int], device="cpu"):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat: give distinct seeds")
        self.seeds = list(seeds)
        self.models = [Transformer(replace(model_cfg, seed=s)).to(device) for s in seeds]
        self.params, self.buffers = stack_module_state(self.models)  # each tensor [K, ...]
        self.skeleton = self.models[0]
        for module in self.skeleton.modules():  # the fused attention kernel has no vmap rule on the CPU
            if isinstance(module, Attention):
                module.fused = False

        def one(params, buffers, tokens, positions):
            return functional_call(self.skeleton, (params, buffers), (tokens,), {"positions": positions})

        self._forward = vmap(one, in_dims=(0, 0, 0, None))

    def __len__(self) -> int:
        return len(self.seeds)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [K, batch, n_ctx] -> logits at `positions` [K, batch, n_pred, d_vocab_out]."""
        return self._forward(self.params, self.buffers, tokens, positions)

    def named_parameters(self):
        return iter(self.params.items())

    def parameters(self):
        return iter(self.params.values())

    def torch_modules(self) -> list[torch.nn.Module]:
        """The modules a forward runs (for the loop's check for hooks)."""
        return [self.skeleton, *self.models]

    def model(self, k: int) -> torch.nn.Module:
        """Model k as a plain Transformer holding its current weights (a copy of slice k)."""
        with torch.no_grad():
            for name, tensor in self.params.items():
                self.models[k].get_parameter(name).copy_(tensor[k])
        return self.models[k]

    def model_state(self, k: int) -> dict:
        return {name: v.detach().cpu() for name, v in self.model(k).state_dict().items()}

    @torch.no_grad()
    def load_model_states(self, states: list[dict]) -> None:
        for model, state in zip(self.models, states):  # each checked against its model, naming any misfit
            load_state_dict_checked(model, state, "resumable checkpoint")
        for name, tensor in self.params.items():
            tensor.copy_(torch.stack([state[name] for state in states]))

    # the optimizer's and the Grokfast filter's state: slice k out, stack the K back ----------
    def optimizer_state(self, optimizer, k: int) -> dict:
        full = optimizer.state_dict()
        return {"state": {i: {key: _slice(v, k) for key, v in s.items()} for i, s in full["state"].items()},
                "param_groups": full["param_groups"]}

    def load_optimizer_states(self, optimizer, states: list[dict]) -> None:
        first = states[0]
        merged = {i: {key: _stack([s["state"][i][key] for s in states]) for key in per_param}
                  for i, per_param in first["state"].items()}
        optimizer.load_state_dict({"state": merged, "param_groups": first["param_groups"]})

    def filter_state(self, grad_filter, k: int) -> dict:
        full = grad_filter.state_dict()
        return {"kind": full["kind"], "slow": {n: _slice(v, k) for n, v in full["slow"].items()},
                "history": {n: [_slice(g, k) for g in h] for n, h in full["history"].items()}}

    def load_filter_states(self, grad_filter, states: list[dict]) -> None:
        first = states[0]
        grad_filter.load_state_dict({
            "kind": first["kind"], "slow": {n: _stack([s["slow"][n] for s in states]) for n in first["slow"]},
            "history": {n: [_stack([s["history"][n][i] for s in states]) for i in range(len(h))]
                        for n, h in first["history"].items()}})


def _slice(value, k: int):
    """Model k's part of a stacked state tensor (a copy, so a checkpoint holds no other model's
    weights); 0-d tensors (AdamW's step count, shared by the K models) are kept whole."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[k].detach().clone().cpu()
    return value


def _stack(values: list):
    """The K models' parts back into one stacked tensor; a shared 0-d value from the first."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.stack(values)
    return first

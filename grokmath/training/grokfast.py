"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying
Slow Gradients"), applied between `loss.backward()` and `optimizer.step()`.

Each parameter's gradient g_t is replaced by g_t + lamb * slow_t, where slow_t is a low-pass
filter of the gradient history:
- 'ema': slow_t = alpha * slow_{t-1} + (1 - alpha) * g_t (slow_0 = g_0); paper defaults alpha 0.98, lamb 2.
- 'ma':  slow_t = mean of the last `window` raw gradients, applied only once the window is full
         (the paper's `warmup=True`); paper defaults window 100, lamb 5.
The filter's state is part of a resumable checkpoint (`state_dict` / `load_state_dict`).

`GradFilter` is the eager filter (the paper's code, new tensors every step). `StaticGradFilter`
computes the same numbers, operation for operation, in tensors allocated once and changed in
place, with the step count on the device, so that a captured CUDA graph (grokmath.training.capture) can
replay it: its EMA starts from the first gradient through a device-side choice, and its MA window
is a shift register [window, ...] (oldest first) summed in the deque's order. Both write and read
the same checkpoint format, so a run can move between the eager and the captured step.
"""
from __future__ import annotations

from collections import deque

import torch

DEFAULT_LAMB = {"ema": 2.0, "ma": 5.0}


class GradFilter:
    def __init__(self, kind: str, alpha: float = 0.98, lamb: float | None = None, window: int = 100):
        if kind not in DEFAULT_LAMB:
            raise ValueError(f"grokfast={kind!r} is not a known filter: use 'ema' or 'ma'")
        self.kind = kind
        self.alpha = alpha
        self.lamb = DEFAULT_LAMB[kind] if lamb is None else lamb
        self.window = window
        self.slow: dict[str, torch.Tensor] = {}  # ema: the running average per parameter
        self.history: dict[str, deque] = {}  # ma: the last `window` raw gradients per parameter

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        """Amplify the slow part of every parameter's .grad in place of the raw gradient."""
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            grad = p.grad.detach().clone()
            if self.kind == "ema":
                if name not in self.slow:
                    self.slow[name] = grad
                else:
                    self.slow[name] = self.slow[name] * self.alpha + grad * (1 - self.alpha)
                p.grad = p.grad + self.slow[name] * self.lamb
            else:
                history = self.history.setdefault(name, deque(maxlen=self.window))
                history.append(grad)
                if len(history) == self.window:
                    p.grad = p.grad + sum(history) / len(history) * self.lamb

    def state_dict(self) -> dict:
        # Plain dicts and lists of tensors, loadable with torch.load(weights_only=True)
        return {"kind": self.kind, "slow": dict(self.slow),
                "history": {name: list(h) for name, h in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint holds a grokfast {state.get('kind')!r} filter, "
                             f"not {self.kind!r}: resume with the run's own settings")
        self.slow = dict(state["slow"])
        self.history = {name: deque(h, maxlen=self.window) for name, h in state["history"].items()}

    def to(self, device) -> "GradFilter":
        self.slow = {k: v.to(device) for k, v in self.slow.items()}
        self.history = {k: deque((g.to(device) for g in h), maxlen=self.window) for k, h in self.history.items()}
        return self


class StaticGradFilter:
    """GradFilter's arithmetic in preallocated tensors (see the module doc); `named_parameters`
    fixes the parameters it filters, as (name, tensor) pairs, e.g. model.named_parameters()."""

    def __init__(self, kind: str, named_parameters, alpha: float = 0.98, lamb: float | None = None,
                 window: int = 100):
        if kind not in DEFAULT_LAMB:
            raise ValueError(f"grokfast={kind!r} is not a known filter: use 'ema' or 'ma'")
        self.kind, self.alpha, self.window = kind, alpha, window
        self.lamb = DEFAULT_LAMB[kind] if lamb is None else lamb
        params = dict(named_parameters)
        device = next(iter(params.values())).device
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # filtered steps so far
        if kind == "ema":
            self.slow = {n: torch.zeros_like(p) for n, p in params.items()}
        else:  # the last `window` raw gradients, oldest first; unfilled rows are zeros, never summed
            self.ring = {n: torch.zeros(window, *p.shape, dtype=p.dtype, device=device) for n, p in params.items()}
        self.filtered: set[str] = set()  # the parameters that had a gradient (the eager filter's keys)

    @torch.no_grad()
    def apply(self, model) -> None:
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            self.filtered.add(name)
            grad = p.grad
            if self.kind == "ema":
                slow = self.slow[name]
                # slow * alpha + grad * (1 - alpha), the eager filter's three roundings; the first step takes grad
                moved = slow * self.alpha + grad * (1 - self.alpha)
                slow.copy_(torch.where(self.count == 0, grad, moved))
                p.grad.add_(slow * self.lamb)
            else:
                ring = self.ring[name]
                ring.copy_(ring.roll(-1, 0))
                ring[-1].copy_(grad)
                total = 0
                for row in ring:  # Python's sum over the deque: oldest first, from 0
                    total = total + row
                amplified = p.grad + total / self.window * self.lamb
                p.grad.copy_(torch.where(self.count + 1 >= self.window, amplified, p.grad))
        self.count += 1

    def state_dict(self) -> dict:
        """GradFilter's format (one host read of the step count)."""
        count = int(self.count)
        if self.kind == "ema":
            slow = {n: self.slow[n].clone() for n in self.slow if n in self.filtered} if count else {}
            return {"kind": self.kind, "slow": slow, "history": {}}
        kept = min(count, self.window)
        history = {n: [row.clone() for row in self.ring[n][self.window - kept:]] for n in self.ring
                   if n in self.filtered} if kept else {}
        return {"kind": self.kind, "slow": {}, "history": history}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint holds a grokfast {state.get('kind')!r} filter, "
                             f"not {self.kind!r}: resume with the run's own settings")
        if self.kind == "ema":
            for name, tensor in self.slow.items():
                tensor.copy_(state["slow"][name]) if name in state["slow"] else tensor.zero_()
            self.filtered = set(state["slow"])
            self.count.fill_(1 if state["slow"] else 0)
            return
        lengths = {len(h) for h in state["history"].values()} or {0}
        if len(lengths) != 1 or max(lengths) > self.window:
            raise ValueError("the checkpoint's grokfast MA history does not fit this run's --grokfast-window")
        kept = lengths.pop()
        for name, ring in self.ring.items():
            ring.zero_()
            for i, grad in enumerate(state["history"].get(name, [])):
                ring[self.window - kept + i].copy_(grad)
        self.filtered = set(state["history"])
        self.count.fill_(kept)

    def to(self, device) -> "StaticGradFilter":
        return self  # allocated on the parameters' device

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the filter changes (for saving and restoring around a capture)."""
        return [self.count, *(self.slow.values() if self.kind == "ema" else self.ring.values())]

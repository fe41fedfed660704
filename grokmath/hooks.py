"""Hook points: a named, normally-invisible identity on every activation of the model.

A `HookPoint` returns its input unchanged until something is attached. Forward hooks see the
activation and may return a replacement (that is how ablation and patching work); backward
hooks see its gradient through a tensor hook (not the deprecated module backward hooks) and may
return a replacement gradient. A hook function may have the seed notebooks' signature
`fn(tensor, name)` or TransformerLens's `fn(tensor, *, hook)`.

`HookedRootModule` is the part of the model that finds, runs and removes hooks:
`model.hooks(...)` (a context manager), `run_with_hooks`, `run_with_cache`, and the seed
notebooks' `hook_points`, `remove_all_hooks`, `cache_all`. Hooks added through the context
manager or `run_*` are removed in a `finally`, so an exception in the forward, the hook or
the backward leaves none behind.

HookPoints are plain objects rather than nn.Modules so that, with nothing attached, one costs
a Python call and a truth test.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .activation_cache import ActivationCache
from .utils import ALIASES, _SHORT_NAMES, act_name, canonical_name  # noqa: F401 (re-exported)


def _call_style(fn: Callable) -> str:
    """How to call a hook: 'hook' for fn(x, *, hook), 'name' for the seed's fn(x, name=...),
    'positional' for fn(x, name) under another parameter name, 'plain' for fn(x)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "positional"
    if "hook" in params:
        return "hook"
    if "name" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return "name"
    if len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        return "positional"
    return "plain"


class HookHandle:
    """Returned by HookPoint.add_hook; `.remove()` detaches that one hook."""

    def __init__(self, point: "HookPoint", entry: list):
        self.point, self.entry = point, entry

    def remove(self):
        self.point._remove_entry(self.entry)


class HookPoint:
    """Identity on an activation, with optional forward and backward hooks."""

    def __init__(self, name: str | None = None):
        self.name = name
        self.fwd_hooks: list[list] = []  # entries [fn, style, active]
        self.bwd_hooks: list[list] = []

    def give_name(self, name: str):
        self.name = name

    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(self, hook: Callable, dir: str = "fwd") -> HookHandle:
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"invalid hook direction {dir!r}: use 'fwd' or 'bwd'")
        entry = [hook, _call_style(hook), True]
        (self.fwd_hooks if dir == "fwd" else self.bwd_hooks).append(entry)
        return HookHandle(self, entry)

    def remove_hooks(self, dir: str = "fwd"):
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"invalid hook direction {dir!r}: use 'fwd', 'bwd' or 'both'")
        if dir in ("fwd", "both"):
            for entry in self.fwd_hooks:
                entry[2] = False
            self.fwd_hooks = []
        if dir in ("bwd", "both"):
            for entry in self.bwd_hooks:
                entry[2] = False
            self.bwd_hooks = []

    def _remove_entry(self, entry: list):
        entry[2] = False
        self.fwd_hooks = [e for e in self.fwd_hooks if e is not entry]
        self.bwd_hooks = [e for e in self.bwd_hooks if e is not entry]

    def _run(self, entry: list, x, backward: bool):
        fn, style, _ = entry
        if style == "hook":
            return fn(x, hook=self)
        if style == "plain":
            return fn(x)
        x = (x,) if backward else x  # the seed notebooks' backward hooks read grad_output[0]
        return fn(x, name=self.name) if style == "name" else fn(x, self.name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fwd_hooks or self.bwd_hooks):
            return x
        for entry in list(self.fwd_hooks):
            out = self._run(entry, x, backward=False)
            if out is not None:
                x = out
        if self.bwd_hooks and x.requires_grad:
            x = x.view_as(x)  # a fresh node, so the gradient seen is this hook point's own
            entries = list(self.bwd_hooks)

            def backward_hook(grad):
                for entry in entries:
                    if entry[2]:  # removed hooks stay silent even if the graph outlives them
                        out = self._run(entry, grad, backward=True)
                        if isinstance(out, tuple):
                            out = out[0]
                        if out is not None:
                            grad = out
                return grad

            x.register_hook(backward_hook)
        return x

    def __repr__(self):
        return f"HookPoint({self.name!r}, fwd={len(self.fwd_hooks)}, bwd={len(self.bwd_hooks)})"


NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


def make_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        target = canonical_name(names_filter)
        return lambda name: name == target
    if callable(names_filter):
        return names_filter
    wanted = {canonical_name(n) for n in names_filter}
    return lambda name: name in wanted


class HookedRootModule(nn.Module):
    """Mixin for the root model: call `setup_hooks()` at the end of __init__."""

    def setup_hooks(self):
        self.hook_dict: dict[str, HookPoint] = {}
        for module_name, module in self.named_modules():
            for attr, value in vars(module).items():
                if isinstance(value, HookPoint):
                    name = f"{module_name}.{attr}" if module_name else attr
                    value.give_name(name)
                    self.hook_dict[name] = value

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def get_hook_point(self, name: str) -> HookPoint:
        full = canonical_name(name)
        if full not in self.hook_dict:
            raise KeyError(f"no hook point {name!r}: list them with model.hook_dict.keys()")
        return self.hook_dict[full]

    def remove_all_hooks(self, dir: str = "both"):
        for hp in self.hook_points():
            hp.remove_hooks(dir)

    def list_hooks(self) -> dict[str, dict[str, int]]:
        """Hook points with something attached: {name: {'fwd': n, 'bwd': n}}."""
        return {hp.name: {"fwd": len(hp.fwd_hooks), "bwd": len(hp.bwd_hooks)}
                for hp in self.hook_points() if hp.has_hooks()}

    def _resolve(self, name_or_filter) -> list[HookPoint]:
        if isinstance(name_or_filter, str):
            return [self.get_hook_point(name_or_filter)]
        keep = make_filter(name_or_filter)
        return [hp for name, hp in self.hook_dict.items() if keep(name)]

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=()):
        """Attach hooks for the duration of a `with` block; they are removed even on error."""
        handles = []
        try:
            for hook_list, direction in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for name_or_filter, fn in hook_list:
                    for hp in self._resolve(name_or_filter):
                        handles.append(hp.add_hook(fn, direction))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args, fwd_hooks=(), bwd_hooks=(), **kwargs):
        """Forward with temporary hooks. Backward hooks need the backward run inside a
        `with model.hooks(...)` block or through run_with_cache(incl_bwd=True, loss_fn=...)."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter: NamesFilter = None, incl_bwd: bool = False,
                       loss_fn: Callable | None = None, device=None, **kwargs):
        """Forward (and with incl_bwd, backward of loss_fn(logits)) caching activations.

        Returns (logits, cache). Gradients are cached as `name + '_grad'`.
        """
        if incl_bwd and loss_fn is None:
            raise ValueError("run_with_cache(incl_bwd=True) needs loss_fn: a function from logits to a scalar loss")
        cache = {}
        keep = make_filter(names_filter)

        def save(tensor, hook):
            cache[hook.name] = tensor.detach() if device is None else tensor.detach().to(device)

        def save_grad(grad, hook):
            cache[hook.name + "_grad"] = grad.detach() if device is None else grad.detach().to(device)

        fwd = [(keep, save)]
        bwd = [(keep, save_grad)] if incl_bwd else []
        with self.hooks(fwd, bwd):
            if incl_bwd:
                logits = self(*args, **kwargs)
                loss_fn(logits).backward()
            else:
                with torch.no_grad():
                    logits = self(*args, **kwargs)
        return logits, ActivationCache(cache, self)

    def cache_all(self, cache: dict, incl_bwd: bool = False):
        """The seed notebooks' API: cache every activation into `cache` until remove_all_hooks().

        Aliased points are stored under both names (e.g. attn.hook_pattern and attn.hook_attn).
        """
        def names(hook):
            yield hook.name
            head, _, last = hook.name.rpartition(".")
            for alias, target in ALIASES.items():
                if last == target:
                    yield f"{head}.{alias}"

        def save_hook(tensor, hook):
            for name in names(hook):
                cache[name] = tensor.detach()

        def save_hook_back(grad, hook):
            for name in names(hook):
                cache[name + "_grad"] = grad.detach()

        for hp in self.hook_points():
            hp.add_hook(save_hook, "fwd")
            if incl_bwd:
                hp.add_hook(save_hook_back, "bwd")


@contextmanager
def hook_points_bypassed(model: HookedRootModule):
    """Replace every HookPoint by a bare identity function (for timing the hook overhead)."""
    swapped = []
    for module in model.modules():
        for attr, value in list(vars(module).items()):
            if isinstance(value, HookPoint):
                swapped.append((module, attr, value))
                object.__setattr__(module, attr, _identity)
    try:
        yield model
    finally:
        for module, attr, value in swapped:
            object.__setattr__(module, attr, value)


def _identity(x):
    return x


_identity.has_hooks = lambda: False  # components ask this of their hook points

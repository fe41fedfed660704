"""Hook points: a named, normally-invisible identity on every activation of the model.

A `HookPoint` returns its input unchanged until something is attached, and then behaves as
TransformerLens 3.x's does: forward hooks see the activation and may return a replacement or edit
it in place (that is how ablation and patching work); backward hooks see its gradient and may
return a replacement gradient. Hooks are called `fn(act, hook=hook_point)` when they take `hook`
or `**kwargs`, as TransformerLens calls them; the seed notebooks' `fn(act, name)` gets the name
(and, backward, the gradient as a 1-tuple, as the notebooks read it). A hook point never hands a
hook storage that the model still needs (a parameter, a tensor saved for the backward pass, the
caller's input): a hook that may edit gets its own copy, so an in-place edit changes this forward
only. Returning a non-tensor or a tensor of another shape is refused, naming the hook point.

`LensHandle` is one attached hook (TransformerLens's name); removing it detaches the hook, and a
backward hook whose graph outlives its removal stays silent. The model-level API that finds, runs
and removes hooks by name is `HookedRootModule` (hooks.py).

HookPoints are plain objects rather than nn.Modules so that, with nothing attached, one costs
a Python call and a truth test.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Callable

import torch


def _call_style(fn: Callable) -> str:
    """How to call a hook: 'hook' for fn(x, hook=...) (a `hook` parameter or **kwargs, as
    TransformerLens calls every hook), 'name' for the seed's fn(x, name=...), 'positional' for
    fn(x, name) under another parameter name, 'plain' for fn(x)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "hook"
    if "hook" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return "hook"
    if "name" in params:
        return "name"
    if len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        return "positional"
    return "plain"


def _describe(fn) -> str:
    fn = fn.func if isinstance(fn, partial) else fn
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class LensHandle:
    """One attached hook, as TransformerLens's LensHandle: `is_permanent`, `context_level`,
    `user_hook`; `.remove()` (or `.hook.remove()`, TransformerLens's spelling) detaches it."""

    def __init__(self, point, user_hook, dir, is_permanent, context_level, by_filter):
        self.point, self.user_hook, self.dir = point, user_hook, dir
        self.is_permanent, self.context_level = is_permanent, context_level
        self.style = _call_style(user_hook)
        self.by_filter = by_filter  # attached through a name filter rather than by its name
        self.reads_only = getattr(user_hook, "_reads_only", False)  # grokmath's caching hooks
        self.active = True

    @property
    def hook(self) -> "LensHandle":
        return self

    def remove(self):
        self.point._detach([self])

    def __repr__(self):
        extra = ", permanent" if self.is_permanent else ""
        return f"LensHandle({self.point.name!r}, {self.dir}, {_describe(self.user_hook)}, level={self.context_level}{extra})"


HookHandle = LensHandle  # the name grokmath used before


class HookPoint:
    """Identity on an activation, with optional forward and backward hooks.

    `copy_on_hook`: the activation may share storage with a weight or with another activation
    (pos_embed's rows of W_pos, the per-head copies of the residual stream), so every hook,
    caching ones included, gets a copy of it.
    """

    def __init__(self, name: str | None = None, copy_on_hook: bool = False):
        self.name = name
        self.copy_on_hook = copy_on_hook
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict = {}  # for hooks to keep state between calls; cleared by reset_hooks()
        self._copy = False  # whether forward hooks get a copy of the activation

    def give_name(self, name: str):
        self.name = name

    def add_hook(self, hook: Callable, dir: str = "fwd", is_permanent: bool = False, level: int | None = None,
                 prepend: bool = False, *, _by_filter: bool = False) -> LensHandle:
        """Attach `hook` (forward 'fwd' or backward 'bwd'); `prepend` runs it before the others."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"invalid hook direction {dir!r} for {self.name}: use 'fwd' or 'bwd'")
        if not callable(hook):
            raise TypeError(f"hook for {self.name} is a {type(hook).__name__}, not a function: "
                            "pass fn(activation, hook) -> None or a replacement tensor")
        by_filter = _by_filter or getattr(hook, "_by_filter", False)
        handle = LensHandle(self, hook, dir, is_permanent, level, by_filter)
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        hooks.insert(0, handle) if prepend else hooks.append(handle)
        self._update()
        return handle

    def add_perma_hook(self, hook: Callable, dir: str = "fwd") -> LensHandle:
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False, level: int | None = None):
        """Remove this point's hooks in `dir` ('fwd', 'bwd' or 'both'): all but the permanent ones
        (all of them with including_permanent), only those of context `level` if given."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"invalid hook direction {dir!r} for {self.name}: use 'fwd', 'bwd' or 'both'")

        def goes(h):
            return including_permanent or (not h.is_permanent and (level is None or h.context_level == level))

        hooks = (self.fwd_hooks if dir != "bwd" else []) + (self.bwd_hooks if dir != "fwd" else [])
        self._detach([h for h in hooks if goes(h)])

    def _detach(self, handles: list[LensHandle]):
        for h in handles:
            h.active = False  # a backward hook whose graph outlives it stays silent
        self.fwd_hooks = [h for h in self.fwd_hooks if h.active]
        self.bwd_hooks = [h for h in self.bwd_hooks if h.active]
        self._update()

    def _update(self):
        self._copy = bool(self.fwd_hooks) and (self.copy_on_hook or not all(h.reads_only for h in self.fwd_hooks))

    def has_hooks(self, dir: str = "both", including_permanent: bool = True, level: int | None = None) -> bool:
        if dir == "both" and including_permanent and level is None:  # the fast call components make
            return bool(self.fwd_hooks or self.bwd_hooks)
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"invalid hook direction {dir!r}: use 'fwd', 'bwd' or 'both'")
        hooks = (self.fwd_hooks if dir != "bwd" else []) + (self.bwd_hooks if dir != "fwd" else [])
        return any((including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
                   for h in hooks)

    def requested(self) -> bool:
        """Whether a hook was attached to this point by its name (not through a name filter):
        optional activations (attn.hook_result, hook_q_input, ...) are computed when it is."""
        if not (self.fwd_hooks or self.bwd_hooks):
            return False
        return not all(h.by_filter for h in self.fwd_hooks + self.bwd_hooks)

    def clear_context(self):
        self.ctx = {}

    def layer(self) -> int:
        """The block index of a hook point named blocks.L...."""
        parts = (self.name or "").split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"hook point {self.name!r} is not inside a block: layer() needs a name 'blocks.L....'")
        return int(parts[1])

    def _call(self, handle: LensHandle, x, backward: bool):
        fn, style = handle.user_hook, handle.style
        if style == "hook":
            return fn(x, hook=self)
        if style == "plain":
            return fn(x)
        x = (x,) if backward else x  # the seed notebooks' backward hooks read grad_output[0]
        return fn(x, name=self.name) if style == "name" else fn(x, self.name)

    def _checked(self, out, x, handle: LensHandle, what: str):
        if isinstance(out, tuple) and len(out) == 1 and what == "gradient":
            out = out[0]  # TransformerLens's backward hooks may return (grad,)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"hook {_describe(handle.user_hook)} on {self.name} returned a {type(out).__name__}: "
                            f"return None or a {what} tensor of shape {tuple(x.shape)}")
        if out.shape != x.shape:
            raise ValueError(f"hook {_describe(handle.user_hook)} on {self.name} returned shape {tuple(out.shape)}: "
                             f"the {what} here has shape {tuple(x.shape)}; return None or a tensor of that shape")
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fwd_hooks or self.bwd_hooks):
            return x
        if self.fwd_hooks:
            if self._copy:  # hooks may edit in place: give them storage nothing else uses
                x = x.clone()
            for handle in list(self.fwd_hooks):
                out = self._call(handle, x, backward=False)
                if out is not None:
                    x = self._checked(out, x, handle, "activation")
        if self.bwd_hooks and x.requires_grad:
            x = x.view_as(x)  # a fresh node, so the gradient seen is this hook point's own
            handles = list(self.bwd_hooks)

            def backward_hook(grad):
                for handle in handles:
                    if handle.active:  # removed hooks stay silent even if the graph outlives them
                        out = self._call(handle, grad, backward=True)
                        if out is not None:
                            grad = self._checked(out, grad, handle, "gradient")
                return grad

            x.register_hook(backward_hook)
        return x

    def __repr__(self):
        bits = [f"name={self.name!r}"] if self.name is not None else []
        bits += [f"{len(self.fwd_hooks)} fwd"] if self.fwd_hooks else []
        bits += [f"{len(self.bwd_hooks)} bwd"] if self.bwd_hooks else []
        return f"HookPoint({', '.join(bits)})"

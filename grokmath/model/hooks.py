"""The model-level hook API: `HookedRootModule`, the part of the model that finds, runs and
removes hooks by name (the hook points themselves are hook_point.py's), with TransformerLens's
API: `add_hook`, `add_perma_hook`, `reset_hooks`, `remove_all_hook_fns`, `hooks(...)` (a context
manager), `run_with_hooks`, `run_with_cache`, `list_hooks`, `hook_dict`, `mod_dict`; plus the seed
notebooks' `hook_points`, `remove_all_hooks`, `cache_all`. Hooks added by `hooks(...)` and the
`run_*` functions carry a context level and are removed in a `finally`, so an exception in the
forward, a hook or the backward leaves none behind; permanent hooks survive every reset that does
not say `including_permanent=True`.

`run_with_cache` returns an `ActivationCache` (activation_cache.py); `hook_points_bypassed` swaps
every hook point for a bare identity, to time what the hook points cost.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .activation_cache import ActivationCache
from .hook_point import HookHandle, HookPoint, LensHandle  # noqa: F401 (HookHandle re-exported)
from .utils import ALIASES, _SHORT_NAMES, act_name, canonical_name  # noqa: F401 (re-exported)

NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


def make_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        target = canonical_name(names_filter)
        return lambda name: name == target
    if callable(names_filter):
        return names_filter
    if not isinstance(names_filter, Iterable):
        raise ValueError(f"names_filter {names_filter!r}: use a hook name, a list of names or a function name -> bool")
    wanted = {canonical_name(n) for n in names_filter}
    return lambda name: name in wanted


def _pos_index(pos_slice):
    """TransformerLens's pos_slice: an int keeps that position (as a length-1 axis), a tuple is
    slice(*tuple), a list/array/tensor picks positions; a Slice-like object is used as it is."""
    if pos_slice is None or hasattr(pos_slice, "apply"):
        return pos_slice
    if isinstance(pos_slice, bool):
        raise ValueError(f"pos_slice={pos_slice!r}: use an int, a (start, stop[, step]) tuple or a list of positions")
    if isinstance(pos_slice, int):
        return [pos_slice]
    if isinstance(pos_slice, tuple):
        return slice(*pos_slice)
    if isinstance(pos_slice, slice):
        return pos_slice
    return torch.as_tensor(pos_slice).long()


# Hook points whose position axis is third from last ([batch, pos, head, d]); elsewhere second.
_HEAD_AXIS_POINTS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result",
                     "hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in")


class HookedRootModule(nn.Module):
    """Mixin for the root model: call `setup_hooks()` at the end of __init__."""

    def setup_hooks(self):
        self.hook_dict: dict[str, HookPoint] = {}
        self.mod_dict: dict = {}  # every submodule and hook point by name, as TransformerLens has it
        for module_name, module in self.named_modules():
            if module_name:
                self.mod_dict[module_name] = module
            for attr, value in vars(module).items():
                if isinstance(value, HookPoint):
                    name = f"{module_name}.{attr}" if module_name else attr
                    value.give_name(name)
                    self.hook_dict[name] = value
        self.mod_dict.update(self.hook_dict)
        self.context_level = 0
        self.is_caching = False

    setup = setup_hooks  # TransformerLens's name

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def get_hook_point(self, name: str) -> HookPoint:
        full = canonical_name(name)
        if full not in self.hook_dict:
            raise KeyError(f"no hook point {name!r}: list them with model.hook_dict.keys()")
        return self.hook_dict[full]

    def _points(self, name_or_filter) -> list[tuple[HookPoint, bool]]:
        """(hook point, attached through a filter) for a name, a list of names or a filter function."""
        if isinstance(name_or_filter, str):
            return [(self.get_hook_point(name_or_filter), False)]
        if callable(name_or_filter):
            return [(hp, True) for name, hp in self.hook_dict.items() if name_or_filter(name)]
        if isinstance(name_or_filter, Iterable):
            return [(self.get_hook_point(name), False) for name in name_or_filter]
        raise TypeError(f"{name_or_filter!r} names no hook point: use a hook name, a list of names "
                        "or a function name -> bool")

    # Adding and removing hooks, as TransformerLens's HookedRootModule does.
    def add_hook(self, name, hook: Callable, dir: str = "fwd", is_permanent: bool = False,
                 level: int | None = None, prepend: bool = False):
        """Attach `hook` to the hook point `name` (or to every point a filter function accepts)."""
        for hp, by_filter in self._points(name):
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend, _by_filter=by_filter)

    def add_perma_hook(self, name, hook: Callable, dir: str = "fwd"):
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def check_hooks_to_add(self, hook_point, hook_point_name: str, hook: Callable, dir: str = "fwd",
                           is_permanent: bool = False, prepend: bool = False) -> None:
        """TransformerLens's extension point: override to refuse hooks; it accepts all."""

    def check_and_add_hook(self, hook_point, hook_point_name: str, hook: Callable, dir: str = "fwd",
                           is_permanent: bool = False, level: int | None = None, prepend: bool = False) -> None:
        """TransformerLens's: run check_hooks_to_add, then attach `hook` to `hook_point`."""
        self.check_hooks_to_add(hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent,
                                prepend=prepend)
        hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def remove_all_hook_fns(self, direction: str = "both", including_permanent: bool = False, level: int | None = None):
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self):
        for hp in self.hook_dict.values():
            hp.clear_context()

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False,
                    level: int | None = None):
        """Remove hooks (not the permanent ones unless including_permanent) and clear hook contexts."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)
        self.is_caching = False

    def remove_all_hooks(self, dir: str = "both"):
        """The seed notebooks' API: remove every hook, permanent ones included."""
        self.remove_all_hook_fns(dir, including_permanent=True)

    def list_hooks(self, name_filter: NamesFilter = None, dir: str = "both",
                   including_permanent: bool = True) -> dict[str, list[LensHandle]]:
        """Attached hooks by hook point name (points with none are left out), as TransformerLens's."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"invalid hook direction {dir!r}: use 'fwd', 'bwd' or 'both'")
        keep = make_filter(name_filter)
        out = {}
        for name, hp in self.hook_dict.items():
            if keep(name):
                handles = (hp.fwd_hooks if dir != "bwd" else []) + (hp.bwd_hooks if dir != "fwd" else [])
                handles = [h for h in handles if including_permanent or not h.is_permanent]
                if handles:
                    out[name] = handles
        return out

    def hook_counts(self) -> dict[str, dict[str, int]]:
        """Hook points with something attached: {name: {'fwd': n, 'bwd': n}}."""
        return {hp.name: {"fwd": len(hp.fwd_hooks), "bwd": len(hp.bwd_hooks)}
                for hp in self.hook_dict.values() if hp.has_hooks()}

    # Temporary hooks
    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Attach hooks for the duration of a `with` block. On exit (error or not) every hook of
        this block's context level is removed, unless reset_hooks_end=False."""
        self.context_level += 1
        level = self.context_level
        try:
            for hook_list, direction in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for name_or_filter, fn in _pairs(hook_list, f"{direction}_hooks"):
                    for hp, by_filter in self._points(name_or_filter):
                        hp.add_hook(fn, direction, level=level, _by_filter=by_filter)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=level)
            self.context_level -= 1

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **model_kwargs):
        """Forward with temporary hooks. Backward hooks fire only in a backward run while they are
        attached: pass reset_hooks_end=False (then call model.reset_hooks() yourself), or run the
        backward inside `with model.hooks(...)`."""
        if bwd_hooks and reset_hooks_end:
            warnings.warn("run_with_hooks removes its backward hooks before any backward pass can run them: "
                          "pass reset_hooks_end=False or use `with model.hooks(bwd_hooks=...)`", stacklevel=2)
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    # Caching
    def get_caching_hooks(self, names_filter: NamesFilter = None, incl_bwd: bool = False, device=None,
                          remove_batch_dim: bool = False, cache: dict | None = None, pos_slice=None):
        """(cache, fwd_hooks, bwd_hooks): hooks that store activations (and with incl_bwd their
        gradients, as name + '_grad') into `cache`; they are not attached."""
        cache = {} if cache is None else cache
        index = _pos_index(pos_slice)
        by_name = names_filter is not None and not callable(names_filter)
        if by_name and isinstance(names_filter, Iterable) and not isinstance(names_filter, str):
            names_filter = list(names_filter)  # (an iterator would be spent by the first look)
        keep = make_filter(names_filter)  # names the model lacks are skipped, as in TransformerLens

        def save(tensor, hook, is_backward=False):
            name = hook.name + "_grad" if is_backward else hook.name
            tensor = tensor.detach() if device is None else tensor.detach().to(device)
            if remove_batch_dim:
                if tensor.shape[0] != 1:
                    raise ValueError(f"remove_batch_dim=True needs a batch of one, but {name} has batch "
                                     f"{tensor.shape[0]}: run one example, or index the cache afterwards")
                tensor = tensor[0]
            pos_dim = -3 if hook.name.endswith(_HEAD_AXIS_POINTS) else -2
            if index is not None and tensor.dim() >= -pos_dim:
                if hasattr(index, "apply"):
                    tensor = index.apply(tensor, dim=pos_dim)
                else:
                    tensor = tensor[(slice(None),) * (tensor.dim() + pos_dim) + (index,)]
            cache[name] = tensor

        fwd, bwd = [], []
        for name in self.hook_dict:
            if keep(name):
                fwd.append((name, _caching(partial(save), by_filter=not by_name)))
                if incl_bwd:
                    bwd.append((name, _caching(partial(save, is_backward=True), by_filter=not by_name)))
        self.is_caching = True
        return cache, fwd, bwd

    def add_caching_hooks(self, names_filter: NamesFilter = None, incl_bwd: bool = False, device=None,
                          remove_batch_dim: bool = False, cache: dict | None = None) -> dict:
        """Attach caching hooks (until reset_hooks()) and return the dict they fill."""
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for (name, fn), direction in [(pair, "fwd") for pair in fwd] + [(pair, "bwd") for pair in bwd]:
            self.hook_dict[name].add_hook(fn, direction)
        return cache

    def run_with_cache(self, *model_args, names_filter: NamesFilter = None, device=None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False, reset_hooks_end: bool = True,
                       clear_contexts: bool = False, pos_slice=None, return_cache_object: bool = True,
                       loss_fn: Callable | None = None, **model_kwargs):
        """Run the model and return (output, cache of activations), as TransformerLens's.

        As there, the forward runs in the caller's grad mode, so the output keeps its graph unless
        under torch.no_grad(); cached tensors are detached. With incl_bwd, the backward runs from
        `loss_fn(logits)` if given (grokmath's: any function from logits to a scalar), else from the
        output itself (return_type='loss'), and gradients are cached as name + '_grad'.
        """
        if loss_fn is not None and not incl_bwd:
            raise ValueError("loss_fn is only used with incl_bwd=True (it gives the scalar to differentiate)")
        if incl_bwd and not torch.is_grad_enabled():
            raise ValueError("run_with_cache(incl_bwd=True) needs gradients: call it outside torch.no_grad()")
        cache_dict, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim,
                                                      pos_slice=pos_slice)
        with self.hooks(fwd, bwd, reset_hooks_end, clear_contexts):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                _scalar_to_differentiate(out, loss_fn).backward()
        cache = ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim) if return_cache_object else cache_dict
        return out, cache

    def cache_all(self, cache: dict, incl_bwd: bool = False, device=None, remove_batch_dim: bool = False):
        """The seed notebooks' API: cache every activation into `cache` until remove_all_hooks().

        Aliased points are stored under both names (e.g. attn.hook_pattern and attn.hook_attn).
        """
        def names(hook):
            yield hook.name
            head, _, last = hook.name.rpartition(".")
            for alias, target in ALIASES.items():
                if last == target:
                    yield f"{head}.{alias}"

        def store(tensor, hook, suffix=""):
            tensor = tensor.detach() if device is None else tensor.detach().to(device)
            for name in names(hook):
                cache[name + suffix] = tensor[0] if remove_batch_dim else tensor

        for hp in self.hook_dict.values():
            hp.add_hook(_caching(partial(store), by_filter=True), "fwd")
            if incl_bwd:
                hp.add_hook(_caching(partial(store, suffix="_grad"), by_filter=True), "bwd")
        self.is_caching = True

    def cache_some(self, cache: dict, names: Callable[[str], bool], incl_bwd: bool = False, device=None,
                   remove_batch_dim: bool = False):
        """TransformerLens's older API: cache the activations `names` accepts until reset_hooks()."""
        self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)


def _caching(fn: partial, by_filter: bool) -> partial:
    """Mark a caching hook: it only reads (so it needs no copy of the activation), and whether it
    was attached through a filter (so that optional activations stay off for it)."""
    fn._reads_only, fn._by_filter = True, by_filter
    return fn


def _pairs(hook_list, arg: str):
    """The (name or filter, function) pairs of fwd_hooks / bwd_hooks, refusing other shapes."""
    if isinstance(hook_list, tuple) and len(hook_list) == 2 and callable(hook_list[1]):
        raise TypeError(f"{arg} is one (name, hook) pair: pass a list of pairs, {arg}=[(name, hook)]")
    pairs = list(hook_list)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
            raise TypeError(f"{arg} entry {pair!r} is not a (name or filter, hook function) pair")
    return pairs


def _scalar_to_differentiate(out, loss_fn):
    if loss_fn is not None:
        target = loss_fn(out.logits if hasattr(out, "logits") else out)
    else:
        target = out.loss if hasattr(out, "loss") else out
    if not (isinstance(target, torch.Tensor) and target.numel() == 1 and target.requires_grad):
        raise ValueError("run_with_cache(incl_bwd=True) needs a scalar to differentiate: pass loss_fn "
                         "(a function from logits to a scalar loss) or return_type='loss'")
    return target


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


_identity.has_hooks = lambda: False  # components ask these of their hook points
_identity.requested = lambda: False

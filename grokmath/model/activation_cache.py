"""The activations of one forward pass, with TransformerLens's analysis helpers.

`ActivationCache(cache_dict, model, has_batch_dim=True)` is what `model.run_with_cache` returns.
It is looked up like TransformerLens's: by full hook name, by its shorthands (`cache['k', -1]`,
`cache['embed']`, `cache['scale', 1, 'ln1']`, `cache['scale1ln1']`, see `utils.get_act_name`),
by grokmath's older shorthands (`cache['scores', 0]`) and by the seed notebooks' aliases
(`attn.hook_attn`, `attn.hook_attn_pre`). Negative layers count from the end.

The residual-stream helpers (`accumulated_resid`, `decompose_resid`, `stack_head_results`,
`stack_neuron_results`, `get_full_resid_decomposition`, `apply_ln_to_stack`, `logit_attrs`) are
`ResidDecomposition`'s (resid_decomposition.py), which this class inherits.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch

from .resid_decomposition import ResidDecomposition
from .utils import ShapeError, Slice, act_name, canonical_name, get_act_name

log = logging.getLogger(__name__)


class ActivationCache(ResidDecomposition):
    def __init__(self, cache_dict: dict, model, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # ---- lookup ----------------------------------------------------------------------------------

    def _candidates(self, key) -> list[str]:
        """Full names `key` may stand for, most specific first."""
        if isinstance(key, str):
            return [key, canonical_name(key), get_act_name(key)]
        if isinstance(key, tuple) and key and isinstance(key[0], str):
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
            names = [get_act_name(*key)]
            try:
                names.append(act_name(*key))
            except (KeyError, TypeError):
                pass
            return names
        raise KeyError(f"cache keys are hook names or (name, layer[, sublayer]) tuples, not {key!r}")

    def _find(self, key) -> str | None:
        return next((n for n in self._candidates(key) if n in self.cache_dict), None)

    def __getitem__(self, key) -> torch.Tensor:
        name = self._find(key)
        if name is None:
            wanted = self._candidates(key)[-1 if isinstance(key, str) else 0]
            hint = ("per-head results are not cached by default: call cache.compute_head_results() or "
                    "model.set_use_attn_result(True) before run_with_cache" if wanted.endswith("attn.hook_result")
                    else f"cached names are e.g. {list(self.cache_dict)[:6]}")
            raise KeyError(f"{key!r} ({wanted}) is not in the cache: {hint}")
        return self.cache_dict[name]

    def __contains__(self, key) -> bool:
        try:
            return self._find(key) is not None
        except KeyError:
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self):
        return iter(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        width = max((len(k) for k in self.cache_dict), default=0)
        lines = [f"  {k:<{width}}  {list(v.shape)}" for k, v in self.cache_dict.items()]
        head = f"ActivationCache: {len(self.cache_dict)} activations, has_batch_dim={self.has_batch_dim}"
        return "\n".join([head] + lines)

    def to(self, device) -> "ActivationCache":
        """Move every activation to `device` (in place, as TransformerLens); returns the cache."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        return self

    def toggle_autodiff(self, mode: bool = False):
        """torch.set_grad_enabled(mode) for the whole process, as TransformerLens's (global state!)."""
        log.warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

    # ---- the batch dimension ---------------------------------------------------------------------

    def _batch_size(self) -> int:
        counts = Counter(v.shape[0] for v in self.cache_dict.values() if v.ndim > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch dimension of a one-example cache (in place); returns the cache."""
        if not self.has_batch_dim:
            log.warning("Tried removing batch dimension after already having removed it.")
            return self
        batch = self._batch_size()
        if batch != 1:
            raise ShapeError(f"cannot remove the batch dimension of a cache with batch size {batch}: "
                             "take one example with cache.apply_slice_to_batch_dim(i)")
        for k, v in self.cache_dict.items():
            if v.ndim > 0 and v.shape[0] == 1:
                self.cache_dict[k] = v[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> "ActivationCache":
        """A new cache of the chosen examples; an int slice drops the batch dimension."""
        batch_slice = Slice(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise ShapeError("this cache has no batch dimension to slice")
        batch = self._batch_size()
        sliced = {k: batch_slice.apply(v, 0) if v.ndim > 0 and v.shape[0] == batch else v
                  for k, v in self.cache_dict.items()}
        return ActivationCache(sliced, self.model, has_batch_dim=self.has_batch_dim and batch_slice.mode != "int")

"""Names and slices shared by the hooks, the cache and the analysis code.

`get_act_name` is TransformerLens's: a shorthand ('k', 6), ('scale', 1, 'ln1'), 'scale1ln1',
'embed', 'pattern', 'normalized' (the final LayerNorm) -> the full hook name, with its aliases
('attn' is the pattern, 'attn_logits' the scores, 'key' / 'query' / 'value', 'a' / 'm' for the
sublayer). A full name passes through unchanged. `act_name` is grokmath's older helper (kept for
its callers: it also knows 'scores' and 'attn_scores'); `canonical_name` maps the seed notebooks'
`attn.hook_attn` / `attn.hook_attn_pre` to the pattern and the scores.

`Slice` is TransformerLens's small slicing object for one dimension: an int (the dimension goes),
a tuple (start, stop[, step]) or a `slice`, a list / tensor / array of indices, or None (all).
"""
from __future__ import annotations

import re

import numpy as np
import torch

# Names used by the seed notebooks for two attention hook points.
ALIASES = {"hook_attn": "hook_pattern", "hook_attn_pre": "hook_attn_scores"}

# Short names accepted by cache[short, layer] in grokmath's own act_name.
_SHORT_NAMES = {
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "result": "attn.hook_result", "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores", "scores": "attn.hook_attn_scores",
    "pre": "mlp.hook_pre", "post": "mlp.hook_post",
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
}


def canonical_name(name: str) -> str:
    """Map the seed notebooks' alias names (attn.hook_attn, attn.hook_attn_pre) to ours."""
    head, _, last = name.rpartition(".")
    if last in ALIASES:
        return f"{head}.{ALIASES[last]}" if head else ALIASES[last]
    if last.endswith("_grad") and last[: -len("_grad")] in ALIASES:
        base = ALIASES[last[: -len("_grad")]]
        return f"{head}.{base}_grad" if head else f"{base}_grad"
    return name


def act_name(short: str, layer: int | None = None, ln: str | None = None) -> str:
    """Full hook name from a short one: act_name('pattern', 0) -> 'blocks.0.attn.hook_pattern'."""
    if short in ("embed", "pos_embed"):
        return f"hook_{short}"
    if short in ("scale", "normalized"):
        if layer is None:
            return f"ln_final.hook_{short}"
        return f"blocks.{layer}.{ln or 'ln1'}.hook_{short}"
    if short not in _SHORT_NAMES:
        raise KeyError(f"unknown activation {short!r}: use one of {sorted(_SHORT_NAMES)} or a full hook name")
    if layer is None:
        raise KeyError(f"activation {short!r} needs a layer: cache[{short!r}, 0]")
    return f"blocks.{layer}.{_SHORT_NAMES[short]}"


# TransformerLens's aliases, for the activation and for the sublayer.
_TL_ACT_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
                   "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_TL_SUBLAYER_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN_ACTS = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_MLP_ACTS = ("pre", "post", "mid", "pre_linear")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's shorthand -> full hook name.

    get_act_name('k', 6) == 'blocks.6.attn.hook_k'; get_act_name('scale', 1, 'ln1') ==
    'blocks.1.ln1.hook_scale'; get_act_name('scale4ln1') == 'blocks.4.ln1.hook_scale';
    get_act_name('embed') == 'hook_embed'; get_act_name('normalized') == 'ln_final.hook_normalized'.
    The first run of digits in `name` is the layer and what follows it the sublayer type.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name  # already a full name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.groups(0)
    name = _TL_ACT_ALIASES.get(name, name)
    full = "" if layer is None else f"blocks.{layer}."
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type in _TL_SUBLAYER_ALIASES:
        layer_type = _TL_SUBLAYER_ALIASES[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"  # the LayerNorm statistics without a layer are the final LayerNorm's
    return full


class Slice:
    """One dimension's slice, as TransformerLens's `Slice`.

    Slice(3): index 3, the dimension goes. Slice((1, 5)) / Slice((1, 5, 2)) / Slice(slice(1, 5)):
    a range. Slice([0, 4]) or a tensor / array of indices: those entries. Slice(None): everything.
    `.apply(tensor, dim)` applies it; `.mode` is 'int', 'slice', 'array' or 'identity'.
    """

    def __init__(self, input_slice=None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (int, np.integer)) and not isinstance(input_slice, bool):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, (list, torch.Tensor, np.ndarray)):
            is_tensor = isinstance(input_slice, torch.Tensor)
            array = input_slice.detach().cpu().numpy() if is_tensor else np.asarray(input_slice)
            if array.ndim == 0:
                self.slice, self.mode = int(array), "int"
            else:
                self.slice, self.mode = array, "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"cannot slice with {input_slice!r}: use an int, a (start, stop[, step]) tuple, "
                             "a list or tensor of indices, or None")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        index = [slice(None)] * tensor.ndim
        index[dim] = torch.as_tensor(self.slice, device=tensor.device) if self.mode == "array" else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices this slice keeps of an axis of length max_ctx (an int slice: [that index])."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("Slice.indices needs max_ctx unless the slice is a single int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input) -> "Slice":
        """A Slice that never drops the dimension: an int n becomes [n]."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, (int, np.integer)) and not isinstance(slice_input, bool):
            slice_input = [int(slice_input)]
        return cls(slice_input)

    def __repr__(self):
        return f"Slice({self.slice!r}, mode={self.mode!r})"


class ShapeError(ValueError, AssertionError):
    """A request the model or cache cannot meet (a non-square BA, a batch of 8 to squeeze, ...).

    A ValueError, and also an AssertionError because TransformerLens asserts in these places, so
    code written against it (`pytest.raises(AssertionError)`) behaves the same here.
    """


def get_corner(tensor, n: int = 3):
    """The first n entries along every dimension (a FactoredMatrix or a tensor), for a quick look."""
    if hasattr(tensor, "get_corner"):  # a FactoredMatrix (which imports this module)
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    """Swap the last two dimensions."""
    return tensor.transpose(-1, -2)

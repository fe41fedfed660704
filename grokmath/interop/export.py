"""A model's weights (and an SAE's) as safetensors: the format SAELens, Hugging Face and
TransformerLens 4 read, with no pickled code in it.

`save_model_safetensors(model, path)` writes the weights under grokmath's (= TransformerLens's)
parameter names, the model's config as JSON in the file's metadata (`grokmath_config`);
`layout="tlens"` writes the state dict a HookedTransformer of `to_tlens_config(model)` loads (its
always-present biases as zeros; its mask buffers left out, as they are rebuilt);
`load_model_safetensors(path)` builds the grokmath Transformer back. `safetensors` is imported
only when a file is written or read.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..store.files import atomic_write

LAYOUTS = ("grokmath", "tlens")


def _safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:  # a core dependency (setup.py); an environment may still lack it
        raise ValueError("safetensors is not installed: pip install safetensors") from None
    return safetensors.torch


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """safetensors.torch.save, written whole or not at all."""
    data = _safetensors_torch().save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    atomic_write(Path(path), lambda f: f.write(data))


def load_safetensors(path) -> dict:
    """The tensors of a .safetensors file (CPU); a missing or damaged file is one ValueError."""
    try:
        return _safetensors_torch().load(Path(path).read_bytes())
    except Exception as e:  # OSError, or safetensors's own error types
        if isinstance(e, ValueError) and "not installed" in str(e):
            raise
        raise ValueError(f"cannot read {path} as safetensors: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") \
            from None


def save_model_safetensors(model, path, layout: str = "grokmath") -> Path:
    """Write `model`'s weights to `path` (.safetensors) in `layout` ('grokmath' or 'tlens')."""
    from .state_dicts import to_tlens_config, to_tlens_state_dict

    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {LAYOUTS}")
    metadata = {"format": layout, "grokmath_config": json.dumps(model.cfg.to_dict())}
    if layout == "tlens":
        state = {k: v for k, v in to_tlens_state_dict(model).items() if not k.endswith(("attn.mask", "attn.IGNORE"))}
        metadata["tlens_config"] = json.dumps(to_tlens_config(model))
    else:
        state = model.state_dict()
    atomic_save_safetensors(state, path, metadata)
    return Path(path)


def load_model_safetensors(path, device="cpu"):
    """The grokmath Transformer saved by save_model_safetensors (either layout)."""
    from ..config import ModelConfig
    from .state_dicts import config_from_tlens
    from ..model.transformer import Transformer

    state = load_safetensors(path)  # refuses a missing or damaged file in one line
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "grokmath_config" not in metadata:
        raise ValueError(f"{path} has no grokmath_config in its metadata: it was not written by save_model_safetensors")
    if metadata.get("format") == "tlens":
        model = Transformer(config_from_tlens(json.loads(metadata["tlens_config"])))
    else:
        model = Transformer(ModelConfig.from_dict(json.loads(metadata["grokmath_config"])))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device)

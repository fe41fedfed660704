"""grokmath <-> TransformerLens 4's `TransformerBridge`, one call each way (TransformerLens 4 is an
optional dependency, imported only here and only when called).

`to_transformer_bridge(model)` builds a TL-native bridge (`TransformerBridge.boot_native`) with the
model's config (`interop.to_tlens_config`) and loads its weights through TransformerLens's own
`convert_tl_checkpoint` (the 3.x state dict, `interop.to_tlens_state_dict`), strictly.
`from_transformer_bridge(bridge)` goes back: the bridge's `state_dict()` (nn.Linear layout:
`blocks.L.attn.q.weight` [n_heads * d_head, d_model], `mlp.in.weight` [d_mlp, d_model],
`unembed.weight` [d_vocab_out, d_model], ...) is rearranged into TransformerLens 3.x's per-head
layout by `bridge_to_tlens_state_dict` (no TransformerLens import) and loaded with
`interop.load_tlens_state_dict`. Bridges of architectures grokmath lacks (gated MLPs, grouped-query
attention, rotary positions, a bridge around a Hugging Face model) are refused in one line.
"""
from __future__ import annotations

import einops

from .state_dicts import load_tlens_state_dict, to_tlens_config, to_tlens_state_dict

CONFIG_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "act_fn", "normalization_type", "d_vocab",
                 "d_vocab_out", "n_ctx", "attn_only", "eps", "seed", "positional_embedding_type")


def _tl4():
    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    except ImportError as e:
        raise ValueError(f"TransformerLens 4 is not installed ({e}): pip install 'transformer-lens>=4.3'") from None
    return TransformerBridgeConfig, TransformerBridge, convert_tl_checkpoint


def to_transformer_bridge(model, device=None):
    """A TransformerLens 4 TransformerBridge computing what `model` computes."""
    TransformerBridgeConfig, TransformerBridge, convert_tl_checkpoint = _tl4()
    tl_config = to_tlens_config(model)
    cfg = TransformerBridgeConfig.from_dict(tl_config)
    for field in ("d_mlp", "d_vocab_out", "d_head", "eps"):  # what from_dict may not carry over
        if getattr(cfg, field, None) != tl_config[field] and tl_config[field] is not None:
            setattr(cfg, field, tl_config[field])
    bridge = TransformerBridge.boot_native(cfg, device=device)
    bridge.load_state_dict(convert_tl_checkpoint(to_tlens_state_dict(model), cfg), strict=True)
    return bridge


def from_transformer_bridge(bridge):
    """A grokmath Transformer with a TL-native TransformerBridge's config and weights."""
    cfg = bridge.cfg
    for flag in ("gated_mlp", "use_normalization_before_and_after", "final_rms", "parallel_attn_mlp"):
        if getattr(cfg, flag, False):
            raise ValueError(f"TransformerBridge config {flag}=True is not supported by grokmath")
    tl_config = {field: getattr(cfg, field) for field in CONFIG_FIELDS if hasattr(cfg, field)}
    kv_heads = getattr(cfg, "n_key_value_heads", None)
    if kv_heads is not None:
        tl_config["n_key_value_heads"] = kv_heads  # config_from_tlens refuses grouped-query attention
    state = bridge_to_tlens_state_dict(bridge.state_dict(), tl_config)
    return load_tlens_state_dict(state, tl_config)


def bridge_to_tlens_state_dict(state_dict: dict, tl_config: dict) -> dict:
    """A TL-native bridge's state dict -> TransformerLens 3.x's (the inverse of convert_tl_checkpoint)."""
    h = tl_config["n_heads"]
    per_head = lambda t: einops.rearrange(t, "(h e) d -> h d e", h=h)  # noqa: E731  Linear -> [h, d_model, d_head]
    rules = [  # (bridge suffix, TransformerLens suffix, tensor change), most specific first
        (".attn.q.weight", ".attn.W_Q", per_head), (".attn.k.weight", ".attn.W_K", per_head),
        (".attn.v.weight", ".attn.W_V", per_head),
        (".attn.o.weight", ".attn.W_O", lambda t: einops.rearrange(t, "d (h e) -> h e d", h=h)),
        (".attn.q.bias", ".attn.b_Q", lambda t: t.reshape(h, -1)), (".attn.k.bias", ".attn.b_K", lambda t: t.reshape(h, -1)),
        (".attn.v.bias", ".attn.b_V", lambda t: t.reshape(h, -1)), (".attn.o.bias", ".attn.b_O", None),
        (".mlp.in.weight", ".mlp.W_in", lambda t: t.T), (".mlp.in.bias", ".mlp.b_in", None),
        (".mlp.out.weight", ".mlp.W_out", lambda t: t.T), (".mlp.out.bias", ".mlp.b_out", None),
        ("unembed.weight", "unembed.W_U", lambda t: t.T), ("unembed.bias", "unembed.b_U", None),
        ("pos_embed.weight", "pos_embed.W_pos", None), ("embed.weight", "embed.W_E", None),
    ] + [(f"{ln}.{part}", f"{ln}.{part[0]}", None) for ln in (".ln1", ".ln2", "ln_final") for part in ("weight", "bias")]
    out = {}
    for key, tensor in state_dict.items():
        for old, new, change in rules:
            if key.endswith(old) and (old.startswith(".") or key == old):
                out[key[: -len(old)] + new] = (change(tensor) if change else tensor).detach().clone().contiguous()
                break
        else:
            raise ValueError(f"TransformerBridge weight {key!r} has no grokmath counterpart: only TL-native bridges "
                             "of grokmath's architecture convert (boot_native, as to_transformer_bridge makes them)")
    return out

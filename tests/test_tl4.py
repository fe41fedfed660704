"""grokmath <-> TransformerLens 4's TransformerBridge. With TransformerLens 4 installed: one call each
way, the bridge's logits and cache against the grokmath model's, and back exactly. Without it
(CI): the bridge layout (nn.Linear weights) built from its definition (F.linear reproduces the
model's own hook_q / hook_mlp pre-activations / logits) converts back to the same model."""
import pytest
import torch
import torch.nn.functional as F

from grokmath import ModelConfig, Transformer
from grokmath.interop.state_dicts import to_tlens_config
from grokmath.interop.tl4 import bridge_to_tlens_state_dict

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=9, d_vocab_out=7, n_ctx=5, d_mlp=24,
                  normalization="LN", attn_bias=True, unembed_bias=True, seed=2)
TOKENS = torch.randint(0, 9, (2, 5), generator=torch.Generator().manual_seed(0))


def linear_layout(model):
    """The bridge's nn.Linear layout, written from its definition: F.linear(x, weight, bias)."""
    sd = {"embed.weight": model.W_E, "pos_embed.weight": model.W_pos, "unembed.weight": model.W_U.T,
          "unembed.bias": model.b_U, "ln_final.weight": model.ln_final.w, "ln_final.bias": model.ln_final.b}
    for L, block in enumerate(model.blocks):
        a, p = block.attn, f"blocks.{L}."
        for name in "QKV":  # output unit i * d_head + e is head i, dimension e
            sd[p + f"attn.{name.lower()}.weight"] = torch.cat([getattr(a, f"W_{name}")[i].T for i in range(2)])
            sd[p + f"attn.{name.lower()}.bias"] = getattr(a, f"b_{name}").flatten()
        sd[p + "attn.o.weight"] = torch.cat([a.W_O[i] for i in range(2)]).T
        sd[p + "attn.o.bias"] = a.b_O
        sd[p + "mlp.in.weight"], sd[p + "mlp.in.bias"] = block.mlp.W_in.T, block.mlp.b_in
        sd[p + "mlp.out.weight"], sd[p + "mlp.out.bias"] = block.mlp.W_out.T, block.mlp.b_out
        for ln in ("ln1", "ln2"):
            sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = getattr(block, ln).w, getattr(block, ln).b
    return {k: v.detach().clone() for k, v in sd.items()}


def test_bridge_layout_converts_back_without_transformer_lens():
    model = Transformer(CFG)
    sd = linear_layout(model)
    logits, cache = model.run_with_cache(TOKENS)
    # the layout is what the bridge's Linear modules compute
    q = F.linear(cache["blocks.1.ln1.hook_normalized"] * model.blocks[1].ln1.w + model.blocks[1].ln1.b,
                 sd["blocks.1.attn.q.weight"], sd["blocks.1.attn.q.bias"])
    torch.testing.assert_close(q.view(2, 5, 2, 8), cache["blocks.1.attn.hook_q"])
    z = cache["blocks.0.attn.hook_z"].flatten(-2)
    torch.testing.assert_close(F.linear(z, sd["blocks.0.attn.o.weight"], sd["blocks.0.attn.o.bias"]),
                               cache["blocks.0.hook_attn_out"])
    from grokmath.interop.state_dicts import load_tlens_state_dict
    back = load_tlens_state_dict(bridge_to_tlens_state_dict(sd, to_tlens_config(model)), to_tlens_config(model))
    assert torch.equal(back(TOKENS), logits)
    with pytest.raises(ValueError, match="'blocks.0.mlp.gate.weight' has no grokmath counterpart"):
        bridge_to_tlens_state_dict({**sd, "blocks.0.mlp.gate.weight": torch.zeros(1)}, to_tlens_config(model))


def test_one_call_each_way_with_transformer_lens_4():
    pytest.importorskip("transformer_lens.utilities.tl_checkpoint_conversion")  # TransformerLens >= 4.3
    from grokmath.interop.tl4 import from_transformer_bridge, to_transformer_bridge
    model = Transformer(CFG)
    bridge = to_transformer_bridge(model)
    torch.testing.assert_close(bridge(TOKENS), model(TOKENS), rtol=1e-5, atol=1e-6)
    _, theirs = bridge.run_with_cache(TOKENS)  # TL 4 keeps the 3.x hook names
    _, ours = model.run_with_cache(TOKENS)
    for name in ("blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"):
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-5, atol=1e-6)
    back = from_transformer_bridge(bridge)
    assert torch.equal(back(TOKENS), model(TOKENS))
    assert back.cfg == model.cfg

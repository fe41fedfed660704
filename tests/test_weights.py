"""Weight views: equal to real TransformerLens's tensors on its own fixture, zeros where grokmath
has no bias, QK / OV as the products TransformerLens defines, and the helpers beside them."""
from pathlib import Path

import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.model.factored_matrix import FactoredMatrix
from grokmath.interop.state_dicts import load_tlens_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "tlens_quirke_style.pt"


@pytest.fixture(scope="module")
def tlens():
    ref = torch.load(FIXTURE, weights_only=True)
    return ref["state_dict"], load_tlens_state_dict(ref["state_dict"], ref["config"])


def test_stacked_views_are_transformerlens_tensors(tlens):
    sd, model = tlens
    n_layers = 2

    def stacked(name):  # what HookedTransformer.W_Q etc. return: the per-layer tensors stacked on dim 0
        return torch.stack([sd[f"blocks.{l}.{name}"] for l in range(n_layers)])

    for view, name, shape in [("W_Q", "attn.W_Q", (2, 3, 48, 16)), ("W_K", "attn.W_K", (2, 3, 48, 16)),
                              ("W_V", "attn.W_V", (2, 3, 48, 16)), ("W_O", "attn.W_O", (2, 3, 16, 48)),
                              ("b_Q", "attn.b_Q", (2, 3, 16)), ("b_K", "attn.b_K", (2, 3, 16)),
                              ("b_V", "attn.b_V", (2, 3, 16)), ("b_O", "attn.b_O", (2, 48)),
                              ("W_in", "mlp.W_in", (2, 48, 192)), ("W_out", "mlp.W_out", (2, 192, 48)),
                              ("b_in", "mlp.b_in", (2, 192)), ("b_out", "mlp.b_out", (2, 48))]:
        got = getattr(model, view)
        assert got.shape == shape, view
        assert torch.equal(got, stacked(name)), view
    assert torch.equal(model.W_E, sd["embed.W_E"]) and torch.equal(model.W_pos, sd["pos_embed.W_pos"])
    assert torch.equal(model.W_U, sd["unembed.W_U"]) and torch.equal(model.b_U, sd["unembed.b_U"])
    assert torch.equal(model.W_E_pos, torch.cat([sd["embed.W_E"], sd["pos_embed.W_pos"]]))
    assert model.W_E_pos.shape == (15 + 22, 48)
    # QK = W_Q W_K^T and OV = W_V W_O per head, from TransformerLens's own tensors
    qk, ov = model.QK, model.OV
    assert isinstance(qk, FactoredMatrix) and qk.shape == (2, 3, 48, 48) and qk.mdim == 16
    expected_qk = torch.einsum("lhqd,lhkd->lhqk", stacked("attn.W_Q"), stacked("attn.W_K"))
    expected_ov = torch.einsum("lhsd,lhdm->lhsm", stacked("attn.W_V"), stacked("attn.W_O"))
    torch.testing.assert_close(qk.AB, expected_qk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ov.AB, expected_ov, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(qk[1, 2].AB, sd["blocks.1.attn.W_Q"][2] @ sd["blocks.1.attn.W_K"][2].T)


def test_accumulated_bias_sums_transformerlens_biases(tlens):
    sd, model = tlens
    b_O = [sd[f"blocks.{l}.attn.b_O"] for l in range(2)]
    b_out = [sd[f"blocks.{l}.mlp.b_out"] for l in range(2)]
    assert torch.equal(model.accumulated_bias(0), torch.zeros(48))
    torch.testing.assert_close(model.accumulated_bias(1), b_O[0] + b_out[0])
    torch.testing.assert_close(model.accumulated_bias(2), b_O[0] + b_out[0] + b_O[1] + b_out[1])
    torch.testing.assert_close(model.accumulated_bias(1, mlp_input=True), b_O[0] + b_out[0] + b_O[1])
    torch.testing.assert_close(model.accumulated_bias(2, include_mlp_biases=False), b_O[0] + b_O[1])
    with pytest.raises(ValueError, match="mlp_input"):
        model.accumulated_bias(2, mlp_input=True)
    with pytest.raises(ValueError, match="layer"):
        model.accumulated_bias(3)


def test_head_labels_and_residual_directions(tlens):
    sd, model = tlens
    assert model.all_head_labels() == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    W_U = sd["unembed.W_U"]  # [d_model, d_vocab_out]
    assert torch.equal(model.tokens_to_residual_directions(4), W_U[:, 4])
    assert torch.equal(model.tokens_to_residual_directions(torch.tensor(4)), W_U[:, 4])
    assert torch.equal(model.tokens_to_residual_directions(torch.tensor([4])), W_U[:, 4])  # one element: [d_model]
    batch = torch.tensor([3, 0, 14])
    assert torch.equal(model.tokens_to_residual_directions(batch), W_U.T[batch])
    assert torch.equal(model.tokens_to_residual_directions([3, 0, 14]), W_U.T[batch])
    grid = torch.tensor([[1, 2], [5, 7]])
    directions = model.tokens_to_residual_directions(grid)
    assert directions.shape == (2, 2, 48) and torch.equal(directions[1, 0], W_U[:, 5])
    for bad, match in [("7", "tokenizer"), (15, "0..14"), (torch.tensor([-1, 2]), "0..14"), (2.0, "integer")]:
        with pytest.raises(ValueError, match=match):
            model.tokens_to_residual_directions(bad)
    with pytest.raises(ValueError, match="tokenizer"):
        model.to_single_token(" 7")


def test_missing_biases_are_zeros_and_missing_parts_are_named():
    cfg = ModelConfig(n_layers=2, d_model=12, n_heads=3, d_mlp=20, d_vocab=7, d_vocab_out=5, n_ctx=6,
                      attn_bias=False, mlp_bias=False, unembed_bias=False)
    model = Transformer(cfg)
    for name, shape in [("b_Q", (2, 3, 4)), ("b_K", (2, 3, 4)), ("b_V", (2, 3, 4)), ("b_O", (2, 12)),
                        ("b_in", (2, 20)), ("b_out", (2, 12)), ("b_U", (5,))]:
        value = getattr(model, name)
        assert value.shape == shape and not value.any(), name
    assert not model.accumulated_bias(2, include_mlp_biases=True).any()
    attn_only = Transformer(ModelConfig(n_layers=1, d_model=12, n_heads=3, d_vocab=7, n_ctx=6, attn_only=True,
                                        attn_bias=True, positional="none"))
    for name in ("W_in", "W_out", "b_in", "b_out"):
        with pytest.raises(ValueError, match="attention-only"):
            getattr(attn_only, name)
    with pytest.raises(ValueError, match="positional"):
        attn_only.W_pos
    with torch.no_grad():
        attn_only.blocks[0].attn.b_O.fill_(0.5)
    torch.testing.assert_close(attn_only.accumulated_bias(1), torch.full((12,), 0.5))


def test_views_carry_gradients_and_OV_is_the_heads_value_path():
    model = Transformer(ModelConfig(n_layers=1, d_model=12, n_heads=3, d_vocab=7, n_ctx=6, positional="none"))
    model.W_Q.sum().backward()
    assert torch.equal(model.blocks[0].attn.W_Q.grad, torch.ones(3, 12, 4))
    tokens = torch.randint(0, 7, (2, 6), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    x = cache["blocks.0.hook_resid_pre"]  # no LayerNorm: the attention reads the stream itself
    for head in range(3):
        # head output = pattern @ (x @ W_V) @ W_O = pattern @ (x @ OV) (no biases here)
        expected = torch.einsum("bqk,bkm->bqm", cache["pattern", 0][:, head], x @ model.OV[0, head].AB)
        got = cache["z", 0][:, :, head] @ model.W_O[0, head]
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-5)

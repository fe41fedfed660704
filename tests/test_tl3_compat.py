"""TransformerLens 3.x code that runs unchanged: input_to_embed + start_at_layer, attention_mask
(padding as TransformerLens applies it), one attention kernel whatever is hooked, cfg.device,
check_and_add_hook, FactoredMatrix's errors and tensor-likes, and the config fields grokmath
refuses in one line (use_hook_tokens, grouped-query attention).

Independent truths: a left-padded prompt must give the unpadded prompt's logits at its real
tokens; the masked loss is written out by hand; equalities are exact (torch.equal)."""
import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.model.factored_matrix import FactoredMatrix
from grokmath.interop.state_dicts import config_from_tlens, to_tlens_config

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=11, n_ctx=8, normalization="LN",
                  attn_bias=True, unembed_bias=True, seed=4)
TOKENS = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def model():
    return Transformer(CFG)


def test_input_to_embed_then_start_at_layer_is_the_forward(model):
    embed, tokens, shortformer, mask = model.input_to_embed(TOKENS)  # TransformerLens's unpacking
    assert embed.shape == (3, 6, 16) and torch.equal(tokens, TOKENS) and shortformer is None and mask is None
    logits = model(TOKENS)
    assert torch.equal(model(embed, start_at_layer=0), logits)
    for layer in (1, -1):
        resid = model(TOKENS, stop_at_layer=layer)
        assert torch.equal(model(resid, start_at_layer=layer), logits)
    loss = model(embed, start_at_layer=0, tokens=tokens, return_type="loss")
    assert torch.equal(loss, model(TOKENS, return_type="loss"))
    with pytest.raises(ValueError, match="no tokenizer"):
        model.input_to_embed("1 2 3")


def test_left_padding_gives_the_unpadded_logits(model):
    short = TOKENS[:, :4]  # [3, 4] real tokens
    padded = torch.cat([torch.zeros(3, 2, dtype=torch.long), short], dim=1)  # two pads on the left
    mask = torch.cat([torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 4, dtype=torch.long)], dim=1)
    want = model(short)
    got = model(padded, attention_mask=mask)
    torch.testing.assert_close(got[:, 2:], want, rtol=1e-5, atol=1e-5)
    _, cache = model.run_with_cache(padded, attention_mask=mask)
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, q, k]
    assert (pattern[..., :2] == 0).all() and not pattern.isnan().any()  # nothing attends to padding
    # right padding: the real tokens come first and are unchanged
    right = torch.cat([short, torch.zeros(3, 2, dtype=torch.long)], 1)
    got = model(right, attention_mask=torch.cat([torch.ones(3, 4), torch.zeros(3, 2)], 1).long())
    torch.testing.assert_close(got[:, :4], want, rtol=1e-5, atol=1e-5)
    # the same through input_to_embed + start_at_layer
    embed, _, _, m = model.input_to_embed(padded, attention_mask=mask)
    assert torch.equal(model(embed, start_at_layer=0, attention_mask=m), model(padded, attention_mask=mask))


def test_masked_loss_counts_only_real_next_tokens(model):
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    logits, loss = model(TOKENS, attention_mask=mask, return_type="both")
    per_token = model(TOKENS, attention_mask=mask, return_type="loss", loss_per_token=True)
    terms = []
    for b in range(3):
        for t in range(5):
            if mask[b, t] and mask[b, t + 1]:
                terms.append(-logits[b, t].log_softmax(-1)[TOKENS[b, t + 1]])
            else:
                assert per_token[b, t] == 0
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="attention_mask of shape"):
        model(TOKENS, attention_mask=mask[:, :3])


def test_caching_and_split_inputs_change_no_number(model):
    logits = model(TOKENS)
    out, cache = model.run_with_cache(TOKENS)
    assert torch.equal(out, logits)
    hooked = model.run_with_hooks(TOKENS, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda p, hook: None)])
    assert torch.equal(hooked, logits)
    for switch in ("set_use_split_qkv_input", "set_use_attn_in"):
        getattr(model, switch)(True)
        assert torch.equal(model(TOKENS), logits), switch
        _, split_cache = model.run_with_cache(TOKENS)
        assert torch.equal(split_cache["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"])
        getattr(model, switch)(False)


def test_cfg_device_follows_the_model(model):
    assert model.cfg.device == "cpu"
    model.to(torch.float64)
    assert model.cfg.device == "cpu"
    model.to("meta")
    assert model.cfg.device == "meta"
    assert CFG.device == "cpu" and model.cfg == CFG  # the config passed in is not changed; device is no field


def test_check_and_add_hook_runs_the_check(model):
    class Refusing(Transformer):
        def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False,
                               prepend=False):
            raise RuntimeError(f"no hooks on {hook_point_name}")

    point = model.hook_dict["hook_embed"]
    model.check_and_add_hook(point, "hook_embed", lambda x, hook: None)
    assert len(point.fwd_hooks) == 1
    refusing = Refusing(CFG)
    with pytest.raises(RuntimeError, match="no hooks on hook_embed"):
        refusing.check_and_add_hook(refusing.hook_dict["hook_embed"], "hook_embed", lambda x, hook: None)
    assert list(model.hook_points()) == list(model.hook_dict.values())
    assert set(model.hook_dict) <= set(model.mod_dict) and "blocks.0.attn" in model.mod_dict


def test_factored_matrix_errors_are_value_and_assertion_errors():
    A, B = torch.randn(4, 3), torch.randn(3, 5)
    for make in (lambda: FactoredMatrix(A, torch.randn(2, 5)), lambda: FactoredMatrix(A, B) @ torch.randn(4, 2),
                 lambda: FactoredMatrix(A, B).BA, lambda: torch.randn(2, 3) @ FactoredMatrix(A, B)):
        with pytest.raises(AssertionError):
            make()
        with pytest.raises(ValueError):
            make()


class Wrapped:
    """A tensor-like that is no torch.Tensor (TransformerLens's TensorLike protocol)."""

    def __init__(self, t):
        self.t = t

    ndim = property(lambda self: self.t.ndim)
    shape = property(lambda self: self.t.shape)

    def size(self, dim):
        return self.t.size(dim)

    def unsqueeze(self, dim):
        return Wrapped(self.t.unsqueeze(dim))

    def squeeze(self, dim):
        return Wrapped(self.t.squeeze(dim))

    def broadcast_to(self, shape):
        return Wrapped(self.t.broadcast_to(shape))

    def __matmul__(self, other):
        return Wrapped(self.t @ (other.t if isinstance(other, Wrapped) else other))

    def __rmatmul__(self, other):
        return Wrapped(other @ self.t)


def test_factored_matrix_takes_tensor_likes():
    A, B, C = torch.randn(4, 3), torch.randn(3, 5), torch.randn(5, 2)
    product = FactoredMatrix(A, B) @ Wrapped(C)
    torch.testing.assert_close(product.AB.t, A @ B @ C)
    vector = FactoredMatrix(Wrapped(A), Wrapped(B)) @ torch.ones(5)
    torch.testing.assert_close(vector.t, A @ B @ torch.ones(5))


def test_tl_config_fields_grokmath_lacks_are_refused_in_one_line():
    tl = to_tlens_config(Transformer(CFG))
    assert config_from_tlens({**tl, "use_hook_tokens": False, "n_key_value_heads": None}).n_heads == 2
    assert config_from_tlens({**tl, "n_key_value_heads": 2}).n_heads == 2  # as many as heads: plain attention
    for field, value in (("use_hook_tokens", True), ("n_key_value_heads", 1)):
        with pytest.raises(ValueError, match=f"{field}={value}") as error:
            config_from_tlens({**tl, field: value})
        assert "\n" not in str(error.value)


def test_padding_matches_a_real_hooked_transformer(model):
    tl = pytest.importorskip("transformer_lens")
    if not hasattr(tl, "HookedTransformerConfig") or not hasattr(tl, "HookedRootModule"):
        pytest.skip("TransformerLens 4 has no HookedTransformer")
    import warnings
    from grokmath.interop.state_dicts import to_tlens_state_dict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**to_tlens_config(model)))
    hooked.load_state_dict(to_tlens_state_dict(model), strict=False)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    theirs = hooked.input_to_embed(TOKENS, attention_mask=mask)
    ours = model.input_to_embed(TOKENS, attention_mask=mask)
    torch.testing.assert_close(ours[0], theirs[0])
    assert ours[2] is None and theirs[2] is None and torch.equal(ours[3], theirs[3].long())
    torch.testing.assert_close(model(TOKENS, attention_mask=mask), hooked(TOKENS, attention_mask=mask),
                               rtol=1e-5, atol=1e-5)
    kwargs = dict(attention_mask=mask, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(model(TOKENS, **kwargs), hooked(TOKENS, **kwargs), rtol=1e-5, atol=1e-5)
    _, cache = hooked.run_with_cache(TOKENS, attention_mask=mask)
    _, mine = model.run_with_cache(TOKENS, attention_mask=mask)
    torch.testing.assert_close(mine["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(mine["hook_pos_embed"], cache["hook_pos_embed"])

"""Hook points: identity when idle, editing, caching, gradients, cleanup, the seed's API."""
import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.hooks import hook_points_bypassed

CFG = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=12, d_vocab_out=10, n_ctx=18,
                  normalization="LN", seed=0)
TOKENS = torch.randint(0, 12, (4, 18), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    return Transformer(CFG)


def expected_shapes(cfg, batch=4, pos=18):
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    shapes = {"hook_embed": (batch, pos, d), "hook_pos_embed": (batch, pos, d),
              "ln_final.hook_scale": (batch, pos, 1), "ln_final.hook_normalized": (batch, pos, d)}
    for L in range(cfg.n_layers):
        b = f"blocks.{L}."
        shapes.update({
            b + "hook_resid_pre": (batch, pos, d), b + "hook_resid_mid": (batch, pos, d),
            b + "hook_resid_post": (batch, pos, d), b + "hook_attn_out": (batch, pos, d),
            b + "hook_mlp_out": (batch, pos, d),
            b + "ln1.hook_scale": (batch, pos, 1), b + "ln1.hook_normalized": (batch, pos, d),
            b + "ln2.hook_scale": (batch, pos, 1), b + "ln2.hook_normalized": (batch, pos, d),
            b + "attn.hook_q": (batch, pos, h, dh), b + "attn.hook_k": (batch, pos, h, dh),
            b + "attn.hook_v": (batch, pos, h, dh), b + "attn.hook_z": (batch, pos, h, dh),
            b + "attn.hook_attn_scores": (batch, h, pos, pos), b + "attn.hook_pattern": (batch, h, pos, pos),
            b + "attn.hook_result": (batch, pos, h, d),
            b + "mlp.hook_pre": (batch, pos, cfg.d_mlp), b + "mlp.hook_post": (batch, pos, cfg.d_mlp),
            # the optional points, off by default as in TransformerLens
            b + "hook_attn_in": (batch, pos, h, d), b + "hook_q_input": (batch, pos, h, d),
            b + "hook_k_input": (batch, pos, h, d), b + "hook_v_input": (batch, pos, h, d),
            b + "hook_mlp_in": (batch, pos, d),
        })
    shapes.update({"unembed.hook_in": (batch, pos, d), "unembed.hook_out": (batch, pos, cfg.d_vocab_out)})
    return shapes


OPTIONAL = ("attn.hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")


def switch_all(model, on=True):
    model.set_use_attn_result(on)
    model.set_use_attn_in(on)
    model.set_use_split_qkv_input(on)
    model.set_use_hook_mlp_in(on)


def test_cache_has_every_hook_point_with_its_shape(model):
    # By default (as in TransformerLens) the optional points are not computed, hence not cached.
    _, default = model.run_with_cache(TOKENS)
    expected = expected_shapes(CFG)
    assert {k: tuple(v.shape) for k, v in default.items()} == {
        k: v for k, v in expected.items() if not k.endswith(OPTIONAL)}
    switch_all(model)
    logits, cache = model.run_with_cache(TOKENS)
    switch_all(model, False)
    # With a copy of the input per head, ln1 normalises each head's copy, as in TransformerLens.
    per_head = {k: v[:2] + (CFG.n_heads,) + v[2:] for k, v in expected.items() if ".ln1." in k}
    assert {k: tuple(v.shape) for k, v in cache.items()} == {**expected, **per_head}
    assert set(cache) == set(model.hook_dict)
    for name in default:  # the switches change no value
        want = default[name][:, :, None].expand(cache[name].shape) if name in per_head else default[name]
        torch.testing.assert_close(cache[name], want, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(cache["blocks.0.attn.hook_attn"], cache["blocks.0.attn.hook_pattern"])
    # The pattern is a causal distribution, the scores are masked with -inf above the diagonal.
    pattern = cache["pattern", 0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(4, 4, 18))
    assert torch.isinf(cache["attn_scores", 0][..., 0, 1:]).all()
    # head results sum to the attention output (plus b_O, absent here)
    torch.testing.assert_close(cache["result", 0].sum(2), cache["attn_out", 0], atol=1e-5, rtol=1e-5)
    assert not model.list_hooks()


def test_identity_when_nothing_attached(model):
    plain = model(TOKENS)
    logits, _ = model.run_with_cache(TOKENS)
    torch.testing.assert_close(plain, logits, atol=1e-5, rtol=1e-5)
    with hook_points_bypassed(model):
        torch.testing.assert_close(model(TOKENS), plain)
    with model.hooks(fwd_hooks=[(lambda n: True, lambda x, hook: None)]):
        torch.testing.assert_close(model(TOKENS), plain, atol=1e-5, rtol=1e-5)


def test_zero_ablation_changes_logits_and_edits_propagate(model):
    plain = model(TOKENS)

    def zero(x, hook):
        return torch.zeros_like(x)

    ablated = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_mlp_out", zero)])
    assert not torch.allclose(plain, ablated)
    # Zeroing the MLP output is the same as removing the MLP: compare with an independent edit.
    with torch.no_grad():
        saved = [p.clone() for p in model.blocks[1].mlp.parameters()]
        for p in model.blocks[1].mlp.parameters():
            p.zero_()
        removed = model(TOKENS)
        for p, s in zip(model.blocks[1].mlp.parameters(), saved):
            p.copy_(s)
    torch.testing.assert_close(ablated, removed, atol=1e-5, rtol=1e-5)
    # A head's z ablation hook goes through the explicit result path when result is hooked too.
    def kill_head0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z
    _, cache = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_result")
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", kill_head0)]):
        _, cache2 = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_result")
    assert cache2["result", 0][:, :, 0].abs().max() == 0
    torch.testing.assert_close(cache2["result", 0][:, :, 1:], cache["result", 0][:, :, 1:])


@pytest.mark.parametrize("where", ["hook", "forward", "backward"])
def test_hooks_removed_after_exception(model, where):
    def bad_hook(x, hook):
        raise RuntimeError("boom")

    if where == "hook":
        with pytest.raises(RuntimeError, match="boom"):
            model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pre", bad_hook)])
    elif where == "forward":
        with pytest.raises(ValueError):
            model.run_with_hooks(torch.zeros(1, 40, dtype=torch.long),
                                 fwd_hooks=[("hook_embed", lambda x, hook: None)])
    else:
        with pytest.raises(RuntimeError, match="boom"):
            with model.hooks(bwd_hooks=[("blocks.0.hook_resid_post", bad_hook)]):
                model(TOKENS).sum().backward()
    assert model.list_hooks() == {}


def test_gradient_cache_matches_autograd(model):
    loss_fn = lambda logits: logits[:, -1, 3].sum()
    _, cache = model.run_with_cache(TOKENS, incl_bwd=True, loss_fn=loss_fn)
    # Independent truth: autograd of the same loss with respect to a retained activation.
    saved = {}

    def keep(x, hook):
        x.retain_grad()
        saved["resid"] = x

    model.zero_grad()
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_mid", keep)]):
        loss_fn(model(TOKENS)).backward()
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid_grad"], saved["resid"].grad)
    assert "blocks.0.attn.hook_pattern_grad" in cache
    assert model.list_hooks() == {}


def test_forward_edit_and_backward_hook_on_same_point(model):
    grads = {}
    double = lambda x, hook: 2 * x
    save = lambda g, hook: grads.setdefault("g", g.clone())
    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", double)], bwd_hooks=[("blocks.0.hook_attn_out", save)]):
        out = model(TOKENS)
        out.sum().backward()
    assert grads["g"].shape == (4, 18, 32)
    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", double)]):
        torch.testing.assert_close(model(TOKENS), out.detach())


def test_backward_hook_can_replace_gradient(model):
    model.zero_grad()
    with model.hooks(bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, hook: torch.zeros_like(g))]):
        model(TOKENS).sum().backward()
    # No gradient flows back through the residual into block 0 nor the embeddings.
    assert model.blocks[0].mlp.W_in.grad.abs().max() == 0
    assert model.embed.W_E.grad.abs().max() == 0


def test_seed_notebook_hook_usage(model):
    """The seed notebooks' code, unchanged apart from the import."""
    cache = {}
    model.cache_all(cache, incl_bwd=True)
    tokens = TOKENS
    logits = model(tokens)
    logits[:, -1].log_softmax(-1)[:, 0].sum().backward()
    assert cache["blocks.0.attn.hook_attn"].shape == (4, 4, 18, 18)
    grads = cache["blocks.0.attn.hook_attn_grad"][torch.arange(4), 0, -1, tokens.argmax(1)]
    assert grads.shape == (4,)
    model.remove_all_hooks()
    assert model.list_hooks() == {}

    # add_hook with the seed signature fn(value, name), on the alias hook_attn
    seen = []

    def test_hook(value, name):
        seen.append(name)
        return torch.zeros_like(value)

    hook_attn_0 = model.blocks[0].attn.hook_attn
    hook_attn_0.remove_hooks()
    without = model(tokens)
    hook_attn_0.add_hook(test_hook)
    with_hook = model(tokens)
    hook_attn_0.remove_hooks()
    assert seen == ["blocks.0.attn.hook_pattern"]
    assert not torch.equal(without, with_hook)
    torch.testing.assert_close(model(tokens), without)
    assert [hp.name for hp in model.hook_points()] == list(model.hook_dict)

    # the seed's backward hooks read grad_output as a tuple
    got = {}
    model.blocks[0].hook_resid_post.add_hook(lambda t, name: got.setdefault(name, t[0]), dir="bwd")
    model(tokens).sum().backward()
    model.remove_all_hooks()
    assert got["blocks.0.hook_resid_post"].shape == (4, 18, 32)
    with pytest.raises(ValueError, match="direction"):
        hook_attn_0.add_hook(test_hook, dir="sideways")


def test_names_filter_forms(model):
    _, by_name = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_attn")
    assert list(by_name) == ["blocks.0.attn.hook_pattern"]
    _, by_list = model.run_with_cache(TOKENS, names_filter=["hook_embed", "blocks.1.mlp.hook_post"])
    assert set(by_list) == {"hook_embed", "blocks.1.mlp.hook_post"}
    _, by_fn = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_z"))
    assert set(by_fn) == {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}
    with pytest.raises(ValueError, match="loss_fn"):
        model.run_with_cache(TOKENS, incl_bwd=True)
    with pytest.raises(KeyError, match="hook_dict"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.9.hook_nothing", lambda x, hook: x)])


def test_hook_call_styles(model):
    """fn(x, *, hook), the seed's fn(x, name), fn(x, other_name) positionally, and fn(x)."""
    got = []
    styles = [lambda x, hook: got.append(("hook", hook.name)),
              lambda x, name: got.append(("name", name)),
              lambda x, label: got.append(("positional", label)),
              lambda x: got.append(("plain", tuple(x.shape)))]
    model.run_with_hooks(TOKENS, fwd_hooks=[("hook_embed", fn) for fn in styles])
    assert got == [("hook", "hook_embed"), ("name", "hook_embed"), ("positional", "hook_embed"),
                   ("plain", (4, 18, 32))]

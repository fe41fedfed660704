"""Hook points: identity when idle, editing, caching, gradients, cleanup, the seed's API."""
import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.model.hooks import hook_points_bypassed

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


# Regression tests for the four bugs of issue 12 -------------------------------------------------

EDIT_CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=11, n_ctx=7, normalization="LN",
                       attn_bias=True, unembed_bias=True, seed=1)
EDIT_TOKENS = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(5))


def edit_model(**kw):
    """Every hook point switched on, random biases and LayerNorm weights."""
    from dataclasses import replace

    model = Transformer(replace(EDIT_CFG, **kw))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            if ".b_" in name or name.endswith((".w", ".b")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    switch_all(model)
    return model


def weights_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_in_place_edit_at_every_hook_point_changes_this_forward_only(grad):
    """TransformerLens users edit activations in place (act[...] = 0, act.mul_()). At every hook
    point that must (1) not raise, forward or backward, (2) act exactly as returning the edited
    tensor would, (3) leave every weight and buffer as it was, (4) not outlast the forward."""
    model = edit_model()
    before = weights_of(model)
    with torch.no_grad():
        plain = model(EDIT_TOKENS)

    def run(hook):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad):
            logits = model.run_with_hooks(EDIT_TOKENS, fwd_hooks=[(name, hook)])
            if grad:
                logits.square().sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    def edit(act):
        # Not a pure rescale: LayerNorm would undo that at the hooks it reads (hook_q_input...).
        act.mul_(0.5)
        act.select(-1, 0).add_(0.5)
        return act

    def in_place(act, hook):
        edit(act)  # and return None

    assert set(model.hook_dict) == set(expected_shapes(EDIT_CFG))  # all 52 of them
    for name in model.hook_dict:
        edited, grads_edited = run(in_place)
        returned, grads_returned = run(lambda act, hook: edit(act.clone()))
        torch.testing.assert_close(edited, returned, msg=name)
        assert not torch.allclose(edited, plain), f"editing {name} changed nothing"
        assert grads_edited.keys() == grads_returned.keys(), name
        for k in grads_returned:
            torch.testing.assert_close(grads_edited[k], grads_returned[k], msg=f"{name}: grad of {k}")
        after = weights_of(model)
        for k in before:
            assert torch.equal(after[k], before[k]), f"editing {name} in place changed {k}"
        with torch.no_grad():
            torch.testing.assert_close(model(EDIT_TOKENS), plain, msg=name)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_pos_embed_hook_never_sees_W_pos(positional, grad):
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=11, n_ctx=7, positional=positional))
    W_pos = model.pos_embed.W_pos.detach().clone()
    seen = {}

    def zero(act, hook):
        assert act.untyped_storage().data_ptr() != model.pos_embed.W_pos.untyped_storage().data_ptr()
        act[:, 2] = 0
        seen["act"] = act

    with torch.set_grad_enabled(grad):
        logits = model.run_with_hooks(EDIT_TOKENS, fwd_hooks=[("hook_pos_embed", zero)])
        if grad:
            logits.sum().backward()
    assert torch.equal(model.pos_embed.W_pos, W_pos)
    assert seen["act"][:, 2].abs().max() == 0 and seen["act"][:, 3].abs().max() > 0
    # and the cached copy is not W_pos's storage either: editing it leaves the weights alone
    _, cache = model.run_with_cache(EDIT_TOKENS)
    cache["hook_pos_embed"][:] = 7
    assert torch.equal(model.pos_embed.W_pos, W_pos)


def test_head_ablation_in_place_on_q_k_v_under_autograd():
    """TransformerLens's standard head ablation, v[:, :, head] = 0, with gradients on."""
    model = edit_model()
    for point in ("hook_q", "hook_k", "hook_v", "hook_z"):
        def in_place(act, hook):
            act[:, :, 1] = 0

        def returned(act, hook):
            act = act.clone()
            act[:, :, 1] = 0
            return act

        name = f"blocks.0.attn.{point}"
        model.zero_grad(set_to_none=True)
        edited = model.run_with_hooks(EDIT_TOKENS, fwd_hooks=[(name, in_place)])
        edited.sum().backward()
        grad_edited = model.blocks[0].attn.W_V.grad.clone()
        model.zero_grad(set_to_none=True)
        reference = model.run_with_hooks(EDIT_TOKENS, fwd_hooks=[(name, returned)])
        reference.sum().backward()
        torch.testing.assert_close(edited, reference, msg=point)
        torch.testing.assert_close(grad_edited, model.blocks[0].attn.W_V.grad, msg=point)


def test_in_place_edit_does_not_touch_the_callers_residual_stream():
    model = edit_model()
    resid = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(0))
    kept = resid.clone()
    model.run_with_hooks(resid, start_at_layer=1, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: a.zero_())])
    assert torch.equal(resid, kept)


def test_hooks_are_called_with_hook_as_transformer_lens_calls_them(model):
    """fn(act, hook=...) for a `hook` parameter or **kwargs, forward and backward (a tensor, not a
    tuple); the seed's fn(act, name) keeps its name and, backward, its 1-tuple."""
    got = []

    def kwargs_hook(act, **kwargs):
        got.append(("fwd", type(kwargs["hook"]).__name__, kwargs["hook"].name, type(act).__name__))

    def kwargs_bwd(grad, **kwargs):
        got.append(("bwd", type(kwargs["hook"]).__name__, kwargs["hook"].name, type(grad).__name__))

    def seed_bwd(grad, name):
        got.append(("seed", name, type(grad).__name__))

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", kwargs_hook)],
                     bwd_hooks=[("blocks.0.hook_resid_mid", kwargs_bwd), ("blocks.0.hook_resid_mid", seed_bwd)]):
        model(TOKENS).sum().backward()
    assert got == [("fwd", "HookPoint", "blocks.0.hook_resid_mid", "Tensor"),
                   ("bwd", "HookPoint", "blocks.0.hook_resid_mid", "Tensor"),
                   ("seed", "blocks.0.hook_resid_mid", "tuple")]


def test_layer_norm_hook_normalized_is_before_w_and_b():
    """TransformerLens 3.x: hook_normalized is (x - mean) / scale; w and b come after it."""
    model = edit_model()
    _, cache = model.run_with_cache(EDIT_TOKENS)
    x = cache["blocks.1.hook_resid_mid"]
    centred = x - x.mean(-1, keepdim=True)
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + EDIT_CFG.ln_eps).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln2.hook_normalized"], expected)
    ln2 = model.blocks[1].ln2
    pre = (expected * ln2.w + ln2.b) @ model.blocks[1].mlp.W_in + model.blocks[1].mlp.b_in
    torch.testing.assert_close(cache["blocks.1.mlp.hook_pre"], pre, atol=1e-5, rtol=1e-5)
    logits = cache["ln_final.hook_normalized"] * model.ln_final.w + model.ln_final.b
    logits = logits @ model.unembed.W_U + model.unembed.b_U
    torch.testing.assert_close(cache["unembed.hook_out"], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["unembed.hook_in"], cache["ln_final.hook_normalized"] * model.ln_final.w
                               + model.ln_final.b)

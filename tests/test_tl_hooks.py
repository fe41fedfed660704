"""TransformerLens 3.x's hook API on grokmath models: HookPoint, hook lifetimes (contexts, levels,
permanent hooks), run_with_hooks / run_with_cache options and the optional hook points.

The behaviour checked is the one TransformerLens documents and its own tests check; the values
are checked against independent computations (autograd on the same loss, slices of a full cache,
a hand-written head sum)."""
import warnings

import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.model.hook_point import HookPoint

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=11, n_ctx=6, normalization="LN",
                  attn_bias=True, unembed_bias=True, seed=3)
TOKENS = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(0))
EMBED = lambda name: name == "hook_embed"  # noqa: E731


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, *args, **kwargs):
        self.count += 1


@pytest.fixture
def model():
    return Transformer(CFG)


def n_fwd(model, name="hook_embed"):
    return len(model.hook_dict[name].fwd_hooks)


# HookPoint ------------------------------------------------------------------------------------

def test_hook_point_add_remove_levels_permanent_prepend():
    hp = HookPoint("blocks.3.attn.hook_z")
    order = []
    a = hp.add_hook(lambda x, hook: order.append("a"))
    hp.add_hook(lambda x, hook: order.append("b"), level=1)
    hp.add_hook(lambda x, hook: order.append("first"), prepend=True)
    hp.add_perma_hook(lambda x, hook: order.append("perma"))
    hp.add_hook(lambda g, hook: None, dir="bwd", level=2)
    hp(torch.zeros(2))
    assert order == ["first", "a", "b", "perma"]
    assert hp.has_hooks() and hp.has_hooks("bwd") and hp.has_hooks(level=2) and not hp.has_hooks("fwd", level=2)
    assert hp.has_hooks("fwd", including_permanent=False)
    assert hp.layer() == 3 and repr(hp) == "HookPoint(name='blocks.3.attn.hook_z', 4 fwd, 1 bwd)"
    hp.remove_hooks("fwd", level=1)  # only level 1's forward hook
    assert len(hp.fwd_hooks) == 3 and len(hp.bwd_hooks) == 1
    a.remove()  # one hook by its handle
    assert len(hp.fwd_hooks) == 2
    hp.remove_hooks("both")  # all but the permanent one
    assert [h.is_permanent for h in hp.fwd_hooks] == [True] and not hp.bwd_hooks
    hp.remove_hooks("fwd", including_permanent=True)
    assert not hp.has_hooks() and repr(hp) == "HookPoint(name='blocks.3.attn.hook_z')"
    with pytest.raises(ValueError, match="not inside a block"):
        HookPoint("hook_embed").layer()
    with pytest.raises(ValueError, match="direction"):
        hp.remove_hooks("sideways")


def test_has_hooks_by_direction_permanence_and_level():
    hp = HookPoint()
    assert not any(hp.has_hooks(d) for d in ("fwd", "bwd", "both"))
    hp.add_hook(lambda x, hook: None, dir="fwd", level=0, is_permanent=True)
    hp.add_hook(lambda x, hook: None, dir="fwd", level=1)
    hp.add_hook(lambda x, hook: None, dir="bwd", level=0)
    hp.add_hook(lambda x, hook: None, dir="bwd", level=2, is_permanent=True)
    table = [  # (dir, level, including_permanent) -> expected
        (("fwd", 0, True), True), (("fwd", 0, False), False), (("fwd", 1, False), True),
        (("bwd", 0, False), True), (("bwd", 1, False), False), (("bwd", 2, True), True),
        (("bwd", 2, False), False), (("both", 3, True), False), (("both", None, False), True),
    ]
    for (d, level, perm), expected in table:
        assert hp.has_hooks(d, including_permanent=perm, level=level) == expected, (d, level, perm)
    hp.remove_hooks("both")
    assert hp.has_hooks() and not hp.has_hooks(including_permanent=False)
    with pytest.raises(ValueError, match="direction"):
        hp.has_hooks("sideways")


def test_idle_hook_point_is_the_identity_object():
    hp, x = HookPoint("x"), torch.randn(3)
    assert hp(x) is x


# Hook lifetimes, as TransformerLens's own hook tests check them --------------------------------

def test_run_with_hooks_removes_its_hooks(model):
    c = Counter()
    model.run_with_hooks(TOKENS, fwd_hooks=[(EMBED, c.inc)])
    assert c.count == 1 and all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_permanent_hooks_survive_runs_and_resets(model):
    c = Counter()
    model.add_perma_hook(EMBED, c.inc)
    assert n_fwd(model) == 1
    model.run_with_hooks(TOKENS, fwd_hooks=[])
    model.reset_hooks()
    model.remove_all_hook_fns()
    assert n_fwd(model) == 1 and c.count == 1
    with model.hooks(fwd_hooks=[(EMBED, c.inc)]):
        assert n_fwd(model) == 2
        model(TOKENS)
    assert n_fwd(model) == 1 and c.count == 3
    model.remove_all_hook_fns(including_permanent=True)
    model(TOKENS)
    assert n_fwd(model) == 0 and c.count == 3


def test_nested_contexts_and_a_failing_inner_one(model):
    c = Counter()

    def fail(act, hook):
        raise ValueError("fail")

    with model.hooks(fwd_hooks=[(EMBED, c.inc)]):
        model(TOKENS)
        with model.hooks(fwd_hooks=[(EMBED, c.inc)]):
            assert n_fwd(model) == 2
            model(TOKENS)
        assert n_fwd(model) == 1 and c.count == 3
        with pytest.raises(ValueError, match="fail"):
            with model.hooks(fwd_hooks=[(EMBED, fail)]):
                model(TOKENS)
        assert n_fwd(model) == 1 and c.count == 4  # the outer hook ran before the failing one
        model.run_with_cache(TOKENS)  # a context of its own: the outer hook stays
        assert n_fwd(model) == 1 and c.count == 5
    assert n_fwd(model) == 0 and model.context_level == 0


def test_reset_hooks_inside_a_context(model):
    with model.hooks(fwd_hooks=[(EMBED, Counter().inc)]):
        model.reset_hooks()
        assert n_fwd(model) == 0
    assert n_fwd(model) == 0


def test_hooks_added_by_name_or_filter_and_kept_with_reset_hooks_end_false(model):
    c = Counter()
    model.add_hook("hook_embed", c.inc)
    model.add_hook(lambda n: n.endswith("hook_resid_post"), c.inc)
    assert set(model.list_hooks()) == {"hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    model(TOKENS)
    assert c.count == 3
    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pre", c.inc)], reset_hooks_end=False)
    assert c.count == 7 and n_fwd(model, "blocks.0.hook_resid_pre") == 1
    model.reset_hooks()
    assert model.list_hooks() == {}


def test_prepend_decides_which_edit_wins(model):
    """As TransformerLens's test: a zeroing hook and a noise hook on one point; the one that
    runs last decides the output."""
    def zero(act, hook):
        act[:] = 0.0
        return act

    def noise(act, hook):
        return torch.randn_like(act)

    with torch.no_grad():
        all_zero = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, hook: a * 0)])
    for zero_first in (True, False):
        model.reset_hooks()
        model.add_hook("blocks.1.hook_resid_post", zero if zero_first else noise)
        model.add_hook("blocks.1.hook_resid_post", noise if zero_first else zero, prepend=True)
        with torch.no_grad():
            out = model(TOKENS)
        # zero added first, noise prepended before it: zero runs last and wins
        assert torch.allclose(out, all_zero) == zero_first
    model.reset_hooks()


def test_contexts_are_for_hooks_and_cleared_by_reset(model):
    def count_calls(act, hook):
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    hp = model.hook_dict["blocks.0.hook_mlp_out"]
    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", count_calls)]):
        model(TOKENS)
        model(TOKENS)
    assert hp.ctx == {"calls": 2}  # hooks() keeps contexts unless clear_contexts=True
    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", count_calls)], clear_contexts=True):
        model(TOKENS)
    assert hp.ctx == {}
    hp.ctx["x"] = 1
    model.reset_hooks()  # clear_contexts=True by default
    assert hp.ctx == {}


def test_backward_hooks_fire_on_a_later_backward_when_kept(model):
    grads = {}

    def save(grad, hook):
        grads[hook.name] = grad

    with pytest.warns(UserWarning, match="reset_hooks_end=False"):
        out = model.run_with_hooks(TOKENS, bwd_hooks=[("blocks.0.hook_resid_mid", save)])
    out.sum().backward()
    assert grads == {}  # removed at the end of run_with_hooks, as in TransformerLens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.run_with_hooks(TOKENS, bwd_hooks=[("blocks.0.hook_resid_mid", save)], reset_hooks_end=False)
    out.sum().backward()
    assert grads["blocks.0.hook_resid_mid"].shape == (3, 6, 16)
    model.reset_hooks()
    assert model.list_hooks() == {}


def test_backward_hook_may_return_a_tensor_a_one_tuple_or_none(model):
    """TransformerLens's backward hooks get the gradient tensor and may return it bare, as (grad,)
    or None; a returned gradient replaces it upstream."""
    for returned in (lambda g: torch.zeros_like(g), lambda g: (torch.zeros_like(g),), lambda g: None):
        model.zero_grad()
        with model.hooks(bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, hook: returned(g))]):
            model(TOKENS).sum().backward()
        blocked = model.blocks[0].mlp.W_in.grad.abs().max() == 0
        assert blocked == (returned(torch.ones(1)) is not None)


def test_list_hooks_and_dicts(model):
    model.add_perma_hook("hook_embed", Counter().inc)
    model.add_hook("blocks.1.attn.hook_pattern", Counter().inc, dir="bwd")
    listed = model.list_hooks()
    assert set(listed) == {"hook_embed", "blocks.1.attn.hook_pattern"}
    assert listed["hook_embed"][0].is_permanent and listed["blocks.1.attn.hook_pattern"][0].dir == "bwd"
    assert set(model.list_hooks(including_permanent=False)) == {"blocks.1.attn.hook_pattern"}
    assert set(model.list_hooks(dir="fwd")) == {"hook_embed"}
    assert model.hook_counts() == {"hook_embed": {"fwd": 1, "bwd": 0}, "blocks.1.attn.hook_pattern": {"fwd": 0, "bwd": 1}}
    listed["blocks.1.attn.hook_pattern"][0].hook.remove()  # TransformerLens's handle.hook.remove()
    assert set(model.list_hooks()) == {"hook_embed"}
    # mod_dict: every submodule and hook point by name; hook_dict: the hook points
    assert model.mod_dict["blocks.0.attn"] is model.blocks[0].attn
    assert model.mod_dict["blocks.0.attn.hook_z"] is model.blocks[0].attn.hook_z is model.hook_dict["blocks.0.attn.hook_z"]
    assert all(isinstance(hp, HookPoint) and hp.name == name for name, hp in model.hook_dict.items())
    model.mod_dict["blocks.0.hook_resid_pre"].add_hook(Counter().inc)
    assert "blocks.0.hook_resid_pre" in model.list_hooks()
    model.reset_hooks(including_permanent=True)


def test_bad_hook_specs_are_named(model):
    with pytest.raises(TypeError, match="list of pairs"):
        model.run_with_hooks(TOKENS, fwd_hooks=("hook_embed", Counter().inc))
    with pytest.raises(KeyError, match="blocks.7.hook_z"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.7.hook_z", Counter().inc)])
    _, cache = model.run_with_cache(TOKENS, names_filter=["hook_embed", "blocks.7.hook_z"])  # as TransformerLens
    assert list(cache) == ["hook_embed"]
    with pytest.raises(ValueError, match="names_filter"):
        model.run_with_cache(TOKENS, names_filter=7)
    assert model.list_hooks() == {}


# run_with_cache -------------------------------------------------------------------------------

def test_run_with_cache_keeps_the_graph_as_transformer_lens_does(model):
    logits, cache = model.run_with_cache(TOKENS)
    assert logits.requires_grad and not any(t.requires_grad for t in cache.values())
    with torch.no_grad():
        logits, _ = model.run_with_cache(TOKENS)
    assert not logits.requires_grad
    _, plain = model.run_with_cache(TOKENS, return_cache_object=False)
    assert type(plain) is dict and set(plain) == set(cache)


def gradient_of(model, loss_of_logits, name):
    """Independent truth: autograd on a retained copy of one activation."""
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept["act"] = act

    model.zero_grad()
    with model.hooks(fwd_hooks=[(name, keep)]):
        loss_of_logits(model(TOKENS)).backward()
    return kept["act"].grad


def test_incl_bwd_with_return_type_loss_and_with_loss_fn(model):
    out, cache = model.run_with_cache(TOKENS, return_type="loss", incl_bwd=True)
    assert out.dim() == 0
    assert {k for k in cache if k.endswith("_grad")} == {k + "_grad" for k in cache if not k.endswith("_grad")}
    expected = gradient_of(model, lambda logits: model.loss_fn(logits, TOKENS), "blocks.1.hook_resid_mid")
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid_grad"], expected)
    loss_fn = lambda logits: logits[:, -1, 4].sum()  # noqa: E731
    _, cache = model.run_with_cache(TOKENS, incl_bwd=True, loss_fn=loss_fn)
    torch.testing.assert_close(cache["blocks.0.attn.hook_v_grad"], gradient_of(model, loss_fn, "blocks.0.attn.hook_v"))
    with pytest.raises(ValueError, match="no_grad"), torch.no_grad():
        model.run_with_cache(TOKENS, incl_bwd=True, return_type="loss")
    assert model.list_hooks() == {}


def test_pos_slice_remove_batch_dim_and_device(model):
    _, full = model.run_with_cache(TOKENS)
    for pos_slice, index in [(2, [2]), ((1, 4), slice(1, 4)), ([0, 5], [0, 5])]:
        _, cache = model.run_with_cache(TOKENS, pos_slice=pos_slice)
        for name in ("blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.1.attn.hook_pattern",
                     "blocks.0.ln1.hook_scale", "unembed.hook_out"):
            # the query position: axis 1 of [batch, pos, ...], axis 2 of the pattern [batch, head, q, k]
            want = full[name][:, :, index] if name.endswith("pattern") else full[name][:, index]
            torch.testing.assert_close(cache[name], want, msg=f"{pos_slice} {name}")
    _, one = model.run_with_cache(TOKENS[:1], remove_batch_dim=True, device="cpu")
    torch.testing.assert_close(one["blocks.1.hook_mlp_out"], full["blocks.1.hook_mlp_out"][0])
    with pytest.raises(ValueError, match="batch of one"):
        model.run_with_cache(TOKENS, remove_batch_dim=True)
    assert model.list_hooks() == {}


def test_add_caching_hooks_and_cache_some(model):
    cache = model.add_caching_hooks(names_filter=["blocks.0.hook_resid_post"])
    model(TOKENS)
    some = {}
    model.reset_hooks()
    model.cache_some(some, lambda n: n.endswith("hook_z"))
    model(TOKENS)
    model.reset_hooks()
    _, full = model.run_with_cache(TOKENS)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])
    assert set(some) == {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}


# Optional hook points --------------------------------------------------------------------------

def test_attn_result_follows_the_switch_or_a_named_hook(model):
    _, cache = model.run_with_cache(TOKENS)
    assert "blocks.0.attn.hook_result" not in cache  # off by default: n_heads x attn_out's memory
    model.add_hook(lambda n: True, Counter().inc)  # a filter hook does not switch it on
    _, cache = model.run_with_cache(TOKENS)
    assert "blocks.0.attn.hook_result" not in cache
    model.reset_hooks()
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(TOKENS)
    model.set_use_attn_result(False)
    attn = model.blocks[0].attn
    # each head's result is z_h @ W_O[h]; with b_O they add up to hook_attn_out
    by_hand = torch.stack([cache["z", 0][:, :, h] @ attn.W_O[h] for h in range(CFG.n_heads)], dim=2)
    torch.testing.assert_close(cache["result", 0], by_hand)
    torch.testing.assert_close(cache["result", 0].sum(2) + attn.b_O, cache["attn_out", 0])
    # a hook attached by name gets it with the switch off (TransformerLens would skip it silently)
    seen = []
    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_result", lambda r, hook: seen.append(r.shape))])
    assert seen == [(3, 6, 2, 16)]


def test_split_qkv_inputs_are_per_head_and_independent(model):
    with torch.no_grad():
        plain = model(TOKENS)
    model.set_use_split_qkv_input(True)
    logits, cache = model.run_with_cache(TOKENS)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    resid = cache["blocks.1.hook_resid_pre"]
    for point in ("q", "k", "v"):
        torch.testing.assert_close(cache[f"blocks.1.hook_{point}_input"], resid[:, :, None].expand(3, 6, 2, 16))

    def replace_head1_value_input(v_in, hook):
        v_in[:, :, 1] = torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(9))

    with model.hooks(fwd_hooks=[("blocks.1.hook_v_input", replace_head1_value_input)]):
        _, edited = model.run_with_cache(TOKENS)
    model.set_use_split_qkv_input(False)
    # only head 1's values (hence its z) change; queries, keys and head 0 are untouched
    torch.testing.assert_close(edited["blocks.1.attn.hook_q"], cache["blocks.1.attn.hook_q"])
    torch.testing.assert_close(edited["blocks.1.attn.hook_k"], cache["blocks.1.attn.hook_k"])
    torch.testing.assert_close(edited["blocks.1.attn.hook_z"][:, :, 0], cache["blocks.1.attn.hook_z"][:, :, 0])
    assert not torch.allclose(edited["blocks.1.attn.hook_z"][:, :, 1], cache["blocks.1.attn.hook_z"][:, :, 1])


def test_attn_in_and_mlp_in(model):
    model.set_use_attn_in(True)
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(TOKENS)
    torch.testing.assert_close(cache["blocks.0.hook_attn_in"], cache["blocks.0.hook_resid_pre"][:, :, None].expand(3, 6, 2, 16))
    torch.testing.assert_close(cache["blocks.0.hook_mlp_in"], cache["blocks.0.hook_resid_mid"])

    def double(x, hook):
        x.mul_(2)

    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_in", double)]):
        _, edited = model.run_with_cache(TOKENS)
    model.set_use_attn_in(False)
    model.set_use_hook_mlp_in(False)
    # the edit reaches the MLP only: the residual stream carries resid_mid unchanged
    torch.testing.assert_close(edited["blocks.0.hook_resid_mid"], cache["blocks.0.hook_resid_mid"])
    torch.testing.assert_close(edited["blocks.0.ln2.hook_normalized"], cache["blocks.0.ln2.hook_normalized"],
                               atol=1e-3, rtol=0)  # scale-invariant, but for eps
    torch.testing.assert_close(edited["blocks.0.hook_resid_post"],
                               edited["blocks.0.hook_resid_mid"] + edited["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(edited["blocks.0.ln2.hook_scale"], 2 * cache["blocks.0.ln2.hook_scale"],
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attention-only"):
        Transformer(ModelConfig(d_model=8, n_heads=2, attn_only=True)).set_use_hook_mlp_in(True)
    with pytest.raises(TypeError, match="True or False"):
        model.set_use_attn_result("yes")


def test_one_attention_kernel_whatever_is_hooked(model, monkeypatch):
    """forward, run_with_cache and run_with_hooks run the same explicit arithmetic (so caching
    changes no number); only the training path (positions=) uses the fused kernel."""
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = model(TOKENS)
    _, cache = model.run_with_cache(TOKENS)
    hooked = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: None)])
    assert calls == []
    assert torch.equal(plain, hooked) and torch.equal(plain, model.run_with_cache(TOKENS)[0])
    model(TOKENS, positions=torch.tensor([4, 5]))
    assert len(calls) == CFG.n_layers

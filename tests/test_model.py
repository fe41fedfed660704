"""The Transformer against an independent plain implementation written here."""
import math

import pytest
import torch
import torch.nn.functional as F

from grokmath import ModelConfig, Transformer


def small_cfg(**kw):
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=12, d_vocab_out=10, n_ctx=18, seed=3)
    base.update(kw)
    return ModelConfig(**base)


def reference_forward(model, tokens):
    """A straightforward full-sequence forward from the model's weights, loop over heads."""
    cfg = model.cfg
    x = model.embed.W_E[tokens]
    if cfg.positional != "none":
        x = x + model.pos_embed.W_pos[: tokens.shape[1]]

    def ln(mod, x):
        if cfg.normalization is None:
            return x
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + cfg.ln_eps) * mod.w + mod.b

    n = tokens.shape[1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for block in model.blocks:
        a, h_in = block.attn, ln(block.ln1, x)
        out = torch.zeros_like(x)
        for h in range(cfg.n_heads):
            q, k, v = h_in @ a.W_Q[h], h_in @ a.W_K[h], h_in @ a.W_V[h]
            if cfg.attn_bias:
                q, k, v = q + a.b_Q[h], k + a.b_K[h], v + a.b_V[h]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.d_head)
            scores = scores.masked_fill(~causal, -1e30)
            out = out + scores.softmax(-1) @ v @ a.W_O[h]
        x = x + out + (a.b_O if cfg.attn_bias else 0)
        if not cfg.attn_only:
            m = block.mlp
            pre = ln(block.ln2, x) @ m.W_in + (m.b_in if cfg.mlp_bias else 0)
            act = F.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre)
            x = x + act @ m.W_out + (m.b_out if cfg.mlp_bias else 0)
    x = ln(model.ln_final, x)
    return x @ model.unembed.W_U + (model.unembed.b_U if cfg.unembed_bias else 0)


CONFIGS = [
    dict(),
    dict(normalization="LN", attn_bias=True, unembed_bias=True, act_fn="gelu"),
    dict(attn_only=True, n_layers=1),
    dict(positional="sinusoidal", mlp_bias=False),
    dict(positional="none", n_layers=3, d_head=5),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_matches_reference_and_shapes(kw):
    model = Transformer(small_cfg(**kw))
    with torch.no_grad():  # nonzero biases and LN weights, so none can be silently dropped
        for name, p in model.named_parameters():
            if ".b_" in name or name.endswith((".w", ".b")):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    tokens = torch.randint(0, 12, (5, 18), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (5, 18, 10)
    torch.testing.assert_close(logits, reference_forward(model, tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", CONFIGS)
def test_answer_positions_path_equals_full_path(kw):
    """Losses and gradients of model(tokens, positions) equal those of the full forward."""
    model = Transformer(small_cfg(**kw))
    tokens = torch.randint(0, 12, (6, 18), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 10, (6, 6), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(11, 17)

    def loss_and_grads(fast):
        model.zero_grad()
        logits = model(tokens, positions=positions) if fast else reference_forward(model, tokens)[:, positions]
        loss = F.cross_entropy(logits.flatten(0, 1).double(), targets.flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_fast, g_fast = loss_and_grads(True)
    loss_ref, g_ref = loss_and_grads(False)
    torch.testing.assert_close(loss_fast, loss_ref, atol=1e-6, rtol=1e-6)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_causal():
    model = Transformer(small_cfg(normalization="LN"))
    tokens = torch.randint(0, 12, (4, 18), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 12
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_seeded_init_without_global_rng():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = Transformer(small_cfg(seed=7))
    after = torch.rand(1)
    assert torch.equal(before, after), "building a model must not draw from the global RNG"
    b = Transformer(small_cfg(seed=7))
    c = Transformer(small_cfg(seed=8))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.embed.W_E, c.embed.W_E)


def test_seed_notebook_init_scale():
    cfg = ModelConfig(d_model=512, n_heads=4, d_vocab=12, d_vocab_out=10, n_ctx=18, seed=0)
    model = Transformer(cfg)
    assert abs(model.blocks[0].attn.W_Q.std().item() - 1 / math.sqrt(512)) < 0.002
    assert abs(model.unembed.W_U.std().item() - 1 / math.sqrt(10)) < 0.02
    assert model.blocks[0].attn.W_O.shape == (4, 128, 512)


def test_parameter_names_are_the_fields():
    model = Transformer(small_cfg(normalization="LN", attn_bias=True, unembed_bias=True))
    names = set(dict(model.named_parameters()))
    for expected in ["embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "blocks.0.attn.W_K",
                     "blocks.0.attn.W_V", "blocks.0.attn.W_O", "blocks.0.attn.b_Q", "blocks.0.mlp.W_in",
                     "blocks.0.mlp.b_in", "blocks.0.mlp.W_out", "blocks.0.ln1.w", "blocks.1.ln2.b",
                     "ln_final.w", "unembed.W_U", "unembed.b_U"]:
        assert expected in names
    assert model.W_Q.shape == (2, 4, 32, 8)


def test_too_long_input_is_refused():
    model = Transformer(small_cfg())
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(1, 19, dtype=torch.long))


# TransformerLens's forward: return types, stop_at_layer, start_at_layer ------------------------

def lm_model():
    """A model whose output vocabulary is its input one, so the next-token loss applies."""
    return Transformer(small_cfg(d_vocab_out=12, normalization="LN", attn_bias=True, unembed_bias=True))


def test_return_types_and_next_token_loss():
    model = lm_model()
    tokens = torch.randint(0, 12, (4, 18), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    # independent truth: cross entropy of position t's logits against token t+1
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 12), tokens[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(model(tokens, return_type="loss"), expected.mean())
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (4, 17)
    torch.testing.assert_close(per_token, expected.view(4, 17))
    both = model(tokens, return_type="both")
    torch.testing.assert_close(both.logits, logits)
    torch.testing.assert_close(both.loss, expected.mean())
    assert model(tokens, return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="probs")


def test_loss_refused_when_the_output_vocabulary_differs():
    model = Transformer(small_cfg())  # d_vocab 12, d_vocab_out 10: a task's answer vocabulary
    tokens = torch.randint(0, 12, (2, 18), generator=torch.Generator().manual_seed(0))
    for return_type in ("loss", "both"):
        with pytest.raises(ValueError, match="d_vocab_out == d_vocab") as err:
            model(tokens, return_type=return_type)
        assert "\n" not in str(err.value) and "grokmath.training.losses" in str(err.value)


@pytest.mark.parametrize("kw", [dict(normalization="LN"), dict(attn_only=True, n_layers=3)])
def test_stop_and_start_at_layer(kw):
    model = Transformer(small_cfg(**kw))
    n = model.cfg.n_layers
    tokens = torch.randint(0, 12, (3, 18), generator=torch.Generator().manual_seed(1))
    logits, cache = model.run_with_cache(tokens)
    embedded = model.embed.W_E[tokens] + model.pos_embed.W_pos  # independent: embedding by hand
    torch.testing.assert_close(model(tokens, stop_at_layer=0), embedded)
    for layer in range(n):
        resid_pre = cache[f"blocks.{layer}.hook_resid_pre"]
        torch.testing.assert_close(model(tokens, stop_at_layer=layer), resid_pre)
        torch.testing.assert_close(model(tokens, stop_at_layer=layer - n), resid_pre)  # negative, as a slice
        # starting from the residual stream reproduces the rest of the forward
        torch.testing.assert_close(model(resid_pre, start_at_layer=layer), logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(resid_pre, start_at_layer=layer - n), logits, atol=1e-5, rtol=1e-5)
        if layer + 1 < n:
            torch.testing.assert_close(model(resid_pre, start_at_layer=layer, stop_at_layer=layer + 1),
                                       cache[f"blocks.{layer + 1}.hook_resid_pre"], atol=1e-5, rtol=1e-5)
    final = cache[f"blocks.{n - 1}.hook_resid_post"]
    torch.testing.assert_close(model(tokens, stop_at_layer=n), final)
    torch.testing.assert_close(model(final, start_at_layer=n), logits, atol=1e-5, rtol=1e-5)
    # positions still pick the logits when starting part way
    pos = torch.tensor([3, 17])
    torch.testing.assert_close(model(cache["blocks.1.hook_resid_pre"], start_at_layer=1, positions=pos),
                               logits[:, pos], atol=1e-5, rtol=1e-5)


def test_start_at_layer_loss_needs_tokens_and_bad_inputs_are_named():
    model = lm_model()
    tokens = torch.randint(0, 12, (2, 18), generator=torch.Generator().manual_seed(0))
    resid = model(tokens, stop_at_layer=1)
    with pytest.raises(ValueError, match="tokens="):
        model(resid, start_at_layer=1, return_type="loss")
    torch.testing.assert_close(model(resid, start_at_layer=1, return_type="loss", tokens=tokens),
                               model(tokens, return_type="loss"), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="residual stream"):
        model(tokens, start_at_layer=1)
    with pytest.raises(TypeError, match="start_at_layer"):
        model(resid)
    with pytest.raises(ValueError, match="positions"):
        model(tokens, stop_at_layer=1, positions=torch.tensor([3]))

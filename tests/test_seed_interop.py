"""The seed notebooks' own checkpoints in grokmath: `load_seed_state_dict` against re-typed copies
of the notebooks' model classes (tests/seed_notebook_models.py), logits to 1e-5, what the hook
points hold, the doubled residual, and the one-line errors for keys that do not fit."""
import pytest
import torch

import seed_notebook_models as nb
from grokmath import ModelConfig, Transformer
from grokmath.interop.state_dicts import load_seed_checkpoint, load_seed_state_dict, to_tlens_state_dict


def build(make, seed=0):
    """A notebook model with every parameter random, without touching the global RNG's state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make()
    return nb.randomise(model, seed + 1).eval()


def tokens_for(d_vocab, n_ctx, batch=6, seed=0):
    return torch.randint(0, d_vocab, (batch, n_ctx), generator=torch.Generator().manual_seed(seed))


# The notebooks' set-ups, shrunk: 5-digit addition (grokking notebook), the same in the analysis
# notebook's class, skip-trigrams (attention-only, d_vocab_out), and the induction model.
ADDITION = dict(num_layers=1, d_vocab=12, d_model=32, d_mlp=128, d_head=8, num_heads=4, n_ctx=18,
                act_type='ReLU', d_vocab_out=10)
SKIP_TRIGRAM = dict(num_layers=1, d_vocab=22, d_model=16, d_mlp=64, d_head=8, num_heads=1, n_ctx=42,
                    act_type='ReLU', attn_only=True, d_vocab_out=10)


def induction_config(pos_embed_type='orig', num_layers=2):
    return dict(num_layers=num_layers, d_model=24, num_heads=4, n_ctx=20, act_type='ReLU', d_vocab=30,
                pos_embed_type=pos_embed_type, seed=0, d_head=6, d_mlp=96)


def assert_same_logits(ref, tokens, **kwargs):
    model = load_seed_state_dict(ref.state_dict(), **kwargs)
    with torch.no_grad():
        want = ref(tokens)
        got = model(tokens)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return model


@pytest.mark.parametrize("settings", [
    dict(ADDITION),
    dict(ADDITION, num_layers=2, act_type='GeLU'),
    dict(ADDITION, use_pos=False),
    dict(SKIP_TRIGRAM),
    dict(SKIP_TRIGRAM, num_layers=2, num_heads=2),
])
def test_grokking_notebook_transformer_logits(settings):
    ref = build(lambda: nb.GrokkingTransformer(**settings))
    model = assert_same_logits(ref, tokens_for(settings['d_vocab'], settings['n_ctx']),
                               act_type=settings['act_type'])
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (
        settings['num_layers'], settings['d_model'], settings['num_heads'], settings['d_head'])
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx) == (settings['d_vocab'], settings['d_vocab_out'], settings['n_ctx'])
    assert cfg.attn_only == settings.get('attn_only', False) and not cfg.residual_doubled
    assert cfg.positional == ('learned' if settings.get('use_pos', True) else 'none')
    if not cfg.attn_only:
        assert cfg.d_mlp == settings['d_mlp'] and cfg.act_fn == settings['act_type'].lower()


def test_analysis_notebook_transformer_logits_flat_W_O():
    settings = {k: v for k, v in ADDITION.items() if k != 'd_vocab_out'}
    ref = build(lambda: nb.AnalysisTransformer(**settings))
    assert ref.state_dict()['blocks.0.attn.W_O'].shape == (32, 32)  # [d_model, heads * d_head]
    model = assert_same_logits(ref, tokens_for(12, 18))
    assert model.cfg.d_vocab_out == 12  # its W_U covers '+' and '=' too


@pytest.mark.parametrize("pos_embed_type", ['orig', 'sine'])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_induction_model_logits_with_the_doubled_residual(pos_embed_type, num_layers):
    config = induction_config(pos_embed_type, num_layers)
    ref = build(lambda: nb.AttnOnlyTransformer(config))
    tokens = tokens_for(30, 20)
    model = assert_same_logits(ref, tokens)
    assert model.cfg.residual_doubled and model.cfg.attn_only
    assert model.cfg.positional == {'orig': 'learned', 'sine': 'sinusoidal'}[pos_embed_type]
    # the option is what makes them agree: without it the logits differ
    plain = load_seed_state_dict(ref.state_dict(), residual_doubled=False)
    with torch.no_grad():
        assert (plain(tokens) - ref(tokens)).abs().max() > 1e-2


def test_induction_hook_points_keep_their_meaning():
    ref = build(lambda: nb.AttnOnlyTransformer(induction_config()))
    model = load_seed_state_dict(ref.state_dict())
    tokens = tokens_for(30, 20)
    with torch.no_grad():
        ref(tokens)
        _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        theirs = lambda name: ref.cache[f'attn_blocks.{layer}.{name}']  # noqa: E731
        ours = lambda name: cache[f'blocks.{layer}.{name}']  # noqa: E731
        torch.testing.assert_close(ours('hook_resid_pre'), theirs('hook_resid_pre'), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours('hook_attn_out'), theirs('hook_attn_out'), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours('attn.hook_pattern'), theirs('attn.hook_attn'), atol=1e-6, rtol=0)
        # the notebook's hook_resid_post is its block's output x + attn(x); grokmath's is the
        # stream the next block reads, 2x + attn(x)
        torch.testing.assert_close(ours('hook_resid_post') - ours('hook_resid_pre'), theirs('hook_resid_post'),
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache['blocks.0.hook_resid_post'], cache['blocks.1.hook_resid_pre'])


def test_grokking_transformer_hook_points_match():
    ref = build(lambda: nb.GrokkingTransformer(**ADDITION))
    model = load_seed_state_dict(ref.state_dict())
    tokens = tokens_for(12, 18)
    with torch.no_grad():
        ref(tokens)
        _, cache = model.run_with_cache(tokens)
    close = dict(atol=1e-5, rtol=1e-5)
    for name in ('hook_resid_pre', 'hook_attn_out', 'hook_resid_mid', 'hook_mlp_out', 'hook_resid_post',
                 'mlp.hook_pre', 'mlp.hook_post'):
        torch.testing.assert_close(cache[f'blocks.0.{name}'], ref.cache[f'blocks.0.{name}'], **close)
    torch.testing.assert_close(cache['blocks.0.attn.hook_pattern'], ref.cache['blocks.0.attn.hook_attn'], **close)
    # the notebook's q, k, v, z are [batch, head, pos, d_head]; grokmath's (TransformerLens's) [batch, pos, head, d_head]
    for name in ('q', 'k', 'v', 'z'):
        torch.testing.assert_close(cache[f'blocks.0.attn.hook_{name}'].transpose(1, 2),
                                   ref.cache[f'blocks.0.attn.hook_{name}'], **close)


def test_doubled_residual_with_positions_and_an_mlp():
    """The q_pos fast path adds the same input again; with an MLP the block is x + (x + attn + mlp)."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=9, n_ctx=7, residual_doubled=True, seed=3)
    model = Transformer(cfg)
    tokens = tokens_for(9, 7)
    with torch.no_grad():
        full = model(tokens)
        pos = torch.tensor([2, 5, 6])
        torch.testing.assert_close(model(tokens, positions=pos), full[:, pos], atol=1e-5, rtol=1e-5)
        _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        c = lambda name: cache[f'blocks.{layer}.{name}']  # noqa: E731
        torch.testing.assert_close(c('hook_resid_post'), 2 * c('hook_resid_pre') + c('hook_attn_out') + c('hook_mlp_out'),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c('hook_resid_mid'), c('hook_resid_pre') + c('hook_attn_out'), atol=1e-5, rtol=1e-5)


def test_residual_doubled_is_a_validated_config_field():
    assert ModelConfig().residual_doubled is False
    with pytest.raises(ValueError, match="residual_doubled"):
        ModelConfig(residual_doubled=1)
    cfg = ModelConfig(residual_doubled=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({k: v for k, v in ModelConfig().to_dict().items() if k != 'residual_doubled'}) \
        == ModelConfig()  # configs saved before the field still load
    with pytest.raises(ValueError, match="residual_doubled"):  # TransformerLens cannot hold it
        to_tlens_state_dict(Transformer(ModelConfig(d_model=16, residual_doubled=True)))


# ---- errors --------------------------------------------------------------------------------------

def one_line_error(state_dict, **kwargs):
    with pytest.raises(ValueError) as info:
        load_seed_state_dict(state_dict, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_keys_and_shapes_are_all_named_in_one_line():
    sd = build(lambda: nb.GrokkingTransformer(**dict(ADDITION, num_layers=2))).state_dict()
    renamed = dict(sd)
    renamed['blocks.1.attn.W_k'] = renamed.pop('blocks.1.attn.W_K')
    renamed['blocks.0.ln1.w_ln'] = torch.ones(32)
    del renamed['blocks.0.mlp.b_out']
    renamed['blocks.1.attn.W_V'] = torch.zeros(4, 9, 32)
    message = one_line_error(renamed)
    for key in ('blocks.1.attn.W_K', 'blocks.1.attn.W_k', 'blocks.0.ln1.w_ln', 'blocks.0.mlp.b_out'):
        assert key in message, key
    assert "blocks.1.attn.W_V (4, 9, 32) (want (4, 8, 32))" in message
    assert "missing" in message and "unexpected" in message and "wrong shape" in message


def test_more_misfits_are_named():
    sd = build(lambda: nb.AttnOnlyTransformer(induction_config())).state_dict()
    message = one_line_error({**sd, 'attn_blocks.1.mlp.W_in': torch.zeros(96, 24)})
    assert "unexpected ['attn_blocks.1.mlp.W_in']" in message and "AttnOnlyTransformer" in message
    message = one_line_error({**sd, 'attn_blocks.0.attn.W_O': torch.zeros(24, 23)})
    assert "attn_blocks.0.attn.W_O (24, 23) (want (24, 24))" in message
    message = one_line_error({**sd, 'attn_blocks.1.attn.mask': torch.ones(20, 20)})
    assert "not the causal mask ['attn_blocks.1.attn.mask']" in message
    assert "missing ['attn_blocks.1.attn.W_Q']" in one_line_error({k: v for k, v in sd.items()
                                                                  if k != 'attn_blocks.1.attn.W_Q'})
    # a layer left out in the middle: layer 2 exists, so every key of layer 1 is missing
    gap = {k.replace('attn_blocks.1.', 'attn_blocks.2.'): v for k, v in sd.items()}
    message = one_line_error(gap)
    assert all(f"'attn_blocks.1.attn.{name}'" in message for name in ('W_Q', 'W_K', 'W_V', 'W_O', 'mask'))


def test_what_is_not_a_seed_state_dict():
    tl_style = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=9, n_ctx=7)).state_dict()
    message = one_line_error(tl_style)  # grokmath's own layout: W_E is [d_vocab, d_model], W_Q 3-D the other way
    assert "wrong shape" in message or "missing" in message
    assert "neither" in one_line_error({'embed.W_E': torch.zeros(4, 5)})
    sd = build(lambda: nb.AttnOnlyTransformer(induction_config())).state_dict()
    both = {**sd, 'blocks.0.attn.W_Q': sd['attn_blocks.0.attn.W_Q']}
    assert "attn_blocks" in one_line_error(both)
    no_embed = {k: v for k, v in sd.items() if k != 'embed.W_E'}
    assert "embed.W_E" in one_line_error(no_embed)
    assert "act_type" in one_line_error(sd, act_type='SiLU')
    assert "residual_doubled" in one_line_error(sd, residual_doubled='yes')
    assert "dict of tensors" in one_line_error({'model': sd})


# ---- whole checkpoint files ----------------------------------------------------------------------

def test_checkpoint_files_as_the_notebook_saves_them(tmp_path):
    config = induction_config('orig')
    ref = build(lambda: nb.AttnOnlyTransformer(config))
    optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step / 100, 1))
    tokens = tokens_for(30, 20)
    ref(tokens).sum().backward()
    optimizer.step()
    scheduler.step()
    ref.eval()
    torch.save({'model': ref.state_dict(), 'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                'train_losses': [5.1, 4.9], 'test_losses': [5.0], 'data_config': {'seq_len': 20, 'is_finite': True},
                'optim_config': {'lr': 1e-3}, 'model_config': config}, tmp_path / 'final.pth')
    model = load_seed_checkpoint(tmp_path / 'final.pth')
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens), atol=1e-5, rtol=1e-5)

    gelu = build(lambda: nb.GrokkingTransformer(**dict(ADDITION, act_type='GeLU')))
    torch.save(gelu.state_dict(), tmp_path / 'bare.pth')
    model = load_seed_checkpoint(tmp_path / 'bare.pth', act_type='GeLU')
    with torch.no_grad():
        torch.testing.assert_close(model(tokens_for(12, 18)), gelu(tokens_for(12, 18)), atol=1e-5, rtol=1e-5)
    torch.save({'model': gelu.state_dict(), 'model_config': {'act_type': 'GeLU'}}, tmp_path / 'gelu.pth')
    assert load_seed_checkpoint(tmp_path / 'gelu.pth').cfg.act_fn == 'gelu'

    with pytest.raises(ValueError, match="cannot read the checkpoint") as info:
        load_seed_checkpoint(tmp_path / 'absent.pth')
    assert "\n" not in str(info.value)


def test_doubled_residual_refuses_additive_decompositions():
    """A doubled stream is not the sum of the layers' outputs: the splits refuse rather than lie."""
    from grokmath import ModelConfig, Transformer
    from grokmath.training.insert import insert_problems

    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=7, n_ctx=6, attn_only=True, residual_doubled=True)
    model = Transformer(cfg)
    tokens = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    for split in (cache.decompose_resid, cache.get_full_resid_decomposition):
        with pytest.raises(ValueError, match="residual_doubled"):
            split()
    with pytest.raises(ValueError, match="residual_doubled"):
        model.accumulated_bias(1)
    plain = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=7, n_ctx=6, attn_only=True)
    assert any("residual_doubled" in p for p in insert_problems(plain, cfg))

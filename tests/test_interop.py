"""TransformerLens weights: the fixture made by real TransformerLens, and the way back."""
from pathlib import Path

import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.interop.state_dicts import load_tlens_state_dict, to_tlens_config, to_tlens_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "tlens_quirke_style.pt"
ALL_HOOKS = Path(__file__).parent / "fixtures" / "tlens_all_hooks.pt"


def assert_matches(got, expected, name):
    assert got.shape == expected.shape, name
    # -inf above the diagonal in the scores must match exactly, the rest to 1e-5
    assert torch.equal(torch.isinf(got), torch.isinf(expected)), name
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=1e-5, rtol=0, msg=name)


def test_fixture_logits_and_every_activation():
    ref = torch.load(FIXTURE, weights_only=True)
    model = load_tlens_state_dict(ref["state_dict"], ref["config"])
    logits, cache = model.run_with_cache(ref["tokens"])
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)
    assert len(ref["activations"]) == 10
    for name, expected in ref["activations"].items():
        assert_matches(cache[name], expected, name)


def test_every_activation_transformer_lens_3_9_caches():
    """All 40 entries of TransformerLens 3.9's default run_with_cache (LayerNorm scale and
    normalized, unembed in/out, d_vocab_out != d_vocab, random biases): the same names, no more
    (no attn.hook_result by default), the same values."""
    ref = torch.load(ALL_HOOKS, weights_only=True)
    assert ref["config"]["d_vocab_out"] != ref["config"]["d_vocab"]
    model = load_tlens_state_dict(ref["state_dict"], ref["config"])
    logits, cache = model.run_with_cache(ref["tokens"])
    assert len(ref["activations"]) == 40
    assert list(cache) == list(ref["activations"])  # the same names, in the same (forward) order
    for name, expected in ref["activations"].items():
        assert_matches(cache[name], expected, name)
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)
    # the loss is TransformerLens's next-token loss only where the vocabularies agree
    with pytest.raises(ValueError, match="d_vocab_out == d_vocab"):
        model(ref["tokens"], return_type="loss")


def test_next_token_loss_from_transformer_lens_logits():
    """return_type='loss' / 'both' / loss_per_token against the definition applied to the logits
    TransformerLens produced: mean over batch and positions of -log p(token[t+1] | logits[t])."""
    ref = torch.load(FIXTURE, weights_only=True)
    model = load_tlens_state_dict(ref["state_dict"], ref["config"])
    tokens, tl_logits = ref["tokens"], ref["logits"].double()
    expected = torch.stack([-tl_logits[b, t].log_softmax(-1)[tokens[b, t + 1]]
                            for b in range(tokens.shape[0]) for t in range(tokens.shape[1] - 1)])
    expected = expected.view(tokens.shape[0], tokens.shape[1] - 1).float()
    torch.testing.assert_close(model(tokens, return_type="loss"), expected.mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(model(tokens, return_type="loss", loss_per_token=True), expected, atol=1e-5, rtol=0)
    logits, loss = model(tokens, return_type="both")
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, expected.mean(), atol=1e-5, rtol=0)


def test_round_trip_to_tlens_and_back():
    model = Transformer(ModelConfig(n_layers=2, d_model=24, n_heads=3, d_vocab=15, n_ctx=10, seed=4))
    tokens = torch.randint(0, 15, (3, 10), generator=torch.Generator().manual_seed(0))
    sd, cfg = to_tlens_state_dict(model), to_tlens_config(model)
    assert sd["blocks.0.attn.b_Q"].shape == (3, 8) and sd["unembed.b_U"].abs().sum() == 0
    back = load_tlens_state_dict(sd, cfg)
    torch.testing.assert_close(back(tokens), model(tokens))


def test_unsupported_fields_are_named():
    ref = torch.load(FIXTURE, weights_only=True)
    for field, value in [("normalization_type", "LNPre"), ("positional_embedding_type", "rotary"),
                         ("act_fn", "solu_ln"), ("n_key_value_heads", 1)]:
        with pytest.raises(ValueError, match=field):
            load_tlens_state_dict(ref["state_dict"], {**ref["config"], field: value})
    with pytest.raises(ValueError, match="does not fit"):
        load_tlens_state_dict(ref["state_dict"], {**ref["config"], "n_layers": 1})


def test_tlens_config_switches_turn_on_the_same_hook_points():
    data = torch.load(FIXTURE, weights_only=True)
    config = dict(data["config"], use_attn_result=True, use_split_qkv_input=True)
    model = load_tlens_state_dict(data["state_dict"], config)
    _, cache = model.run_with_cache(data["tokens"])
    assert "blocks.0.attn.hook_result" in cache and "blocks.1.hook_q_input" in cache
    plain = load_tlens_state_dict(data["state_dict"], data["config"])
    _, plain_cache = plain.run_with_cache(data["tokens"])
    assert "blocks.0.attn.hook_result" not in plain_cache
    # the head results add up to attn_out minus b_O, as TransformerLens's do
    attn_out = cache["attn_out", 0] - model.blocks[0].attn.b_O
    assert torch.allclose(cache["result", 0].sum(-2), attn_out, atol=1e-5)

"""The Python API refuses what it should (issue 14): one clear line naming the value, the hook
point and what to do, never a silent wrong answer."""
import math

import pytest
import torch

from grokmath import ModelConfig, Transformer

CFG = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=12, d_vocab_out=10, n_ctx=6, seed=0)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("eps", [math.inf, -math.inf, math.nan, 0.0, -1e-5, True, "1e-5"])
def test_ln_eps_must_be_a_small_positive_number(eps):
    with pytest.raises(ValueError, match="ln_eps") as err:
        ModelConfig(normalization="LN", ln_eps=eps)
    one_line(err)


@pytest.mark.parametrize("bad", [-1, 12, 1000])
def test_token_ids_outside_the_vocabulary_are_refused(bad):
    model = Transformer(CFG)
    tokens = torch.zeros(2, 6, dtype=torch.long)
    tokens[1, 3] = bad
    with pytest.raises(ValueError, match=f"token id {bad} .*d_vocab=12") as err:
        model(tokens)
    one_line(err)
    with pytest.raises(ValueError, match="d_vocab=12"):
        model.run_with_cache(tokens)
    assert model.list_hooks() == {}
    model(torch.full((2, 6), 11))  # the edges of the vocabulary are fine
    model(torch.zeros(2, 6, dtype=torch.int32))


def test_tokens_of_the_wrong_type_or_shape_are_refused():
    model = Transformer(CFG)
    with pytest.raises(TypeError, match="integers"):
        model(torch.zeros(2, 6))
    with pytest.raises(TypeError, match="integers"):
        model(torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        model(torch.zeros(2, 2, 6, dtype=torch.long))
    torch.testing.assert_close(model([1, 2, 3]), model(torch.tensor([[1, 2, 3]])))  # a list of ids is fine


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_a_hook_returning_a_wrong_shape_or_a_non_tensor_is_named(direction):
    model = Transformer(CFG)
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    name = "blocks.0.hook_mlp_out"

    def run(hook):
        if direction == "fwd":
            model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
        else:
            with model.hooks(bwd_hooks=[(name, hook)]):
                model(tokens).sum().backward()

    def wrong_shape(act, hook):
        return act[:, :-1]

    with pytest.raises(ValueError, match=rf"wrong_shape on {name} returned shape \(2, 5, 16\).*\(2, 6, 16\)") as err:
        run(wrong_shape)
    one_line(err)

    def not_a_tensor(act, hook):
        return act.tolist()

    with pytest.raises(TypeError, match=rf"not_a_tensor on {name} returned a list.*\(2, 6, 16\)") as err:
        run(not_a_tensor)
    one_line(err)
    assert model.list_hooks() == {}


def test_a_hook_that_is_not_a_function_is_named():
    model = Transformer(CFG)
    with pytest.raises(TypeError, match="blocks.0.hook_resid_pre"):
        model.add_hook("blocks.0.hook_resid_pre", "zero")

"""ActivationCache checked against TransformerLens's documented definitions, by direct computation
on the cached activations, and against real TransformerLens's own activations (the all-hooks
fixture): the stacks sum to the residual stream, apply_ln uses the cached scale after centring,
logit_attrs add up to logit differences, lookups and labels are TransformerLens's."""
from pathlib import Path

import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.model.activation_cache import ActivationCache
from grokmath.interop.state_dicts import load_tlens_state_dict
from grokmath.model.utils import Slice, get_act_name

FIXTURE = Path(__file__).parent / "fixtures" / "tlens_all_hooks.pt"
close = torch.testing.assert_close
N_LAYERS, D_MODEL, N_HEADS, D_MLP, N_CTX, BATCH = 2, 16, 2, 24, 7, 5


def make_model(**settings):
    options = dict(n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_mlp=D_MLP, d_vocab=11, d_vocab_out=9,
                   n_ctx=N_CTX, normalization="LN", attn_bias=True, unembed_bias=True, seed=3)
    options.update(settings)
    model = Transformer(ModelConfig(**options)).eval()
    with torch.no_grad():  # random biases, so that nothing can silently drop one
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def cache_of(model, batch=BATCH):
    tokens = torch.randint(0, 11, (batch, N_CTX), generator=torch.Generator().manual_seed(2))
    logits, cache = model.run_with_cache(tokens)
    # per-head results are not cached by default in TransformerLens: the cache computes them from z
    return logits, ActivationCache({k: v for k, v in dict(cache).items() if not k.endswith("hook_result")}, model)


def layer_norm_by_hand(x, eps=1e-5):
    """(x - mean) / sqrt(var + eps): TransformerLens 3.x's hook_normalized, computed from the stream."""
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()


@pytest.fixture(scope="module")
def ln_run():
    model = make_model()
    logits, cache = cache_of(model)
    return model, logits, cache


def resid_input(cache, layer, mlp_input=False):
    if mlp_input:
        return cache["blocks.%d.hook_resid_mid" % layer]
    return cache["blocks.%d.hook_resid_pre" % layer] if layer < N_LAYERS else cache["blocks.1.hook_resid_post"]


# ---- names and lookup ----------------------------------------------------------------------------

def test_get_act_name_as_transformerlens_documents_it():
    assert get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"
    assert get_act_name("k", 0) == "blocks.0.attn.hook_k"
    assert get_act_name("pre", 2) == "blocks.2.mlp.hook_pre"
    assert get_act_name("embed") == "hook_embed" and get_act_name("pos_embed") == "hook_pos_embed"
    assert get_act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
    assert get_act_name("normalized") == "ln_final.hook_normalized"
    assert get_act_name("scale", 1, "ln1") == "blocks.1.ln1.hook_scale"
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name("pre5") == "blocks.5.mlp.hook_pre"
    assert get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert get_act_name("attn_out", 1) == "blocks.1.hook_attn_out"
    assert get_act_name("pattern", 0) == get_act_name("attn", 0) == "blocks.0.attn.hook_pattern"
    assert get_act_name("attn_logits", 0) == "blocks.0.attn.hook_attn_scores"
    assert get_act_name("value", 3) == "blocks.3.attn.hook_v"
    assert get_act_name("mlp_post", 1) == "blocks.1.mlp.hook_post"
    assert get_act_name("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"  # a full name passes


def test_lookup_by_name_shorthand_alias_and_negative_layer(ln_run):
    model, _, cache = ln_run
    d = cache.cache_dict
    assert cache["k", -1] is d["blocks.1.attn.hook_k"] and cache["k", -1, None] is d["blocks.1.attn.hook_k"]
    assert cache["embed"] is d["hook_embed"] and cache["embed", None] is d["hook_embed"]
    assert cache["scale", 1, "ln1"] is d["blocks.1.ln1.hook_scale"] is cache["scale1ln1"]
    assert cache["scale", -1, "ln2"] is d["blocks.1.ln2.hook_scale"]
    assert cache["scale"] is d["ln_final.hook_scale"]
    assert cache["pattern", 0] is d["blocks.0.attn.hook_pattern"] is cache["attn", 0]
    assert cache["blocks.0.attn.hook_attn"] is d["blocks.0.attn.hook_pattern"]  # the seed notebooks' aliases
    assert cache["blocks.1.attn.hook_attn_pre"] is d["blocks.1.attn.hook_attn_scores"]
    assert cache["scores", 1] is d["blocks.1.attn.hook_attn_scores"]  # grokmath's older shorthand
    assert ("k", -1) in cache and "blocks.0.attn.hook_attn" in cache and "hook_nothing" not in cache
    with pytest.raises(KeyError, match="not in the cache"):
        cache["hook_nothing"]
    assert len(cache) == len(d) and list(cache) == list(d) and list(cache.keys()) == list(d)
    assert all(a is b for a, b in zip(cache.values(), d.values()))
    assert list(cache.items()) == list(d.items())
    text = repr(cache)
    assert "blocks.0.attn.hook_pattern" in text and f"[{BATCH}, {N_HEADS}, {N_CTX}, {N_CTX}]" in text
    assert "tensor(" not in text
    assert cache.to("cpu") is cache


def test_result_lookup_names_the_fix():
    model = make_model()
    _, cache = cache_of(model)
    with pytest.raises(KeyError, match="compute_head_results"):
        cache["result", 0]


def test_slice_modes():
    x = torch.arange(24).reshape(2, 12)
    assert torch.equal(Slice(3).apply(x, dim=1), x[:, 3]) and Slice(3).mode == "int"
    assert torch.equal(Slice((2,)).apply(x, 1), x[:, :2]) and torch.equal(Slice((1, 9, 3)).apply(x, -1), x[:, 1:9:3])
    assert torch.equal(Slice([0, 5]).apply(x, 1), x[:, [0, 5]]) and Slice(torch.tensor([0, 5])).mode == "array"
    assert torch.equal(Slice(None).apply(x), x) and Slice(None).mode == "identity"
    assert Slice((1, 9, 3)).indices(12).tolist() == [1, 4, 7] and Slice(4).indices().tolist() == [4]
    assert Slice.unwrap(4).mode == "array" and torch.equal(Slice.unwrap(4).apply(x, 1), x[:, [4]])
    with pytest.raises(ValueError, match="cannot slice"):
        Slice("last")


# ---- residual stream stacks ----------------------------------------------------------------------

def test_accumulated_resid_is_the_stream_at_each_stage(ln_run):
    model, logits, cache = ln_run
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    close(stack, torch.stack([resid_input(cache, l) for l in range(N_LAYERS + 1)]), rtol=0, atol=0)
    for layer in (None, -1, N_LAYERS):
        assert torch.equal(cache.accumulated_resid(layer=layer, incl_mid=True), cache.accumulated_resid(incl_mid=True))
    mid, labels = cache.accumulated_resid(layer=1, incl_mid=True, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid"]
    assert torch.equal(mid[1], cache["resid_mid", 0]) and torch.equal(mid[3], cache["resid_mid", 1])
    last = cache.accumulated_resid(pos_slice=-1)
    assert last.shape == (3, BATCH, D_MODEL) and torch.equal(last, stack[:, :, -1])
    assert torch.equal(cache.accumulated_resid(pos_slice=(1, 3)), stack[:, :, 1:3])
    assert torch.equal(cache.accumulated_resid(pos_slice=[0, 4]), stack[:, :, [0, 4]])


def test_accumulated_resid_with_apply_ln(ln_run):
    model, logits, cache = ln_run
    # At the unembedding the final LayerNorm runs afresh on each stage: the last is the model's logits.
    lens = cache.accumulated_resid(apply_ln=True)
    close(lens[-1] @ model.W_U + model.b_U, logits, rtol=1e-5, atol=1e-5)
    raw = cache.accumulated_resid()
    w, b = model.ln_final.w, model.ln_final.b
    close(lens, layer_norm_by_hand(raw) * w + b, rtol=1e-5, atol=1e-5)
    # Elsewhere the cached scale of that layer's LayerNorm is used, after centring.
    at_1 = cache.accumulated_resid(layer=1, incl_mid=True, apply_ln=True)
    raw_1 = cache.accumulated_resid(layer=1, incl_mid=True)
    close(at_1, cache.apply_ln_to_stack(raw_1, 1))
    close(at_1[-1], layer_norm_by_hand(cache["resid_pre", 1]), rtol=1e-5, atol=1e-5)


def test_apply_ln_to_stack_centres_and_divides_by_the_cached_scale(ln_run):
    model, _, cache = ln_run
    for layer in range(N_LAYERS + 1):
        for mlp_input in ([False, True] if layer < N_LAYERS else [False]):
            x = resid_input(cache, layer, mlp_input)
            close(cache.apply_ln_to_stack(x[None], layer, mlp_input=mlp_input)[0], layer_norm_by_hand(x),
                  rtol=1e-5, atol=1e-5)
    # linear in the parts: the parts' images sum to the image of the whole stream
    parts = cache.decompose_resid(layer=1)
    close(cache.apply_ln_to_stack(parts, 1).sum(0), layer_norm_by_hand(cache["resid_pre", 1]), rtol=1e-4, atol=1e-5)
    # pos_slice is applied to the scale (the stack already has it); batch_slice to both
    last = parts[:, :, -1]
    close(cache.apply_ln_to_stack(last, 1, pos_slice=-1), cache.apply_ln_to_stack(parts, 1)[:, :, -1])
    close(cache.apply_ln_to_stack(parts, 1, batch_slice=[0, 3]), cache.apply_ln_to_stack(parts, 1)[:, [0, 3]])
    with pytest.raises(AssertionError):
        cache.apply_ln_to_stack(parts, N_LAYERS, mlp_input=True)


def test_decompose_resid_sums_to_the_stream(ln_run):
    model, _, cache = ln_run
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    for layer in range(N_LAYERS + 1):
        close(cache.decompose_resid(layer).sum(0), resid_input(cache, layer), rtol=1e-5, atol=1e-5)
        if layer < N_LAYERS:
            close(cache.decompose_resid(layer, mlp_input=True).sum(0), resid_input(cache, layer, True),
                  rtol=1e-5, atol=1e-5)
    attn, labels = cache.decompose_resid(layer=1, mlp_input=True, mode="attn", incl_embeds=False, return_labels=True)
    assert labels == ["0_attn_out", "1_attn_out"]
    assert torch.equal(attn, torch.stack([cache["attn_out", 0], cache["attn_out", 1]]))
    assert cache.decompose_resid(mode="mlp", incl_embeds=False, return_labels=True)[1] == ["0_mlp_out", "1_mlp_out"]
    assert cache.decompose_resid(0, incl_embeds=False).shape == (0, BATCH, N_CTX, D_MODEL)
    close(cache.decompose_resid(pos_slice=-1, apply_ln=True), cache.apply_ln_to_stack(stack[:, :, -1], pos_slice=-1))
    with pytest.raises(ValueError, match="mode"):
        cache.decompose_resid(mode="heads")


def test_head_results_are_z_times_W_O(ln_run):
    model, _, cache = ln_run
    stack, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1", "remainder"] and labels[:-1] == model.all_head_labels()
    for layer in range(N_LAYERS):
        heads = stack[2 * layer: 2 * layer + 2]
        for head in range(N_HEADS):
            close(heads[head], cache["z", layer][:, :, head] @ model.W_O[layer, head], rtol=1e-5, atol=1e-6)
        close(heads.sum(0) + model.b_O[layer], cache["attn_out", layer], rtol=1e-5, atol=1e-5)
    close(stack.sum(0), cache["resid_post", 1], rtol=1e-5, atol=1e-5)
    one, labels = cache.stack_head_results(layer=1, pos_slice=-1, incl_remainder=True, return_labels=True)
    assert labels == ["L0H0", "L0H1", "remainder"]
    close(one.sum(0), cache["resid_pre", 1][:, -1], rtol=1e-5, atol=1e-5)
    empty, labels = cache.stack_head_results(layer=0, pos_slice=-1, return_labels=True)
    assert empty.shape == (0, BATCH, D_MODEL) and labels == []
    # layer 0: the remainder is the stream entering layer 0 (TransformerLens gives the final resid_post)
    assert torch.equal(cache.stack_head_results(layer=0, incl_remainder=True)[0], cache["resid_pre", 0])
    close(cache.stack_head_results(apply_ln=True, pos_slice=-1),
          cache.apply_ln_to_stack(cache.stack_head_results(pos_slice=-1), pos_slice=-1))


def test_compute_head_results_fills_only_what_is_missing(ln_run):
    model, _, full = ln_run
    cache = ActivationCache({k: v for k, v in full.items() if not k.endswith("hook_result")}, model)
    assert "blocks.0.attn.hook_result" not in cache.cache_dict
    cache.compute_head_results()
    close(cache["result", 1][:, :, 0], cache["z", 1][:, :, 0] @ model.W_O[1, 0])
    cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] = float("inf")
    cache.compute_head_results()  # already there: left alone
    assert cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] == float("inf")


def test_stack_activation(ln_run):
    _, _, cache = ln_run
    stack = cache.stack_activation("scale", -1, "ln1")
    assert stack.shape == (N_LAYERS, BATCH, N_CTX, 1)
    assert all(torch.equal(stack[l], cache["scale", l, "ln1"]) for l in range(N_LAYERS))
    assert torch.equal(cache.stack_activation("pattern", 1), cache["pattern", 0][None])


def test_neuron_results_are_post_times_W_out(ln_run):
    model, _, cache = ln_run
    stack, labels = cache.stack_neuron_results(layer=N_LAYERS, return_labels=True, incl_remainder=True)
    assert labels[:3] == ["L0N0", "L0N1", "L0N2"] and labels[D_MLP] == "L1N0" and labels[-1] == "remainder"
    assert stack.shape == (2 * D_MLP + 1, BATCH, N_CTX, D_MODEL)
    close(stack[5], cache["post", 0][..., 5, None] * model.W_out[0, 5], rtol=0, atol=0)
    close(stack[:D_MLP].sum(0) + model.b_out[0], cache["mlp_out", 0], rtol=1e-5, atol=1e-5)
    close(stack.sum(0), cache["resid_post", 1], rtol=1e-5, atol=1e-5)
    some, labels = cache.stack_neuron_results(2, neuron_slice=[0, 1, 2], pos_slice=-1, return_labels=True)
    assert labels == ["L0N0", "L0N1", "L0N2", "L1N0", "L1N1", "L1N2"] and some.shape == (6, BATCH, D_MODEL)
    as_int, labels = cache.stack_neuron_results(2, neuron_slice=3, return_labels=True)
    assert labels == ["L0N3", "L1N3"] and torch.equal(as_int, cache.stack_neuron_results(2, neuron_slice=[3]))
    mid = cache.stack_neuron_results(1, incl_remainder=True, mlp_input=True)
    close(mid.sum(0), cache["resid_mid", 1], rtol=1e-5, atol=1e-5)
    single = cache.get_neuron_results(1, neuron_slice=[0, 1], pos_slice=-1)
    close(single, cache["post", 1][:, -1, :2, None] * model.W_out[1, :2])


@pytest.mark.parametrize("apply_ln", [False, True])
@pytest.mark.parametrize("remainder", [False, True])
def test_neuron_stack_options_agree_with_the_plain_stack(ln_run, apply_ln, remainder):
    model, _, cache = ln_run
    plain = cache.stack_neuron_results(2, pos_slice=-1, incl_remainder=remainder)
    if apply_ln:
        plain = cache.apply_ln_to_stack(plain, pos_slice=-1)
    got = cache.stack_neuron_results(2, pos_slice=-1, incl_remainder=remainder, apply_ln=apply_ln)
    close(got, plain, rtol=1e-4, atol=1e-6)
    direction = torch.randn(D_MODEL, 3, generator=torch.Generator().manual_seed(0))
    projected = cache.stack_neuron_results(2, pos_slice=-1, incl_remainder=remainder, apply_ln=apply_ln,
                                           project_output_onto=direction)
    close(projected, plain @ direction, rtol=1e-4, atol=1e-5)
    vector = cache.stack_neuron_results(2, pos_slice=-1, incl_remainder=remainder, apply_ln=apply_ln,
                                        project_output_onto=direction[:, 0])
    close(vector, plain @ direction[:, 0], rtol=1e-4, atol=1e-5)
    close(cache.get_neuron_results(0, project_output_onto=direction[:, 0]),
          cache.get_neuron_results(0) @ direction[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer,mlp_input", [(N_LAYERS, False), (1, False), (1, True), (0, True), (0, False)])
@pytest.mark.parametrize("expand_neurons", [True, False])
def test_full_decomposition_sums_to_the_stream(ln_run, layer, mlp_input, expand_neurons):
    model, _, cache = ln_run
    stack, labels = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input, expand_neurons=expand_neurons,
                                                       return_labels=True)
    assert len(labels) == stack.shape[0] and labels[-3:] == ["embed", "pos_embed", "bias"]
    n_heads = N_HEADS * (layer + int(mlp_input))
    assert labels[:n_heads] == model.all_head_labels()[:n_heads]
    if layer > 0:
        assert labels[n_heads] == ("L0N0" if expand_neurons else "0_mlp_out")
    close(stack.sum(0), resid_input(cache, layer, mlp_input), rtol=1e-5, atol=1e-5)
    close(stack[-1], model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons).expand_as(stack[-1]))
    # apply_ln and a projection act on every row, so the rows still add up
    normed = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input, expand_neurons=expand_neurons,
                                                apply_ln=True, pos_slice=-1)
    close(normed.sum(0), layer_norm_by_hand(resid_input(cache, layer, mlp_input))[:, -1], rtol=1e-4, atol=1e-5)
    direction = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(1))
    projected = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input, expand_neurons=expand_neurons,
                                                   apply_ln=True, pos_slice=-1, project_output_onto=direction)
    close(projected, normed @ direction, rtol=1e-4, atol=1e-5)


# ---- logit attribution ---------------------------------------------------------------------------

def test_logit_attrs_add_up_to_the_logit_difference():
    # Final LayerNorm with its initial w = 1, b = 0: logits = centred / scale @ W_U + b_U exactly.
    model = make_model()
    with torch.no_grad():
        model.ln_final.w.fill_(1.0)
        model.ln_final.b.zero_()
    logits, cache = cache_of(model)
    stack = cache.get_full_resid_decomposition()
    right, wrong = torch.tensor([1, 4, 0, 8, 2]), torch.tensor([3, 3, 5, 0, 7])
    attrs = cache.logit_attrs(stack, tokens=right, incorrect_tokens=wrong)  # [part, batch, pos]
    assert attrs.shape == (stack.shape[0], BATCH, N_CTX)
    rows = torch.arange(BATCH)
    diff = logits[rows, :, right] - logits[rows, :, wrong]  # [batch, pos]
    bias_diff = (model.b_U[right] - model.b_U[wrong])[:, None]
    close(attrs.sum(0) + bias_diff, diff, rtol=1e-4, atol=1e-5)
    # the last position only, per example
    last = cache.logit_attrs(stack[:, :, -1], tokens=right, incorrect_tokens=wrong, pos_slice=-1)
    close(last, attrs[:, :, -1], rtol=1e-5, atol=1e-6)
    # one example, the token as an int, the stack with or without its batch dimension
    one = cache.logit_attrs(stack[:, :, -1], tokens=int(right[3]), incorrect_tokens=int(wrong[3]),
                            pos_slice=-1, batch_slice=3)
    close(one, attrs[:, 3, -1], rtol=1e-5, atol=1e-6)
    batchless = cache.logit_attrs(stack[:, 3, -1], tokens=right[3], incorrect_tokens=wrong[3], pos_slice=-1,
                                  batch_slice=3, has_batch_dim=False)
    close(batchless, attrs[:, 3, -1], rtol=1e-5, atol=1e-6)
    some = cache.logit_attrs(stack[:, :, -1], tokens=right[[0, 2]], incorrect_tokens=wrong[[0, 2]], pos_slice=-1,
                             batch_slice=[0, 2])
    close(some, attrs[:, [0, 2], -1], rtol=1e-5, atol=1e-6)
    # a token for every example and position
    grid = torch.randint(0, 9, (BATCH, N_CTX), generator=torch.Generator().manual_seed(5))
    per_pos = cache.logit_attrs(stack, tokens=grid)
    close(per_pos.sum(0) + model.b_U[grid], logits.gather(-1, grid[..., None])[..., 0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(stack, tokens=right, incorrect_tokens=wrong[:2])
    with pytest.raises(ValueError, match="tokenizer"):
        cache.logit_attrs(stack, tokens=" 7")


def test_without_layernorm_apply_ln_changes_nothing_and_logit_attrs_are_exact():
    model = make_model(normalization=None, unembed_bias=False)
    logits, cache = cache_of(model)
    stack = cache.get_full_resid_decomposition()
    assert cache.apply_ln_to_stack(stack) is stack
    assert torch.equal(cache.accumulated_resid(apply_ln=True), cache.accumulated_resid())
    answers = torch.tensor([0, 1, 2, 3, 4])
    attrs = cache.logit_attrs(stack, tokens=answers)
    close(attrs.sum(0), logits[torch.arange(BATCH), :, answers], rtol=1e-4, atol=1e-5)


def test_attention_only_model_has_no_mlp_terms():
    model = make_model(attn_only=True, positional="none")
    logits, cache = cache_of(model)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "1_attn_out"]
    assert cache.accumulated_resid(incl_mid=True, return_labels=True)[1] == ["0_pre", "1_pre", "final_post"]
    full, labels = cache.get_full_resid_decomposition(return_labels=True, expand_neurons=True)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1", "embed", "bias"]
    close(full.sum(0), cache["resid_post", 1], rtol=1e-5, atol=1e-5)
    close(cache.accumulated_resid(apply_ln=True)[-1] @ model.W_U + model.b_U, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention-only"):
        cache.stack_neuron_results(1)
    with pytest.raises(ValueError, match="attention-only"):
        cache.decompose_resid(0, mlp_input=True)


# ---- the batch dimension -------------------------------------------------------------------------

def test_remove_and_slice_the_batch_dimension(ln_run):
    model, _, cache = ln_run
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="batch size 5"):
            ActivationCache(dict(cache.cache_dict), model).remove_batch_dim()
    two = cache.apply_slice_to_batch_dim(Slice((2, 4)))
    assert two.has_batch_dim and all(torch.equal(two[k], cache[k][2:4]) for k in cache)
    one = cache.apply_slice_to_batch_dim(2)
    assert not one.has_batch_dim and all(torch.equal(one[k], cache[k][2]) for k in cache)
    single = cache.apply_slice_to_batch_dim([2])
    shapes = {k: v.shape for k, v in single.items()}
    assert single.remove_batch_dim() is single and not single.has_batch_dim
    assert all(single[k].shape == shapes[k][1:] for k in shapes)
    single.remove_batch_dim()  # a second time changes nothing
    assert all(single[k].shape == shapes[k][1:] for k in shapes)
    with pytest.raises(ValueError, match="no batch dimension"):
        one.apply_slice_to_batch_dim(0)


@pytest.mark.parametrize("layer", [1, -1])
@pytest.mark.parametrize("pos_slice", [None, (1, 3), -1])
@pytest.mark.parametrize("apply_ln", [False, True])
def test_a_batchless_cache_gives_the_batched_row(ln_run, layer, pos_slice, apply_ln):
    model, _, full = ln_run
    cache = ActivationCache({k: v for k, v in full.items() if not k.endswith("hook_result")}, model)
    batched = cache.accumulated_resid(layer=layer, pos_slice=pos_slice, apply_ln=apply_ln, incl_mid=True)
    row = cache.apply_slice_to_batch_dim(1).accumulated_resid(layer=layer, pos_slice=pos_slice, apply_ln=apply_ln,
                                                              incl_mid=True)
    close(row, batched[:, 1])
    row_cache = cache.apply_slice_to_batch_dim(1)  # sliced before the head results exist
    full_row = row_cache.get_full_resid_decomposition(layer=layer, pos_slice=pos_slice, apply_ln=apply_ln)
    full = cache.get_full_resid_decomposition(layer=layer, pos_slice=pos_slice, apply_ln=apply_ln)
    close(full_row, full[:, 1], rtol=1e-5, atol=1e-6)


def test_toggle_autodiff_sets_the_global_state(ln_run):
    _, _, cache = ln_run
    before = torch.is_grad_enabled()
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
        cache.toggle_autodiff(mode=True)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(before)


# ---- real TransformerLens ------------------------------------------------------------------------

@torch.no_grad()
def test_on_transformerlens_own_activations():
    """TransformerLens 3.9's cache of an LN model with random biases, read by our cache with the
    same weights: LayerNorm'd stacks equal its hook_normalized, the logit lens ends at its logits,
    and every decomposition sums to its residual stream."""
    ref = torch.load(FIXTURE, weights_only=True)
    model = load_tlens_state_dict(ref["state_dict"], ref["config"])
    cache = ActivationCache(dict(ref["activations"]), model)
    tl = ref["activations"]
    for layer in range(2):
        for ln, stream, mlp_input in (("ln1", "hook_resid_pre", False), ("ln2", "hook_resid_mid", True)):
            got = cache.apply_ln_to_stack(tl[f"blocks.{layer}.{stream}"][None], layer, mlp_input=mlp_input)[0]
            close(got, tl[f"blocks.{layer}.{ln}.hook_normalized"], rtol=0, atol=1e-5)
    close(cache.apply_ln_to_stack(tl["blocks.1.hook_resid_post"][None])[0], tl["ln_final.hook_normalized"],
          rtol=0, atol=1e-5)
    lens = cache.accumulated_resid(apply_ln=True)
    close(lens[-1] @ model.W_U + model.b_U, ref["logits"], rtol=0, atol=1e-5)
    for layer, mlp_input in ((2, False), (1, True), (1, False)):
        stream = tl["blocks.1.hook_resid_post"] if layer == 2 else tl[
            f"blocks.{layer}.hook_resid_{'mid' if mlp_input else 'pre'}"]
        for expand in (True, False):
            full = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input, expand_neurons=expand)
            close(full.sum(0), stream, rtol=0, atol=1e-4)
        close(cache.decompose_resid(layer, mlp_input=mlp_input).sum(0), stream, rtol=0, atol=1e-4)
    heads = cache.stack_head_results(layer=1)
    close(heads.sum(0) + model.b_O[0], tl["blocks.0.hook_attn_out"], rtol=0, atol=1e-5)
    neurons = cache.stack_neuron_results(layer=1)
    close(neurons.sum(0) + model.b_out[0], tl["blocks.0.hook_mlp_out"], rtol=0, atol=1e-4)

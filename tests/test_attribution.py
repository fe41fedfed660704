"""Direct logit attribution sums to the logit; the logit lens ends at the model's loss; QK and OV
circuits match the attention scores and the direct path they describe."""
import math

import pytest
import torch

from grokmath.analysis import attribution
from grokmath.training.losses import loss_fn
from grokmath.tasks import make_task

from analysis_helpers import tiny_model


@pytest.fixture(scope="module")
def task():
    return make_task("addition", n_digits=2)


def randomize_biases(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b") or name.endswith(".w"):
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model


@pytest.mark.parametrize("settings", [dict(), dict(unembed_bias=True, attn_bias=True),
                                     dict(normalization="LN"), dict(normalization="LN", unembed_bias=True,
                                                                    attn_bias=True, attn_only=True)])
def test_attributions_sum_to_the_answer_logit(task, settings):
    model = randomize_biases(tiny_model(task, **settings))
    batch = task.sample(12, torch.Generator().manual_seed(0))
    contributions, labels = attribution.direct_logit_attribution(model, batch, task)
    assert contributions.shape == (len(labels), 12, len(task.pred_labels))
    assert ("bias" in labels) == (settings.get("normalization") == "LN" or settings.get("unembed_bias", False))
    with torch.no_grad():
        logits = model(batch.tokens)[:, task.pred_pos].gather(-1, batch.targets[..., None])[..., 0]
    torch.testing.assert_close(contributions.sum(0), logits, rtol=1e-5, atol=1e-5)


def test_attribution_without_layernorm_is_each_part_times_W_U(task):
    model = tiny_model(task)
    batch = task.sample(4, torch.Generator().manual_seed(1))
    contributions, labels = attribution.direct_logit_attribution(model, batch, task)
    _, cache = model.run_with_cache(batch.tokens)
    pos = task.pred_pos
    # head L1H0 by hand: z @ W_O then the unembedding column of the answer
    z = cache["blocks.1.attn.hook_z"][:, pos, 0]  # [batch, n_pred, d_head]
    out = z @ model.blocks[1].attn.W_O[0]
    expected = (out * model.unembed.W_U.T[batch.targets]).sum(-1)
    torch.testing.assert_close(contributions[labels.index("L1H0")], expected.detach(), rtol=1e-5, atol=1e-6)
    table = attribution.attribution_table(contributions, labels, task)
    assert table["component"].tolist() == labels
    assert table.loc[labels.index("L1H0"), "A0"] == pytest.approx(expected[:, -1].mean().item(), rel=1e-5)


def test_logit_lens_final_stage_is_the_model(task):
    model = tiny_model(task, normalization="LN")
    batch = task.sample(20, torch.Generator().manual_seed(2))
    table = attribution.logit_lens(model, batch, task)
    assert table["stage"].tolist() == ["L0 pre", "L0 mid", "L1 pre", "L1 mid", "final"]
    with torch.no_grad():
        loss = loss_fn(model(batch.tokens)[:, task.pred_pos], batch.targets).item()
    assert table["loss"].iloc[-1] == pytest.approx(loss, rel=1e-6)
    # the first stage is the embeddings alone: the direct path through the final LN
    with torch.no_grad():
        resid = model.embed.W_E[batch.tokens] + model.pos_embed.W_pos[: task.n_ctx]
        first = loss_fn(model.ln_final(resid)[:, task.pred_pos] @ model.unembed.W_U, batch.targets).item()
    assert table["loss"].iloc[0] == pytest.approx(first, rel=1e-6)


def test_qk_circuit_gives_layer_0_attention_scores(task):
    model = tiny_model(task, positional="none")
    tokens = task.sample(3, torch.Generator().manual_seed(3)).tokens
    _, cache = model.run_with_cache(tokens)
    scores = cache["blocks.0.attn.hook_attn_scores"]  # [batch, head, q, k]
    for head in range(2):
        qk = attribution.qk_circuit(model, 0, head).full() / math.sqrt(model.cfg.d_head)
        expected = qk[tokens[:, :, None], tokens[:, None, :]]  # [batch, q, k]
        causal = torch.ones(task.n_ctx, task.n_ctx, dtype=torch.bool).tril()
        torch.testing.assert_close(scores[:, head][:, causal], expected[:, causal], rtol=1e-5, atol=1e-5)


def test_ov_circuit_is_the_direct_path_of_a_one_layer_attention_only_model(task):
    model = tiny_model(task, n_layers=1, attn_only=True, positional="none")
    tokens = task.sample(3, torch.Generator().manual_seed(4)).tokens
    logits, cache = model.run_with_cache(tokens)
    pattern = cache["pattern", 0]  # [batch, head, q, k]
    expected = model.embed.W_E[tokens] @ model.unembed.W_U
    for head in range(2):
        ov = attribution.ov_circuit(model, 0, head).full()  # [d_vocab, d_vocab_out]
        expected = expected + torch.einsum("bqk,bkv->bqv", pattern[:, head], ov[tokens])
    torch.testing.assert_close(logits, expected.detach(), rtol=1e-4, atol=1e-5)


def test_low_rank_svd_reconstructs_and_plots(task, tmp_path):
    model = tiny_model(task)
    qk = attribution.qk_circuit(model, 1, 0, side="pos")
    assert qk.shape == (task.n_ctx, task.n_ctx) and qk.rank_bound == model.cfg.d_head
    U, S, V = qk.svd()
    torch.testing.assert_close(U @ torch.diag(S) @ V.T, qk.full(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(S, torch.linalg.svdvals(qk.full())[: len(S)], rtol=1e-4, atol=1e-5)
    for kind in ("qk", "pos_qk", "ov"):
        assert attribution.plot_circuits(model, task, tmp_path / f"{kind}.png", kind).stat().st_size > 0
    batch = task.sample(4, torch.Generator().manual_seed(5))
    table = attribution.attribution_table(*attribution.direct_logit_attribution(model, batch, task), task)
    assert attribution.plot_attribution(table, task, tmp_path / "dla.png").stat().st_size > 0
    lens = attribution.logit_lens(model, batch, task)
    assert attribution.plot_logit_lens(lens, task, tmp_path / "lens.png").stat().st_size > 0

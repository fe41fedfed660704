"""Attention patterns and the skip-trigram attention gradient (against the seed's backward-hook recipe)."""
import torch

from grokmath.analysis.attention import attention_grad_to_signal, attention_patterns, plot_attention_grid
from grokmath.training.losses import loss_fn
from grokmath.tasks import make_task

from analysis_helpers import tiny_model


def test_attention_grad_to_signal_matches_the_seeds_backward_hooks():
    task = make_task("skip_trigram", rand_size=4, seq_len=8)
    model = tiny_model(task, n_layers=1, attn_only=True)
    batch = task.sample(64, torch.Generator().manual_seed(0))
    grads = attention_grad_to_signal(model, batch, task)
    assert grads.shape == (2, 4)
    assert all(p.grad is None for p in model.parameters())
    # the seed: cache_all with backward hooks, then grad[batch, head, -1, tokens.argmax(1)], mean per target
    _, cache = model.run_with_cache(batch.tokens, incl_bwd=True,
                                    loss_fn=lambda logits: loss_fn(logits[:, -1:], batch.targets))
    pattern_grad = cache["blocks.0.attn.hook_attn_grad"]
    rows = torch.arange(64)
    for head in range(2):
        g = pattern_grad[rows, head, -1, batch.tokens.argmax(1)]
        expected = torch.stack([g[batch.targets[:, 0] == t].mean() for t in range(4)])
        torch.testing.assert_close(grads[head], expected, rtol=1e-5, atol=1e-8)


def test_patterns_and_grid(tmp_path):
    task = make_task("addition", n_digits=2)
    model = tiny_model(task)
    tokens = task.sample(3, torch.Generator().manual_seed(1)).tokens
    patterns = attention_patterns(model, tokens)
    assert patterns.shape == (2, 3, 2, task.n_ctx, task.n_ctx)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 3, 2, task.n_ctx))
    assert torch.all(patterns.triu(1) == 0)
    assert plot_attention_grid(model, task, tokens[0], tmp_path / "a.png").stat().st_size > 0


def _induction_truth(tokens, mask):
    """From the tokens alone (Python loops): for each scored query q, the positions just after an
    earlier occurrence of tokens[q] (every token of the vocabulary-10000 noise is distinct, so only
    the copies repeat)."""
    targets = {}
    for b, row in enumerate(tokens.tolist()):
        for q in range(len(row) - 1):
            if mask[b, q]:
                targets[b, q] = [p + 1 for p in range(q) if row[p] == row[q]]
    return targets


def test_induction_and_previous_token_scores_against_patterns_built_from_the_tokens():
    from grokmath.analysis.attention import induction_scores, previous_token_scores
    task = make_task("induction", seq_len=25, subseq_len=5, num_repeats=3, vocab_size=10000)
    batch = task.sample(6, torch.Generator().manual_seed(3))
    for row in batch.tokens.tolist():  # only the copies repeat (the truth relies on it)
        assert len(set(row)) == len(row) - 2 * task.subseq_len
    targets = _induction_truth(batch.tokens, batch.mask)
    assert len(targets) == 6 * 2 * (task.subseq_len - 1)
    n = task.n_ctx
    pattern = torch.zeros(2, 6, 3, n, n)  # [layer, batch, head, query, key]
    for q in range(n):
        pattern[0, :, 0, q, max(q - 1, 0)] = 1.0  # L0H0: the previous token
        pattern[:, :, 2, q, :q + 1] = 1.0 / (q + 1)  # H2 of both layers: uniform over the prefix
    for (b, q), keys in targets.items():
        pattern[1, b, 0, q] = 0
        pattern[1, b, 0, q, keys[-1]] = 1.0  # L1H0: after the latest earlier occurrence only
        pattern[1, b, 1, q, keys] = 1.0 / 4  # L1H1: a quarter after every earlier occurrence
    scores = induction_scores(pattern, batch, task)
    expected = torch.zeros(2, 3)
    expected[1, 0] = 1.0
    expected[1, 1] = sum(len(keys) / 4 for keys in targets.values()) / len(targets)
    expected[:, 2] = sum(len(keys) / (q + 1) for (b, q), keys in targets.items()) / len(targets)
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-7)
    prev = previous_token_scores(pattern)
    assert prev[0, 0] == 1.0 and prev[0, 1] == 0.0
    torch.testing.assert_close(prev[0, 2], torch.tensor([1.0 / (q + 1) for q in range(1, n)]).mean())


def test_induction_scores_refuse_other_batches():
    import pytest
    from grokmath.analysis.attention import induction_scores
    task = make_task("skip_trigram", rand_size=4, seq_len=8)
    batch = task.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="induction task"):
        induction_scores(torch.zeros(1, 2, 1, task.n_ctx, task.n_ctx), batch, task)

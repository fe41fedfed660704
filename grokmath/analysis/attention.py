"""Attention patterns: read them, draw them, and (for skip-trigrams) follow their gradient.

`attention_patterns(model, tokens)` caches every layer's pattern [layer, batch, head, query, key].
`plot_attention_grid` draws one question's patterns as a grid of layers x heads with the token
strings on both axes. `attention_grad_to_signal(model, batch, task)` is what the seed notebook
records during skip-trigram training with backward hooks: the gradient of the mean loss with
respect to the attention that the query (last) position pays to the signal token, averaged over
the questions of each target. `induction_scores` and `previous_token_scores` read patterns
[layer, batch, head, query, key] and say per head how much attention goes where an induction head
(the token after an earlier occurrence of the current token) or a previous-token head looks.
"""
from __future__ import annotations

import torch

from ..training.losses import loss_fn
from ..memory import attention_bytes, check_fits
from .common import model_device


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """Every layer's attention pattern: [layer, batch, head, query, key]."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    check_fits(attention_bytes(model.cfg, tokens.shape[0]), model_device(model),
               f"the attention patterns of {tokens.shape[0]} sequences", "give fewer sequences")
    _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=names)
    return torch.stack([cache[name] for name in names])


def token_labels(task, tokens: torch.Tensor) -> list[str]:
    """One label per position of one sequence [pos]: 'position:token name'."""
    names = [task.token_names[t] for t in tokens.tolist()]
    return [f"{i}:{name}" for i, name in enumerate(names)]


def plot_attention_grid(model, task, tokens: torch.Tensor, path, title: str | None = None):
    """The attention patterns of one sequence (tokens [pos]) as a layers x heads grid of heatmaps."""
    from .plots import save_heatmap_grid
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"plot_attention_grid draws one sequence: give tokens [pos], got {tuple(tokens.shape)}")
    patterns = attention_patterns(model, tokens[None])[:, 0]  # [layer, head, query, key]
    labels = token_labels(task, tokens)
    grid = [[patterns[layer, head] for head in range(model.cfg.n_heads)] for layer in range(model.cfg.n_layers)]
    titles = [[f"L{layer}H{head}" for head in range(model.cfg.n_heads)] for layer in range(model.cfg.n_layers)]
    text = task.decode(tokens[None])[0]
    return save_heatmap_grid(grid, path, titles=titles, suptitle=title or f"attention patterns: {text}",
                             xlabels=labels, ylabels=labels, xlabel="key", ylabel="query",
                             diverging=False, vmax=1.0, colorbar=False)


def attention_grad_to_signal(model, batch, task, layer: int = 0) -> torch.Tensor:
    """d(mean loss) / d(attention of the query position to the signal token): [n_heads, rand_size],
    averaged over the batch's questions of each target (NaN for a target with none).

    Needs skip-trigram batches (meta 'signal_pos' and 'target'). The model's parameters receive
    no gradient: only the pattern's gradient is taken, with torch.autograd.grad.
    """
    if "signal_pos" not in batch.meta or "target" not in batch.meta:
        raise ValueError("attention_grad_to_signal needs skip-trigram batches (meta 'signal_pos' and 'target')")
    device = model_device(model)
    batch = batch.to(device)
    saved = {}

    def keep(pattern, hook):
        saved["pattern"] = pattern
        return pattern

    with torch.enable_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep)]):
        logits = model(batch.tokens)[:, task.pred_pos.to(device)]
        loss = loss_fn(logits, batch.targets, batch.mask)
        (grad,) = torch.autograd.grad(loss, saved["pattern"])  # [batch, head, query, key]
    rows = torch.arange(len(batch), device=device)
    query = task.pred_pos[-1].item()
    to_signal = grad[rows, :, query, batch.meta["signal_pos"]]  # [batch, head]
    n_targets = task.d_vocab_out
    one_hot = torch.nn.functional.one_hot(batch.meta["target"], n_targets).to(grad.dtype)  # [batch, target]
    return (one_hot.T @ to_signal).T / one_hot.sum(0)  # [head, target]


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """patterns [layer, batch, head, query, key] -> [layer, head]: the mean attention each query
    (position 1 on) pays to the position just before it."""
    if patterns.dim() != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns must be [layer, batch, head, query, key], got {tuple(patterns.shape)}")
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean((1, 3))  # [layer, head]


def induction_scores(patterns: torch.Tensor, batch, task) -> torch.Tensor:
    """patterns [layer, batch, head, query, key] of an induction batch -> [layer, head]: at each token
    of a repeat (copy 1 on) whose next token is in the repeat too, the attention paid to the tokens
    just after the same token's earlier occurrences (in every earlier copy, summed), averaged.
    An induction head scores near 1; other heads near 0. Needs batch.meta['starts'] (the induction task)."""
    if "starts" not in batch.meta or not task.has_repeats:
        raise ValueError("induction_scores needs batches of the induction task (meta 'starts')")
    if patterns.dim() != 5 or patterns.shape[1] != len(batch):
        raise ValueError(f"patterns must be [layer, batch, head, query, key] for the batch's {len(batch)} "
                         f"sequences, got {tuple(patterns.shape)}")
    starts = batch.meta["starts"].to(patterns.device)  # [batch, n_repeats]
    offsets = torch.arange(task.subseq_len - 1, device=patterns.device)  # the copy's tokens but the last
    rows = torch.arange(len(batch), device=patterns.device)[:, None]  # [batch, 1]
    scores = []
    for i in range(1, starts.shape[1]):
        query = starts[:, i:i + 1] + offsets  # [batch, subseq_len - 1]
        to_earlier = sum(patterns[:, rows, :, query, starts[:, k:k + 1] + offsets + 1]  # [batch, j, layer, head]
                         for k in range(i))
        scores.append(to_earlier.mean((0, 1)))  # [layer, head]
    return torch.stack(scores).mean(0)

"""Claims and figures for the tasks without digit-level ground truth: skip-trigram, induction, modular.

- useful_head_claims: 'L0H1 is useful' for each head the node table found useful, re-tested on a
  fresh batch: mean-ablated at every position it must raise the loss by more than `useful_loss`.
- induction_claims: 'L1H2 is an induction head' for every head whose induction score is >= 0.3
  (and the best-scoring head in any case), tested by intervention: with the head mean-ablated the
  loss must rise on the repeated copies (the batch's mask, where the next token can be copied) by
  at least `min_rise`, and by at least twice its rise on the first occurrence (where nothing can be
  copied): a head that only hurts everywhere is not an induction head.
- figures: head_scores.png (previous-token and induction scores, layer x head), attention.png (the
  useful heads' mean attention), key_frequencies.png (a modular model's neurons per frequency).
"""
from __future__ import annotations

import matplotlib
import torch
import torch.nn.functional as F

from ..ablation import Node, ablate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def useful_head_claims(model, task, batch, heads: list[tuple[int, int]], useful_loss: float = 0.05,
                       kind: str = "mean") -> list[dict]:
    """'LxHy is useful' for each (layer, head), scored by its loss change on `batch` (fresh questions)."""
    if not heads:
        return []
    table = ablate(model, batch, task, [Node("head", layer, h) for layer, h in heads], kind=kind,
                   generator=torch.Generator().manual_seed(0))
    out = []
    for (layer, h), (_, row) in zip(heads, table.iterrows()):
        change = float(row["loss_change"])
        out.append(dict(claim=f"{head_name(layer, h)} is useful", test=f"mean-ablated, the loss rises by > {useful_loss}",
                        loss_change=round(change, 4), verdict="holds" if change > useful_loss else "fails"))
    return out


def loss_per_position(model, task, tokens, targets, head: tuple[int, int] | None = None) -> torch.Tensor:
    """Cross-entropy at every scored position [batch, n_pred], with one head's z replaced by its
    mean over the batch (at each position) when `head` is given."""
    hooks = []
    if head is not None:
        layer, h = head

        def mean_head(z, hook):  # z [batch, pos, head, d_head]
            z = z.clone()
            z[:, :, h] = z[:, :, h].mean(0, keepdim=True)
            return z
        hooks = [(f"blocks.{layer}.attn.hook_z", mean_head)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)[:, task.pred_pos.to(tokens.device)]  # [batch, n_pred, vocab]
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def induction_verdict(rise_repeat: float, rise_first: float, min_rise: float = 0.1) -> str:
    return "holds" if rise_repeat >= min_rise and rise_repeat >= 2 * max(rise_first, 0.0) else "fails"


def induction_claims(model, task, batch, scores: torch.Tensor, min_score: float = 0.3,
                     min_rise: float = 0.1) -> list[dict]:
    """'LxHy is an induction head' for the heads of `scores` [layer, head] >= min_score (and the best),
    tested on `batch` (an induction batch: mask marks the repeats, meta['starts'] each copy's start)."""
    scores = torch.as_tensor(scores)
    chosen = {tuple(ix) for ix in (scores >= min_score).nonzero().tolist()}
    chosen.add(tuple(divmod(int(scores.argmax()), scores.shape[1])))
    tokens, targets = batch.tokens, batch.targets
    repeat = batch.mask.bool()  # [batch, n_pred]: the next token is in a copy of the first occurrence
    first = batch.meta["starts"][:, :1].to(tokens.device) + torch.arange(task.subseq_len - 1, device=tokens.device)
    clean = loss_per_position(model, task, tokens, targets)  # [batch, n_pred]
    out = []
    for layer, h in sorted(chosen):
        rise = loss_per_position(model, task, tokens, targets, (layer, h)) - clean
        rise_repeat, rise_first = rise[repeat].mean().item(), rise.gather(1, first).mean().item()
        out.append(dict(claim=f"{head_name(layer, h)} is an induction head", score=round(float(scores[layer, h]), 4),
                        test=f"mean-ablated, the loss on the repeats rises by >= {min_rise} and by >= 2x its rise "
                        "on the first occurrence",
                        loss_rise_repeats=round(rise_repeat, 4), loss_rise_first=round(rise_first, 4),
                        verdict=induction_verdict(rise_repeat, rise_first, min_rise)))
    return out


def head_scores_figure(heads: dict, path) -> None:
    """Heatmaps [layer x head] of the previous-token and (when present) induction scores."""
    kinds = [k for k in ("previous_token", "induction") if k in heads]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3), squeeze=False)
    for ax, k in zip(axes[0], kinds):
        grid = torch.tensor(heads[k])  # [layer, head]
        im = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis")
        for (layer, h), v in zip(torch.cartesian_prod(torch.arange(grid.shape[0]), torch.arange(grid.shape[1])).tolist(),
                                 grid.flatten().tolist()):
            ax.text(h, layer, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.5 else "k", fontsize=8)
        ax.set(title=k.replace("_", "-") + " score", xlabel="head", ylabel="layer",
               xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attention_figure(patterns: torch.Tensor, heads: list[tuple[int, int]], path) -> None:
    """Mean attention [query x key] of each useful head (at most 6); patterns [layer, head, query, key]."""
    heads = heads[:6] or [(0, 0)]
    fig, axes = plt.subplots(1, len(heads), figsize=(3.5 * len(heads), 3.2), squeeze=False)
    for ax, (layer, h) in zip(axes[0], heads):
        ax.imshow(patterns[layer, h].numpy(), vmin=0, vmax=1, cmap="Blues")
        ax.set(title=f"{head_name(layer, h)} mean attention", xlabel="key position", ylabel="query position")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def key_frequencies_figure(model, task, key: list[int], path) -> None:
    """How many MLP neurons have each frequency as their dominant one (explaining >= 60% of their
    variance); the key frequencies in red."""
    from ..progress import last_layer_neurons_fourier, neuron_frequencies

    freq, share = neuron_frequencies(last_layer_neurons_fourier(model, task))
    counts = torch.bincount(freq[share >= 0.6], minlength=int(freq.max()) + 1)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(range(len(counts)), counts.tolist(), color=["tab:red" if k in key else "tab:gray" for k in range(len(counts))])
    ax.set(title=f"key frequencies {key}", xlabel="frequency", ylabel="neurons")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

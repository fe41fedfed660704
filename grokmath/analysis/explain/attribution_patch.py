"""Attribution patching: every node's ablation effect estimated from one forward and one backward pass.

For a node with activation a (head: z at its position, neuron: its hook_post value, MLP: hook_mlp_out)
and ablation value a' (mean, zero or resample, as analysis.ablation.reference_activations gives),
the first-order estimate of the loss change is (a' - a) . dL/da summed over the questions, where
L is the mean cross-entropy of the answer digits. One backward gives dL/da for every node at every
position, so all nodes are scored at the cost of about three forwards. `spearman` compares the
estimate with the true ablation on the same nodes (the node table reports it).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ablation import reference_activations
from ..common import model_device
from .nodes import PosNode


def attribution_scores(model, task, tokens: torch.Tensor, nodes: list[PosNode], kind: str = "mean",
                       reference: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Estimated loss change of ablating each node on its own: [node] float64."""
    tokens = tokens.to(model_device(model))
    values = reference_activations(model, [n.ablation_node() for n in nodes], kind, tokens, reference, generator)
    return node_scores(attribution_grids(model, task, tokens, values), nodes)


def attribution_grids(model, task, tokens: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{hook name: estimated loss change per (position, index)} for every hook in `values` (its
    ablation values, from reference_activations): heads [pos, head], MLP out [pos], neurons
    [pos, d_mlp]; one forward and one backward for all of them."""
    tokens = tokens.to(model_device(model))
    names = sorted(values)
    acts, grads = {}, {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act
        return act

    pred_pos = task.pred_pos.to(tokens.device)
    targets = tokens[:, pred_pos + 1]
    with torch.enable_grad(), model.hooks(fwd_hooks=[(name, keep) for name in names]):
        logits = model(tokens)[:, pred_pos]  # [batch, n_pred, vocab]
        loss = F.cross_entropy(logits.transpose(1, 2), targets)
        model.zero_grad(set_to_none=True)
        loss.backward()
    for name in names:
        grads[name] = acts[name].grad.detach()
        acts[name] = acts[name].detach()
    model.zero_grad(set_to_none=True)
    per_name: dict[str, torch.Tensor] = {}
    for name in names:  # (a' - a) . grad summed over the node's own last dimension and the batch
        product = (values[name] - acts[name]) * grads[name]  # [batch, pos, (head,) d]
        # the loss is a mean over the batch, so its gradient already carries the 1 / batch
        per_name[name] = product.sum(-1).sum(0).double().cpu() if not name.endswith("hook_post") \
            else product.sum(0).double().cpu()  # heads [pos, head]; MLP out [pos]; neurons [pos, d_mlp]
    return per_name


def node_scores(grids: dict[str, torch.Tensor], nodes: list[PosNode]) -> torch.Tensor:
    """Each node's estimate read from attribution_grids: [node] float64."""
    scores = torch.empty(len(nodes), dtype=torch.float64)
    for i, node in enumerate(nodes):
        grid = grids[node.ablation_node().hook_name]
        scores[i] = grid[node.position] if node.kind == "mlp" else grid[node.position, node.index]
    return scores


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (ties ranked by order); NaN if constant."""
    # through numpy: a pandas column that held a skipped node's empty loss change has object dtype
    a, b = (torch.tensor(np.asarray(v, dtype=np.float64)) for v in (a, b))
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float("nan") if denom == 0 else float((ra @ rb).item() / denom)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank)."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(x))
    return (sums / counts)[inverse]

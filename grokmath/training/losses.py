"""Scoring at a task's prediction positions: the one place that turns logits into losses and
accuracies, for training, its metrics, evaluation, analysis and the SAE's spliced-in check.

The model returns logits [batch, n_pred, d_vocab_out] at `task.pred_pos`; these are scored
against `targets` [batch, n_pred], counting only the entries where `mask` [batch, n_pred] is True
(None = all). The log-softmax runs in float64 as in the seed notebooks: in float32 a confident
model's loss bottoms out near 1e-7 and grokking curves need the tiny losses below that.
Nothing here calls `.item()`, so the training loop can keep these on the device.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


def pred_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) in float64: logits [..., n_pred, vocab], targets [..., n_pred] -> [..., n_pred]."""
    log_probs = logits.to(torch.float64).log_softmax(dim=-1)  # [..., n_pred, vocab]
    return log_probs.gather(-1, targets[..., None])[..., 0]  # [..., n_pred]


def correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether the arg-max prediction is the target: [batch, n_pred] bool."""
    return logits.argmax(dim=-1) == targets


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, dim=None) -> torch.Tensor:
    """Mean of `values` over the entries where `mask` is True (NaN where there are none)."""
    if mask is None:
        return values.mean() if dim is None else values.mean(dim)
    weights = mask.to(values.dtype)
    # torch.where, not a product: an unscored entry may hold inf/NaN and must not leak in
    total = torch.where(mask, values, torch.zeros_like(values))
    if dim is None:
        return total.sum() / weights.sum()
    return total.sum(dim) / weights.sum(dim)


def loss_fn(logits, targets, mask=None) -> torch.Tensor:
    """Mean of -log p(target) over the scored entries (a float64 scalar)."""
    return masked_mean(-pred_log_probs(logits, targets), mask)


def per_position_loss(nll: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked mean over the batch of nll [batch, n_pred] -> [n_pred] (NaN where nothing is scored)."""
    return masked_mean(nll, mask, dim=0)


def accuracy(logits, targets, mask=None) -> torch.Tensor:
    """Fraction of scored predictions whose arg-max is the target (a float64 scalar)."""
    return masked_mean(correct(logits, targets).to(torch.float64), mask)


def sequence_accuracy(logits, targets, mask=None) -> torch.Tensor:
    """Fraction of examples with every scored prediction right (a float64 scalar)."""
    right = correct(logits, targets)
    if mask is not None:
        right = right | ~mask
    return right.all(dim=-1).to(torch.float64).mean()


def score(pred_logits: torch.Tensor, batch) -> dict[str, torch.Tensor]:
    """Loss and accuracy of logits at the answer positions [batch, n_pred, vocab] against batch.targets.

    Returns float64 tensors: 'loss' and 'acc' (scalars over the scored entries), 'loss_pos' and
    'acc_pos' ([n_pred], masked means over the batch) and 'seq_acc' (all of a row's scored
    predictions right).
    """
    nll = -pred_log_probs(pred_logits, batch.targets)  # [batch, n_pred]
    right = correct(pred_logits, batch.targets).to(torch.float64)
    mask = batch.mask
    return {"loss": masked_mean(nll, mask), "acc": masked_mean(right, mask),
            "loss_pos": per_position_loss(nll, mask), "acc_pos": masked_mean(right, mask, dim=0),
            "seq_acc": sequence_accuracy(pred_logits, batch.targets, mask)}


class ScoreSums(NamedTuple):
    """Per-position sums over a scored set, each [n_pred] float64."""
    nll: torch.Tensor  # the scored entries' nll, summed
    correct: torch.Tensor  # how many of them the model got right
    count: torch.Tensor  # how many were scored


@torch.no_grad()
def score_sums(forward, batch, chunk: int = 8192) -> ScoreSums:
    """Per-position sums over a (possibly large) batch, `chunk` rows per forward:
    ScoreSums(nll, correct, count), each [n_pred] float64.
    forward(tokens [rows, n_ctx]) -> logits at the answer positions [rows, n_pred, vocab]."""
    nll_sum = correct_sum = count = 0
    for start in range(0, len(batch), chunk):
        part = batch.index(slice(start, start + chunk))
        logits = forward(part.tokens)  # [rows, n_pred, d_vocab_out]
        nll = -pred_log_probs(logits, part.targets)  # [rows, n_pred]
        right = correct(logits, part.targets).to(torch.float64)
        weight = torch.ones_like(nll) if part.mask is None else part.mask.to(torch.float64)
        nll_sum = nll_sum + torch.where(weight > 0, nll, torch.zeros_like(nll)).sum(0)
        correct_sum = correct_sum + (right * weight).sum(0)
        count = count + weight.sum(0)
    return ScoreSums(nll_sum, correct_sum, count)


def case_sums(nll: torch.Tensor, case_masks: torch.Tensor, mask: torch.Tensor | None = None):
    """Per case and position, the nll summed over the batch's scored entries of that case and their
    count: nll [batch, n_pred], case_masks [n_cases, batch, n_pred] bool -> two [n_cases, n_pred]."""
    scored = case_masks if mask is None else case_masks & mask
    total = torch.where(scored, nll, torch.zeros_like(nll)).sum(dim=1)  # [n_cases, n_pred]
    return total, scored.sum(dim=1)


def case_losses(nll: torch.Tensor, case_masks: torch.Tensor, mask: torch.Tensor | None = None,
                per_position: bool = False) -> torch.Tensor:
    """Mean nll over each case: nll [batch, n_pred], case_masks [n_cases, batch, n_pred] bool -> [n_cases]
    (per_position: [n_cases, n_pred], each case at each scored position).

    A case with no scored entries in this batch gives NaN (0/0), so no host sync is needed.
    """
    total, count = case_sums(nll, case_masks, mask)  # each [n_cases, n_pred]
    return total / count if per_position else total.sum(1) / count.sum(1)

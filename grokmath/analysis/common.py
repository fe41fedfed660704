"""Pieces the analysis modules share: the answer-position logits and their score (the one scoring
path, grokmath.training.losses.score), question batches with the task's op mix, and running many edited
copies of one batch in a single forward pass.

`run_variants` is how ablation and patching stay cheap: K variants of an experiment (each a set
of edits to activations) run as one forward on the batch repeated K times, the k-th copy edited
by the k-th variant inside one hook per hook point. Variants are processed `chunk_size` at a time
to bound memory. Edits never touch weights; the hooks are removed when the forward returns.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..training.losses import score  # noqa: F401 (the one scoring function; analysis modules take it from here)

# An edit: (hook name, fn(activation_slice) -> replacement of that slice), applied to one copy.
Edit = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def question_sampler(task, enrich: bool | None = None):
    """The task drawing each question's op on its own (arithmetic with op_per_batch=False), so one
    large analysis batch holds the task's op mix rather than a single op; other tasks unchanged.
    enrich: None (the task's own distribution), False (never enriched) or True (the enriched
    distribution, addition and arithmetic only): see `Task.question_sampler`."""
    return task.question_sampler(enrich)


def answer_logits(logits: torch.Tensor, task) -> torch.Tensor:
    """Logits at every position [batch, pos, vocab] -> at the scored positions [batch, n_pred, vocab]."""
    return logits[:, task.pred_pos.to(logits.device)]


@torch.no_grad()
def run_variants(model, tokens: torch.Tensor, variants: list[list[Edit]], reduce: Callable,
                 chunk_size: int = 16) -> list:
    """reduce(logits [batch, pos, vocab]) of each variant, the batch run with that variant's edits.

    Variants are stacked on the batch dimension, `chunk_size` per forward pass; an edit's
    function gets the activation rows of its own copy and returns their replacement.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = tokens.shape[0]
    results = []
    for start in range(0, len(variants), chunk_size):
        chunk = variants[start:start + chunk_size]
        by_name: dict[str, list[tuple[int, Callable]]] = {}
        for k, edits in enumerate(chunk):
            for name, fn in edits:
                by_name.setdefault(name, []).append((k, fn))

        def make_hook(entries):
            def hook(act, hook):
                act = act.clone()  # the edits write into a copy, never into the model's tensors
                for k, fn in entries:
                    act[k * n:(k + 1) * n] = fn(act[k * n:(k + 1) * n])
                return act
            return hook

        hooks = [(name, make_hook(entries)) for name, entries in by_name.items()]
        logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        results.extend(reduce(logits[k * n:(k + 1) * n]) for k in range(len(chunk)))
    return results

"""An SAE's activations from a trained run's model, through the hook system.

`ModelSource(model, task, hook, n_batches, batch_size, seed)` draws the same `n_batches` batches of
task questions every epoch (a fixed seed), runs the model only up to `hook` (the forward stops
there) and yields the hooked activation at the chosen positions as rows [batch * n_pos, d_in]
(trailing dimensions flattened, e.g. hook_z's [head, d_head]). Positions: 'all' (the notebook) or
'answer' (the task's scored positions, `task.pred_pos`). Activations are kept in memory after the
first pass when they fit in `cache_mb`.
"""
from __future__ import annotations

import torch

POSITIONS = ("all", "answer")
NOT_ROW_SHAPED = ("hook_attn_scores", "hook_pattern", "hook_attn", "hook_attn_pre")


class _StopForward(Exception):
    """Raised by the collecting hook: nothing after the hooked activation is needed."""


def check_hook(model, hook: str) -> str:
    try:
        point = model.get_hook_point(hook)
    except KeyError:
        examples = [name for name in ("blocks.0.mlp.hook_post", "blocks.0.hook_resid_post") if name in model.hook_dict]
        raise ValueError(f"the model has no hook point {hook!r}: use e.g. {' or '.join(examples) or 'hook_embed'} "
                         "(the names are in model.hook_dict)") from None
    if point.name.rsplit(".", 1)[-1] in NOT_ROW_SHAPED:
        raise ValueError(f"{hook} is shaped [batch, head, query, key], not [batch, pos, ...]: train the SAE on "
                         "an activation per position, e.g. blocks.0.mlp.hook_post or blocks.0.attn.hook_z")
    return point.name


def select_positions(task, positions) -> torch.Tensor:
    """The token positions an SAE reads: 'all', 'answer' (task.pred_pos) or a list of ints."""
    if positions == "all":
        return torch.arange(task.n_ctx)
    if positions == "answer":
        return task.pred_pos.clone()
    if isinstance(positions, str):
        raise ValueError(f"positions {positions!r} is not known: use 'all', 'answer' or a list of positions")
    pos = torch.as_tensor(list(positions), dtype=torch.int64)
    if len(pos) == 0 or pos.min() < 0 or pos.max() >= task.n_ctx or len(pos.unique()) != len(pos):
        raise ValueError(f"positions {list(positions)} must be distinct positions from 0 to {task.n_ctx - 1}")
    return pos


class ModelSource:
    """The hooked activations of `model` on fixed batches of `task` questions (see the docstring)."""

    def __init__(self, model, task, hook: str, n_batches: int = 100, batch_size: int = 64, seed: int = 0,
                 positions="all", cache_mb: float = 512):
        self.model, self.task, self.hook = model, task, check_hook(model, hook)
        self.n_batches, self.batch_size, self.seed = n_batches, batch_size, seed
        self.positions = select_positions(task, positions)
        self.cache_mb = cache_mb
        self.device = next(model.parameters()).device
        self._cache = None

    def questions(self):
        """The fixed question batches (the same every call)."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_batches):
            yield self.task.sample(self.batch_size, gen).to(self.device)

    @torch.no_grad()
    def activations(self, batch) -> torch.Tensor:
        """The hooked activation at the source's positions: [batch, n_pos, d_in]."""
        found = []

        def grab(tensor, hook):
            found.append(tensor)
            raise _StopForward

        with self.model.hooks(fwd_hooks=[(self.hook, grab)]):
            try:
                self.model(batch.tokens)
            except _StopForward:
                pass
        acts = found[0][:, self.positions.to(self.device)]  # [batch, n_pos, ...]
        return acts.reshape(*acts.shape[:2], -1).float()

    def pairs(self):
        """(question batch, activations [batch, n_pos, d_in]) for every batch."""
        for batch in self.questions():
            yield batch, self.activations(batch)

    def __iter__(self):
        if self._cache is not None:
            yield from self._cache
            return
        kept, size = [], 0.0
        for _, acts in self.pairs():
            rows = acts.reshape(-1, acts.shape[-1])  # [batch * n_pos, d_in]
            size += rows.numel() * rows.element_size() / 2**20
            if kept is not None and size <= self.cache_mb:
                kept.append(rows)
            else:
                kept = None  # too large to keep: recompute every epoch, as the notebook does
            yield rows
        if kept is not None:
            self._cache = kept

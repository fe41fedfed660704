"""Model insertion: start a larger model from a trained smaller one (the accurate-maths notebook).

The small model's layers go into `small.n_layers` consecutive layers of the large model, the
first ones (early) or the last ones (`late=True`). In each such layer the small model's heads
become the large model's right-most heads (small head h -> large head n_heads_large - n_heads_small
+ h), its MLP becomes the large MLP's first d_mlp units, and its LayerNorms replace the large
ones; the embeddings, positional embeddings, final LayerNorm and unembedding are copied whole.
Everything else keeps the large model's own initialisation. d_model, d_head, the vocabularies,
n_ctx, the activation and the normalization must match; a mismatch raises one ValueError that
lists every part that does not fit. Where the small model has no bias and the large one has, the
large bias is set to zero at the copied places, so a copied part computes what it computed before.

A head is W_Q, W_K, W_V, W_O and b_Q, b_K, b_V (the notebook leaves W_O out of its head copies,
which stops an inserted model reproducing the small one; we copy it); a layer's b_O is copied
with the whole layer, never with a single restored head.

Insert modes (the notebook's `insert_mode`): 1 = initialise only; 2 = also restore the listed
useful heads (all heads if none are listed) every N steps; 3 = restore every head and MLP every N
steps. `Inserter(small, large, mode, ...)` does this: `.start()` once before training, then
`.after_step(step)` after each optimizer step (it acts when step % every == 0, step 0 included,
as the notebook's `if epoch % 100 == 0` after `optimizer.step()`).
"""
from __future__ import annotations

import re

import torch

from ..store.checkpoint import load_run
from ..config import check_whole

INSERT_MODES = {1: "initialise only", 2: "initialise, then restore the listed heads every N steps",
                3: "initialise, then restore every head and MLP every N steps"}


# ---- what fits --------------------------------------------------------------------------------

def insert_problems(small_cfg, large_cfg) -> list[str]:
    """Every reason the small model's weights cannot be placed in the large model ([] if none)."""
    problems = []
    for name in ("d_model", "d_head", "d_vocab", "d_vocab_out", "n_ctx", "act_fn", "normalization",
                 "positional", "residual_doubled"):
        a, b = getattr(small_cfg, name), getattr(large_cfg, name)
        if a != b:
            problems.append(f"{name} is {a!r} in the small model but {b!r} in the large one (they must be equal)")
    for name in ("n_layers", "n_heads", "d_mlp"):
        a, b = getattr(small_cfg, name), getattr(large_cfg, name)
        if a > b and not (name == "d_mlp" and (small_cfg.attn_only or large_cfg.attn_only)):
            problems.append(f"{name} is {a} in the small model but only {b} in the large one")
    if large_cfg.attn_only and not small_cfg.attn_only:
        problems.append("the small model has MLPs but the large one is attention-only")
    for name in ("attn_bias", "mlp_bias", "unembed_bias"):
        if getattr(small_cfg, name) and not getattr(large_cfg, name):
            problems.append(f"the small model has {name}=True but the large one has {name}=False")
    return problems


def check_insertable(small_cfg, large_cfg) -> None:
    problems = insert_problems(small_cfg, large_cfg)
    if problems:
        hint = ""
        if any(p.startswith(("d_vocab", "n_ctx")) for p in problems):
            hint = " (train both models on the same task layout, e.g. both with scripts/train_arithmetic.py)"
        raise ValueError(f"cannot insert the small model into the large one: {'; '.join(problems)}{hint}; "
                         "build the large model to fit")


def insert_layers(small_cfg, large_cfg, late: bool = False) -> list[int]:
    """The large model's layer for each small layer: the first n_layers_small, or the last (late)."""
    start = large_cfg.n_layers - small_cfg.n_layers if late else 0
    return list(range(start, start + small_cfg.n_layers))


def parse_heads(text: str) -> list[tuple[int, int]]:
    """'L0H1,L1H2' -> [(0, 1), (1, 2)]: heads of the small model, by its own layer and head index."""
    heads = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*L(\d+)H(\d+)\s*", part, flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"{part.strip()!r} in {text!r} is not a head like L0H1 (layer 0, head 1); "
                             "list heads as L0H1,L1H2")
        heads.append((int(match.group(1)), int(match.group(2))))
    return heads


def _check_heads(small_cfg, heads) -> list[tuple[int, int]]:
    heads = sorted(set((int(layer), int(head)) for layer, head in heads))
    for layer, head in heads:
        if not (0 <= layer < small_cfg.n_layers and 0 <= head < small_cfg.n_heads):
            raise ValueError(f"head L{layer}H{head} is not in the small model ({small_cfg.n_layers} layers of "
                             f"{small_cfg.n_heads} heads): name heads as L<layer>H<head> of the small model")
    return heads


# ---- copying ----------------------------------------------------------------------------------

def _put(target: torch.Tensor, index, source: torch.Tensor | None) -> None:
    """target[index] = source (zeros where the source model has no such bias)."""
    if source is None:
        target[index].zero_()
    else:
        target[index].copy_(source)


@torch.no_grad()
def copy_heads(small, large, layers: list[int], heads=None, with_b_O: bool = True) -> None:
    """Copy the small model's heads (all, or the (layer, head) pairs in `heads`) into the large
    model's right-most heads of the layers `layers[small_layer]`."""
    s_cfg, l_cfg = small.cfg, large.cfg
    if heads is None:
        heads = [(layer, head) for layer in range(s_cfg.n_layers) for head in range(s_cfg.n_heads)]
    offset = l_cfg.n_heads - s_cfg.n_heads
    for layer, head in _check_heads(s_cfg, heads):
        s_attn, l_attn = small.blocks[layer].attn, large.blocks[layers[layer]].attn
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            getattr(l_attn, name)[offset + head].copy_(getattr(s_attn, name)[head])
        if l_cfg.attn_bias:
            for name in ("b_Q", "b_K", "b_V"):
                _put(getattr(l_attn, name), offset + head, getattr(s_attn, name)[head] if s_cfg.attn_bias else None)
    if with_b_O and l_cfg.attn_bias:
        for layer in sorted({layer for layer, _ in heads}):
            s_attn, l_attn = small.blocks[layer].attn, large.blocks[layers[layer]].attn
            _put(l_attn.b_O, slice(None), s_attn.b_O if s_cfg.attn_bias else None)


@torch.no_grad()
def copy_mlps(small, large, layers: list[int]) -> None:
    """Copy each small MLP into the first d_mlp units of its large layer (b_out whole)."""
    s_cfg, l_cfg = small.cfg, large.cfg
    if s_cfg.attn_only or l_cfg.attn_only:
        return
    d_mlp = s_cfg.d_mlp
    for layer, target in enumerate(layers):
        s_mlp, l_mlp = small.blocks[layer].mlp, large.blocks[target].mlp
        l_mlp.W_in[:, :d_mlp].copy_(s_mlp.W_in)  # [d_model, d_mlp]
        l_mlp.W_out[:d_mlp].copy_(s_mlp.W_out)  # [d_mlp, d_model]
        if l_cfg.mlp_bias:
            _put(l_mlp.b_in, slice(0, d_mlp), s_mlp.b_in if s_cfg.mlp_bias else None)
            _put(l_mlp.b_out, slice(None), s_mlp.b_out if s_cfg.mlp_bias else None)


@torch.no_grad()
def copy_layer_norms(small, large, layers: list[int]) -> None:
    """Copy ln1 (and ln2) of each inserted layer, and ln_final (LayerNorm models only)."""
    if small.cfg.normalization != "LN":
        return
    pairs = [(small.ln_final, large.ln_final)]
    for layer, target in enumerate(layers):
        pairs.append((small.blocks[layer].ln1, large.blocks[target].ln1))
        if not small.cfg.attn_only:
            pairs.append((small.blocks[layer].ln2, large.blocks[target].ln2))
    for s_ln, l_ln in pairs:
        l_ln.w.copy_(s_ln.w)
        l_ln.b.copy_(s_ln.b)


@torch.no_grad()
def copy_embeddings(small, large) -> None:
    """Copy W_E, a learned W_pos, W_U and b_U."""
    large.embed.W_E.copy_(small.embed.W_E)
    if small.cfg.positional == "learned":
        large.pos_embed.W_pos.copy_(small.pos_embed.W_pos)
    large.unembed.W_U.copy_(small.unembed.W_U)
    if large.cfg.unembed_bias:
        _put(large.unembed.b_U, slice(None), small.unembed.b_U if small.cfg.unembed_bias else None)


def insert_model(small, large, late: bool = False) -> list[int]:
    """Copy all of `small` into `large` (heads, MLPs, LayerNorms, embeddings); returns the large
    model's layer for each small layer."""
    check_insertable(small.cfg, large.cfg)
    layers = insert_layers(small.cfg, large.cfg, late)
    copy_heads(small, large, layers)
    copy_mlps(small, large, layers)
    copy_layer_norms(small, large, layers)
    copy_embeddings(small, large)
    return layers


# ---- the insert modes -------------------------------------------------------------------------

class Inserter:
    """Insert `small` into `large` and, in modes 2 and 3, restore its parts every `every` steps.

    heads: the small model's useful heads as (layer, head) pairs for mode 2 (None: all heads).
    """

    def __init__(self, small, large, mode: int = 1, late: bool = False, heads=None, every: int = 100):
        if mode not in INSERT_MODES:
            raise ValueError(f"insert mode {mode!r} is not known: use "
                             + ", ".join(f"{k} ({v})" for k, v in INSERT_MODES.items()))
        check_whole("insert every", every, 1)
        if heads is not None and mode != 2:
            raise ValueError(f"a list of heads only applies to insert mode 2, not mode {mode}")
        check_insertable(small.cfg, large.cfg)
        self.small, self.large, self.mode, self.late, self.every = small, large, mode, late, every
        self.heads = None if heads is None else _check_heads(small.cfg, heads)
        self.layers = insert_layers(small.cfg, large.cfg, late)
        self.source: dict = {}  # where the small model came from: {"run_dir": ..., "step": checkpoint}
        self.small.requires_grad_(False)

    def start(self) -> None:
        """The initial, full insertion (every mode)."""
        insert_model(self.small, self.large, self.late)

    def restore(self) -> None:
        """Mode 2: the listed heads (Q, K, V, O); mode 3: every head with b_O, and every MLP."""
        if self.mode == 2:
            copy_heads(self.small, self.large, self.layers, self.heads, with_b_O=self.heads is None)
        elif self.mode == 3:
            copy_heads(self.small, self.large, self.layers)
            copy_mlps(self.small, self.large, self.layers)

    def after_step(self, step: int) -> bool:
        """Call after the optimizer step of `step`; restores (and returns True) when it is due."""
        if self.mode >= 2 and step % self.every == 0:
            self.restore()
            return True
        return False

    def describe(self) -> dict:
        """The settings, for a run's config.json: `inserter_from_run(large, **settings)` rebuilds it."""
        return {**self.source, "mode": self.mode, "late": self.late, "every": self.every,
                "heads": None if self.heads is None else [f"L{layer}H{head}" for layer, head in self.heads]}


def inserter_from_run(large, run_dir, mode: int = 1, late: bool = False, heads=None, every: int = 100,
                      step: int | None = None) -> Inserter:
    """An Inserter whose small model is the trained run in `run_dir` (its newest checkpoint, or `step`).
    `heads` may be a list of (layer, head) pairs or text like 'L0H1,L1H2'."""
    run = load_run(run_dir, step=step, device=next(large.parameters()).device)
    if isinstance(heads, str):
        heads = parse_heads(heads)
    elif heads is not None:
        heads = [parse_heads(h)[0] if isinstance(h, str) else h for h in heads]
    try:
        inserter = Inserter(run.model, large, mode, late, heads, every)
    except ValueError as e:
        raise ValueError(f"--insert-from {run_dir}: {e}") from None
    inserter.source = {"run_dir": str(run_dir), "step": run.step}
    return inserter


__all__ = ["INSERT_MODES", "Inserter", "inserter_from_run", "insert_model", "insert_problems", "check_insertable",
           "insert_layers", "parse_heads", "copy_heads", "copy_mlps", "copy_layer_norms", "copy_embeddings"]

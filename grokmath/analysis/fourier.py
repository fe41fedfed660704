"""Fourier bases over digits and over residues mod p, and projections of a model onto them.

`digit_fourier_basis()` is the seed notebook's basis over the ten digits: the constant, cos and
sin of frequencies 1..4 (angle 2*pi*k*d/10) and the +-1 alternation cos(pi*d), each normalised:
ten orthonormal rows. `modular_fourier_basis(p)` is the progress-measures paper's basis over
0..p-1 (p odd): the constant, then cos k and sin k (angle 2*pi*k*x/p) for k = 1..(p-1)/2, each
normalised: p orthonormal rows. A basis is [n_basis, n] with names [n_basis].

`project(values, basis, dim)` writes one axis of a tensor in a basis; `fourier_2d` does two
axes at once (the (a, b) inputs of a two-operand task). The model-level helpers project the
embeddings, the unembedding, MLP neurons and logits; for addition/arithmetic the input grid is
over the two operand digits of one place (other digits drawn at random and averaged over); for
modular arithmetic it is every pair (a, b). `frequency_norms` folds cos k and sin k into
frequency k. Plots: bar charts of the norm per basis vector and 2-D heatmaps.
"""
from __future__ import annotations

import torch

from ..tasks.fourier_bases import digit_fourier_basis, modular_fourier_basis  # noqa: F401 (importable from here)
from .common import model_device


def task_basis(task) -> tuple[torch.Tensor, list[str]]:
    """The basis over a task's number tokens: digits 0..9 (addition, arithmetic) or 0..p-1 (modular)."""
    return task.fourier_basis()


def project(values: torch.Tensor, basis: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """`values` with axis `dim` (length n) written in `basis` [n_basis, n]: that axis becomes n_basis."""
    moved = values.to(basis.dtype).movedim(dim, -1)  # [..., n]
    return (moved @ basis.T).movedim(-1, dim)


def fourier_2d(values: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Axes 0 and 1 of values [n, n, ...] in the basis: [n_basis, n_basis, ...] (the seed's 'xyz,fx,Fy->fFz')."""
    return torch.einsum("xy...,fx,Fy->fF...", values.to(basis.dtype), basis, basis)


def component_norms(coefficients: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The norm of each basis component (axis `dim`) over every other axis: [n_basis]."""
    moved = coefficients.movedim(dim, 0)
    return moved.reshape(moved.shape[0], -1).norm(dim=1)


def frequency_norms(norms: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Fold the norms of cos k and sin k (sqrt of the summed squares) into one value per frequency k."""
    groups: dict[str, float] = {}
    for value, name in zip(norms.tolist(), names):
        key = name.split()[-1] if name.split()[0] in ("cos", "sin") else name
        groups[key] = groups.get(key, 0.0) + value ** 2
    keys = list(groups)
    return torch.tensor([groups[k] ** 0.5 for k in keys], dtype=torch.float64), keys


# ---- the model in the basis -----------------------------------------------------------------

def embedding_fourier(model, task) -> tuple[torch.Tensor, list[str]]:
    """W_E of the number tokens in the task's basis: ([n_basis, d_model], names)."""
    basis, names = task_basis(task)
    W_E = model.embed.W_E.detach().cpu()[:basis.shape[1]]  # number tokens come first in every vocabulary
    return project(W_E, basis, dim=0), names


def unembedding_fourier(model, task) -> tuple[torch.Tensor, list[str]]:
    """The W_U columns of the number outputs in the task's basis: ([n_basis, d_model], names)."""
    basis, names = task_basis(task)
    W_U = model.unembed.W_U.detach().cpu()[:, :basis.shape[1]]  # [d_model, n]
    return project(W_U.T, basis, dim=0), names


@torch.no_grad()
def input_grid(model, task, hook_name: str | None, position: int | None = None, place: int = 0,
               n_samples: int = 32, seed: int = 0, op: str = "add") -> torch.Tensor:
    """An activation (or the logits, hook_name=None) as a function of the two operands: [n, n, ...].

    modular: every pair (a, b) at the '=' position. addition / arithmetic: the digits x, y of
    `place` (0 = units) at `position` (default: the answer position of that place), averaged over
    `n_samples` random draws of the other digits; arithmetic uses the operator `op`.
    """
    batch, answer_position, n = task.operand_grid(place, n_samples, seed, op)
    batch = batch.to(model_device(model))
    position = answer_position if position is None else position
    reps = len(batch) // (n * n)
    if hook_name is None:
        values = model(batch.tokens)[:, position]
    else:
        _, cache = model.run_with_cache(batch.tokens, names_filter=hook_name)
        values = cache[hook_name][:, position]
    values = values.reshape(n * n, reps, *values.shape[1:]).mean(1)
    return values.reshape(n, n, *values.shape[1:]).cpu()


def neuron_fourier(model, task, layer: int = 0, **grid_options) -> tuple[torch.Tensor, list[str]]:
    """MLP neurons (mlp.hook_post) over the operand grid in the 2-D basis: ([n_basis, n_basis, d_mlp], names)."""
    basis, names = task_basis(task)
    return fourier_2d(input_grid(model, task, f"blocks.{layer}.mlp.hook_post", **grid_options), basis), names


def logits_fourier(model, task, **grid_options) -> tuple[torch.Tensor, list[str]]:
    """Logits over the operand grid in the 2-D basis: ([n_basis, n_basis, d_vocab_out], names)."""
    basis, names = task_basis(task)
    return fourier_2d(input_grid(model, task, None, **grid_options), basis), names


def plot_norms(coefficients: torch.Tensor, names: list[str], path, title: str = "", dim: int = 0):
    """Bar chart of the norm of each basis component."""
    from .plots import save_bars
    return save_bars(component_norms(coefficients, dim), names, path, title=title, ylabel="norm")


def plot_2d(coefficients: torch.Tensor, names: list[str], path, title: str = ""):
    """Heatmap of the norm of each 2-D component (over the trailing axes) of fourier_2d's output."""
    from .plots import save_heatmap
    norms = coefficients.reshape(*coefficients.shape[:2], -1).norm(dim=-1)
    return save_heatmap(norms, path, xlabels=names, ylabels=names, xlabel="operand 2 component",
                        ylabel="operand 1 component", title=title, diverging=False)

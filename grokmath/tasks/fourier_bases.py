"""The Fourier bases over a task's number tokens (what `task.fourier_basis()` returns).

`digit_fourier_basis()` is the seed notebook's basis over the ten digits: the constant, cos and
sin of frequencies 1..4 (angle 2*pi*k*d/10) and the +-1 alternation cos(pi*d), each normalised:
ten orthonormal rows. `modular_fourier_basis(p)` is the progress-measures paper's basis over
0..p-1 (p odd): the constant, then cos k and sin k (angle 2*pi*k*x/p) for k = 1..(p-1)/2, each
normalised: p orthonormal rows. A basis is [n_basis, n] with names [n_basis].
"""
from __future__ import annotations

import math

import torch


def digit_fourier_basis(n: int = 10) -> tuple[torch.Tensor, list[str]]:
    """The notebook's basis over n (even) digits: const, cos/sin 1..n/2-1, +-1; rows normalised. [n, n]"""
    if n < 2 or n % 2:
        raise ValueError(f"the digit basis needs an even number of digits >= 2, got {n}")
    d = torch.arange(n, dtype=torch.float64)
    rows, names = [torch.ones(n, dtype=torch.float64)], ["const"]
    for k in range(1, n // 2):
        rows += [torch.cos(2 * math.pi * k * d / n), torch.sin(2 * math.pi * k * d / n)]
        names += [f"cos {k}", f"sin {k}"]
    rows.append(torch.cos(math.pi * d))
    names.append("+-1")
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names


def modular_fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """The progress-measures basis over 0..p-1 (p odd): const, cos k, sin k for k=1..(p-1)/2; normalised. [p, p]"""
    if p < 3 or p % 2 == 0:
        raise ValueError(f"the mod-p basis needs an odd p >= 3 (a prime such as 113), got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names

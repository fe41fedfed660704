"""Heatmaps for the analysis tools (matplotlib, Agg backend, PNG).

`heatmap` draws one labelled matrix on an axis; `save_heatmap` writes one to a file;
`save_heatmap_grid` writes a grid of them (e.g. layers x heads of attention patterns or circuits)
with shared axis labels. Values are taken as arrays or tensors, never a live model. Signed data
use a diverging colour map centred on zero.
"""
from __future__ import annotations

import os
import sys

import matplotlib

# Files, not windows: Agg, unless a notebook (MPLBACKEND) or the user (pyplot) chose already.
if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..training.plots import save_figure  # noqa: E402


def _array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to(torch.float64).cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def heatmap(ax, values, xlabels=None, ylabels=None, title: str = "", xlabel: str = "", ylabel: str = "",
            diverging: bool | None = None, vmax: float | None = None, colorbar: bool = True, max_ticks: int = 60):
    """Draw `values` [rows, cols] on `ax` with tick labels; diverging (default: when signed) centres on 0."""
    data = _array(values)
    finite = data[np.isfinite(data)]
    if diverging is None:
        diverging = finite.size > 0 and finite.min() < 0
    if diverging:
        limit = vmax if vmax is not None else (np.abs(finite).max() if finite.size else 1.0) or 1.0
        image = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    else:
        image = ax.imshow(data, cmap="Blues", vmax=vmax, aspect="auto")
    for labels, setter, set_labels, n in ((xlabels, ax.set_xticks, ax.set_xticklabels, data.shape[1]),
                                          (ylabels, ax.set_yticks, ax.set_yticklabels, data.shape[0])):
        if labels is not None and n <= max_ticks:
            setter(range(n))
            set_labels([str(label) for label in labels], fontsize=7 if n > 20 else 9)
    if xlabels is not None and data.shape[1] <= max_ticks:
        plt.setp(ax.get_xticklabels(), rotation=90 if max(len(str(s)) for s in xlabels) > 2 else 0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


def save_heatmap(values, path, **kwargs):
    """One heatmap as a PNG; keyword arguments as `heatmap`."""
    data = _array(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * data.shape[1] + 2), max(3.0, 0.3 * data.shape[0] + 1.5)))
    heatmap(ax, data, **kwargs)
    return save_figure(fig, path)


def save_heatmap_grid(grid: list[list], path, titles: list[list[str]] | None = None, suptitle: str = "",
                      **kwargs):
    """A grid of heatmaps (rows x columns, e.g. layers x heads) as one PNG; `grid[r][c]` a matrix."""
    n_rows, n_cols = len(grid), max(len(row) for row in grid)
    first = _array(grid[0][0])
    side = min(6.0, max(2.5, 0.25 * max(first.shape) + 1.5))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(side * n_cols + 1, side * n_rows + 0.5), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            if c >= len(grid[r]):
                axes[r][c].axis("off")
                continue
            heatmap(axes[r][c], grid[r][c], title=titles[r][c] if titles else "", **kwargs)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


def save_bars(values, labels, path, title: str = "", ylabel: str = ""):
    """A bar chart (e.g. norms per Fourier component) as a PNG."""
    data = _array(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(data) + 2), 3.5))
    ax.bar(range(len(data)), data)
    ax.set_xticks(range(len(data)))
    ax.set_xticklabels([str(s) for s in labels], rotation=90 if len(data) > 12 else 0, fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return save_figure(fig, path)

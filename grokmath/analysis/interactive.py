"""Interactive figures for notebooks (plotly): attention patterns with the tokens on the axes,
loss curves one can hover and zoom, and labelled heatmaps.

plotly is optional (the `[notebooks]` extra, never needed by the library): it is imported only
when a figure is made, and where it is missing that import fails with one line saying what to
install. `available()` tells a notebook whether to show these or the matplotlib forms that every
figure here also has (grokmath.training.plots, grokmath.analysis.plots and the modules' `plot_*`).
Each function takes arrays, tensors or a metrics table, never a live model, and returns a plotly
Figure: call `.show()`. Axis labels are drawn as tick text over integer positions, so repeated
labels (two '5' tokens) stay separate cells; the hover text names the row, column and value.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import torch

MISSING = 'plotly is not installed: pip install -e ".[notebooks]" (or pip install plotly) for the interactive figures'


def available() -> bool:
    """Whether plotly can be imported (the interactive figures work)."""
    try:
        return importlib.util.find_spec("plotly") is not None
    except (ImportError, ValueError):  # a broken or shadowed plotly counts as missing
        return False


def require_plotly():
    """(plotly.graph_objects, plotly.subplots.make_subplots), or one-line ModuleNotFoundError."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise ModuleNotFoundError(MISSING) from None
    return go, make_subplots


def _array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to(torch.float64).cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _check_labels(labels, n: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {what} labels for {n} {what}s: give one label per {what}")
    return labels


def _hover_grid(ylabels: list[str], xlabels: list[str]) -> np.ndarray:
    """[rows, cols, 2] of (row label, column label): each cell's names for the hover text."""
    return np.stack(np.broadcast_arrays(np.array(ylabels, dtype=object)[:, None],
                                        np.array(xlabels, dtype=object)[None, :]), axis=-1)


def _label_axes(fig, xlabels, ylabels, row=None, col=None, max_ticks: int = 60):
    """Tick text in place of the integer positions (hidden when there are too many to read)."""
    for labels, update in ((xlabels, fig.update_xaxes), (ylabels, fig.update_yaxes)):
        if labels is None:
            continue
        shown = len(labels) <= max_ticks
        update(tickmode="array", tickvals=list(range(len(labels))) if shown else [],
               ticktext=labels if shown else [], row=row, col=col)


def attention_figure(patterns, labels, titles=None, title: str = "Attention patterns", max_cols: int = 4):
    """Attention patterns [head, query, key] or [layer, head, query, key] of one sequence as a grid of
    heatmaps (a row per layer, a column per head) with the token labels on both axes, weights 0..1.
    `labels` [pos]: e.g. grokmath.analysis.attention.token_labels(task, tokens)."""
    go, make_subplots = require_plotly()
    data = _array(patterns)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4 or data.shape[-1] != data.shape[-2]:
        raise ValueError(f"patterns must be [head, query, key] or [layer, head, query, key] of one sequence, "
                         f"got shape {tuple(data.shape)}")
    n_layers, n_heads, n_pos, _ = data.shape
    labels = _check_labels(labels, n_pos, "position")
    titles = titles or [[f"L{layer}H{head}" for head in range(n_heads)] for layer in range(n_layers)]
    n_cols = n_heads if n_layers > 1 else min(n_heads, max_cols)
    n_rows = n_layers if n_layers > 1 else -(-n_heads // n_cols)
    cells = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    fig = make_subplots(rows=n_rows, cols=n_cols, horizontal_spacing=0.06, vertical_spacing=0.08,
                        subplot_titles=[titles[layer][head] for layer, head in cells])
    hover = _hover_grid(labels, labels)
    for i, (layer, head) in enumerate(cells):
        row, col = (layer + 1, head + 1) if n_layers > 1 else (i // n_cols + 1, i % n_cols + 1)
        fig.add_trace(go.Heatmap(z=data[layer, head], customdata=hover, zmin=0.0, zmax=1.0, colorscale="Blues",
                                 showscale=i == 0, name=titles[layer][head],
                                 hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>"
                                               "attention %{z:.3f}<extra>%{fullData.name}</extra>"),
                      row=row, col=col)
        _label_axes(fig, labels, labels, row=row, col=col)
        fig.update_yaxes(autorange="reversed", row=row, col=col)
    side = max(260, min(520, 14 * n_pos + 120))
    fig.update_layout(title=title, height=side * n_rows + 80, width=min(1600, side * n_cols + 100))
    return fig


def loss_figure(metrics: pd.DataFrame, columns=None, prefix: str = "loss_", log_y: bool = True,
                title: str = "Loss", x: str = "step", ylabel: str = "loss"):
    """Curves from a metrics table (a run's metrics.csv): one line per column (default: every
    `prefix*` column, named without the prefix), log y by default; hover shows every line at a step.
    Steps where a column was not measured (NaN) are skipped, as test losses are between tests."""
    go, _ = require_plotly()
    if columns is None:
        columns = [c for c in metrics.columns if c.startswith(prefix)]
    columns = list(columns)
    missing = [c for c in columns if c not in metrics.columns]
    if missing:
        raise ValueError(f"the metrics table has no column {missing[0]!r}: its columns are "
                         f"{', '.join(metrics.columns[:12])}{' ...' if len(metrics.columns) > 12 else ''}")
    if not columns:
        raise ValueError(f"no columns to draw: the table has none starting with {prefix!r}; pass columns=[...]")
    fig = go.Figure()
    for column in columns:
        rows = metrics[[x, column]].dropna()
        y = rows[column].to_numpy(dtype=float)
        if log_y:
            y = np.where(y > 0, y, np.nan)  # a loss of exactly 0 has no place on a log axis
        name = column[len(prefix):] if column.startswith(prefix) and len(column) > len(prefix) else column
        fig.add_trace(go.Scatter(x=rows[x].to_numpy(), y=y, mode="lines", name=name, line=dict(width=1.2)))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=ylabel + (" (log)" if log_y else ""),
                      hovermode="x unified", height=450)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def heatmap_figure(values, xlabels=None, ylabels=None, title: str = "", xlabel: str = "", ylabel: str = "",
                   diverging: bool | None = None, value_name: str = "value"):
    """One labelled matrix [rows, cols]; diverging (default: when signed) centres a red-blue scale on 0."""
    go, _ = require_plotly()
    data = _array(values)
    if data.ndim != 2:
        raise ValueError(f"heatmap_figure draws a matrix [rows, cols], got shape {tuple(data.shape)}")
    xlabels = _check_labels(xlabels, data.shape[1], "column") or [str(i) for i in range(data.shape[1])]
    ylabels = _check_labels(ylabels, data.shape[0], "row") or [str(i) for i in range(data.shape[0])]
    finite = data[np.isfinite(data)]
    if diverging is None:
        diverging = finite.size > 0 and finite.min() < 0
    scale = dict(colorscale="RdBu", reversescale=True, zmid=0.0) if diverging else dict(colorscale="Blues")
    fig = go.Figure(go.Heatmap(z=data, customdata=_hover_grid(ylabels, xlabels), **scale,
                               hovertemplate=f"{ylabel or 'row'} %{{customdata[0]}}<br>{xlabel or 'column'} "
                                             f"%{{customdata[1]}}<br>{value_name} %{{z:.4g}}<extra></extra>"))
    _label_axes(fig, xlabels, ylabels)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel,
                      height=max(300, min(900, 22 * data.shape[0] + 160)),
                      width=max(420, min(1400, 40 * data.shape[1] + 260)))
    return fig


__all__ = ["MISSING", "available", "require_plotly", "attention_figure", "loss_figure", "heatmap_figure"]

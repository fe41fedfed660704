"""Training-curve plots as PNG files (matplotlib, Agg backend).

Every function takes a metrics table (the `metrics.csv` of a run, as a DataFrame) or plain
arrays, never a live model. `plot_run(run_dir)` draws all the plots that fit a run:
per-position ("per-digit") loss curves on linear and log axes, train vs test loss and accuracy
(per scored position: per digit, not per whole answer), per-case curves (addition's BaseAdd /
UseCarry1 / UseSum9 per digit, skip-trigram's per-target), and reference lines where the task has
them (induction's uniform and optimal losses). Per-position and per-case curves are drawn smoothed
(a centred rolling mean, `smoothing_window`) over the raw values drawn faint, with a marker at each
position's first step under 0.1 (its phase change; the raw loss, as `metrics.phase_change_steps`),
so each digit's drop reads at a glance; log axes are labelled 0.01, 0.1, 1, 2, never 2x10^0.
`plot_compare` draws several runs' smoothed curves with a min-max band (the seed notebook 002_).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

# Files, not windows: Agg, unless a notebook (MPLBACKEND) or the user (pyplot) chose already.
if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from ..store.checkpoint import RunDir  # noqa: E402
from ..store.files import atomic_write, atomic_write_text  # noqa: E402
from .metrics import phase_change_steps  # noqa: E402

PHASE_CHANGE = 0.1  # the loss whose first crossing marks a position's phase change (the README's table)


def save_figure(fig, path) -> Path:
    """Write the figure as PNG via a temporary file, and close it."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _columns(metrics: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in metrics.columns if c.startswith(prefix)]


def smoothing_window(n_steps: int, rare: bool = False) -> int:
    """Steps in the rolling mean of the smoothed curves: about 1/60 of the run, 1 to 50; for the
    per-case curves (`rare`: a case has few examples a batch) about 1/30, up to 75."""
    return max(1, min(75, n_steps // 30)) if rare else max(1, min(50, n_steps // 60))


def _plain(value, _position=None) -> str:
    return f"{value:g}"


def _plain_log_labels(ax) -> None:
    """Label a log y axis 0.01, 0.1, 1, 2, ... (matplotlib's default writes minor ticks as 2x10^0):
    where it spans under two decades the minor ticks 2 and 5 (0.2, 0.5, 20, ...) get labels too."""
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))

    def minor(value, _position=None) -> str:
        mantissa = value / 10 ** np.floor(np.log10(value) + 1e-9)
        return _plain(value) if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""

    few_decades = low > 0 and np.log10(high / low) < 2
    ax.yaxis.set_minor_formatter(FuncFormatter(minor) if few_decades else NullFormatter())


def _draw(ax, x, series: dict, log_y=False, log_x=False, title="", ylabel="Loss", window: int = 1, marks=None,
          marks_in_legend=True, **style):
    """One line per series; window > 1: the centred rolling mean, the raw values faint behind.
    marks {label: step}: a dot on that label's curve at the step (its phase change), named in the
    legend unless marks_in_legend is False."""
    x = np.asarray(x)
    drawn = []  # the smoothed values: a log axis spans these, not the raw extremes (noise to 1e-6)
    for i, (label, y) in enumerate(series.items()):
        y = np.asarray(y, dtype=float)
        if np.isnan(y).all():  # e.g. a case that never occurs at this position
            continue
        color = style.get("color") or f"C{i % 10}"  # the same label keeps its colour across panels
        if log_y:
            y = np.where(y > 0, y, np.nan)  # a loss of exactly 0 has no place on a log axis
        line = y
        if window > 1:
            ax.plot(x, y, linewidth=0.6, alpha=0.25, **{**style, "color": color})
            line = smooth(y, window)[0]
        mark = (marks or {}).get(label)
        name = label if mark is None or not marks_in_legend else f"{label} (< {PHASE_CHANGE:g} at {mark})"
        ax.plot(x, line, label=name, linewidth=1.4 if window > 1 else 1, **{**style, "color": color})
        drawn.append(line)
        if mark is not None and mark in x:
            at = int(np.flatnonzero(x == mark)[0])
            ax.plot([mark], [line[at]], "o", color=color, markersize=6, markeredgecolor="black", zorder=5)
    if log_y:
        ax.set_yscale("log")
        values = np.concatenate(drawn) if drawn else np.array([])
        values = values[np.isfinite(values) & (values > 0)]
        if window > 1 and len(values):
            ax.set_ylim(values.min() / 2, values.max() * 1.5)
        _plain_log_labels(ax)
    if log_x:
        ax.set_xscale("symlog", linthresh=max(1.0, float(np.nanmax(x)) / 1000) if len(x) else 1.0)
    ax.set_title(title)
    ax.set_xlabel("Step")
    ax.set_ylabel(ylabel + (" (log)" if log_y else ""))
    ax.grid(alpha=0.3)


def _legend(ax, n):
    if n:
        ax.legend(fontsize=7, ncol=1 if n <= 8 else 2)


def plot_position_losses(metrics: pd.DataFrame, path, title="Per-position loss curves", prefix="loss_",
                         total="train_loss") -> Path:
    """Each scored position's loss and the overall loss, linear (top) and log (bottom): smoothed,
    the raw values faint, a dot at each position's first step under PHASE_CHANGE."""
    series = {c[len(prefix):]: metrics[c] for c in _columns(metrics, prefix)}
    if total in metrics:
        series[total] = metrics[total]
    marks = {k: v for k, v in phase_change_steps(metrics, PHASE_CHANGE, prefix).items() if v is not None}
    window = smoothing_window(len(metrics))
    fig, axes = plt.subplots(2, 1, figsize=(10, 9), layout="constrained")
    for ax, log_y in zip(axes, (False, True)):
        smoothed = f", smoothed over {window} steps" if window > 1 else ""
        _draw(ax, metrics["step"], series, log_y=log_y, window=window, marks=marks,
              title=title + (" (log)" if log_y else "") + smoothed)
        _legend(ax, len(series))
    return save_figure(fig, path)


def plot_train_test(metrics: pd.DataFrame, path, title="Train and test loss", log_x=False,
                    position_word="position") -> Path:
    """Train and test loss (log y); with a second panel for accuracy where it was measured (the
    fraction of scored positions right, teacher-forced: per digit, not per whole answer)."""
    has_acc = "test_acc" in metrics or "train_acc" in metrics
    fig, axes = plt.subplots(2 if has_acc else 1, 1, figsize=(10, 9 if has_acc else 5), squeeze=False,
                             layout="constrained")
    panels = [(("train_loss", "test_loss"), dict(log_y=True, title=title))]
    if has_acc:
        panels.append((("train_acc", "test_acc"), dict(
            title=f"Accuracy per {position_word} (teacher-forced; not per whole answer)",
            ylabel=f"Fraction of {position_word}s right")))
    for ax, (columns, style) in zip(axes[:, 0], panels):
        drawn = 0
        for color, column in zip(("C0", "C1"), columns):
            if column in metrics and metrics[column].notna().any():
                x, y = _measured(metrics, column)  # test columns are measured every test_every steps
                _draw(ax, x, {column.split("_")[0]: y}, log_x=log_x, color=color, **style)
                drawn += 1
        _legend(ax, drawn)
    return save_figure(fig, path)


def _measured(metrics, column):
    rows = metrics[metrics[column].notna()]
    return rows["step"].to_numpy(), rows[column].to_numpy()


def plot_cases(metrics: pd.DataFrame, path, title="Per-case loss curves", log_y=True) -> Path:
    """Case losses: one panel per case with a line per position where the table has
    `case_<case>/<position>` columns, else one panel with a line per case. Smoothed, raw values faint
    (a rare case, e.g. UseSum9, has few examples a batch: its raw loss is mostly noise); each
    position's curve carries a dot at that position's own phase change (its overall loss's first
    step under PHASE_CHANGE), to compare each case's drop with it."""
    per_position = [c for c in _columns(metrics, "case_") if "/" in c]
    if per_position:
        groups: dict[str, dict] = {}
        for c in per_position:
            case, position = c[len("case_"):].split("/", 1)
            # forward-fill: a step with no example of a case leaves a NaN gap (the notebook reuses the last value)
            groups.setdefault(case, {})[position] = metrics[c].ffill()
    else:
        groups = {title: {c[len("case_"):]: metrics[c].ffill() for c in _columns(metrics, "case_")}}
    marks = {k: v for k, v in phase_change_steps(metrics, PHASE_CHANGE).items() if v is not None}
    window = smoothing_window(len(metrics), rare=True)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 4 * len(groups)), squeeze=False, layout="constrained")
    for ax, (case, series) in zip(axes[:, 0], groups.items()):
        smoothed = f" (smoothed over {window} steps; dots: each digit's own phase change)" if window > 1 else ""
        _draw(ax, metrics["step"], series, log_y=log_y, window=window, marks=marks if per_position else None,
              marks_in_legend=False, title=(case if per_position else title) + smoothed)
        _legend(ax, len(series))
    if per_position:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_with_references(metrics: pd.DataFrame, path, references: dict, title="Loss",
                         columns=("train_loss",)) -> Path:
    """Loss columns with horizontal reference lines, e.g. {'uniform': ln(vocab), 'optimal': ...}."""
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    _draw(ax, metrics["step"], {c: metrics[c] for c in columns if c in metrics}, title=title)
    for (name, value), style in zip(references.items(), ("--", ":", "-.", "--")):
        ax.axhline(value, linestyle=style, color="gray", label=f"{name} ({value:.3f})")
    _legend(ax, len(columns) + len(references))
    return save_figure(fig, path)


def smooth(values, window: int):
    """Centred rolling mean, min and max over `window` steps (the seed notebook 002_)."""
    series = pd.Series(np.asarray(values, dtype=float))
    window = max(1, min(window, len(series)))
    rolling = series.rolling(window=window, center=True, min_periods=1)
    return rolling.mean().to_numpy(), rolling.min().to_numpy(), rolling.max().to_numpy()


def plot_compare(curves: dict, path, window: int = 100, first_steps: int | None = None,
                 title="Training loss comparison") -> Path:
    """Several runs' losses {label: (steps, losses)}: a smoothed mean with a min-max band,
    on a linear axis over the first `first_steps` steps (top) and a log axis over all (bottom)."""
    longest = max((len(steps) for steps, _ in curves.values()), default=1)
    first_steps = first_steps or max(1, longest // 4)
    fig, axes = plt.subplots(2, 1, figsize=(10, 10), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, (steps, losses)) in enumerate(curves.items()):
        mean, low, high = smooth(losses, window)
        steps = np.asarray(steps)
        color = colors[i % len(colors)]
        for ax, log_y in zip(axes, (False, True)):
            keep = steps <= first_steps if not log_y else slice(None)
            ax.fill_between(steps[keep], low[keep], high[keep], color=color, alpha=0.2, linewidth=0)
            ax.plot(steps[keep], mean[keep], color=color, linewidth=1.5, label=str(label))
    axes[0].set_title(f"{title} (first {first_steps} steps)")
    axes[1].set_title(f"{title} (log scale)")
    axes[1].set_yscale("log")
    _plain_log_labels(axes[1])
    for ax in axes:
        ax.set_xlabel("Step")
        ax.set_ylabel("Training loss")
        ax.grid(alpha=0.3)
        _legend(ax, len(curves))
    return save_figure(fig, path)


# ---- a whole run -------------------------------------------------------------------------------

def _regime(config: dict) -> str:
    """The data regime for titles, e.g. 'Infinite Data'."""
    return {"infinite": "Infinite Data", "finite": "Finite Data", "full": "Full Batch"}.get(
        config["train"].get("data"), "")


def reference_losses(task) -> dict:
    """Reference loss levels for a task (`task.reference_losses()`, e.g. induction's uniform guess)."""
    return dict(task.reference_losses())


def plot_run(run_dir) -> list[Path]:
    """Draw every plot that fits the run in `run_dir` from its metrics.csv and config.json."""
    run = RunDir(run_dir)
    config = run.read_config()
    _, _, task = run.configs(config)  # a damaged config.json is named here, not met halfway through a plot
    metrics = run.read_metrics()
    if metrics.empty:
        raise ValueError(f"{run.metrics_path} has no rows yet: train the run first")
    subject, regime = task.title(), _regime(config)
    suffix = f" ({regime})" if regime else ""
    paths = []
    position_word = task.position_word
    if 1 < len(_columns(metrics, "loss_")) <= 16:  # one line per position; induction's 84 would be noise
        paths.append(plot_position_losses(metrics, run.path / "per_position_loss.png",
                                          f"Per-{position_word} Loss Curves for {subject}{suffix}"))
        if "test_loss_" + _columns(metrics, "loss_")[0][len("loss_"):] in metrics:
            paths.append(plot_position_losses(metrics, run.path / "per_position_test_loss.png",
                                              f"Per-{position_word} Test Loss Curves for {subject}{suffix}",
                                              prefix="test_loss_", total="test_loss"))
    log_x = config["train"].get("data") == "full"  # grokking: the late test-loss drop reads best on log steps
    paths.append(plot_train_test(metrics, run.path / "loss.png", f"Loss for {subject}{suffix}", log_x=log_x,
                                 position_word=position_word))
    if _columns(metrics, "case_"):
        paths.append(plot_cases(metrics, run.path / "case_loss.png", f"Per-case Loss Curves for {subject}{suffix}"))
    references = reference_losses(task)
    if references:
        paths.append(plot_with_references(metrics, run.path / "loss_references.png", references,
                                          f"Loss for {subject}{suffix}"))
    return paths


def write_compare(run_dirs: list, path, label_by: str | None = None, window: int = 100,
                  first_steps: int | None = None, thresholds=(1.0, 0.1, 0.01, 0.001), last: int = 100):
    """Plot several runs' train loss on one figure and write a summary CSV beside the PNG.
    Returns (png path, csv path, summary DataFrame)."""
    curves, rows = {}, []
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        config = run.read_config()
        run.configs(config)
        metrics = run.read_metrics()
        if metrics.empty:
            raise ValueError(f"{run.metrics_path} has no rows: train that run first")
        label = run.path.name if label_by is None else _setting(config, label_by, run.path)
        if label in curves:
            label = f"{label} ({run.path.name})"
        curves[label] = (metrics["step"].to_numpy(), metrics["train_loss"].to_numpy())
        losses = metrics["train_loss"].to_numpy()
        row = {"label": label, "run_dir": str(run.path), "steps": int(metrics["step"].iloc[-1]) + 1,
               "final_loss": float(losses[-1]), f"mean_loss_last_{last}": float(np.nanmean(losses[-last:]))}
        for t in thresholds:
            below = np.flatnonzero(losses < t)
            row[f"steps_to_{t:g}"] = int(metrics["step"].iloc[below[0]]) if len(below) else None
        rows.append(row)
    path = Path(path)
    png = plot_compare(curves, path.with_suffix(".png"), window=window, first_steps=first_steps)
    summary = pd.DataFrame(rows)
    csv = path.with_suffix(".csv")
    atomic_write_text(csv, summary.to_csv(index=False))
    return png, csv, summary


def _setting(config: dict, key: str, where) -> str:
    """A setting from any section of config.json (task, model or train), for labels."""
    aliases = {"digits": "n_digits"}
    for section in ("task", "model", "train"):
        for k in (key, aliases.get(key, key)):
            if k in config[section]:
                return str(config[section][k])
    known = sorted(set(config["task"]) | set(config["model"]) | set(config["train"]))
    raise ValueError(f"--label-by {key!r} is not a setting of run {where}: use one of {', '.join(known)}")


__all__ = ["plot_position_losses", "plot_train_test", "plot_cases", "plot_with_references", "plot_compare",
           "plot_run", "write_compare", "smooth", "save_figure", "reference_losses"]

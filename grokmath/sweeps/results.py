"""A sweep folder's results table and its across-seeds views, read from the run folders.

- `results.csv`: one row per finished run: its run folder, setting, grid values, seed, and the
  summary scripts/compare_runs.py writes (grokmath.training.plots.write_compare: steps, final loss, mean over
  the last 100 steps, first step under each loss threshold), each answer position's first step under
  0.1 (grokmath.training.metrics.phase_change_steps; tasks with at most 16 scored positions) and, where the run
  measured test accuracy (modular), `grok_step`: the first step with test accuracy >= 99%.
- `views/curves.png`: per setting, the training loss smoothed over `window` steps with its min-max
  band over all seeds (compare_runs' plot, each setting's seeds pooled); `views/runs.png` and
  `runs.csv`: compare_runs' figure and table of every run.
- `views/phase_changes.png` and `.csv`: the phase-change atlas: per answer position (and grokking
  step), the distribution over seeds of the step of its phase change, per setting.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..store.checkpoint import RunDir, atomic_write_text
from ..training.metrics import phase_change_steps
from ..training.plots import plot_compare, plt, save_figure, write_compare

GROK = "grok"  # the atlas's name for the first step with test accuracy >= GROK_ACC
GROK_ACC = 0.99
THRESHOLD = 0.1


def read_manifest(sweep_dir) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise ValueError(f"{sweep_dir} is not a sweep folder (no sweep.json): give the `out` of a sweep file")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is damaged ({e}): run the sweep again to rewrite it") from None


def run_status(run_dir: Path) -> str:
    """'finished', 'stopped' (resumable), or 'new' (missing, or stopped before its first state)."""
    if not (run_dir / "config.json").is_file():
        return "new"
    if (run_dir / "summary.json").is_file():
        return "finished"
    states = sorted((run_dir / "checkpoints").glob("state_*.pt"))
    if not states:
        return "new"
    try:
        steps = json.loads((run_dir / "config.json").read_text())["train"]["steps"]
        last = int(states[-1].stem.split("_")[1])
    except (ValueError, KeyError, OSError):
        return "stopped"  # the script names what is wrong when it resumes
    return "finished" if last >= steps else "stopped"


def finished_runs(sweep_dir, manifest: dict) -> list[dict]:
    return [r for r in manifest["runs"] if run_status(Path(sweep_dir) / r["run"]) == "finished"]


def phase_changes(metrics: pd.DataFrame) -> dict:
    """{position: first step with loss < 0.1} (at most 16 positions), plus 'grok' where test accuracy was measured."""
    steps = phase_change_steps(metrics, THRESHOLD)
    steps = steps if len(steps) <= 16 else {}
    if "test_acc" in metrics and metrics["test_acc"].notna().any():
        above = np.flatnonzero(metrics["test_acc"].to_numpy() >= GROK_ACC)
        steps[GROK] = int(metrics["step"].iloc[above[0]]) if len(above) else None
    return steps


def write_results(sweep_dir, window: int = 100, last: int = 100) -> pd.DataFrame:
    """results.csv and the views of the finished runs of a sweep folder; returns the table."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    runs = finished_runs(sweep_dir, manifest)
    grid_keys = list(manifest.get("grid", {}))
    if not runs:
        table = pd.DataFrame(columns=["run", "setting", *grid_keys, "seed"])
        atomic_write_text(sweep_dir / "results.csv", table.to_csv(index=False))
        return table
    views = sweep_dir / "views"
    views.mkdir(exist_ok=True)
    _, _, summary = write_compare([sweep_dir / r["run"] for r in runs], views / "runs", window=window, last=last)
    rows, metrics_of = [], {}
    for run, (_, compared) in zip(runs, summary.iterrows()):
        metrics = RunDir(sweep_dir / run["run"]).read_metrics()
        metrics_of[run["run"]] = metrics
        row = {"run": run["run"], "setting": run["setting"], **run["values"], "seed": run["seed"]}
        row.update({k: v for k, v in compared.items() if k not in ("label", "run_dir")})
        row.update({"grok_step" if k == GROK else f"under_{THRESHOLD:g}_{k}": v
                    for k, v in phase_changes(metrics).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in table.columns:  # steps are whole numbers; None where a threshold was never reached
        if column.startswith(("steps_to_", "under_")) or column in ("steps", "grok_step"):
            table[column] = table[column].astype("Int64")
    atomic_write_text(sweep_dir / "results.csv", table.to_csv(index=False))
    write_views(sweep_dir, runs, metrics_of, window)
    return table


def write_views(sweep_dir: Path, runs: list[dict], metrics_of: dict, window: int = 100) -> list[Path]:
    """views/curves.png (per setting, all seeds pooled) and the phase-change atlas (PNG and CSV)."""
    views = sweep_dir / "views"
    by_setting: dict[str, list[dict]] = {}
    for run in runs:
        by_setting.setdefault(run["setting"], []).append(run)
    curves, longest = {}, 1
    for setting, members in by_setting.items():
        # each step's losses of all seeds, side by side: a rolling window of window * K points then
        # covers `window` steps of every seed, so its min-max band spans the seeds
        frames = [metrics_of[r["run"]][["step", "train_loss"]] for r in members]
        pooled = pd.concat(frames).sort_values("step", kind="stable")
        curves[f"{setting} ({len(members)} seeds)"] = (pooled["step"].to_numpy(), pooled["train_loss"].to_numpy())
        longest = max(longest, int(pooled["step"].max()) + 1)
    k = max(len(m) for m in by_setting.values())
    paths = [plot_compare(curves, views / "curves.png", window=window * k, first_steps=max(1, longest // 4),
                          title="Training loss over seeds (smoothed mean, min-max band)")]
    atlas = [{"setting": r["setting"], "seed": r["seed"], "position": position, "step": step}
             for r in runs for position, step in phase_changes(metrics_of[r["run"]]).items()]
    table = pd.DataFrame(atlas, columns=["setting", "seed", "position", "step"])
    table["step"] = table["step"].astype("Int64")
    atomic_write_text(views / "phase_changes.csv", table.to_csv(index=False))
    paths += [views / "phase_changes.csv", plot_atlas(table, views / "phase_changes.png")]
    return paths


def plot_atlas(table: pd.DataFrame, path) -> Path:
    """Per position, each setting's phase-change steps over seeds: one dot per seed, a bar at the
    median; seeds that never crossed are counted in the legend."""
    positions = list(dict.fromkeys(table["position"]))
    settings = list(dict.fromkeys(table["setting"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(positions) * max(1, len(settings)) ** 0.5), 5),
                           layout="constrained")
    width = 0.8 / max(1, len(settings))
    rng = np.random.default_rng(0)  # horizontal jitter only, so dots of equal steps stay apart
    for j, setting in enumerate(settings):
        rows = table[table["setting"] == setting]
        never = int(rows["step"].isna().sum())
        label = setting + (f" ({never} never)" if never else "")
        for i, position in enumerate(positions):
            steps = rows[(rows["position"] == position)]["step"].dropna().to_numpy(dtype=float)
            x = i - 0.4 + width * (j + 0.5)
            if len(steps):
                ax.scatter(x + rng.uniform(-width / 4, width / 4, len(steps)), steps, s=14, color=f"C{j % 10}",
                           alpha=0.8, label=label if i == 0 else None)
                ax.hlines(np.median(steps), x - width / 2.5, x + width / 2.5, color=f"C{j % 10}", linewidth=2)
            elif i == 0:
                ax.scatter([], [], color=f"C{j % 10}", label=label)
    ax.set_xticks(range(len(positions)), [p if p != GROK else f"grok\n(test acc >= {GROK_ACC:.0%})" for p in positions])
    ax.set_xlabel(f"answer position (first step with loss < {THRESHOLD:g})")
    ax.set_ylabel("step")
    ax.set_title("Phase-change atlas: step of each position's phase change over seeds")
    ax.grid(alpha=0.3, axis="y")
    if settings:
        ax.legend(fontsize=7, ncol=1 if len(settings) <= 8 else 2)
    return save_figure(fig, path)


__all__ = ["write_results", "write_views", "plot_atlas", "phase_changes", "read_manifest"]

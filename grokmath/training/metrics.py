"""Per-step metrics of the training loop: the columns of metrics.csv, one step's row (kept on
the device; its numbers come from grokmath.training.losses), the log that moves rows to the host in
chunks, and what the finished curves say (phase-change steps, the summary)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..config import TrainConfig
from .losses import ScoreSums, case_losses, correct, masked_mean, per_position_loss

HEAD = ("step", "lr")  # a row's first columns, known on the host; metric_row builds the rest


def metric_columns(task, has_test: bool, case_names: list[str]) -> list[str]:
    """The metrics.csv columns, in the order the loop writes them."""
    labels = list(task.pred_labels)
    columns = [*HEAD, "train_loss", "test_loss", "train_acc"]
    columns += ["test_acc"] if has_test else []
    columns += [f"loss_{label}" for label in labels]
    columns += [f"test_loss_{label}" for label in labels] if has_test else []
    columns += [f"case_{name}" for name in case_names]
    if len(labels) > 1:  # each case at each scored position, e.g. case_UseCarry1/A3
        columns += [f"case_{name}/{label}" for name in case_names for label in labels]
    return columns


class MetricsLog:
    """Per-step metric rows: device tensors until `to_host`, then a float64 numpy table."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.host = np.zeros((0, len(columns)))
        self.pending: list[torch.Tensor] = []
        self.pending_head: list[tuple[int, float]] = []  # (step, lr) known on the host already
        self.csv_parts = [pd.DataFrame(columns=columns).to_csv(index=False)]  # header, then rows as text
        self.csv_rows = 0  # rows of `host` already in csv_parts

    def append(self, step: int, lr: float, values: torch.Tensor) -> None:
        self.pending.append(values)
        self.pending_head.append((step, lr))

    def to_host(self) -> np.ndarray:
        """Move pending rows to the host (one synchronisation); returns the new rows."""
        if not self.pending:
            return self.host[:0]
        values = torch.stack(self.pending).cpu().numpy()
        rows = np.concatenate([np.array(self.pending_head, dtype=np.float64), values], axis=1)
        self.host = np.concatenate([self.host, rows])
        self.pending, self.pending_head = [], []
        return rows

    def add_rows(self, rows: np.ndarray) -> None:
        """Whole rows [n, n_columns] (step and lr included) from the captured step's metrics buffer."""
        assert not self.pending and rows.shape[1] == len(self.columns)
        self.host = np.concatenate([self.host, rows])

    def load(self, frame: pd.DataFrame, before_step: int) -> None:
        """Keep the rows of an earlier run segment up to (not including) before_step."""
        if before_step == 0:
            return
        if list(frame.columns) != self.columns:
            raise ValueError("metrics.csv has other columns than this run writes: it belongs to another "
                             "configuration; the run cannot be resumed")
        frame = frame[frame["step"] < before_step]
        if len(frame) != before_step or not (frame["step"].to_numpy() == np.arange(before_step)).all():
            raise ValueError(f"metrics.csv lacks rows before step {before_step}: the run cannot be resumed exactly")
        self.host = frame.to_numpy(dtype=np.float64)

    def column(self, name: str, start: int = 0) -> np.ndarray:
        """One column of the host rows from row `start` on, read by its metrics.csv name."""
        return self.host[start:, self.columns.index(name)]

    def frame(self, start: int = 0) -> pd.DataFrame:
        frame = pd.DataFrame(self.host[start:], columns=self.columns)
        frame["step"] = frame["step"].astype(np.int64)
        return frame

    def csv(self) -> str:
        """The whole table as CSV text; rows are formatted once, so a flush costs O(new rows)."""
        if self.csv_rows < len(self.host):
            self.csv_parts.append(self.frame(self.csv_rows).to_csv(index=False, header=False))
            self.csv_rows = len(self.host)
        return "".join(self.csv_parts)


def metric_row(loss, nll, logits, batch, cases, test_sums: ScoreSums | None, has_test: bool,
               n_pred: int) -> torch.Tensor:
    """One step's values in metric_columns order (after HEAD: step and lr), kept on the device.
    cases: [n_cases, batch, n_pred] bool or None; test_sums: losses.score_sums(...) on the test set, or None
    when the test set was not measured this step (NaN then)."""
    nll, mask = nll.detach(), batch.mask
    nan = torch.full((1,), math.nan, dtype=torch.float64, device=nll.device)
    right = correct(logits.detach(), batch.targets).to(torch.float64)  # [batch, n_pred]
    if test_sums is None:
        test_loss, test_acc, test_per_pos = nan, nan, nan.expand(n_pred)
    else:
        count = test_sums.count  # [n_pred]
        test_loss, test_acc = (test_sums.nll.sum() / count.sum())[None], (test_sums.correct.sum() / count.sum())[None]
        test_per_pos = test_sums.nll / count
    parts = [loss.detach()[None], test_loss, masked_mean(right, mask)[None]]
    parts += [test_acc] if has_test else []
    parts += [per_position_loss(nll, mask)]  # [n_pred]
    parts += [test_per_pos] if has_test else []
    if cases is not None:
        parts.append(case_losses(nll, cases, mask))  # [n_cases], NaN where a case is absent
        if n_pred > 1:
            parts.append(case_losses(nll, cases, mask, per_position=True).flatten())  # [n_cases * n_pred]
    return torch.cat(parts)


def phase_change_steps(metrics: pd.DataFrame, threshold: float = 0.1, prefix: str = "loss_",
                       window: int = 1) -> dict:
    """For each `prefix<label>` column: the first step at which the loss (rolling mean over `window`
    steps, trailing) is under `threshold`, or None if it never is."""
    steps = {}
    for column in metrics.columns:
        if not column.startswith(prefix):
            continue
        values = metrics[column].rolling(window, min_periods=window).mean() if window > 1 else metrics[column]
        below = np.flatnonzero(values.to_numpy() < threshold)
        steps[column[len(prefix):]] = int(metrics["step"].iloc[below[0]]) if len(below) else None
    return steps


def summarize(metrics: pd.DataFrame, cfg: TrainConfig, n_skipped: int, seconds: float, device,
              step_path: str = "eager", step_path_reason: str | None = None) -> dict:
    """summary.json: the final losses, the phase changes, and how the run ran (device, step path:
    'cuda_graph', 'static' or 'eager', with the reason the captured step did not run, TF32)."""
    last = metrics.tail(min(100, len(metrics)))
    final = metrics.iloc[-1]
    test = metrics["test_loss"].dropna()
    return {
        "steps": int(cfg.steps),
        "final_train_loss": float(final["train_loss"]),
        "mean_train_loss_last_100": float(last["train_loss"].mean()),
        "final_test_loss": float(test.iloc[-1]) if len(test) else None,
        "final_position_losses": {c[len("loss_"):]: float(final[c]) for c in metrics.columns if c.startswith("loss_")},
        "steps_to_position_loss_under_0.1": phase_change_steps(metrics, 0.1),
        "n_skipped_nonfinite": int(n_skipped),
        "device": str(device),
        "step_path": step_path,
        "step_path_reason": step_path_reason,
        "tf32": bool(cfg.tf32),
        "seconds": round(seconds, 1),
    }

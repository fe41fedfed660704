"""Experiment tracking: TensorBoard event files and Weights & Biases, fed the rows of metrics.csv.

`--tensorboard` writes TensorBoard event files into each run folder (`tensorboard --logdir runs`
then shows every run, one scalar per metrics.csv column, tagged by its column name); `--wandb`
logs the same scalars to Weights & Biases (project $WANDB_PROJECT, default 'grokmath'; the run's
config.json as its config; `WANDB_MODE=offline` keeps it on disk, in RUN_DIR/wandb/, with no
network). Both are optional extras (`pip install -e ".[tracking]"`), imported only when asked for.

The training loop calls `log_rows` where its metrics rows reach the host (every 50 steps and at each
checkpoint), with the same rows that go to metrics.csv; nothing else in grokmath knows about
tracking. A logger that fails (not installed, no network, a full disk) warns once and is dropped:
it never stops a run or changes what it computes. A resumed run's TensorBoard writer purges the
events at and after the step it resumes from, so steps logged after the last checkpoint by a
killed process are not shown twice; Weights & Biases resumes the same run (its id is a hash of the
run folder's path) and drops steps it already has.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import sys
from pathlib import Path

_enabled: dict[str, bool] = {"tensorboard": False, "wandb": False}
_loggers: dict[tuple[str, str], "_Logger | None"] = {}  # (kind, run folder) -> logger, None once failed
_warned: set[str] = set()
_warn = None


def add_tracking_flags(parser) -> None:
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write TensorBoard event files into the run folder (needs the tensorboard "
                        "package; `tensorboard --logdir runs` shows them)")
    parser.add_argument("--wandb", action="store_true", default=None,
                        help="also log to Weights & Biases (needs wandb; project $WANDB_PROJECT or grokmath; "
                        "WANDB_MODE=offline logs to RUN_DIR/wandb without a network)")


def configure_tracking(tensorboard: bool = False, wandb: bool = False, warn=None) -> None:
    """Which loggers the runs of this process feed (the command line's --tensorboard / --wandb)."""
    global _warn
    close_all()
    _enabled.update(tensorboard=bool(tensorboard), wandb=bool(wandb))
    _warn = warn


def tracking_enabled() -> bool:
    return any(_enabled.values())


def log_rows(run_dirs: list, columns: list[str], rows_per_run: list) -> None:
    """New metrics rows ([n, len(columns)] arrays, step first) of each run folder, to every logger."""
    if not tracking_enabled():
        return
    for run_dir, rows in zip(run_dirs, rows_per_run):
        if run_dir is None or len(rows) == 0:
            continue
        for kind in [k for k, on in _enabled.items() if on]:
            key = (kind, str(Path(run_dir).resolve()))
            if key not in _loggers:
                _loggers[key] = _safely(kind, lambda: LOGGERS[kind](Path(run_dir), int(rows[0][0])))
            logger = _loggers[key]
            if logger is not None and _safely(kind, lambda: logger.log(columns, rows) or True) is None:
                _loggers[key] = None


def close_all() -> None:
    for key, logger in list(_loggers.items()):
        if logger is not None:
            _safely(key[0], logger.close)
    _loggers.clear()


atexit.register(close_all)


def _safely(kind: str, call):
    """call(), or None after one warning (per kind and process) if it raises: tracking never stops a run."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001: whatever a logger raises, the run goes on
        if kind not in _warned:
            _warned.add(kind)
            detail = str(e).splitlines()[0] if str(e) else ""
            message = (f"warning: {kind} logging failed ({type(e).__name__}: {detail}); the run goes on without it "
                       f"(metrics.csv has every row)")
            (_warn or (lambda m: print(m, file=sys.stderr)))(message)
        return None


def _scalars(columns: list[str], row) -> dict:
    return {c: float(v) for c, v in zip(columns[1:], row[1:]) if math.isfinite(v)}


class _Logger:
    def log(self, columns: list[str], rows) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardLogger(_Logger):
    """Event files in the run folder, one scalar per column (torch.utils.tensorboard, needs tensorboard)."""

    def __init__(self, run_dir: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter
        # a resumed run: drop what a killed process logged at or after the step it resumes from
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=first_step or None)

    def log(self, columns, rows) -> None:
        for row in rows:
            step = int(row[0])
            for tag, value in _scalars(columns, row).items():
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(_Logger):
    """A Weights & Biases run per run folder, named as the folder, resumed by a stable id."""

    def __init__(self, run_dir: Path, first_step: int):
        import wandb
        config_path = run_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        options = dict(project=os.environ.get("WANDB_PROJECT", "grokmath"), name=run_dir.name, dir=str(run_dir),
                       config=config, id=run_id, resume="allow")
        try:
            self.run = wandb.init(**options, reinit="create_new")  # several runs at once (--seeds)
        except (TypeError, ValueError):  # an older wandb
            self.run = wandb.init(**options, reinit=True)

    def log(self, columns, rows) -> None:
        for row in rows:
            self.run.log(_scalars(columns, row), step=int(row[0]))

    def close(self) -> None:
        self.run.finish()


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}

"""Run folders: saving and loading what a training run leaves behind.

A run folder `runs/<run-name>/` holds
- `config.json`: {"model": ModelConfig dict, "task": {"name": ..., **options}, "train": TrainConfig dict}
  (`run_config`), plus "insert" for a run started from a smaller one (grokmath.insert);
- `metrics.csv`: one row per step (see grokmath.train), read with `pandas.read_csv` in one call;
- `checkpoints/model_{step:06d}.pt`: the model's state dict at step 0 and every N steps and at the end;
- `checkpoints/state_{step:06d}.pt`: everything needed to resume (model, optimizer, scheduler, data
  generator, RNG, metrics position); the newest two are kept, so a damaged newest one falls back;
- PNG plots and `summary.json`;
- `group.json`, only in the runs of one `--seeds` group (trained stacked in one process):
  {"format": 1, "runs": [the group's folder names, siblings of this one], "seeds": [...]}. Each
  run folder of a group is otherwise exactly a single run's, and `--resume` on any of them
  resumes the whole group from the newest step all of them have (see grokmath.run).
`prepare_runs` is the one place run folders are made and replaced: every check runs before
anything is removed. `refuse_existing` is the one "exists: pass --overwrite" check of every script.
Every file is written to a temporary name and renamed into place, so a crash mid-write leaves the
previous good file. Every load is `torch.load(..., weights_only=True)`: a file that carries
pickled code is refused, never executed. `load_run(run_dir)` rebuilds config, metrics and model.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .config import ModelConfig, TrainConfig
from .model import Transformer
from .tasks import make_task

CONFIG = "config.json"
GROUP = "group.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
# pandas >= 3 parses floats exactly by default (and deprecates the option); older pandas needs it
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
KEEP_STATES = 2  # resumable states kept: the newest and the one before, in case the newest is damaged


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, unsafe, or for another model)."""


# ---- atomic writes -------------------------------------------------------------------------

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def refuse_existing(paths, overwrite: bool, fix: str = "pass --overwrite to replace it") -> None:
    """The one check before writing outputs: an existing path is an error (saying `fix`) unless overwrite."""
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        if Path(path).exists() and not overwrite:
            raise ValueError(f"{path} already exists: {fix}")


# ---- safe loading --------------------------------------------------------------------------

def safe_load(path, map_location="cpu"):
    """torch.load with weights_only=True; a bad file raises CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path or list the run's checkpoints/")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickle that would import or call code
        reason = str(e).strip().splitlines()
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled code or objects other than tensors and plain "
            f"values ({reason[-1] if reason else 'unsafe pickle'}); only load checkpoints written by grokmath"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'}); use an earlier checkpoint") from None


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict, source="checkpoint") -> None:
    """model.load_state_dict(strict) with an error that names every mismatching tensor."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source} is not a model state dict (a dict of tensors)")
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for k, v in state_dict.items():
        if k in own and own[k].shape != v.shape:
            problems.append(f"{k} is {list(v.shape)} in the file but {list(own[k].shape)} in the model")
    if problems:
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(problems)}): "
                              "load it into a model built from the run's own config.json")
    model.load_state_dict(state_dict)


# ---- the run folder ------------------------------------------------------------------------

_MODEL_RE = re.compile(r"model_(\d{6,})\.pt$")
_STATE_RE = re.compile(r"state_(\d{6,})\.pt$")


class RunDir:
    """Paths and file operations of one run folder."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def model_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"model_{step:06d}.pt"

    def state_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"state_{step:06d}.pt"

    def _steps(self, pattern) -> list[int]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = (pattern.match(p.name) for p in self.checkpoint_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def model_steps(self) -> list[int]:
        return self._steps(_MODEL_RE)

    def state_steps(self) -> list[int]:
        return self._steps(_STATE_RE)

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def check_is_run(self) -> None:
        if not self.path.exists():
            raise ValueError(f"run folder {self.path} does not exist: give the folder a train script made, e.g. runs/<run-name>")
        if not self.is_run():
            raise ValueError(f"{self.path} is not a grokmath run folder (no {CONFIG}): "
                             "give a folder made by scripts/train_*.py")

    def check_replaceable(self, overwrite: bool) -> bool:
        """Whether the folder holds something to replace; raises unless it may be (a run, with overwrite)."""
        if not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir())):
            return False
        if not self.is_run():
            raise ValueError(f"{self.path} exists and is not a grokmath run folder: choose another --run-name or --out")
        refuse_existing(self.path, overwrite, "pass --overwrite to replace it, --run-name to choose another name, "
                        f"or --resume {self.path} to continue it")
        return True

    def create(self, config: dict, overwrite: bool = False) -> None:
        """Make the folder and write config.json; an existing run is replaced only with overwrite."""
        prepare_runs([self.path], [config], overwrite)

    def read_config(self) -> dict:
        self.check_is_run()
        try:
            config = json.loads(self.config_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.config_path} is not valid JSON ({e}): restore it or retrain") from None
        missing = [k for k in ("model", "task", "train") if k not in config]
        if missing or "name" not in config.get("task", {}):
            raise ValueError(f"{self.config_path} lacks {missing or ['task.name']}: it was not written by grokmath")
        return config

    # metrics ---------------------------------------------------------------------------
    def write_metrics(self, metrics: pd.DataFrame | str) -> None:
        """A DataFrame, or CSV text already made from one; pandas writes floats at full
        (repr) precision, so the CSV round-trips float64 values exactly."""
        text = metrics if isinstance(metrics, str) else metrics.to_csv(index=False)
        atomic_write_text(self.metrics_path, text)

    def read_metrics(self) -> pd.DataFrame:
        if not self.metrics_path.is_file():
            return pd.DataFrame()
        return pd.read_csv(self.metrics_path, **_EXACT_FLOATS)

    # checkpoints -------------------------------------------------------------------------
    def save_model(self, step: int, model: torch.nn.Module) -> None:
        self.save_model_state(step, _cpu(model.state_dict()))

    def save_model_state(self, step: int, state_dict: dict) -> None:
        atomic_torch_save(state_dict, self.model_path(step))

    def load_model_state(self, step: int) -> dict:
        return safe_load(self.model_path(step))

    def save_state(self, step: int, state: dict) -> None:
        """Write a resumable state, then drop all but the newest KEEP_STATES of them."""
        atomic_torch_save(state, self.state_path(step))
        for old in self.state_steps()[:-KEEP_STATES]:
            self.state_path(old).unlink(missing_ok=True)

    def load_state(self, step: int) -> dict:
        state = safe_load(self.state_path(step))
        if not (isinstance(state, dict) and state.get("step") == step):
            raise CheckpointError(f"checkpoint {self.state_path(step)} is not a grokmath training state")
        return state

    def load_latest_state(self, warn=print) -> dict:
        """The newest resumable state that loads; a damaged one is reported and the previous used."""
        return load_latest_states([self], warn)[0]

    def read_group(self) -> list[Path] | None:
        """The run folders of this run's --seeds group (this one included), or None for a single run."""
        path = self.path / GROUP
        if not path.is_file():
            return None
        try:
            names = json.loads(path.read_text()).get("runs")
        except (json.JSONDecodeError, AttributeError):
            names = None
        if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() and Path(n).name == n
                                                          for n in names)):
            raise ValueError(f"{path} is damaged: it should list the group's run folders as "
                             '{"runs": ["name_s1", "name_s2"], ...}; restore it')
        return [self.path.parent / name for name in names]


def load_latest_states(runs: list[RunDir], warn=print) -> list[dict]:
    """The resumable states of the newest step every run has and can load (a damaged one is
    reported and the step before used), one per run, in order."""
    steps = sorted(set.intersection(*(set(run.state_steps()) for run in runs)))
    if not steps:
        names = ", ".join(str(run.path) for run in runs)
        common = " at a step common to the group" if len(runs) > 1 else ""
        raise ValueError(f"{names} has no resumable checkpoint (checkpoints/state_*.pt){common}: it cannot be "
                         "resumed; start it again with --overwrite")
    errors = []
    for step in reversed(steps):
        try:
            return [run.load_state(step) for run in runs]
        except CheckpointError as e:
            if "refusing" in str(e):
                raise
            errors.append(str(e))
            warn(f"warning: {e}; trying the previous one")
    where = ", ".join(str(run.checkpoint_dir) for run in runs)
    raise CheckpointError(f"no usable resumable checkpoint in {where}: {'; '.join(errors)}")


def prepare_runs(paths: list, configs: list[dict], overwrite: bool = False) -> list[RunDir]:
    """Make the run folders (config.json each; group.json in each when there are several: one
    --seeds group). Every check runs before anything is removed; an existing run folder is replaced
    only with overwrite, any other existing folder never."""
    runs = [RunDir(p) for p in paths]
    replace = [run.check_replaceable(overwrite) for run in runs]
    for run, old in zip(runs, replace):
        if old:
            shutil.rmtree(run.path)
    for run, config in zip(runs, configs):
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.config_path, config)
        if len(runs) > 1:
            atomic_write_json(run.path / GROUP, {"format": 1, "runs": [r.path.name for r in runs],
                                                 "seeds": [c["train"]["seed"] for c in configs]})
    return runs


def run_config(model_cfg: ModelConfig, task, train_cfg: TrainConfig) -> dict:
    """The config.json of a run."""
    return {"model": model_cfg.to_dict(), "task": {"name": task.name, **task.options()},
            "train": train_cfg.to_dict()}


def _cpu(state_dict: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state_dict.items()}


# ---- loading a run back --------------------------------------------------------------------

@dataclass
class Run:
    """A finished (or stopped) run: its configs, metrics, task and a model at `step`."""
    path: Path
    config: dict
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    task: object  # a grokmath.tasks Task
    metrics: pd.DataFrame
    model: torch.nn.Module | None
    step: int | None
    steps: list[int] = field(default_factory=list)  # the steps with a model checkpoint

    def load_model(self, step: int | None = None, device="cpu") -> torch.nn.Module:
        """A fresh model with the weights at `step` (default: the newest checkpoint)."""
        return _load_model(RunDir(self.path), self.model_cfg, step, device)[0]


def _load_model(run: RunDir, model_cfg, step, device):
    steps = run.model_steps()
    if not steps:
        raise ValueError(f"{run.path} has no model checkpoints (checkpoints/model_*.pt)")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"{run.path} has no checkpoint at step {step}: available steps are {steps[0]}..{steps[-1]} "
                         f"({len(steps)} checkpoints)")
    model = Transformer(model_cfg)
    load_state_dict_checked(model, run.load_model_state(step), str(run.model_path(step)))
    return model.to(device).eval(), step


def load_run(run_dir, step: int | None = None, device="cpu", load_model: bool = True) -> Run:
    """Config, metrics, task and (unless load_model=False) the model at `step` (default newest)."""
    run = RunDir(run_dir)
    config = run.read_config()
    model_cfg = ModelConfig.from_dict(config["model"])
    train_cfg = TrainConfig.from_dict(config["train"])
    task_options = {k: v for k, v in config["task"].items() if k != "name"}
    task = make_task(config["task"]["name"], **task_options)
    model = None
    if load_model:
        model, step = _load_model(run, model_cfg, step, device)
    return Run(run.path, config, model_cfg, train_cfg, task, run.read_metrics(), model, step, run.model_steps())

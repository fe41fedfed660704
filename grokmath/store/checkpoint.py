"""Run folders: saving and loading what a training run leaves behind.

A run folder `runs/<run-name>/` holds
- `config.json`: {"model": ModelConfig dict, "task": {"name": ..., **options}, "train": TrainConfig dict}
  (`run_config`), plus "insert" for a run started from a smaller one (grokmath.training.insert);
- `metrics.csv`: one row per step (see grokmath.training.train), read with `pandas.read_csv` in one call;
- `checkpoints/model_{step:06d}.pt`: the model's state dict at step 0, every N steps, at the end and at
  the step a signal stopped it (so `load_run` reads a stopped run at its stop);
- `checkpoints/state_{step:06d}.pt`: everything needed to resume (model, optimizer, scheduler, data
  generator, RNG, metrics position); the newest two are kept, so a damaged newest one falls back;
- PNG plots and `summary.json`;
- `group.json`, only in the runs of one `--seeds` group (trained stacked in one process):
  {"format": 1, "runs": [the group's folder names, siblings of this one], "seeds": [...]}. Each
  run folder of a group is otherwise exactly a single run's, and `--resume` on any of them
  resumes the whole group from the newest step all of them have (see grokmath.training.run).
`prepare_runs` makes and replaces run folders (how a folder is made, locked, replaced and
recovered: grokmath.store.rundir, whose names are importable from here too). Every file is written whole
or not at all and every checkpoint is checksummed and loaded with `torch.load(...,
weights_only=True)` (grokmath.store.files; its names are importable from here too): a damaged newest
state is reported and the previous one resumed from. `load_run` rebuilds config, metrics and
model, and names the file and what is wrong when one is damaged.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..config import ModelConfig, TrainConfig
from .files import (_UMASK, CheckpointError, UnsafeCheckpoint, _is_tmp, atomic_copy,  # noqa: F401 (re-exported)
                    atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text, refuse_existing, safe_load)
from ..memory import FLOAT, check_fits, n_params
from ..model.transformer import Transformer
from .rundir import (CHECKPOINTS, CONFIG, GROUP, LOCK, METRICS, REPLACED, REPLACING, SUMMARY,  # noqa: F401 (re-exported)
                     _MODEL_RE, _STATE_RE, RunFolder, RunInUse, _key, abandon_runs, check_no_link_loop,
                     check_run_name, unlock_runs)
from ..tasks import make_task
from ..tasks.base import fixed_split

# pandas >= 3 parses floats exactly by default (and deprecates the option); older pandas needs it
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
KEEP_STATES = 2  # resumable states kept: the newest and the one before, in case the newest is damaged
_STATE_KEYS = {"step": int, "n_skipped": int, "model": dict, "optimizer": dict, "scheduler": dict,
               "generator": torch.Tensor, "torch_rng": torch.Tensor}


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


class RunDir(RunFolder):
    """Paths and file operations of one run folder: its config, metrics and checkpoints (how the
    folder itself is made, locked and replaced: RunFolder)."""

    def create(self, config: dict, overwrite: bool = False) -> None:
        """Make the folder and write config.json; an existing run is replaced only with overwrite.
        (The folder is not kept locked: for scripts, grokmath.training.run locks while it trains.)"""
        for run in prepare_runs([self.path], [config], overwrite):
            run.unlock()

    # config ------------------------------------------------------------------------------
    def read_config(self) -> dict:
        """config.json as a dict, its three sections checked to be tables (the values: `configs`)."""
        self.check_is_run()  # (a folder partway through a move aside is refused there, saying what recovers it)
        try:
            config = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.config_path} is not valid JSON ({e}): restore it or retrain") from None
        if not isinstance(config, dict):
            raise ValueError(f"{self.config_path} is damaged: it holds a {type(config).__name__}, not the run's "
                             'settings {"model": ..., "task": ..., "train": ...}; restore it or retrain')
        missing = [k for k in ("model", "task", "train") if k not in config]
        if missing:
            raise ValueError(f"{self.config_path} lacks {missing}: it was not written by grokmath")
        for key in ("model", "task", "train"):
            if not isinstance(config[key], dict):
                raise ValueError(f"{self.config_path} is damaged: its {key!r} is a {type(config[key]).__name__}, "
                                 "not a table of settings; restore it or retrain")
        if not isinstance(config["task"].get("name"), str):
            raise ValueError(f"{self.config_path} lacks the task's name (task.name): it was not written by grokmath")
        return config

    def configs(self, config: dict | None = None):
        """(ModelConfig, TrainConfig, task) from config.json; a bad value names the file."""
        config = self.read_config() if config is None else config
        try:
            model_cfg = ModelConfig.from_dict(config["model"])
            train_cfg = TrainConfig.from_dict(config["train"])
            task = make_task(config["task"]["name"], **{k: v for k, v in config["task"].items() if k != "name"})
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{self.config_path} holds a setting grokmath cannot use ({e}): restore it "
                             "or retrain") from None
        fits = (model_cfg.d_vocab == task.d_vocab and model_cfg.d_vocab_out == task.d_vocab_out
                and model_cfg.n_ctx >= task.n_ctx)
        if not fits:  # one output fewer: a modular run from before the paper's layout (and split)
            fix = ("it was made before the task took the paper's output layout and train/test split: retrain it"
                   if model_cfg.d_vocab_out == task.d_vocab_out - 1 else "restore it")
            raise ValueError(f"{self.config_path}: its model (d_vocab {model_cfg.d_vocab}, d_vocab_out "
                             f"{model_cfg.d_vocab_out}, n_ctx {model_cfg.n_ctx}) does not fit its task (d_vocab "
                             f"{task.d_vocab}, d_vocab_out {task.d_vocab_out}, n_ctx {task.n_ctx}): {fix}")
        return model_cfg, train_cfg, task

    def record_steps(self, steps: int) -> None:
        """`--resume --steps N`: config.json's train.steps becomes N, every other byte of it kept.
        Called once the resumed state has loaded (grokmath.training.train), so a resume that fails changes nothing."""
        config = json.loads(self.config_path.read_text())
        if config["train"].get("steps") != steps:
            config["train"]["steps"] = steps
            atomic_write_json(self.config_path, config)

    # metrics ---------------------------------------------------------------------------
    def write_metrics(self, metrics: pd.DataFrame | str) -> None:
        """A DataFrame, or CSV text already made from one; pandas writes floats at full
        (repr) precision, so the CSV round-trips float64 values exactly."""
        text = metrics if isinstance(metrics, str) else metrics.to_csv(index=False)
        atomic_write_text(self.metrics_path, text)

    def read_metrics(self) -> pd.DataFrame:
        """metrics.csv (empty when there is none yet); a damaged one raises a ValueError naming it."""
        path = self.metrics_path
        if not path.exists():
            return pd.DataFrame()
        fix = "restore it, or move it away (models and resuming from a checkpoint do not need its rows)"
        if not path.is_file():
            raise ValueError(f"{path} is not a file: {fix}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not text (binary bytes): {fix}") from None
        if not text.strip():
            raise ValueError(f"{path} is empty (not even its header): {fix}")
        lines = text.splitlines()
        width = lines[0].count(",")
        short = next((i for i, line in enumerate(lines) if line.count(",") != width), None)
        if not text.endswith("\n") or short is not None:  # grokmath writes whole rows, each ending in a newline
            row = len(lines) - 1 if short is None else short
            raise ValueError(f"{path} is truncated or damaged: line {row + 1} is cut off or has another number of "
                             f"fields than the header; {fix}")
        try:
            metrics = pd.read_csv(io.StringIO(text), **_EXACT_FLOATS)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
            raise ValueError(f"{path} is not a readable CSV table ({str(e).splitlines()[0]}): {fix}") from None
        missing = [c for c in ("step", "train_loss") if c not in metrics.columns]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}: it is damaged or not grokmath's; {fix}")
        words = [c for c in metrics.columns if len(metrics) and not pd.api.types.is_numeric_dtype(metrics[c])]
        if words:
            raise ValueError(f"{path} holds something other than numbers in column {words[0]!r} (damaged or "
                             f"truncated): {fix}")
        if not (metrics["step"].to_numpy() == range(len(metrics))).all():
            raise ValueError(f"{path} is damaged: its steps are not 0, 1, 2, ... (rows lost or edited); {fix}")
        return metrics

    # checkpoints -------------------------------------------------------------------------
    def save_model(self, step: int, model: torch.nn.Module) -> None:
        self.save_model_state(step, _cpu(model.state_dict()))

    def save_model_state(self, step: int, state_dict: dict) -> None:
        atomic_torch_save(state_dict, self.model_path(step))

    def load_model_state(self, step: int) -> dict:
        return safe_load(self.model_path(step))

    def save_state(self, step: int, state: dict) -> None:
        """Write a resumable state, then drop all but the newest KEEP_STATES of them. The first one
        of a run that replaced another also deletes the replaced run (kept until now)."""
        atomic_torch_save(state, self.state_path(step))
        for old in self.state_steps()[:-KEEP_STATES]:
            self.state_path(old).unlink(missing_ok=True)
        if (self.path / REPLACED).exists():
            shutil.rmtree(self.path / REPLACED)

    def load_state(self, step: int) -> dict:
        path = self.state_path(step)
        state = safe_load(path)
        if not isinstance(state, dict) or state.get("step") != step:
            raise CheckpointError(f"checkpoint {path} is not a grokmath training state of step {step}")
        for key, kind in _STATE_KEYS.items():
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise CheckpointError(f"checkpoint {path} is damaged: its {key!r} is "
                                      f"{'missing' if key not in state else type(state[key]).__name__}")
        if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
            raise CheckpointError(f"checkpoint {path} is damaged: its 'model' is not a dict of tensors")
        return state

    def check_checkpoint_files(self) -> None:
        """Refuse a folder in checkpoints/ named like a checkpoint: a run writing there would fail later."""
        if self.checkpoint_dir.is_dir():
            for path in sorted(self.checkpoint_dir.iterdir()):
                if (_MODEL_RE.match(path.name) or _STATE_RE.match(path.name)) and not path.is_file():
                    raise ValueError(f"{path} is named like a checkpoint but is not a file: move it out of "
                                     "checkpoints/")

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
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            names = None
        if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() and Path(n).name == n
                                                          and n not in (".", "..") for n in names)):
            raise ValueError(f"{path} is damaged: it should list the group's run folders as "
                             '{"runs": ["name_s1", "name_s2"], ...}; restore it')
        return [self.path.parent / name for name in names]


def load_latest_states(runs: list[RunDir], warn=print, restore=None) -> list[dict]:
    """The resumable states of the newest step every run has and can use, one per run, in order.
    restore(states), if given, puts them to use (loads them into the models...); a state that does
    not load, or that restore cannot use, is reported with `warn` and the step before tried."""
    steps = sorted(set.intersection(*(set(run.state_steps()) for run in runs)))
    if not steps:
        names = ", ".join(str(run.path) for run in runs)
        if all(run.is_unstarted() for run in runs):
            raise ValueError(f"{names} has no checkpoint: it was stopped before its first one, so there is nothing to "
                             "resume; run the command that started it again (it replaces the unstarted run without "
                             "--overwrite)")
        common = " at a step common to the group" if len(runs) > 1 else ""
        raise ValueError(f"{names} has no resumable checkpoint (checkpoints/state_*.pt){common}: it cannot be "
                         "resumed; start it again with --overwrite")
    errors = []  # reported once a state is found (a warning each), or all in the one error if none is
    for step in reversed(steps):
        try:
            states = [run.load_state(step) for run in runs]
            if restore is not None:
                try:
                    restore(states)
                except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
                    if isinstance(e, UnsafeCheckpoint):
                        raise
                    where = ", ".join(str(run.state_path(step)) for run in runs)
                    raise CheckpointError(f"checkpoint {where} cannot be resumed ({type(e).__name__}: "
                                          f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
            for error in errors:
                warn(f"warning: {error}; resuming from step {step} instead")
            return states
        except UnsafeCheckpoint:
            raise
        except CheckpointError as e:
            errors.append(str(e))
    where = ", ".join(str(run.checkpoint_dir) for run in runs)
    raise CheckpointError(f"no usable resumable checkpoint in {where}: {'; '.join(errors)}")


def prepare_runs(paths: list, configs: list[dict], overwrite: bool = False) -> list[RunDir]:
    """Make the run folders (config.json each; group.json in each when there are several: one
    --seeds group), each locked by this process (unlock them when done: `unlock_runs`).

    Every check runs before anything is removed: the names, what each folder holds (an existing
    run is replaced only with overwrite, a run stopped before its first state without it, any other
    non-empty folder never), and the locks (a folder another process writes is refused). A run
    being replaced is moved aside, into its folder's .replaced/, deleted by the new run's first
    state (RunDir.save_state) or put back by `abandon_runs` (or, after a kill, RunDir.recover: the
    first thing a writer does, before it asks whether the folder holds a run). `paths` may be RunDirs:
    the caller then sees what was done to each (created, written, moved_aside, undone)."""
    runs = [p if isinstance(p, RunDir) else RunDir(p) for p in paths]
    for run in runs:
        check_run_name(run.path)
    if len({_key(run.path) for run in runs}) != len(runs):
        raise ValueError(f"the run folders {', '.join(str(r.path) for r in runs)} repeat: give distinct ones")
    try:
        for run in runs:  # a move aside a killed writer left (config.json may be in it): put back first
            if run.path.is_dir() and run.needs_recovery():
                run.lock()
                run.recover()
        for run in runs:  # read-only checks, so no lock file lands in a folder that is not a run's
            run.check_not_in_use()
            run.check_replaceable(overwrite)
        for run in runs:
            run.created = not run.path.exists()
            run.lock()
        kinds = []
        for run in runs:  # again, now that no other process can change them
            run.recover()
            kinds.append(run.check_replaceable(overwrite))
        for run, kind in zip(runs, kinds):
            if kind == "run":
                run.moved_aside = True
                run._move_aside()
            else:
                run._clear()
        for run, config in zip(runs, configs):  # (a full disk here: the old runs go back, below)
            run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            run.written = True
            atomic_write_json(run.config_path, config)
            if len(runs) > 1:
                atomic_write_json(run.path / GROUP, {"format": 1, "runs": [r.path.name for r in runs],
                                                     "seeds": [c["train"]["seed"] for c in configs]})
    except BaseException:
        abandon_runs(runs)
        raise
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
    steps: list[int] = field(default_factory=list)  # the steps with a model (a model checkpoint or a resumable state)

    def load_model(self, step: int | None = None, device="cpu") -> torch.nn.Module:
        """A fresh model with the weights at `step` (default: the newest checkpoint)."""
        return _load_model(RunDir(self.path), self.model_cfg, step, device)[0]

    @property
    def steps_done(self) -> int:
        """The newest step the run saved (a stopped run: the step it stopped at)."""
        return max(self.steps, default=0)

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.train_cfg.steps

    def describe(self, step: int | None = None) -> str:
        """One line saying which run, which step (`step`, else the loaded model's) and whether the run
        finished, e.g. 'run runs/addition_5d_s129000 at step 280 of 3000 (stopped at step 280; python
        scripts/train_addition.py --resume runs/addition_5d_s129000 to continue)'."""
        step = self.step if step is None else step
        total, done = self.train_cfg.steps, self.steps_done
        where = f"at step {step} of {total}" if step is not None else f"trained to step {done} of {total}"
        try:
            RunDir(self.path).check_not_in_use()
        except RunInUse:
            return f"run {self.path} {where} (still training: another process is writing it)"
        if not self.finished:
            script = f"scripts/train_{self.config['task']['name']}.py"
            status = f"stopped at step {done}; python {script} --resume {self.path} to continue"
        elif step is not None and step < done:
            status = f"finished at step {done}; this is an earlier checkpoint"
        else:
            status = "finished"
        return f"run {self.path} {where} ({status})"

    def split(self):
        """(train, test) Batches this run trained and was tested on, rebuilt by the training loop's
        own code: for a modular run the paper's split (`train, test = load_run(path).split()`)."""
        return fixed_split(self.task, self.train_cfg, torch.Generator().manual_seed(self.train_cfg.seed))


def _model_steps(run: RunDir) -> list[int]:
    """The steps whose model can be loaded: each model checkpoint, and each resumable state (a run
    stopped between checkpoints before grokmath saved a model at the stop has only the state there)."""
    return sorted(set(run.model_steps()) | set(run.state_steps()))


def _load_model(run: RunDir, model_cfg, step, device):
    steps = _model_steps(run)
    if not steps:
        raise ValueError(f"{run.path} has no model checkpoints (checkpoints/model_*.pt)")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"{run.path} has no checkpoint at step {step}: available steps are {steps[0]}..{steps[-1]} "
                         f"({len(steps)} checkpoints)")
    check_fits(n_params(model_cfg) * 2 * FLOAT, "cpu", f"the model of {run.config_path}",
               "this config.json asks for a model larger than this machine holds")
    model = Transformer(model_cfg)
    if run.model_path(step).exists():
        load_state_dict_checked(model, run.load_model_state(step), str(run.model_path(step)))
    else:  # only a resumable state at this step: its model
        load_state_dict_checked(model, run.load_state(step)["model"], str(run.state_path(step)))
    return model.to(device).eval(), step


def load_run(run_dir, step: int | None = None, device="cpu", load_model: bool = True) -> Run:
    """Config, metrics, task and (unless load_model=False) the model at `step` (default: the newest
    step saved, which for a stopped run is the step it stopped at). `run.describe()` says which."""
    run = RunDir(run_dir)
    config = run.read_config()
    model_cfg, train_cfg, task = run.configs(config)
    model = None
    if load_model:
        model, step = _load_model(run, model_cfg, step, device)
    return Run(run.path, config, model_cfg, train_cfg, task, run.read_metrics(), model, step, _model_steps(run))

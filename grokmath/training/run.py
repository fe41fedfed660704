"""Whole runs, above the training loop: make the run folders, train, draw the plots; resume.

- `start_run(model_cfg, task, train_cfg, run_dir)`: one run (optionally started from a trained
  smaller run: `insert`, grokmath.training.insert), then its plots.
- `start_seed_runs(model_cfg, task, train_cfg, seeds, run_dirs)`: one run per seed, trained stacked
  in one process (grokmath.training.multiseed) by the same loop; each folder is what a single run with that
  seed writes, plus `group.json` naming the group's folders.
- `start_data_parallel(...)`: one run under torchrun (DistributedDataParallel; rank 0 writes).
- `resume_runs(run_dir)`: continue a run from its newest resumable state, or, when the folder
  holds a `group.json`, its whole --seeds group, from the newest step every run of the group has
  (a kill between two runs' checkpoints falls back to the step before). A group member that is
  missing is named; to resume the others one at a time, delete group.json in each of them (each
  folder is a single run's). `--steps N` extends every run of the group.
Every check that can fail runs before a folder is made or replaced (grokmath.store.checkpoint.prepare_runs),
memory included (grokmath.memory); a run that fails before its first resumable state is undone (a
run it was replacing is put back); each run folder is locked while it is written, so a second
writer is refused. A signal outside the loop (before it, or while the plots are drawn) stops the
run with a TrainingInterrupted saying what was kept.
"""
from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from ..store.checkpoint import RunDir, abandon_runs, check_run_name, load_run, prepare_runs, run_config, unlock_runs
from ..config import ModelConfig, TrainConfig
from ..errors import SignalOutsideLoop, TrainingInterrupted
from ..store.files import WriteFailed
from .insert import inserter_from_run
from ..memory import check_training_fits
from ..model.transformer import Transformer
from .plots import plot_run
from .devices import as_device
from .train import TrainResult, check_data_parallel, check_stackable, probe_batch, train, train_seeds


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _train_new_runs(run_dirs, configs: list[dict], overwrite: bool, body):
    """Make the run folders (prepare_runs) and train them with body(), in one try: on any failure,
    even a signal the moment the folders are made, a run without a resumable state is undone
    (abandon_runs puts back a run it was replacing), and a signal outside the loop says what was kept."""
    runs = [RunDir(d) for d in run_dirs]
    try:
        prepare_runs(runs, configs, overwrite)
        result = body()
    except BaseException as e:
        abandon_runs(runs)  # (prepare_runs may have done it already: then this finds nothing to do)
        kept = all(run.written for run in runs) and not any(run.undone for run in runs)
        back = " (the run it was replacing is back in place)" if any(r.moved_aside and r.undone for r in runs) else ""
        if isinstance(e, SignalOutsideLoop):
            name = _signal_name(e.signum)
            if not kept:
                raise TrainingInterrupted(f"stopped by {name} before the run's first checkpoint, so nothing of it was "
                                          f"kept{back}: run the same command again", e.signum) from None
            step, total = max(runs[0].state_steps()), configs[0].get("train", {}).get("steps")
            if total is not None and step < total:  # the loop's first checkpoint was saved, then the signal came
                raise TrainingInterrupted(f"stopped by {name} at step {step}; a resumable checkpoint is saved; draw "
                                          f"the plots with {_command('plot_run.py', runs[0].path)}", e.signum,
                                          runs[0].path) from None
            raise TrainingInterrupted(f"stopped by {name} after the run's last checkpoint, before its summary and "
                                      f"plots: draw the plots with {_command('plot_run.py', runs[0].path)}",
                                      e.signum) from None
        if isinstance(e, WriteFailed):
            if not kept:
                raise WriteFailed(f"{e}; nothing of the new run was kept{back}: {_fix(e)}, then run the same "
                                  "command again") from None
            raise _write_failed_but_resumable(e, runs) from None
        raise
    unlock_runs(runs)
    return result


def _write_failed_but_resumable(e: WriteFailed, runs: list[RunDir]) -> WriteFailed:
    """A full disk (or any failed write) after a run's first state: every file is written whole or
    not at all, so its checkpoints up to the newest one every run has are intact."""
    step = max(set.intersection(*(set(run.state_steps()) for run in runs)), default=0)
    resume = shlex.join(["python", sys.argv[0], "--resume", str(runs[0].path)])
    return WriteFailed(f"{e}; the run is intact up to its checkpoint at step {step} and stays resumable: "
                       f"{_fix(e)}, then resume with: {resume}")


def _fix(e: OSError) -> str:
    return "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable (or free some space)"


def _command(script: str, run_dir) -> str:
    return shlex.join(["python", str(Path(sys.argv[0]).with_name(script)), str(run_dir)])


def _plots_at_stop(run_dirs, plots: bool, body):
    """body(), and when a signal stops the training loop, the plots of the steps so far (cheap,
    and what a researcher looks at first); the stop's message says where they are, or the command
    that draws them."""
    try:
        return body()
    except TrainingInterrupted as e:
        if isinstance(e, SignalOutsideLoop) or e.run_dir is None:
            raise
        command = _command("plot_run.py", run_dirs[0])
        note = f"draw the plots with {command}"
        if plots:
            try:
                for run_dir in run_dirs:
                    plot_run(run_dir)
                where = run_dirs[0] if len(run_dirs) == 1 else "each run folder"
                note = f"the plots of the steps so far are in {where} (redraw: {command})"
            except (SignalOutsideLoop, ValueError, OSError):  # a second signal, or no rows yet: say the command
                pass
        e.args = (f"{e}; {note}",)
        raise


def _plot_runs(run_dirs) -> None:
    for run_dir in run_dirs:
        try:
            plot_run(run_dir)
        except SignalOutsideLoop as e:
            name = _signal_name(e.signum)
            raise TrainingInterrupted(f"stopped by {name} while drawing the plots; the run is complete: draw them "
                                      f"with {_command('plot_run.py', run_dir)}", e.signum) from None


def start_run(model_cfg: ModelConfig, task, train_cfg: TrainConfig, run_dir, overwrite: bool = False,
              device=None, progress: bool = True, plots: bool = True, insert: dict | None = None,
              step_path: str = "auto") -> TrainResult:
    """Create the run folder (config.json), train, and draw the run's plots.

    insert: start from a trained smaller run (grokmath.training.insert): the keyword arguments of
    `inserter_from_run` after the model, e.g. {"run_dir": "runs/add", "mode": 2, "every": 100}.
    """
    device = as_device(device)  # a bad device fails before the folder is touched
    check_run_name(run_dir)
    check_training_fits(model_cfg, task, train_cfg, device)  # before anything is allocated
    probe_batch(task, train_cfg)  # a data set the task cannot make fails here too
    model = Transformer(model_cfg).to(device)
    config, after_step = run_config(model_cfg, task, train_cfg), None
    if insert is not None:
        inserter = inserter_from_run(model, **insert)  # a small model that does not fit fails here
        inserter.start()
        config["insert"] = inserter.describe()
        after_step = inserter.after_step if inserter.mode >= 2 else None
    result = _plots_at_stop([run_dir], plots, lambda: _train_new_runs([run_dir], [config], overwrite, lambda: train(
        model, task, train_cfg, run_dir, device, progress=progress, after_step=after_step, step_path=step_path)))
    if plots:
        _plot_runs([run_dir])
    return result


def seed_run_dirs(run_dir, seed: int, seeds: list[int]) -> list[Path]:
    """The folders of a --seeds group: run_dir's name with its `_s<seed>` ending set to each seed."""
    run_dir = Path(run_dir)
    base = run_dir.name.removesuffix(f"_s{seed}")
    return [run_dir.with_name(f"{base}_s{s}") for s in seeds]


def start_seed_runs(model_cfg: ModelConfig, task, train_cfg: TrainConfig, seeds: list[int], run_dirs,
                    overwrite: bool = False, device=None, progress: bool = True,
                    plots: bool = True, step_path: str = "auto") -> list[TrainResult]:
    """Create one run folder per seed (as single runs would, plus group.json), train them together
    in the one loop, draw each one's plots."""
    device = as_device(device)
    check_stackable(train_cfg, seeds)
    check_training_fits(model_cfg, task, train_cfg, device, n_models=len(seeds))
    probe_batch(task, train_cfg)
    configs = [run_config(replace(model_cfg, seed=s), task, replace(train_cfg, seed=s)) for s in seeds]
    results = _plots_at_stop(run_dirs, plots, lambda: _train_new_runs(run_dirs, configs, overwrite, lambda: train_seeds(
        model_cfg, task, train_cfg, seeds, run_dirs, device, progress=progress, step_path=step_path)))
    if plots:
        _plot_runs(run_dirs)
    return results


def start_data_parallel(model_cfg: ModelConfig, task, train_cfg: TrainConfig, run_dir, local_rank: int,
                        world: int, overwrite: bool = False, device=None, progress: bool = True,
                        plots: bool = True) -> TrainResult | None:
    """Under torchrun: DistributedDataParallel over the processes (gloo on CPU, nccl on GPU); rank 0
    writes the run folder and returns its result, every rank trains on its share of each global batch."""
    check_data_parallel(train_cfg, world)  # every rank fails alike, before any collective
    check_run_name(run_dir)
    RunDir(run_dir).check_replaceable(overwrite)
    RunDir(run_dir).check_not_in_use()
    device = as_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    check_training_fits(model_cfg, task, replace(train_cfg, batch_size=train_cfg.batch_size // world), device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if dist.get_rank() == 0:
            return start_run(model_cfg, task, train_cfg, run_dir, overwrite=overwrite, device=device,
                             progress=progress, plots=plots)
        train(Transformer(model_cfg), task, train_cfg, None, device, progress=False)
        return None
    finally:
        dist.destroy_process_group()


# ---- resuming ---------------------------------------------------------------------------------

def group_of(run_dir) -> list[Path]:
    """The run folders resumed together with run_dir: its --seeds group, or itself alone."""
    run = RunDir(run_dir)
    run.check_is_run()
    members = run.read_group()
    if members is None:
        return [run.path]
    if os.path.realpath(run.path) not in [os.path.realpath(m) for m in members]:
        raise ValueError(f"{run.path / 'group.json'} does not list {run.path.name}: it was copied from another "
                         "run; delete it to resume this run alone")
    for member in members:  # (one partway through a move aside is recovered by resume_runs under its lock)
        if not (RunDir(member).is_run() or RunDir(member).needs_recovery()):
            raise ValueError(f"{run.path} was trained stacked with {', '.join(m.name for m in members)} (its "
                             f"group.json), but {member} is missing or not a run folder: restore it to resume the "
                             "group, or delete group.json in each remaining folder to resume them one at a time")
    return members


def _without_seed(config: dict) -> dict:
    return {"model": {**config["model"], "seed": None}, "task": config["task"],
            "train": {**config["train"], "seed": None}}


def resume_runs(run_dir, device=None, steps: int | None = None, progress: bool = True, plots: bool = True,
                warn=print, step_path: str = "auto") -> list[TrainResult]:
    """Continue a run (or its whole --seeds group) from its newest resumable checkpoint, optionally
    to a larger `steps`; returns one result per run, in the group's order."""
    device = as_device(device)
    first_run = RunDir(run_dir)
    if not (first_run.is_run() or first_run.needs_recovery()):  # (a move aside left half done: recovered below)
        first_run.check_is_run()  # says what is wrong: missing, or not a run folder
    locked = [first_run]
    try:
        first_run.lock()  # one writer: a second --resume (or a start with --overwrite) is refused
        first_run.recover()  # a replacement killed before its first state: the run it replaced is put back
        members = group_of(run_dir)
        for member in members:
            run = RunDir(member)
            locked.append(run)
            run.lock()
            run.recover()
            run.check_checkpoint_files()
        return _resume_locked(run_dir, members, device, steps, progress, plots, warn, step_path)
    except WriteFailed as e:
        raise _write_failed_but_resumable(e, locked[1:] or locked) from None
    except SignalOutsideLoop as e:
        raise TrainingInterrupted(f"stopped by {_signal_name(e.signum)}; its checkpoints are as they were or newer",
                                  e.signum, Path(run_dir)) from None
    finally:
        unlock_runs(locked)


def _resume_locked(run_dir, members: list[Path], device, steps, progress, plots, warn,
                   step_path) -> list[TrainResult]:
    loaded = [load_run(m, load_model=False) for m in members]
    first = loaded[0]
    for other in loaded[1:]:
        if _without_seed(other.config) != _without_seed(first.config) or "insert" in other.config:
            raise ValueError(f"{other.path} and {first.path} are one --seeds group (group.json) but differ in "
                             "settings other than the seed: resume them one at a time (delete group.json in each)")
    train_cfg = first.train_cfg
    check_training_fits(first.model_cfg, first.task, train_cfg, device, n_models=len(members))
    done = max(set.intersection(*(set(RunDir(m).state_steps()) for m in members)), default=0)
    for member in members:
        metrics = RunDir(member).metrics_path
        if done and not metrics.exists():  # (not "another configuration": it is simply gone)
            raise ValueError(f"{metrics} is missing: resuming from step {done} needs its rows of steps 0..{done - 1}; "
                             "restore it, or start the run again with --overwrite")
    if steps is not None and steps != train_cfg.steps:
        if steps < done:
            raise ValueError(f"--steps {steps} is fewer than the {done} steps already done: give a larger number")
        if train_cfg.schedule == "cosine":
            raise ValueError("a cosine-schedule run cannot be extended (its schedule depends on --steps): "
                             "start a new run with more --steps")
        train_cfg = replace(train_cfg, steps=steps)  # config.json says so once the state loads (RunDir.record_steps)
    elif done >= train_cfg.steps:
        raise ValueError(f"run {run_dir} already finished its {train_cfg.steps} steps: pass --steps N (more) "
                         "to train it further")
    if len(members) > 1:
        seeds = [run.train_cfg.seed for run in loaded]
        results = _plots_at_stop(members, plots, lambda: train_seeds(
            first.model_cfg, first.task, train_cfg, seeds, members, device, resume=True, progress=progress,
            warn=warn, step_path=step_path))
    else:
        model, after_step = Transformer(first.model_cfg).to(device), None
        insert = first.config.get("insert")
        if insert and insert["mode"] >= 2:  # keep restoring the inserted model's parts
            after_step = inserter_from_run(model, **insert).after_step
        results = [_plots_at_stop(members, plots, lambda: train(
            model, first.task, train_cfg, members[0], device, resume=True, progress=progress, warn=warn,
            after_step=after_step, step_path=step_path))]
    if plots:
        _plot_runs(members)
    return results


def put_back_replaced(run_dir) -> None:
    """If run_dir (or a run of its --seeds group) was left partway through a move aside, e.g. a
    replacement stopped before its first checkpoint, put back the run it was replacing (as --resume
    does first), so the folders read as those runs again."""
    def recover(path):
        run = RunDir(path)
        if run.path.is_dir() and run.needs_recovery():
            try:
                run.lock()
                run.recover()
            finally:
                run.unlock()

    recover(run_dir)
    if RunDir(run_dir).is_run():
        try:
            members = RunDir(run_dir).read_group() or []
        except ValueError:  # a damaged group.json: group_of says so
            members = []
        for member in members:
            recover(member)


def resume_run(run_dir, device=None, steps: int | None = None, progress: bool = True, plots: bool = True,
               warn=print, step_path: str = "auto") -> TrainResult:
    """resume_runs, returning the result of run_dir itself (its group, if any, is resumed too)."""
    members = [os.path.realpath(m) for m in group_of(run_dir)]
    results = resume_runs(run_dir, device, steps, progress, plots, warn, step_path)
    return results[members.index(os.path.realpath(run_dir))]

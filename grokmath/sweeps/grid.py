"""Sweeps: every combination of a grid of settings x every seed, as ordinary run folders.

A sweep file (TOML) names a training script, a sweep folder, the seeds, the settings of every run
(`[base]`) and the grid (`[grid]`, every combination), each setting under its flag's name with
'_' for '-' (see `read_sweep`). `plan_sweep` turns it into run folders named from the grid values
(`lr=0.0003_s1`) and `plan_jobs` into processes of the real training scripts, started with flags:
the seeds of one setting stacked in one process (`--seeds`) where they can be, each process on one
free core (or one GPU). The sweep keeps no state of its own besides `sweep.json` (the plan); what is
done is read from the run folders: a finished run (summary.json, or its last state) is left alone,
a stopped one is resumed (`--resume`), a missing or unstarted one is started, so a sweep killed
anywhere and run again finishes what is missing. Children die with the sweep (SIGTERM, so each
saves a checkpoint first). Each job's output goes to `SWEEP/logs/<run>.log`. Ray: grokmath.sweeps.ray_tasks.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..store.files import atomic_write_json
from .results import run_status, write_results

REPO = Path(__file__).resolve().parents[2]  # grokmath/sweeps/grid.py -> the repository
SCRIPTS = REPO / "scripts"
KEYS = ("script", "out", "seeds", "base", "grid", "stack", "workers")
# flags the sweep sets itself
RESERVED = {"seed", "seeds", "run_name", "out", "resume", "overwrite", "no_progress", "config", "_config"}
# flags that may accompany --resume (grokmath.cli.RESUME_FLAGS, less those the sweep sets)
RESUME_DESTS = ("device", "steps", "no_plots", "no_capture", "tensorboard", "wandb")
MANIFEST = "sweep.json"


class SweepFailed(Exception):
    """Some runs of the sweep failed; the message names them and their logs."""


@dataclass(frozen=True)
class Sweep:
    path: Path
    script: str  # e.g. 'train_addition'
    out: Path
    seeds: list
    base: dict
    grid: dict
    stack: int | None = None  # seeds per process (None: auto)
    workers: int | None = None  # processes at once (None: free cores, or GPUs)


@dataclass(frozen=True)
class PlannedRun:
    name: str  # the run folder's name, e.g. 'lr=0.0003_s1'
    setting: str  # e.g. 'lr=0.0003'
    values: dict  # the grid values of its setting
    seed: int

    def run_dir(self, sweep: Sweep) -> Path:
        return sweep.out / self.name


@dataclass
class Job:
    runs: list  # PlannedRun
    command: list  # argv after the python executable
    kind: str  # 'start' or 'resume'
    log: Path = field(default=None)


def _fail(path, message):
    raise ValueError(f"sweep file {path}: {message}")


def read_sweep(path, out=None) -> Sweep:
    """A sweep file, checked: one ValueError naming what is wrong."""
    import tomllib
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {path} does not exist: give a .toml file (see scripts/sweep.py --help)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        _fail(path, f"not valid TOML ({str(e).splitlines()[0]})")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        _fail(path, f"unknown key(s) {unknown}: a sweep file has {', '.join(KEYS)}")
    for key in ("script", "seeds"):
        if key not in data:
            _fail(path, f"no `{key}`: e.g. script = \"train_addition\", seeds = [1, 2]")
    script = str(data["script"]).removesuffix(".py")
    if not script.startswith("train_"):
        script = "train_" + script
    if script == "train_sae" or not (SCRIPTS / f"{script}.py").is_file():
        known = sorted(p.stem for p in SCRIPTS.glob("train_*.py") if p.stem != "train_sae")
        _fail(path, f"script {data['script']!r} is not a training script: use one of {', '.join(known)}")
    seeds = data["seeds"]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            and s >= 0 for s in seeds)):
        _fail(path, "seeds must be a list of whole numbers >= 0, e.g. seeds = [1, 2, 3]")
    if len(set(seeds)) != len(seeds):
        _fail(path, f"seeds {seeds} repeat: give distinct seeds")
    base, grid = data.get("base", {}), data.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        _fail(path, "[base] and [grid] are tables of settings, e.g. [grid] lr = [1e-4, 3e-4]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(path, f"grid.{key} must be a non-empty list of values, e.g. {key} = [1, 2]")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            _fail(path, f"grid.{key} repeats a value")
    both = sorted(set(base) & set(grid))
    if both:
        _fail(path, f"{both} in both [base] and [grid]: give each setting in one of them")
    for key in set(base) | set(grid):
        if key in RESERVED:
            _fail(path, f"`{key}` is set by the sweep (seeds = [...], out = ...): remove it from [base]/[grid]")
    for key in ("stack", "workers"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            _fail(path, f"{key} must be a whole number >= 1")
    out = out if out is not None else data.get("out", f"runs/sweep_{path.stem}")
    return Sweep(path, script, Path(out), list(seeds), dict(base), dict(grid), data.get("stack"),
                 data.get("workers"))


def value_text(value) -> str:
    """A setting's value as a flag's text and in run names: exact (floats as Python's shortest repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # e.g. --ops sub=80,add=20
        return ",".join(f"{k}={value_text(v)}" for k, v in value.items())
    return str(value)


def settings_of(sweep: Sweep) -> list[tuple[str, dict]]:
    """Every combination of the grid: (setting name, {key: value}), in the file's order."""
    keys = list(sweep.grid)
    combos = itertools.product(*(sweep.grid[k] for k in keys)) if keys else [()]
    out = []
    for combo in combos:
        values = dict(zip(keys, combo))
        name = "_".join(f"{k}={value_text(v)}" for k, v in values.items()) or "base"
        if "/" in name or name.startswith("."):
            _fail(sweep.path, f"the run name {name!r} made from the grid values is not a plain folder name: "
                  "avoid '/' in grid values")
        out.append((name, values))
    return out


def plan_sweep(sweep: Sweep) -> list[PlannedRun]:
    return [PlannedRun(f"{setting}_s{seed}", setting, values, seed)
            for setting, values in settings_of(sweep) for seed in sweep.seeds]


# ---- the script's own parser: flags from settings, checked before anything runs -------------

def script_parser(script: str):
    spec = importlib.util.spec_from_file_location(f"sweep_{script}", SCRIPTS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()

    def error(message):
        raise ValueError(message)
    parser.error = error  # a bad setting: one ValueError, not argparse's exit
    return parser


def setting_flags(parser, settings: dict, where) -> list[str]:
    """{key: value} as the script's flags, e.g. {'lr': 0.001, 'no_plots': True} -> ['--lr', '0.001', '--no-plots']."""
    actions = {a.dest: a for a in parser._actions}
    flags = []
    for key, value in settings.items():
        action = actions.get(key)
        if action is None or not action.option_strings:
            raise ValueError(f"sweep file {where}: `{key}` is not a flag of scripts/{parser.prog}: use a flag's "
                             "name with '_' for '-' (see its --help)")
        option = action.option_strings[0]
        if action.nargs == 0:  # a switch: store_true, or --x / --no-x
            if not isinstance(value, bool):
                raise ValueError(f"sweep file {where}: `{key}` is a switch: give true or false")
            if value:
                flags.append(option)
            elif isinstance(action, argparse.BooleanOptionalAction):
                flags.append("--no-" + option[2:])
        elif isinstance(value, list):
            if action.nargs not in ("+", "*"):
                raise ValueError(f"sweep file {where}: `{key}` takes one value, not a list (a list of values "
                                 "to try goes in [grid])")
            flags += [option, *map(value_text, value)]
        else:
            flags += [option, value_text(value)]
    return flags


def check_flags(parser, flags: list[str], where) -> None:
    try:
        parser.parse_args(flags)
    except ValueError as e:
        raise ValueError(f"sweep file {where}: {e}") from None


# ---- what is done: read from the run folders ---------------------------------------------

def group_members(run_dir: Path) -> list[str]:
    """The folder names of run_dir's --seeds group (group.json), or just its own."""
    try:
        return list(json.loads((run_dir / "group.json").read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return [run_dir.name]


def auto_stack(n_settings: int, n_seeds: int, workers: int, gpu: bool) -> int:
    """Seeds per process: all of a setting's on a GPU; on CPUs enough processes to fill the cores."""
    if gpu:
        return n_seeds
    per_setting = max(1, math.ceil(workers / max(1, n_settings)))
    return max(1, math.ceil(n_seeds / per_setting))


def plan_jobs(sweep: Sweep, runs: list[PlannedRun], parser, stack: int) -> tuple[list[Job], int]:
    """The jobs that finish the sweep, and how many runs are finished already."""
    settings = dict(settings_of(sweep))
    stackable = not (sweep.base.get("skip_nonfinite") or "insert_from" in sweep.base or "insert_from" in sweep.grid)
    stack = stack if stackable else 1
    script = str(SCRIPTS / f"{sweep.script}.py")
    jobs, finished, resumed = [], 0, set()
    new_by_setting: dict[str, list[PlannedRun]] = {}
    for run in runs:
        status = run_status(run.run_dir(sweep))
        if status == "finished":
            finished += 1
        elif status == "new":
            new_by_setting.setdefault(run.setting, []).append(run)
        elif run.name not in resumed:  # resuming one run of a --seeds group resumes the whole group
            members = group_members(run.run_dir(sweep))
            resumed.update(members)
            members_planned = [r for r in runs if r.name in members and run_status(r.run_dir(sweep)) == "stopped"]
            flags = setting_flags(parser, {k: v for k, v in {**sweep.base, **run.values}.items()
                                           if k in RESUME_DESTS}, sweep.path)
            jobs.append(Job(members_planned or [run],
                            [script, "--resume", str(run.run_dir(sweep)), "--no-progress", *flags], "resume"))
    for setting, new in new_by_setting.items():
        flags = setting_flags(parser, {**sweep.base, **settings[setting]}, sweep.path)
        for i in range(0, len(new), stack):
            jobs.append(start_job(sweep, script, flags, new[i:i + stack]))
    return jobs, finished


def start_job(sweep: Sweep, script: str, flags: list[str], runs: list[PlannedRun]) -> Job:
    first = runs[0]
    command = [script, *flags, "--out", str(sweep.out), "--run-name", first.name, "--seed", str(first.seed),
               "--no-progress"]
    if len(runs) > 1:
        command += ["--seeds", *(str(r.seed) for r in runs)]
    return Job(runs, command, "start")


# ---- running the jobs --------------------------------------------------------------------

def free_slots(sweep: Sweep, workers: int | None) -> tuple[list[dict], bool]:
    """One environment per process that may run at once: a GPU each where there are GPUs (unless the
    sweep asks for the CPU), else one core each; and whether they are GPUs."""
    device = str(sweep.base.get("device", ""))
    gpus = 0
    if not device.startswith("cpu"):
        import torch
        gpus = torch.cuda.device_count()
    if gpus:
        n = workers or gpus
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(n)], True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = workers or cores
    threads = str(max(1, cores // n))
    return [{"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)} for _ in range(n)], False


def _die_with_parent():
    """In the child: SIGTERM when the sweep dies, however it dies (Linux), so it saves a checkpoint."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(job: Job, env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join([Path(sys.executable).name, *job.command])}\n")
        f.flush()
        return subprocess.Popen([sys.executable, *job.command], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **env},
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def job_failed(sweep: Sweep, job: Job, returncode: int) -> list[Job]:
    """A failed job: a stacked start refused as such (exit status 2, nothing trained) is split into
    single runs; anything else is a failure ([] and the caller reports it)."""
    if job.kind == "start" and len(job.runs) > 1 and returncode == 2 and all(
            run_status(r.run_dir(sweep)) == "new" for r in job.runs):
        flags = job.command[1:job.command.index("--out")]
        return [start_job(sweep, job.command[0], flags, [run]) for run in job.runs]
    return []


def run_local(sweep: Sweep, jobs: list[Job], slots: list[dict], bar) -> list[tuple[Job, int]]:
    """Run the jobs, at most one per slot at a time; returns the failed ones with their exit status."""
    pending, running, failed = deque(jobs), {}, []
    free = list(range(len(slots)))
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.popleft(), free.pop(0)
                job.log = sweep.out / "logs" / f"{job.runs[0].name}.log"
                running[launch(job, slots[slot], job.log)] = (job, slot)
            time.sleep(0.1)
            for process in [p for p in running if p.poll() is not None]:
                job, slot = running.pop(process)
                free.append(slot)
                if process.returncode == 0:
                    bar.update(len(job.runs))
                else:
                    retry = job_failed(sweep, job, process.returncode)
                    pending.extend(retry)
                    if not retry:
                        failed.append((job, process.returncode))
    except BaseException:  # Ctrl-C, SIGTERM: each child saves a checkpoint and stops
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    return failed


def write_manifest(sweep: Sweep, runs: list[PlannedRun]) -> None:
    """sweep.json: the plan. A folder holding another sweep (another script or base) is refused."""
    path = sweep.out / MANIFEST
    manifest = {"format": 1, "script": sweep.script, "base": sweep.base, "grid": sweep.grid, "seeds": sweep.seeds,
                "runs": [{"run": r.name, "setting": r.setting, "values": r.values, "seed": r.seed} for r in runs]}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("script") != sweep.script or old.get("base") != json.loads(json.dumps(sweep.base)):
            raise ValueError(f"{sweep.out} holds another sweep ({path}: script {old.get('script')}, other [base]): "
                             "give this sweep another `out` (the grid and seeds may change, script and base not)")
    elif sweep.out.exists() and any(p.name != "logs" for p in sweep.out.iterdir()):
        raise ValueError(f"{sweep.out} exists and is not a sweep folder (no {MANIFEST}): give another `out`")
    sweep.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)


def run_sweep(sweep: Sweep, workers: int | None = None, stack: int | None = None, progress: bool = True,
              ray_address: str | None = None, out=print):
    """Finish the sweep: start or resume every run that is not finished, then write results.csv and
    the across-seeds views. Returns the results DataFrame; raises SweepFailed if some runs failed."""
    from tqdm.auto import tqdm
    runs = plan_sweep(sweep)
    parser = script_parser(sweep.script)
    parser.prog = f"{sweep.script}.py"
    for setting, values in settings_of(sweep):  # every setting's flags parse, before anything runs
        check_flags(parser, setting_flags(parser, {**sweep.base, **values}, sweep.path), sweep.path)
    write_manifest(sweep, runs)
    workers = workers or sweep.workers
    if ray_address is None:
        slots, gpu = free_slots(sweep, workers)
        n_workers = len(slots)
    else:
        slots, gpu, n_workers = None, False, workers or 1
    stack = stack or sweep.stack or auto_stack(len(settings_of(sweep)), len(sweep.seeds), n_workers, gpu)
    jobs, finished = plan_jobs(sweep, runs, parser, stack)
    out(f"sweep {sweep.out}: {len(runs)} runs, {finished} finished, {sum(len(j.runs) for j in jobs)} to train "
        f"in {len(jobs)} processes" + ("" if ray_address else f", {len(slots)} at a time"))
    with tqdm(total=len(runs), initial=finished, desc="sweep", unit="run", disable=not progress,
              dynamic_ncols=True) as bar:
        if ray_address is None:
            failed = run_local(sweep, jobs, slots, bar)
        else:
            from .ray_tasks import run_ray
            failed = run_ray(sweep, jobs, ray_address, workers, bar, retry=job_failed)
    results = write_results(sweep.out)
    if failed:
        job, code = failed[0]
        raise SweepFailed(f"{sum(len(j.runs) for j, _ in failed)} of {len(runs)} runs failed ({job.runs[0].name}: "
                          f"exit status {code}: {last_line(job.log)!r}; log {job.log}); the rest are in "
                          f"{sweep.out / 'results.csv'}: fix the cause and run the same command again")
    return results

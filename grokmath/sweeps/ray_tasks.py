"""A sweep's processes as Ray tasks (`scripts/sweep.py SWEEP.toml --ray ADDRESS|local`).

Each job of grokmath.sweeps.grid (one training process: a run, or a setting's stacked seeds) becomes one
Ray task that asks for 1 CPU, and 1 GPU when the sweep's runs use one (`device` in [base] starting
with 'cuda', or no device and a cluster with GPUs), and runs exactly the command the local sweep
would, with the same run folders, logs and results.csv. That needs, on every node: the repository
and the sweep folder at the same paths (a shared file system), and a Python with grokmath's
dependencies at the path the driver's has (or one Ray starts the workers with). Ray is an optional
extra (`pip install -e ".[ray]"`), imported only here, only when --ray is given.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _task(command: list, log: str, cwd: str) -> int:
    """Runs on a Ray worker: the training script, its output appended to the job's log."""
    import os
    import signal
    import subprocess
    import sys

    def die_with_parent():  # a cancelled task's worker dies: the script gets SIGTERM and saves
        try:
            import ctypes
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ python {' '.join(command)} (ray task on {os.uname().nodename})\n")
        f.flush()
        return subprocess.run([sys.executable, *command], stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                              stdin=subprocess.DEVNULL, preexec_fn=die_with_parent).returncode


def run_ray(sweep, jobs: list, address: str, workers: int | None, bar, retry) -> list:
    """Run the jobs as Ray tasks; returns the failed ones with their exit status (as run_local);
    retry(sweep, job, exit status): the jobs to run instead of a failed one (grokmath.sweeps.grid.job_failed)."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'ray[default]' (or pip install -e \".[ray]\")") from None
    local = address == "local"
    try:
        if local:
            ray.init(num_cpus=workers or len(os.sched_getaffinity(0)), include_dashboard=False, object_store_memory=2**28,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ValueError(f"--ray {address}: cannot reach Ray ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         "; give a running cluster's address (ray start --head prints it) or 'local'") from None
    device = str(sweep.base.get("device", ""))
    gpus = 1 if device.startswith("cuda") or (not device and ray.cluster_resources().get("GPU", 0) > 0) else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_task)
    cwd = os.getcwd()

    def submit(job):
        job.log = sweep.out / "logs" / f"{job.runs[0].name}.log"
        return task.remote(job.command, str(Path(cwd) / job.log), cwd)

    running = {submit(job): job for job in jobs}
    failed = []
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            job = running.pop(done[0])
            try:
                code = ray.get(done[0])
            except ray.exceptions.RayError as e:  # the worker died: as a killed process
                print(f"ray task of {job.runs[0].name} failed: {str(e).splitlines()[0]}", file=sys.stderr)
                code = -9
            if code == 0:
                bar.update(len(job.runs))
                continue
            instead = retry(sweep, job, code)
            running.update({submit(j): j for j in instead})
            if not instead:
                failed.append((job, code))
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        if local:
            ray.shutdown()
    return failed

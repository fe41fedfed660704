"""What a training run says before its progress bar: where it writes, on what, and how long it will take.

`run_header(...)` is one line: the run folder(s), the device, the step path (eager or the captured
CUDA graph, and why), the steps and the parameter count. `StepTimer` then times a few real steps
(after the first ones, which carry the start-up: the step-0 checkpoint, a capture's self-check)
and gives the expected time of the rest on this device: the measured time per step times the
steps left, plus one measured checkpoint save per checkpoint left. The loop prints that line and
only then opens its progress bar, so the estimate is the first thing a user reads, and an honest
one: it comes from this run on this machine, not from a table.
"""
from __future__ import annotations

import time

import torch

SKIP_STEPS = 3  # steps not timed: the first checkpoint, warm-up, a capture's self-check
TIME_STEPS = 20  # steps timed at most ...
TIME_SECONDS = 2.0  # ... or for about this long, whichever comes first


def duration(seconds: float) -> str:
    """A time as a person says it: '40 s', '4.4 min', '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_header(run_dirs: list, device: torch.device, path: str, path_reason: str | None, start: int, steps: int,
               n_params: int) -> str:
    """One line: run folder(s), device, step path (and why not the captured step), steps, parameters."""
    folders = ", ".join(str(d) for d in run_dirs) if run_dirs and run_dirs[0] is not None else "(not saved)"
    label = "run folder" if len(run_dirs) == 1 else f"run folders ({len(run_dirs)} seeds, stacked)"
    step_path = path if path_reason is None else f"{path} ({path_reason})"
    per_model = "" if len(run_dirs) == 1 else " per model"
    return (f"{label}: {folders} | device: {device} | step path: {step_path} | steps {start} to {steps} | "
            f"{n_params:,} parameters{per_model}")


class StepTimer:
    """Times the loop's steps after the first SKIP_STEPS and checkpoint saves, for `expected()`."""

    def __init__(self, start: int, steps: int, checkpoint_every: int, device: torch.device):
        self.start, self.steps, self.checkpoint_every, self.device = start, steps, checkpoint_every, device
        self.began = None  # (step, time) where timing started
        self.save_seconds = 0.0  # the longest checkpoint save seen

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the captured step runs ahead of the host
        return time.perf_counter()

    def timed_save(self, save, step: int) -> None:
        """save(step), its time kept: a checkpoint's cost is part of the run's."""
        began = time.perf_counter()
        save(step)
        self.save_seconds = max(self.save_seconds, time.perf_counter() - began)

    def expected(self, done: int) -> str | None:
        """After `done` steps (counted from 0): the expected-time line once enough steps are timed,
        else None. Runs too short to time say so at once."""
        if self.steps - self.start <= SKIP_STEPS + 1:
            return "expected time: a few seconds (too few steps to time)"
        if done < self.start + SKIP_STEPS:
            return None
        if self.began is None:
            self.began = (done, self._now())
            return None
        timed = done - self.began[0]
        seconds = self._now() - self.began[1] if timed else 0.0
        if timed < TIME_STEPS and seconds < TIME_SECONDS and done < self.steps:
            return None
        per_step = seconds / max(timed, 1)
        next_save = -(-done // self.checkpoint_every) * self.checkpoint_every
        saves = len(range(next_save, self.steps, self.checkpoint_every)) + 1  # and the last step's
        rest = per_step * (self.steps - done) + self.save_seconds * saves
        return (f"expected time on {self.device}: about {duration(rest)} for the {self.steps - done} steps left "
                f"({per_step * 1000:.3g} ms a step, timed over steps {self.began[0]} to {done})")

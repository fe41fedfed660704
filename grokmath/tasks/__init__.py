"""The toy tasks: `make_task(name, **options)` builds one by name.

Each task says its vocabulary (d_vocab, d_vocab_out, token_names), context (n_ctx) and the logit
positions it scores (pred_pos, pred_labels), and makes seeded batches: `task.sample(batch_size,
generator)` for infinite data, `task.split(n_train, generator)` for a fixed train set and a
disjoint test set. `time_per_batch` times sampling, for the benchmark script. The seed
experiments' task options and batch sizes are in grokmath/experiments.py.
"""
from __future__ import annotations

import inspect
import time

import torch

from .addition import AdditionTask
from .arithmetic import ArithmeticTask
from .base import Batch, Task
from .induction import InductionTask
from .modular import ModularTask
from .skip_trigram import SkipTrigramTask

TASKS: dict[str, type[Task]] = {task.name: task for task in
                                (AdditionTask, ArithmeticTask, SkipTrigramTask, InductionTask, ModularTask)}


def make_task(name: str, **options) -> Task:
    """The task `name` built with its keyword options; unknown names or options raise ValueError."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    known = [arg for arg in inspect.signature(TASKS[name].__init__).parameters if arg != "self"]
    for option in options:
        if option not in known:
            raise ValueError(f"unknown option {option!r} for task {name!r}; its options are {', '.join(known)}")
    return TASKS[name](**options)


def time_per_batch(task: Task, batch_size: int, n_batches: int = 20, seed: int = 0,
                   device: str = "cpu") -> float:
    """Mean wall-clock seconds for task.sample(batch_size) over n_batches (after one warm-up batch)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    task.sample(batch_size, generator)
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_batches):
        task.sample(batch_size, generator)
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n_batches


__all__ = ["Batch", "Task", "TASKS", "make_task", "time_per_batch", "AdditionTask",
           "ArithmeticTask", "SkipTrigramTask", "InductionTask", "ModularTask"]

"""The one training loop: one model, or K models with stacked weights (`--seeds`), same loop.

`train(model, task, cfg, run_dir)` trains one model; `train_seeds(model_cfg, task, cfg, seeds,
run_dirs)` trains one model per seed at once (grokmath.training.multiseed stacks them; each model's init
and data are seeded by its seed), writing into each run folder exactly what a single run with that
seed writes. Both run `run_loop`, so every promise below holds for both.

AdamW (betas 0.9, 0.98) with a linear warm-up (`min(step / warmup, 1)`, the seed notebooks'
LambdaLR) or warm-up + cosine decay, on one of three data regimes (`cfg.data`):
- 'infinite': a fresh `task.sample(batch_size, gen)` every step;
- 'finite':   a fixed training set `task.split(n_train, gen)`, full batch or random minibatches,
              with the loss on the held-out set every `test_every` steps;
- 'full':     every example the task has, split train/test by the task (modular arithmetic);
              each step is one full-batch epoch.
Every step records the train loss (float64 log-softmax), each scored position's loss, each
case's loss (`task.case_masks`) and the accuracy; these stay on the device and reach the host in
chunks, so a step costs no synchronisation. In order, a step: checkpoint (every N steps), sample,
test-set score, then `train_step` (grokmath.training.step: forward, backward, Grokfast filter, optimizer
step: one function of the models, the batch tensors and the optimizer), scheduler step, record.
The device, torchrun's ranks, signals and TF32 are grokmath.training.devices'.

Each run folder (grokmath.store.checkpoint) gets `metrics.csv` (flushed at every checkpoint), model
checkpoints and resumable states; the folders are made beforehand (grokmath.training.run). `resume=True`
continues from the newest state (for K models, the newest step every one of them has) and
reproduces an uninterrupted run bit for bit on CPU; a newest state that does not load or fit is
reported and the one before used. SIGINT/SIGTERM save a state and the model at that step (so a
stopped run is analysed where it stopped) and raise TrainingInterrupted (under torchrun every rank
stops at the same step, agreed by an all-reduce each step; rank 0 saves); a non-finite loss raises
NonFiniteLoss (or, with skip_nonfinite, for one model only, is skipped). With progress on, the loop
first prints the run's header and its expected time (grokmath.training.announce), then opens its bar.

On a GPU the same step runs as a captured CUDA graph (grokmath.training.capture: static input buffers, the
schedule and the metrics row on the device, a self-check against this eager step before it is
trusted); the eager step runs on a CPU, under hooks, with DDP or skip_nonfinite, when asked
(step_path='eager') or when the capture fails, and summary.json says which ran and why. cfg.tf32
allows TF32 matmuls on the GPU for the run (fp32 otherwise).
"""
from __future__ import annotations

import signal
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .announce import StepTimer, run_header
from .capture import CUDAGraphCapture, StaticStep, choose_step_path, eager_filter, static_filter
from ..store.checkpoint import RunDir, atomic_write_json, load_latest_states
from ..config import ModelConfig, TrainConfig
from .devices import (agreed_signal, as_device, check_data_parallel, data_parallel_rank, rank_seed,  # noqa: F401
                      resolve_device, stop_on_signals, tf32_matmuls)  # (check_data_parallel, resolve_device: re-exported)
from ..errors import NonFiniteLoss, TrainingInterrupted, TrainingStopped  # noqa: F401 (also grokmath.training.train's)
from .losses import score_sums
from .metrics import MetricsLog, metric_columns, metric_row, summarize
from .multiseed import StackedModels
from .schedule import lr_factor, make_optimizer  # noqa: F401 (lr_factor: the loop's schedule, re-exported)
from .step import OneModel, all_finite, stack_batches, train_step  # train_step: called as this module's (tests wrap it)
from ..tasks.base import Batch, fixed_split
from ..store.tracking import log_rows

FLUSH_EVERY = 50  # steps between moves of the metrics from the device to the host


@dataclass
class TrainResult:
    metrics: pd.DataFrame
    run_dir: Path | None
    n_skipped: int
    seconds: float
    step_path: str = "eager"  # 'eager', 'cuda_graph' or 'static' (grokmath.training.capture)
    step_path_reason: str | None = None  # why not the captured step, when eager


# ---- pieces of the loop ---------------------------------------------------------------------

class TrainData:
    """The batches of one data regime, drawn with one seeded generator, with their case masks."""

    def __init__(self, task, cfg: TrainConfig, gen: torch.Generator, device, case_names: list[str]):
        self.task, self.cfg, self.gen, self.device = task, cfg, gen, device
        self.case_names = case_names
        self.train = self.test = self.train_cases = None
        if cfg.data != "infinite":
            train, test = fixed_split(task, cfg, gen)
            cases = self.stack_cases(train)
            self.train_cases = None if cases is None else cases.to(device)
            self.train, self.test = train.to(device), test.to(device)
        self.full_batch = self.train is not None and (cfg.batch_size is None or cfg.batch_size >= len(self.train))

    def stack_cases(self, batch):
        """The task's case masks in the fixed order of case_names: [n_cases, batch, n_pred] bool."""
        if not self.case_names:
            return None
        masks = self.task.case_masks(batch)
        empty = torch.zeros_like(batch.targets, dtype=torch.bool)
        return torch.stack([masks.get(name, empty).to(torch.bool) for name in self.case_names])

    def next(self, to_device: bool = True):
        """(batch, case masks) for the next step, on the device (to_device=False: fresh batches stay
        where they were drawn, for the captured step's pinned copy)."""
        if self.train is None:
            batch = self.task.sample(self.cfg.batch_size, self.gen)
            cases = self.stack_cases(batch)
            # the loop needs no metadata once the cases are known; non_blocking: no wait for the GPU
            device = self.device if to_device else batch.tokens.device
            move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
            return Batch(move(batch.tokens), move(batch.targets), move(batch.mask)), move(cases)
        if self.full_batch:
            return self.train, self.train_cases
        idx = torch.randperm(len(self.train), generator=self.gen)[: self.cfg.batch_size].to(self.device)
        return self.train.index(idx), None if self.train_cases is None else self.train_cases[:, idx]

    def draw_next(self) -> tuple:
        """What next() would build its fresh batch from (task.draw; the same draws of the generator)."""
        return self.task.draw(self.cfg.batch_size, self.gen)


def probe_batch(task, cfg: TrainConfig):
    """A few examples drawn with a throwaway generator, to learn the names of the task's cases."""
    probe_gen = torch.Generator().manual_seed(0)
    if cfg.data == "infinite":
        return task.sample(4, probe_gen)
    return task.split(cfg.n_train if cfg.data == "finite" else None, probe_gen)[0].index(slice(0, 4))


# ---- the loop ---------------------------------------------------------------------------------

def train(model, task, cfg: TrainConfig, run_dir=None, device=None, resume: bool = False,
          progress: bool = True, warn=print, after_step=None, step_path: str = "auto",
          capturer=None) -> TrainResult:
    """Train `model` on `task`; with `run_dir` (already created) write checkpoints and metrics there.
    `after_step(step)`, if given, runs after each optimizer step (model insertion restores heads there).
    Under torch.distributed (torchrun) the forward runs through DistributedDataParallel.
    step_path: 'auto' (the captured step on a GPU where it can run, else eager), 'eager', or
    'static' (the captured step's static buffers on any device, captured by `capturer` if given)."""
    device = as_device(device)
    model.to(device)
    rank, world = data_parallel_rank()
    forward = None
    if world > 1:  # (what else torchrun cannot train, start_data_parallel refused before any collective)
        if resume:
            raise ValueError("--resume is for single-process runs: resume without torchrun")
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return run_loop(OneModel(model, forward), task, [cfg], [run_dir], device, resume, progress, warn, after_step,
                    step_path, capturer)[0]


def train_seeds(model_cfg: ModelConfig, task, cfg: TrainConfig, seeds: list[int], run_dirs=None, device=None,
                resume: bool = False, progress: bool = True, warn=print, step_path: str = "auto",
                capturer=None) -> list[TrainResult]:
    """Train one model per seed at once (model init and data both seeded by it); run_dirs already created,
    seeds checked (check_stackable) by the caller that made them (start_seed_runs)."""
    device = as_device(device)
    cfgs = [replace(cfg, seed=s) for s in seeds]
    return run_loop(StackedModels(model_cfg, seeds, device), task, cfgs,
                    [None] * len(seeds) if run_dirs is None else run_dirs, device, resume, progress, warn,
                    step_path=step_path, capturer=capturer)


def check_stackable(cfg: TrainConfig, seeds: list[int]) -> None:
    """What stacked seeds cannot do, refused before anything is written."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat: give distinct seeds")
    if cfg.skip_nonfinite:
        raise ValueError("--skip-nonfinite is for single runs (one stacked model's step cannot be skipped "
                         "alone): train those seeds one at a time")
    if data_parallel_rank()[1] > 1:
        raise ValueError("--seeds trains in one process: leave out torchrun")


def run_loop(models, task, cfgs: list[TrainConfig], run_dirs: list, device: torch.device, resume: bool = False,
             progress: bool = True, warn=print, after_step=None, step_path: str = "auto",
             capturer=None) -> list[TrainResult]:
    """The loop (see the module doc) for K models (`OneModel` or `StackedModels`) and their K
    configs (equal but for the seed) and run folders (all None: nothing is written). step_path and
    capturer: see `train`; the path that ran, and why not the captured one, go into summary.json."""
    on_device = torch.cuda.device(device) if device.type == "cuda" else nullcontext()  # streams and graphs there
    with tf32_matmuls(cfgs[0].tf32), on_device:
        return _run_loop(models, task, cfgs, run_dirs, device, resume, progress, warn, after_step, step_path,
                         capturer)


def _run_loop(models, task, cfgs, run_dirs, device, resume, progress, warn, after_step, step_path, capturer):
    started = time.time()
    K, cfg = len(models), cfgs[0]
    runs = [None if d is None else RunDir(d) for d in run_dirs]
    writing = runs[0] is not None
    if resume and not writing:
        raise ValueError("resume needs a run folder")
    pred_pos = task.pred_pos.to(device)
    rank, world = data_parallel_rank()
    gens = [torch.Generator().manual_seed(rank_seed(c.seed, rank)) for c in cfgs]
    case_names = list(task.case_masks(probe_batch(task, cfg)))
    # with data parallelism each rank draws batch_size / world examples of the global batch
    datas = [TrainData(task, replace(c, batch_size=c.batch_size // world) if world > 1 else c, gen, device,
                       case_names) for c, gen in zip(cfgs, gens)]
    has_test = datas[0].test is not None
    optimizer, scheduler = make_optimizer(models, cfg)
    path, path_reason = choose_step_path(step_path, device, models.torch_modules(), cfg, world, capturer)
    captured = path != "eager"
    grad_filter = static_filter(cfg, models) if captured else eager_filter(cfg)
    columns = metric_columns(task, has_test, case_names)
    logs = [MetricsLog(columns) for _ in range(K)]
    n_pred = len(task.pred_labels)
    start, n_skipped, checked = 0, 0, 0

    if resume:
        def restore(states):  # a state this cannot use is reported and the previous one tried
            models.load_model_states([state["model"] for state in states])
            models.load_optimizer_states(optimizer, [state["optimizer"] for state in states])
            scheduler.load_state_dict(states[0]["scheduler"])
            for gen, state in zip(gens, states):
                gen.set_state(state["generator"])
            torch.set_rng_state(states[0]["torch_rng"])
            if grad_filter is not None:
                models.load_filter_states(grad_filter, [state["grad_filter"] for state in states])
                grad_filter.to(device)
            for log, run in zip(logs, runs):
                log.load(run.read_metrics(), states[0]["step"])

        states = load_latest_states(runs, warn=warn, restore=restore)
        for run, c in zip(runs, cfgs):  # the resume works: only now may config.json take --steps N
            run.record_steps(c.steps)
        start, n_skipped = states[0]["step"], states[0]["n_skipped"]
        checked = start

    static = None
    if captured:  # the static step; captured (and self-checked) unless it runs uncaptured ('static')
        static = StaticStep(models, cfg, datas, task, pred_pos, optimizer, scheduler, grad_filter, columns, device,
                            train_step, start, FLUSH_EVERY)
        why_not = None if path == "static" else static.capture(capturer or CUDAGraphCapture())
        if why_not is not None:
            grad_filter = static.release(start)
            static, path, path_reason = None, "eager", why_not
            warn(f"training with the eager step: {why_not}")

    def whose(k: int) -> str:
        return "" if K == 1 else f" of seed {models.seeds[k]} ({runs[k].path.name if writing else k})"

    def flush() -> None:
        """Metrics to the host; stop on a non-finite train loss (unless skipping those)."""
        nonlocal checked
        if static is not None and static.pending:
            rows = static.take_rows()  # [K, n, n_columns]
            for log, part in zip(logs, rows):
                log.add_rows(part)
        for log in logs:
            log.to_host()
        for k, log in enumerate(logs):
            losses = log.column("train_loss", checked)
            bad = np.flatnonzero(~np.isfinite(losses))
            if len(bad) and not cfg.skip_nonfinite:
                bad_step = int(log.column("step", checked)[bad[0]])
                last_good = (bad_step // cfg.checkpoint_every) * cfg.checkpoint_every
                for run, run_log in zip(runs, logs):
                    if run is not None:
                        run.write_metrics(run_log.csv())
                stopped = "the run stopped and its" if K == 1 else f"all {K} stacked runs stopped and their"
                raise NonFiniteLoss(
                    f"the training loss{whose(k)} is {losses[bad[0]]} at step {bad_step}; {stopped} last good "
                    f"checkpoint is step {last_good}. Lower --lr, or pass --skip-nonfinite to skip such steps"
                    + ("" if K == 1 else " (in single runs)"))
        if writing:  # the rows metrics.csv gets, to TensorBoard / W&B when asked for (grokmath.store.tracking)
            log_rows([run.path for run in runs], columns, [log.host[checked:] for log in logs])
        checked = len(logs[0].host)

    def save(step: int) -> None:
        flush()
        if not writing:
            return
        if not all_finite(models):
            raise NonFiniteLoss(f"the weights became non-finite before step {step}; the run stopped and keeps "
                                "its earlier checkpoints. Lower --lr")
        with static.checkpoint_view(step) if static is not None else nullcontext():
            for k, (run, log) in enumerate(zip(runs, logs)):
                run.write_metrics(log.csv())  # rows for steps < step: written before the state that needs them
                weights = models.model_state(k)
                run.save_model_state(step, weights)
                run.save_state(step, {
                    "format": 1, "step": step, "n_skipped": n_skipped, "metrics_rows": len(log.host),
                    "model": weights, "optimizer": models.optimizer_state(optimizer, k),
                    "scheduler": scheduler.state_dict(), "generator": gens[k].get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "grad_filter": {} if grad_filter is None else models.filter_state(grad_filter, k),
                })

    desc = task.name if K == 1 else f"{task.name} x{K}"
    timer = None
    if progress and rank == 0:  # what, where and how long, before the bar (which opens once the time is known)
        n_params = sum(p.numel() for p in models.parameters()) // K
        print(run_header(run_dirs, device, path, path_reason, start, cfg.steps, n_params), flush=True)
        timer = StepTimer(start, cfg.steps, cfg.checkpoint_every, device)

    def open_bar(at: int):
        return tqdm(total=cfg.steps, initial=at, desc=desc, disable=not progress, dynamic_ncols=True)

    with stop_on_signals(enabled=writing or world > 1) as stop, ExitStack() as closing:
        bar = closing.enter_context(open_bar(start)) if timer is None else None
        for step in range(start, cfg.steps):
            if step % cfg.checkpoint_every == 0 and not (resume and step == start):
                if timer is None:
                    save(step)
                else:
                    timer.timed_save(save, step)
            signum = agreed_signal(stop, world, device)
            if signum is not None:
                save(step)  # the model too: every analysis of the stopped run reads this step
                name = signal.Signals(signum).name
                saved = "a resumable checkpoint is saved" if K == 1 else \
                    f"resumable checkpoints of all {K} seeds are saved (resume any of them to resume all)"
                if not writing:  # another rank of a torchrun job: rank 0 saves
                    saved = f"rank {rank} stopped with the others; rank 0 saved the checkpoint"
                raise TrainingInterrupted(f"stopped by {name} at step {step}; {saved}", signum,
                                          runs[0].path if writing else None)
            tested = has_test and step % cfg.test_every == 0
            if static is not None:  # the same step over static buffers: test sums, train step, metrics row
                static.fill(static.next_inputs(datas))
                static.run(test=tested)
                if after_step is not None:
                    with torch.no_grad():
                        after_step(step)
            else:
                lr = scheduler.get_last_lr()[0]
                drawn = [data.next() for data in datas]  # (batch, case masks) of each model
                with torch.no_grad():  # the test set, scored with the weights this step's loss uses
                    tests = [None] * K
                    if tested:
                        tests = [score_sums(lambda t, k=k: models.model(k)(t, positions=pred_pos), datas[k].test)
                                 for k in range(K)]
                losses, nll, logits, skipped = train_step(models, stack_batches([b for b, _ in drawn]), pred_pos,
                                                          optimizer, grad_filter, cfg.skip_nonfinite)
                n_skipped += skipped
                with torch.no_grad():
                    scheduler.step()
                    if after_step is not None:
                        after_step(step)
                    for k, ((batch, cases), log) in enumerate(zip(drawn, logs)):
                        row = metric_row(losses[k], nll[k], logits[k], batch, cases, tests[k], has_test, n_pred)
                        if world > 1:  # the log shows the mean over ranks, i.e. over the global batch
                            torch.distributed.all_reduce(row)
                            row /= world
                        log.append(step, lr, row)
            if bar is None:  # still timing the first steps
                expected = timer.expected(step + 1)
                if expected is not None:
                    print(expected, flush=True)
                    bar = closing.enter_context(open_bar(step + 1))
            else:
                bar.update(1)
            if (step + 1) % FLUSH_EVERY == 0:
                flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{np.mean([log.column('train_loss')[-1] for log in logs]):.4g}")
        save(cfg.steps)
    seconds = time.time() - started
    results = []
    for run, log in zip(runs, logs):
        metrics = log.frame()
        if run is not None:
            atomic_write_json(run.path / "summary.json", summarize(metrics, cfg, n_skipped, seconds, device,
                                                                   path, path_reason))
        results.append(TrainResult(metrics, None if run is None else run.path, n_skipped, seconds, path,
                                   path_reason))
    return results

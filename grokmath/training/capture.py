"""The captured training step: the loop's step as one function over static buffers, replayed as
a CUDA graph on a GPU, trusted only after it has been checked against the eager step.

`StaticStep` holds everything a step reads or writes at fixed addresses: the K models' input
buffers ([K, batch, ...], filled by copy before each step; on a GPU from pinned host memory on a
copy stream), a device step counter from which the learning rate is computed on the device
(grokmath.training.schedule's `device_lr_factor`, equal to `lr_factor` at every step), the optimizer's
learning rate as a tensor, and a metrics buffer [K, FLUSH_EVERY, n_columns] into which each step
writes its row at a device index. For tasks that draw their digits apart from building the batch
(addition, arithmetic: `task.draw`), only the drawn digits cross from the host and the step builds
tokens, targets and case masks from them on the device (the same integers as `task.sample`). Its
`train_fn` (learning rate, grokmath.training.train's `train_step`, metrics row) and `test_fn` (the held-out
set's sums) read and write only those buffers, so a capturer can record each once and replay it:
`CUDAGraphCapture` (torch.cuda.graph after warm-up steps on a side stream, as the PyTorch docs
ask). Without a capturer the same functions run as they are: that is how the CPU tests check this
path against the eager loop bit for bit.

Nothing here is trusted blindly. `capture` keeps a capture only after a self-check: from the same
state, CHECK_STEPS steps run eagerly and as replays must agree (metrics rows, weights, optimizer
and Grokfast state, counters; floats to float tolerance); if capture raises or the check fails,
the loop falls back to its eager step and says why in summary.json. At every flush the device's
counters and the rows' step and learning-rate columns are checked against the loop's own count
(the buffer is refilled with NaN after each read), so a replay that stops writing, runs twice or
drifts stops the run with a CapturedStepError instead of passing silently. The loop
(grokmath.training.train) decides the path: `choose_step_path` gives the eager step on a CPU, under hooks,
with DistributedDataParallel or --skip-nonfinite, and with it the reason.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch.nn.modules import module as torch_module  # the global module-hook tables live there

from ..config import TrainConfig
from .grokfast import GradFilter, StaticGradFilter
from ..model.hook_point import HookPoint
from .losses import ScoreSums, score_sums
from .metrics import HEAD, metric_row
from .schedule import device_lr_factor, lr_factor, scheduler_state
from ..tasks.base import Batch

CHECK_STEPS = 3  # steps compared, eager against replayed, before a capture is trusted
PATHS = ("auto", "eager", "static")  # what a caller may ask for; see choose_step_path


class CapturedStepError(RuntimeError):
    """The captured step disagreed with the loop's own count of steps: a bug, never a user's mistake."""


# ---- capturers: capture(fn) -> replay ---------------------------------------------------------

class CUDAGraphCapture:
    """Records fn (a function of no arguments over static tensors) as a CUDA graph; returns its replay."""

    name = "cuda_graph"

    def __init__(self, warmup: int = 3):
        self.warmup = warmup

    def __call__(self, fn: Callable[[], None]) -> Callable[[], None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS handles, the autograd streams
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private memory pool per graph
            fn()
        return graph.replay


def hooks_attached(modules) -> bool:
    """Whether any hook (grokmath HookPoint or torch module hook, global ones too) would run in a forward
    or backward of these modules: a captured graph would run it once, at capture, and never again."""
    if any(getattr(torch_module, f"_global_{kind}", None) for kind in
           ("forward_hooks", "forward_pre_hooks", "backward_hooks", "backward_pre_hooks")):  # register_module_*_hook
        return True
    for root in modules:
        for m in root.modules():
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
                return True
            if any(isinstance(v, HookPoint) and v.has_hooks() for v in vars(m).values()):
                return True
    return False


def choose_step_path(requested: str, device: torch.device, modules, cfg: TrainConfig | None = None,
                     world: int = 1, capturer=None) -> tuple[str, str | None]:
    """(path, reason): 'eager' (with the reason the static step is not used) or the static step's
    path: capturer.name ('cuda_graph' for auto on a GPU), or 'static' (uncaptured, any device).
    cfg None: not a training step but a forward-only evaluation (grokmath.analysis.evaluate), so
    the reasons say 'forward' and 'evaluation'."""
    what, job, flag = ("step", "run", " (--no-capture)") if cfg is not None else ("forward", "evaluation", "")
    if requested not in PATHS:
        raise ValueError(f"step_path={requested!r}: use one of {PATHS}")
    if requested == "eager":
        return "eager", f"the eager {what} was asked for{flag}"
    if world > 1:
        return "eager", "data-parallel training (DistributedDataParallel) runs the eager step"
    if cfg is not None and cfg.skip_nonfinite:
        return "eager", "--skip-nonfinite decides on the host at every step whether to skip it"
    if hooks_attached(modules):
        return "eager", f"hooks are attached to the model (a captured {what} would not run them)"
    if requested == "static":
        return ("static" if capturer is None else capturer.name), None
    if device.type != "cuda":
        return "eager", f"the captured {what} needs a CUDA GPU; this {job} is on {device.type}"
    return (capturer or CUDAGraphCapture()).name, None


def init_optimizer_state(optimizer) -> None:
    """Allocate AdamW's state where it has none yet, as its first step would (step 0, zero moments),
    so that a capture sees every tensor the optimizer will use."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),  # fused AdamW's step
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


def static_filter(cfg: TrainConfig, models) -> StaticGradFilter | None:
    if cfg.grokfast is None:
        return None
    return StaticGradFilter(cfg.grokfast, models.named_parameters(), cfg.grokfast_alpha, cfg.grokfast_lamb,
                            cfg.grokfast_window)


def eager_filter(cfg: TrainConfig, state: dict | None = None) -> GradFilter | None:
    """The eager Grokfast filter, holding `state` (a StaticGradFilter's, when falling back)."""
    if cfg.grokfast is None:
        return None
    grad_filter = GradFilter(cfg.grokfast, cfg.grokfast_alpha, cfg.grokfast_lamb, cfg.grokfast_window)
    if state is not None:
        grad_filter.load_state_dict(state)
    return grad_filter


# ---- the static step ----------------------------------------------------------------------------

class StaticStep:
    """The loop's step over static buffers (see the module doc). `datas` are the K models' TrainData,
    `columns` the metrics.csv columns, `train_step` grokmath.training.train's step function."""

    def __init__(self, models, cfg: TrainConfig, datas, task, pred_pos, optimizer, scheduler, grad_filter,
                 columns: list[str], device: torch.device, train_step, start: int, flush_every: int):
        self.models, self.cfg, self.datas, self.device = models, cfg, datas, device
        self.pred_pos, self.optimizer, self.scheduler = pred_pos, optimizer, scheduler
        self.grad_filter, self.train_step = grad_filter, train_step
        self.K, self.n_pred = len(models), len(task.pred_labels)
        self.task, self.has_test = task, datas[0].test is not None
        self.full_batch = datas[0].full_batch
        # fresh batches of a task that can draw them apart (addition, arithmetic): only the random digits
        # cross from the host, and the step builds the batch from them on the device
        self.builds = datas[0].train is None and task.draws_apart
        # the input buffers, first filled with examples of the right shape that no generator paid for
        first = [self._shape_example(task, data) for data in datas]
        self.tokens = torch.stack([b.tokens for b, _ in first]).to(device)  # [K, batch, n_ctx]
        self.targets = torch.stack([b.targets for b, _ in first]).to(device)  # [K, batch, n_pred]
        self.mask = None if first[0][0].mask is None else torch.stack([b.mask for b, _ in first]).to(device)
        self.cases = None if first[0][1] is None else torch.stack([c for _, c in first]).to(device)
        self.batch = Batch(self.tokens, self.targets, self.mask)  # what train_step reads, [K, ...]
        if self.builds:  # the digits [K, batch, ...] that `build` turns into the buffers above
            drawn = task.draw(self.cfg.batch_size, torch.Generator().manual_seed(0))
            self.drawn = [torch.stack([d] * self.K).to(device) for d in drawn]
        # the step counter, the learning rate and the metrics buffer, all on the device
        self.step = torch.tensor(start, dtype=torch.int64, device=device)
        lr_dtype = torch.float32 if device.type == "cuda" else torch.float64  # fused CUDA AdamW reads float32
        self.lr = torch.zeros((), dtype=lr_dtype, device=device)
        self.row = torch.zeros((), dtype=torch.int64, device=device)
        # one spare row at the end: a step past the capacity (a bug) writes there, and the flush says so
        self.rows = torch.full((self.K, flush_every + 1, len(columns)), math.nan, dtype=torch.float64, device=device)
        self.columns = columns
        self.test_columns = torch.tensor([c.startswith("test_") for c in columns[len(HEAD):]], device=device)
        self.test_sums = torch.zeros(self.K, 3, self.n_pred, dtype=torch.float64, device=device)
        self.tested = torch.zeros((), dtype=torch.bool, device=device)
        self.pending, self.first_pending = 0, start  # rows in the buffer, and the step of the first
        init_optimizer_state(optimizer)
        self.saved_groups = [(g["lr"], g["capturable"]) for g in optimizer.param_groups]
        for group in optimizer.param_groups:  # AdamW reads its learning rate from self.lr
            group["lr"], group["capturable"] = self.lr, True
        self.replay_train: Callable[[], None] = self.train_fn
        self.replay_test: Callable[[], None] = self.test_fn
        # infinite data on a GPU: batches staged in pinned host memory, copied on a copy stream
        self.staging = None
        if device.type == "cuda" and datas[0].train is None:
            self.copy_stream = torch.cuda.Stream(device)
            self.staging = [[t.cpu().pin_memory() for t in self.inputs()] for _ in range(2)]
            self.staged = [torch.cuda.Event(), torch.cuda.Event()]
            for event in self.staged:
                event.record()
            self.turn = 0

    def _shape_example(self, task, data):
        """(batch, case masks) shaped as this run's batches, drawn without touching the run's generators."""
        if data.train is None:
            batch = task.sample(self.cfg.batch_size, torch.Generator().manual_seed(0))
            return Batch(batch.tokens, batch.targets, batch.mask), data.stack_cases(batch)
        if data.full_batch:
            return data.train, data.train_cases
        rows = slice(0, self.cfg.batch_size)
        return data.train.index(rows), None if data.train_cases is None else data.train_cases[:, rows]

    def inputs(self) -> list[torch.Tensor]:
        """The buffers `fill` copies into: the drawn digits, or the batch and its case masks."""
        if self.builds:
            return self.drawn
        return [t for t in (self.tokens, self.targets, self.mask, self.cases) if t is not None]

    def next_inputs(self, datas) -> list[list[torch.Tensor]]:
        """The next step's inputs of each model, in the order of `inputs()` (on the host where drawn)."""
        if self.builds:
            return [list(data.draw_next()) for data in datas]
        rows = [[b.tokens, b.targets, b.mask, c] for b, c in (data.next(to_device=False) for data in datas)]
        return [[t for t in row if t is not None] for row in rows]

    def build(self) -> None:
        """The K batches and their case masks from the drawn digits, on the device (the task's from_digits,
        row by row, so the same batches as task.sample gives)."""
        K, size = self.tokens.shape[:2]
        batch = self.task.from_digits(*(d.flatten(0, 1) for d in self.drawn))  # K * batch rows
        self.tokens.copy_(batch.tokens.unflatten(0, (K, size)))
        self.targets.copy_(batch.targets.unflatten(0, (K, size)))
        if self.mask is not None:
            self.mask.copy_(batch.mask.unflatten(0, (K, size)))
        if self.cases is not None:  # [n_cases, K * batch, n_pred] -> [K, n_cases, batch, n_pred]
            self.cases.copy_(self.datas[0].stack_cases(batch).unflatten(1, (K, size)).transpose(0, 1))

    def fill(self, sources: list[list[torch.Tensor]]) -> None:
        """Copy each model's inputs (next_inputs) into the input buffers (full batch: they hold it already)."""
        if self.full_batch:
            return
        if self.staging is None or sources[0][0].device.type != "cpu":
            for k, row in enumerate(sources):
                for buffer, source in zip(self.inputs(), row):
                    buffer[k].copy_(source, non_blocking=True)
            return
        stage, staged = self.staging[self.turn], self.staged[self.turn]
        staged.synchronize()  # the copy that last read this staging set is done
        for k, row in enumerate(sources):
            for pinned, source in zip(stage, row):
                pinned[k].copy_(source)
        main = torch.cuda.current_stream(self.device)
        self.copy_stream.wait_stream(main)  # the replay that reads the buffers now is done first
        with torch.cuda.stream(self.copy_stream):
            for buffer, pinned in zip(self.inputs(), stage):
                buffer.copy_(pinned, non_blocking=True)
        staged.record(self.copy_stream)
        main.wait_stream(self.copy_stream)  # the next replay reads the new batch
        self.turn ^= 1

    def train_fn(self) -> None:
        """One step: learning rate from the step counter, train_step, the metrics row at the row index."""
        cfg, K = self.cfg, self.K
        if self.builds:
            self.build()
        lr = cfg.lr * device_lr_factor(cfg, self.step)  # float64, LambdaLR's base_lr * factor
        self.lr.copy_(lr)
        losses, nll, logits, _ = self.train_step(self.models, self.batch, self.pred_pos, self.optimizer,
                                                 self.grad_filter)
        with torch.no_grad():
            rows = []
            for k in range(K):
                batch = Batch(self.tokens[k], self.targets[k], None if self.mask is None else self.mask[k])
                sums = ScoreSums(*self.test_sums[k]) if self.has_test else None
                rows.append(metric_row(losses[k], nll[k], logits[k], batch, None if self.cases is None
                                       else self.cases[k], sums, self.has_test, self.n_pred))
            values = torch.stack(rows)  # [K, n_columns - len(HEAD)]
            if self.has_test:  # NaN in the test columns unless test_fn ran before this step
                values = torch.where(self.test_columns & ~self.tested, math.nan, values)
                self.tested.fill_(False)
            head = torch.stack([self.step.to(torch.float64), lr]).expand(K, len(HEAD))  # HEAD: step, lr
            at = self.row.clamp(max=self.rows.shape[1] - 1).view(1)
            self.rows.index_copy_(1, at, torch.cat([head, values], dim=1)[:, None])
            self.row += 1
            self.step += 1

    @torch.no_grad()
    def test_fn(self) -> None:
        """The held-out set's sums for each model, with the weights this step's loss uses."""
        for k in range(self.K):
            sums = score_sums(lambda t, k=k: self.models.model(k)(t, positions=self.pred_pos), self.datas[k].test)
            self.test_sums[k].copy_(torch.stack(sums))
        self.tested.fill_(True)

    def run(self, test: bool) -> None:
        """One training step (its inputs already filled), the test set first when `test`."""
        assert self.pending < self.rows.shape[1] - 1, "the loop flushes the metrics buffer before it is full"
        if test:
            self.replay_test()
        self.replay_train()
        self.pending += 1

    # ---- the host's view: rows, checkpoints ------------------------------------------------
    def take_rows(self) -> np.ndarray:
        """The pending rows [K, n, n_columns] (one synchronisation), checked against the loop's count;
        the buffer is refilled with NaN so that an unwritten row cannot pass as an old one."""
        n, first = self.pending, self.first_pending
        values = self.rows.to("cpu", copy=True).numpy()  # a copy: the buffer is refilled next
        step, row = torch.stack([self.step, self.row]).tolist()
        self.rows.fill_(math.nan)
        self.row.zero_()
        self.pending, self.first_pending = 0, first + n
        if (step, row) != (first + n, n):
            raise CapturedStepError(f"the captured step counted {row} steps up to step {step} where the loop ran "
                                    f"{n} up to step {first + n}: rerun with --no-capture")
        values = values[:, :n]
        steps = np.arange(first, first + n)
        step_of, lr_of = values[..., self.columns.index("step")], values[..., self.columns.index("lr")]  # [K, n]
        if not (step_of == steps).all():
            raise CapturedStepError(f"the captured step wrote rows for steps {step_of[0].tolist()} where the "
                                    f"loop ran steps {first}..{first + n - 1}: rerun with --no-capture")
        expected = np.array([self.cfg.lr * lr_factor(self.cfg, int(s)) for s in steps])
        # exact on a CPU; a GPU's float64 cos may be an ulp or two off (near the cosine's end, where it is 0)
        rtol, atol = (0.0, 0.0) if self.device.type == "cpu" else (1e-12, 1e-14 * self.cfg.lr)
        if not np.all(np.abs(lr_of - expected) <= rtol * np.abs(expected) + atol):
            raise CapturedStepError(f"the captured step's learning rate drifted from the schedule between steps "
                                    f"{first} and {first + n - 1}: rerun with --no-capture")
        if self.replay_train is not self.train_fn and hooks_attached(self.models.torch_modules()):
            raise CapturedStepError("hooks were attached to the model during a captured run, which cannot run "
                                    "them: attach hooks before training (the eager step runs them) or use --no-capture")
        return values

    @contextmanager
    def checkpoint_view(self, step: int):
        """Within it, the optimizer and scheduler look as the eager loop's do at `step` (float
        learning rate, capturable off, the scheduler stepped `step` times), so checkpoints are the same."""
        lr = self.cfg.lr * lr_factor(self.cfg, step)
        self.scheduler.load_state_dict(scheduler_state(self.scheduler, self.cfg, step))
        for group, (_, capturable) in zip(self.optimizer.param_groups, self.saved_groups):
            group["lr"], group["capturable"] = lr, capturable
        try:
            yield
        finally:
            for group in self.optimizer.param_groups:
                group["lr"], group["capturable"] = self.lr, True

    def release(self, step: int) -> GradFilter | None:
        """Hand the run back to the eager step at `step` (before any static step ran): the optimizer's
        float learning rate, the scheduler at `step`, and an eager Grokfast filter with this one's state."""
        for group, (_, capturable) in zip(self.optimizer.param_groups, self.saved_groups):
            group["lr"], group["capturable"] = self.cfg.lr * lr_factor(self.cfg, step), capturable
        return eager_filter(self.cfg, None if self.grad_filter is None else self.grad_filter.state_dict())

    # ---- capture and its self-check ------------------------------------------------------------
    def state_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every tensor a step changes, in a fixed order."""
        named = list(self.models.named_parameters())
        for name, p in named[:]:
            named += [(f"AdamW {key} of {name}", v) for key, v in self.optimizer.state[p].items()
                      if isinstance(v, torch.Tensor)]
        if self.grad_filter is not None:
            named += [(f"Grokfast state {i}", t) for i, t in enumerate(self.grad_filter.tensors())]
        return named + [("the step counter", self.step), ("the row index", self.row), ("the metrics rows", self.rows),
                        ("the learning rate", self.lr), ("the test sums", self.test_sums),
                        ("the tested flag", self.tested)]

    def snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for _, t in self.state_tensors()]

    def restore(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for (_, t), s in zip(self.state_tensors(), saved):
                t.copy_(s)
        self.optimizer.zero_grad(set_to_none=True)

    def steps(self, n: int, test_fn, train_fn) -> None:
        for _ in range(n):
            if self.has_test:
                test_fn()
            train_fn()

    def capture(self, capturer) -> str | None:
        """Capture train_fn (and test_fn) with `capturer` and keep the replays if they pass the
        self-check; otherwise keep the uncaptured functions and return why (the loop then runs eager).
        The state is as it was either way: every stage starts from the same snapshot."""
        try:
            before = self.snapshot()
        except Exception as error:  # e.g. out of memory: nothing has changed yet
            return f"no memory to check a capture ({type(error).__name__}: {first_line(error)})"
        names = [name for name, _ in self.state_tensors()]
        with warnings.catch_warnings():  # capturable AdamW warns when stepped outside a capture
            warnings.simplefilter("ignore")
            replays, why_not = self_checked(
                lambda: (capturer(self.train_fn), capturer(self.test_fn) if self.has_test else self.test_fn),
                lambda: self.steps(CHECK_STEPS, self.test_fn, self.train_fn),
                lambda replays: self.steps(CHECK_STEPS, replays[1], replays[0]),
                self.snapshot, self.restore, before,
                lambda reference, replayed: compare_states(names, before, reference, replayed),
                ("capturing the step", "stepping eagerly for the self-check", "replaying the captured step"),
                "the captured step failed its self-check against the eager step ({})")
        if replays is not None:
            self.replay_train, self.replay_test = replays
        return why_not


def self_checked(capture, run_eager, run_replays, snapshot, restore, before, differ, stages, failed: str):
    """The one self-check of a capture (the training step's here, the evaluation's forward in
    grokmath.analysis.evaluate): from the state `before`, `capture()` the replays; from `before`
    again, `run_eager()`; from `before` again, `run_replays(replays)`; then `differ(reference,
    replayed)` (the two states reached) says what differs, or None. The state is `before` again at
    the end, whatever happened. Returns (replays, None) if they passed, else (None, why): the stage
    that failed, or `failed` (a format with one {}) filled with what differs."""
    stage = stages[0]
    try:
        replays = capture()
        restore(before)
        stage = stages[1]
        run_eager()
        reference = snapshot()
        restore(before)
        stage = stages[2]
        run_replays(replays)
        replayed = snapshot()
    except Exception as error:  # any failure means: run eager, and say why
        restore(before)
        return None, f"{stage} failed ({type(error).__name__}: {first_line(error)})"
    restore(before)
    mismatch = differ(reference, replayed)
    if mismatch is not None:
        return None, failed.format(mismatch)
    return replays, None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def compare_states(names: list[str], before: list, reference: list, replayed: list,
                   rtol: float = 1e-3, row_rtol: float = 1e-4) -> str | None:
    """None if `replayed` matches `reference` (both reached from `before`), else what differs.
    Integer and bool tensors must be equal; float tensors must agree on where they are NaN, and
    their change from `before` within `rtol` of the reference's change (plus float32 rounding of
    the values), so a step that is skipped, doubled or given stale inputs cannot pass; the
    metrics rows (which start as NaN) within `row_rtol` of the reference, element by element."""
    for what, b, r, g in zip(names, before, reference, replayed):
        if not r.is_floating_point():
            if not torch.equal(r, g):
                return f"{what}: differs"
            continue
        if not torch.equal(r.isnan(), g.isnan()):
            return f"{what}: NaN in different places"
        single = r.dtype != torch.float64
        r, g, b = (torch.nan_to_num(x.double(), nan=0.0) for x in (r, g, b))
        if what == "the metrics rows":
            if not torch.all((g - r).abs() <= row_rtol * r.abs() + 1e-12):
                return f"{what}: differ by up to {float((g - r).abs().max()):.3g}"
            continue
        change, error = float((r - b).norm()), float((g - r).norm())
        if error > rtol * change + (1e-6 if single else 1e-14) * float(r.norm()) + 1e-12:
            return f"{what}: differs by {error:.3g} (norm; its change over the steps: {change:.3g})"
    return None

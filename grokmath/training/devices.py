"""Where a run runs: its device, its data-parallel rank (torchrun), SIGINT/SIGTERM as a flag the
loop reads once a step, and TF32 matmuls for the run's length."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch

from ..config import TrainConfig
from ..errors import received_signal


def resolve_device(name: str | None = None) -> torch.device:
    """'cuda' when available else 'cpu' for None; a named device must exist."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device torch knows: use 'cpu' or 'cuda'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s)): use cuda:0")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported: use 'cpu' or 'cuda'")
    return device


def as_device(device) -> torch.device:
    """A device resolved already (at the edge) as it is; a name, or None, resolved here: each path
    from a caller to the loop checks its device once."""
    return device if isinstance(device, torch.device) else resolve_device(device)


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed; (0, 1) without it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int) -> int:
    """The data seed of one rank: rank 0 draws what a single process would, the others differ."""
    return seed + 1_000_003 * rank


def check_data_parallel(cfg: TrainConfig, world: int) -> None:
    """What torchrun cannot train, refused on every rank alike, before any collective."""
    if cfg.data != "infinite":
        raise ValueError("data-parallel training needs a fresh batch each step (infinite data): "
                         "train finite or full-batch runs in one process")
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} does not divide among {world} processes: "
                         f"use a multiple of {world}")
    if cfg.grokfast is not None or cfg.skip_nonfinite:
        raise ValueError("--grokfast and --skip-nonfinite are for single-process runs")


@contextmanager
def stop_on_signals(enabled: bool = True):
    """While active, SIGINT/SIGTERM only set flag['signum']; the loop stops at the next step.
    A second SIGINT interrupts at once."""
    flag = {"signum": received_signal()}  # one that came before the loop, its exception swallowed
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signum"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signum"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def agreed_signal(flag, world: int, device) -> int | None:
    """The signal that stops the loop at this step: this process's, or under torchrun the largest
    any rank has received (all ranks stop at one step, or the others would wait in a collective)."""
    if world == 1:
        return flag["signum"]
    signum = torch.tensor([flag["signum"] or 0], device=device)
    torch.distributed.all_reduce(signum, op=torch.distributed.ReduceOp.MAX)
    return int(signum.item()) or None


@contextmanager
def tf32_matmuls(enabled: bool):
    """CUDA float32 matmuls in TF32 (tensor cores, ~1e-3 relative error) only when asked; fp32 otherwise."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before

"""The ways a training run stops early, as exceptions, in a module with no heavy imports.

The command-line edge (grokmath.cli.main_guard) catches these before torch is imported, so a
signal that arrives while a script is still starting is reported in one line too. The loop
(grokmath.training.train) raises them: TrainingInterrupted after saving a resumable state on SIGINT or
SIGTERM (run_dir: the folder to resume; None where there is nothing to resume), NonFiniteLoss
when the loss or the weights stop being finite. `signals_deferred()` holds main_guard's SIGINT and
SIGTERM back while a run folder's files are moved (grokmath.store.checkpoint), so that a signal never
leaves a move half done: it is raised, as SignalOutsideLoop, when the move is complete.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager


class TrainingStopped(Exception):
    """The run stopped before its last step; the message says why and what to do."""


class TrainingInterrupted(TrainingStopped):
    def __init__(self, message, signum, run_dir=None):
        super().__init__(message)
        self.signum, self.run_dir = signum, run_dir


class NonFiniteLoss(TrainingStopped):
    pass


class SignalOutsideLoop(TrainingInterrupted):
    """SIGTERM (or SIGINT) while a script was not inside the training loop (starting, making the run
    folders, drawing plots): raised by main_guard's handler; grokmath.training.run says what was kept."""

    def __init__(self, signum):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} before it finished; files are written whole or not at all, so "
                         "nothing is half-written: run the same command again", signum)


_RECEIVED = {"signum": None}  # main_guard's last signal, kept even where an `except` swallowed its exception


def note_signal(signum: int | None) -> None:
    """main_guard's handler records each signal it raises (None: forget, at a script's start)."""
    _RECEIVED["signum"] = signum


def received_signal() -> int | None:
    """A signal main_guard raised that never reached it: code that catches every Exception (a finaliser,
    a library's fallback) can swallow it, so the loop reads this before its first step and stops there."""
    return _RECEIVED["signum"]


_DEFERRED = {"depth": 0, "signum": None}  # signals_deferred: how deep, and a signal that came meanwhile


def defer_signal(signum: int) -> bool:
    """main_guard's handler asks: inside signals_deferred, the signal is kept for its end (True)."""
    if _DEFERRED["depth"] == 0:
        return False
    _DEFERRED["signum"] = _DEFERRED["signum"] or signum
    return True


@contextmanager
def signals_deferred():
    """Within the block main_guard's SIGINT/SIGTERM wait; one that came is raised (SignalOutsideLoop) as
    the outermost block ends, so a move of files is finished (or undone) before the script stops."""
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        signum = _DEFERRED["signum"]
        if _DEFERRED["depth"] == 0 and signum is not None:
            _DEFERRED["signum"] = None
            raise SignalOutsideLoop(signum)

"""The error edge of every script: `main_guard(main)` runs it and turns a user's mistake
(ValueError, a bad file) into one line on stderr and exit status 2, never a traceback; an
interrupted run says how to resume it, and a signal at any other moment says what was kept. It
imports nothing heavy (torch, pandas and the rest of grokmath load inside the script's main), so a
script reaches it within ~0.1 s. Set GROKMATH_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from ..errors import NonFiniteLoss, SignalOutsideLoop, TrainingInterrupted, defer_signal, note_signal, received_signal

EXIT_USAGE = 2


def _importing(frame) -> bool:
    """Is the interrupted code inside an import? An exception raised there can reach C++ code that
    torch's import calls back from, which aborts the process (SIGABRT) instead of unwinding."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise_signal_outside_loop(signum, frame):
    if signum == signal.SIGALRM:  # the re-check of a signal held back during an import
        signum = received_signal()
        if signum is None:
            return
    else:
        note_signal(signum)  # kept: raised after an import, read by the loop if an `except` swallows it
    if _importing(frame):  # hold it until the import is done: look again in 20 ms
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        return
    if not defer_signal(signum):  # a run folder's files being moved: raised once the move is done
        raise SignalOutsideLoop(signum)


def main_guard(main, argv=None) -> None:
    """Run main(argv) and turn a user's mistake into one line on stderr and exit status 2. From its
    first line on, SIGTERM and SIGINT raise SignalOutsideLoop (the training loop installs its own
    handler, which saves a checkpoint first): a signal at any moment gives one line saying what was
    kept and exit status 128 + the signal's number. A signal that comes during an import is raised
    as soon as the import is done (SIGALRM looks again every 20 ms)."""
    prog = Path(sys.argv[0]).name
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: each rank speaks for itself
        prog += f" (rank {os.environ.get('RANK', '?')})"
    debug = os.environ.get("GROKMATH_DEBUG")
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    main_thread = threading.current_thread() is threading.main_thread()
    note_signal(None)
    previous = {sig: signal.signal(sig, _raise_signal_outside_loop) for sig in handled} if main_thread else {}
    try:
        main(argv)
        if received_signal() is not None:  # swallowed on the way (after the loop: the work is complete)
            raise SignalOutsideLoop(received_signal())
    except TrainingInterrupted as e:
        resume = ""
        if getattr(e, "run_dir", None):
            resume = "; resume with: " + shlex.join(["python", sys.argv[0], "--resume", str(e.run_dir)])
        print(f"{prog}: {e}{resume}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteLoss as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except (ValueError, OSError) as e:
        if received_signal() is not None:  # an error on the way out of a signal (e.g. a wrapped read): the
            stop = SignalOutsideLoop(received_signal())  # signal is why it stopped, not a user's mistake
            print(f"{prog}: {stop} ({type(e).__name__} on the way out)", file=sys.stderr)
            sys.exit(128 + stop.signum)
        if debug:
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (MemoryError, RuntimeError) as e:  # torch's out-of-memory errors; any other is a bug: a traceback
        if debug or not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"):
            raise
        print(f"{prog}: error: out of memory ({str(e).splitlines()[0] if str(e) else 'no detail'}): lower "
              "--batch-size or the model's size", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    finally:
        note_signal(None)
        if main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

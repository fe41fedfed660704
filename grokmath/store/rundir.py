"""Run folders: making, locking, replacing and recovering one (the folder's lifecycle).

`RunFolder` knows a run folder's paths and how its folder lives: `prepare_runs`
(grokmath.store.checkpoint) is the one place run folders are made and replaced: every check runs before
anything is removed; a run being replaced is moved aside (`.replaced/` inside its folder) and
deleted only once its replacement has its first resumable state (`abandon_runs` puts it back if
the replacement fails before that; a process killed before that leaves it to be put back by the
next writer, which recovers before anything else; readers name each state a kill can leave, listed
above `RunFolder.moving_entries`, and what recovers it); a run stopped before its first state
(`is_unstarted`) is replaced without --overwrite. One writer per run folder: a writer holds an
flock on `<run>/.lock` (`RunFolder.lock`), which the kernel drops when the process ends, however it
ends; a second writer is refused naming the holder's pid. What the folder's files hold (config,
metrics, checkpoints) is grokmath.store.checkpoint's `RunDir`, a RunFolder.
"""
import errno
import os
import re
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: run folders are not locked there
    fcntl = None

from ..errors import signals_deferred
from .files import _UMASK, _is_tmp, refuse_existing

CONFIG = "config.json"
GROUP = "group.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"  # the writer's lock file (its content: the writer's pid)
REPLACED = ".replaced"  # inside a run folder: the run being replaced, until the new one's first state
REPLACING = ".replacing"  # the same while its entries are being moved (in or back out)

_MODEL_RE = re.compile(r"model_(\d{6,})\.pt$")
_STATE_RE = re.compile(r"state_(\d{6,})\.pt$")
_WRITER_FILES = (CONFIG, GROUP, METRICS, SUMMARY)  # what a training run writes at the top of its folder
_HELD: dict[str, int] = {}  # run folders this process holds the writer lock of -> the lock file's fd


class RunInUse(ValueError):
    """Another live process is writing the run folder."""


def _key(path) -> str:
    """The held-lock key of a run folder: its real path (os.path.realpath: never raises on a symlink loop)."""
    return os.path.realpath(path)


def check_no_link_loop(path) -> None:
    """A path through a symbolic link that loops (a -> b -> a) names nothing: one line, not a traceback."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path} goes through a symbolic link that loops back on itself (it leads to no file "
                             "or folder): remove the link, or give another path or --run-name") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunFolder:
    """Paths of one run folder, and how the folder is made, locked, replaced and recovered."""

    def __init__(self, path):
        self.path = Path(path)
        self.created = False  # prepare_runs: whether this process made the folder
        self.written = False  # prepare_runs: whether this process wrote the run's config.json
        self.moved_aside = False  # prepare_runs: whether it moved an old run aside to replace it
        self.undone = False  # abandon_runs: whether it undid this process's new run (a replaced one put back)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def model_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"model_{step:06d}.pt"

    def state_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"state_{step:06d}.pt"

    def _steps(self, pattern) -> list[int]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = (pattern.match(p.name) for p in self.checkpoint_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def model_steps(self) -> list[int]:
        return self._steps(_MODEL_RE)

    def state_steps(self) -> list[int]:
        return self._steps(_STATE_RE)

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def check_is_run(self) -> None:
        """Refuse, in one line saying what to do, a folder that is not a whole run now: missing, a
        symbolic link loop, partway through a move aside (see `being_replaced`), or no run at all."""
        check_no_link_loop(self.path)
        if not self.path.exists():
            raise ValueError(f"run folder {self.path} does not exist: give the folder a train script made, e.g. runs/<run-name>")
        if self.being_replaced():  # before the config.json check: config.json may be the part moved aside
            raise ValueError(self.replacement_state())
        if not self.is_run():
            raise ValueError(f"{self.path} is not a grokmath run folder (no {CONFIG}): "
                             "give a folder made by scripts/train_*.py")

    # making and replacing (see prepare_runs) ------------------------------------------------
    def _entries(self) -> set[str]:
        """What the folder holds besides the lock and a run being replaced."""
        return set(os.listdir(self.path)) - {LOCK, REPLACED, REPLACING}

    def _leftovers_only(self) -> bool:
        """Nothing but temporary files and an empty checkpoints/: a start killed before config.json."""
        for name in self._entries():
            if name == CHECKPOINTS and self.checkpoint_dir.is_dir():
                if not all(_is_tmp(n) for n in os.listdir(self.checkpoint_dir)):
                    return False
            elif not _is_tmp(name):
                return False
        return True

    def is_unstarted(self) -> bool:
        """A run stopped before its first resumable state: it holds only what a start writes
        (config.json, group.json, a metrics.csv without rows, checkpoints/model_000000.pt), so
        replacing it loses nothing."""
        if not self.is_run() or self.state_steps():
            return False
        for name in self._entries():
            if name == CHECKPOINTS:
                if not self.checkpoint_dir.is_dir() or any(
                        n != "model_000000.pt" and not _is_tmp(n) for n in os.listdir(self.checkpoint_dir)):
                    return False
            elif name not in (CONFIG, GROUP, METRICS) and not _is_tmp(name):
                return False
        if self.metrics_path.exists():
            try:
                rows = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError):
                return False
            if len(rows) > 1:
                return False
        return True

    # A move aside (prepare_runs: `_move_aside`; back: `recover`), every state a kill can leave:
    #  forward   1 .replacing/ made, empty, the run whole at the top   -> readable; a writer removes .replacing/
    #            2 some entries in .replacing/, the rest at the top    -> being replaced; a writer puts them back
    #            3 all entries in .replacing/                          -> the same
    #            4 .replacing/ renamed .replaced/; then the new run's config.json, metrics.csv, model_000000.pt
    #                                                                  -> being replaced; a writer puts it back
    #            5 the new run's first state written, .replaced/ (partly) still there
    #                                                                  -> the new run, readable; a writer deletes .replaced/
    #  back      6 the new run's entries removed (some or all), .replaced/ whole  -> as 4
    #            7 .replaced/ renamed .replacing/; entries moved back one by one  -> as 2
    #            8 all back, .replacing/ empty                          -> as 1
    def moving_entries(self) -> list[str]:
        """What .replacing/ holds: the entries of a run caught partway through a move aside (either way)."""
        moving = self.path / REPLACING
        return sorted(os.listdir(moving)) if moving.is_dir() else []

    def needs_recovery(self) -> bool:
        """Whether a move aside was left behind (any state above): the next writer finishes or undoes it."""
        return (self.path / REPLACED).exists() or (self.path / REPLACING).exists()

    def being_replaced(self) -> bool:
        """Whether the folder's run is not whole at its top: entries in .replacing/ (a move either way,
        stopped), or a run in .replaced/ whose replacement has no resumable state yet."""
        if self.moving_entries():
            return True
        return (self.path / REPLACED).exists() and not self.state_steps()

    def replacement_state(self) -> str:
        """What a reader is told about a folder that is being_replaced, and what recovers it."""
        if self.moving_entries():
            return (f"{self.path} is partway through moving its run aside (an --overwrite, or the undoing of one, "
                    f"was stopped): its files are split between {self.path} and {self.path / REPLACING}; --resume "
                    f"{self.path} puts them back and continues it (the --overwrite command again replaces it)")
        return (f"{self.path} is being replaced by a run that has no checkpoint yet (or one stopped before its "
                f"first): the run it replaces is in {self.path / REPLACED}; --resume {self.path} puts it back and "
                "continues it (the --overwrite command again replaces it)")

    def check_replaceable(self, overwrite: bool) -> str:
        """What making a run here would do, 'new' (nothing there, or an empty folder), 'unstarted'
        (see is_unstarted) or 'run' (an existing run, replaced only with overwrite); raises when
        it may not. Reads only."""
        if not self.path.exists():
            return "new"
        if not self.path.is_dir():
            raise ValueError(f"{self.path} exists and is not a folder: choose another --run-name or --out")
        if self.being_replaced():  # a replacement killed before its first state: the old run is still here
            kind = "run"
        elif self._leftovers_only():
            return "new"
        elif not self.is_run():
            raise ValueError(f"{self.path} exists and is not a grokmath run folder: choose another --run-name or --out")
        else:
            kind = "unstarted" if self.is_unstarted() else "run"
        if kind == "run":
            refuse_existing(self.path, overwrite, "pass --overwrite to replace it, --run-name to choose another "
                            f"name, or --resume {self.path} to continue it")
        return kind

    def lock(self) -> None:
        """Become the folder's one writer (making the folder if needed) until unlock() or the end of
        this process, however it ends (an flock, which the kernel drops with the process)."""
        check_no_link_loop(self.path)
        key = _key(self.path)
        if key in _HELD:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            _HELD[key] = -1
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(f"{self.path} is in use: another grokmath process (pid {holder}) is writing it; wait for "
                           f"it to finish, or stop it (kill {holder}) and resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = fd

    def unlock(self) -> None:
        fd = _HELD.pop(_key(self.path), None)
        if fd is not None and fd >= 0:
            os.close(fd)  # closing the file drops the flock

    def check_not_in_use(self) -> None:
        """Refuse (RunInUse) when another process holds the folder's lock; takes nothing."""
        path = self.path / LOCK
        if fcntl is None or _key(self.path) in _HELD or not path.is_file():
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise RunInUse(f"{self.path} is in use: another grokmath process (pid {holder}) is writing it; wait for "
                           f"it to finish, or stop it (kill {holder}) and resume") from None
        finally:
            os.close(fd)

    def recover(self) -> None:
        """Under the lock: finish what a killed writer left half done (every state listed above). A
        replaced run whose replacement reached its first state is deleted; otherwise it is put back
        (the unstarted replacement's files go). Stale temporary files of the writer's own files are
        removed. A signal meanwhile waits until the run is whole (signals_deferred)."""
        aside, moving = self.path / REPLACED, self.path / REPLACING
        with signals_deferred():
            if aside.exists() and moving.exists():  # no state of ours: someone moved things by hand
                raise ValueError(f"{self.path} holds both {REPLACED} and {REPLACING}: put the run's files back at the "
                                 "top of the folder by hand, then remove both")
            if aside.is_dir():
                if self.state_steps():
                    shutil.rmtree(aside)
                else:
                    for name in sorted(self._entries()):
                        _remove(self.path / name)
                    os.replace(aside, moving)
            if moving.is_dir():  # entries of the old run; the rest of it (if any) is at the top
                for name in sorted(os.listdir(moving)):
                    if os.path.lexists(self.path / name):  # never by our moves: keep both, say so
                        raise ValueError(f"{self.path / name} and {moving / name} both exist: keep the one the run "
                                         f"needs at the top of the folder, delete the other, and remove {moving}")
                    os.replace(moving / name, self.path / name)
                moving.rmdir()
        for folder, names in ((self.path, _WRITER_FILES), (self.checkpoint_dir, None)):
            if folder.is_dir():
                for name in os.listdir(folder):
                    if _is_tmp(name) and (names is None or any(name.startswith(f".{n}.") for n in names)):
                        (folder / name).unlink(missing_ok=True)

    def _move_aside(self) -> None:
        """Move the run's files into .replaced/ (first .replacing/, renamed once all are in); a signal
        meanwhile waits until the move is done (and prepare_runs then moves them back)."""
        moving = self.path / REPLACING
        with signals_deferred():
            moving.mkdir()
            for name in sorted(self._entries()):
                os.replace(self.path / name, moving / name)
            os.replace(moving, self.path / REPLACED)

    def _clear(self) -> None:
        """Remove what an unstarted run (or a start killed before config.json) left."""
        for name in self._entries():
            _remove(self.path / name)


def check_run_name(path) -> None:
    """A run folder is a plain folder inside its parent: not '', '.' or '..' (with --overwrite those
    would replace the parent's runs), and not a symbolic link that loops."""
    if Path(path).name in ("", ".", ".."):
        raise ValueError(f"{path} is not a run folder name: a run name is one plain folder name (no '/', not '.' "
                         "or '..')")
    check_no_link_loop(path)


def abandon_runs(runs: list[RunFolder]) -> bool:
    """After a failure: each run that has no resumable state yet is undone (its files removed, the
    folder too if this process made it, a run it was replacing put back); runs with a state are
    kept. Unlocks them all. Returns whether every run was kept. A signal meanwhile waits until all
    are undone (signals_deferred)."""
    kept = True
    with signals_deferred():
        for run in runs:
            try:
                if run.path.is_dir() and not run.state_steps() and _key(run.path) in _HELD:
                    kept = False
                    if run.needs_recovery():
                        run.undone = True
                        run.recover()
                    elif run.written or run.created:  # what this process made, and nothing else
                        run.undone = True
                        if run.written:
                            run._clear()
                        if run.created:
                            (run.path / LOCK).unlink(missing_ok=True)
                            try:
                                run.path.rmdir()
                            except OSError:  # someone put something there meanwhile: leave it
                                pass
            finally:
                run.unlock()
    return kept


def unlock_runs(runs: list[RunFolder]) -> None:
    for run in runs:
        run.unlock()

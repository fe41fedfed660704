"""Files written whole or not at all, and checkpoints read back safely.

- `atomic_write_text/json`, `atomic_torch_save`, `atomic_copy`: write to a temporary file beside the
  target (its name carries the writer's pid, so one a dead process left is recognised and removed
  by the next write of that file), then rename it into place: a crash mid-write leaves the previous
  good file. A write that fails (a full disk: an OSError, or torch.save's RuntimeError over it)
  raises WriteFailed, one line naming the file and why.
- Checkpoints carry a SHA-256 of their bytes in the zip archive's end comment (torch.save writes a
  zip; torch.load ignores the comment, so they stay plain torch.load files).
- `safe_load(path)`: checks the checksum (a file written before checksums existed: the CRC-32 zip
  keeps per member), then `torch.load(..., weights_only=True)`. A damaged file raises CheckpointError
  saying so (never "pickled code"); an intact one carrying pickled code raises UnsafeCheckpoint and is
  never executed; torch's own warnings about odd pickles are kept from the user's terminal.
- `refuse_existing`: the one "exists: pass --overwrite" check of every script.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, unsafe, or for another model)."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint whose bytes are intact but which holds pickled code: refused, never a fallback."""


class WriteFailed(OSError):
    """A file could not be written (e.g. the disk is full); the file it was to replace is unchanged."""


def _write_failure(error: BaseException) -> tuple[str, int | None] | None:
    """(why, errno) when `error` is a failed write: an OSError, or the RuntimeError torch.save raises
    over one ('[enforce fail at inline_container.cc...]'); None for anything else (a bug)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen) or type(seen).__name__, seen.errno
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    if isinstance(error, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        return f"torch.save could not write it: {text.splitlines()[0]}", None
    return None


# ---- atomic writes -------------------------------------------------------------------------

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_stale_tmp(path: Path) -> None:
    """Remove the temporary files of `path` that a dead process left (their names carry its pid)."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                try:
                    os.unlink(path.parent / name)
                except OSError:
                    pass


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path` (opened for writing and reading), then
    rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = None if isinstance(e, WriteFailed) else _write_failure(e)
        if failure is not None:
            failed = WriteFailed(f"could not write {path} ({failure[0]})")
            failed.errno = failure[1]
            raise failed from None
        raise


# The checksum: torch.save writes a zip archive; its end record (the last 22 bytes) may carry a
# comment, which torch.load ignores. grokmath's comment is the SHA-256 of every byte before the
# comment's length field, so any change to the archive shows, and the file stays a torch.load file.
_ZIP_START, _ZIP_END = b"PK\x03\x04", b"PK\x05\x06"
_SUM_TAG = b"grokmath-sha256:"
_SUM_LEN = len(_SUM_TAG) + 64


def _sha256(f, n_bytes: int) -> str:
    f.seek(0)
    digest = hashlib.sha256()
    while n_bytes > 0:
        chunk = f.read(min(1 << 22, n_bytes))
        if not chunk:
            break
        digest.update(chunk)
        n_bytes -= len(chunk)
    return digest.hexdigest()


def _save_with_checksum(obj, f) -> None:
    torch.save(obj, f)
    f.flush()
    size = f.tell()
    f.seek(size - 22)
    end = f.read(22)
    assert end[:4] == _ZIP_END and end[-2:] == b"\0\0", "torch.save no longer ends its file with a bare zip end record"
    digest = _sha256(f, size - 2)
    f.seek(size - 2)
    f.write(_SUM_LEN.to_bytes(2, "little") + _SUM_TAG + digest.encode())


def atomic_torch_save(obj, path) -> None:
    """torch.save, atomically, with a checksum of the file's bytes (checked by safe_load)."""
    atomic_write(path, lambda f: _save_with_checksum(obj, f))


def _damaged(path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged or truncated ({why}); use an earlier checkpoint")


def _checksum(path: Path) -> bool:
    """True when the file carries a checksum that matches it, False for a zip without one (written
    before checkpoints had them); anything else raises CheckpointError."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if f.read(4) != _ZIP_START:
            raise _damaged(path, "it does not start as a torch.save file does")
        if size >= 4 + 22 + _SUM_LEN:
            f.seek(size - 22 - _SUM_LEN)
            end = f.read()
            if end[:4] == _ZIP_END and end[20:22] == _SUM_LEN.to_bytes(2, "little") and end[22:].startswith(_SUM_TAG):
                if _sha256(f, size - _SUM_LEN - 2).encode() != end[22 + len(_SUM_TAG):]:
                    raise _damaged(path, "its bytes do not match its checksum")
                return True
        f.seek(max(0, size - 22))
        end = f.read()
        if len(end) == 22 and end[:4] == _ZIP_END and end[20:22] == b"\0\0":
            return False
        raise _damaged(path, "its end record is missing or altered")


def _zip_crcs_hold(path: Path) -> bool:
    """Whether every member of a zip file matches its CRC-32 (zip's own per-member checksum)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except Exception:  # any failure to read it back is damage
        return False


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_copy(source, path) -> None:
    """Copy a file so that `path` is the old file or the whole copy, never part of one."""
    def write(f):
        with open(source, "rb") as original:
            shutil.copyfileobj(original, f)

    atomic_write(path, write)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def refuse_existing(paths, overwrite: bool, fix: str = "pass --overwrite to replace it") -> None:
    """The one check before writing outputs: an existing path is an error (saying `fix`) unless overwrite."""
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        if Path(path).exists() and not overwrite:
            raise ValueError(f"{path} already exists: {fix}")


# ---- safe loading --------------------------------------------------------------------------

def safe_load(path, map_location="cpu"):
    """torch.load with weights_only=True, after checking the file's checksum (a file written before
    checksums existed: the CRC-32 zip keeps of each member); a bad file raises CheckpointError
    saying what is wrong, an intact one holding pickled code UnsafeCheckpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file: move it out of checkpoints/")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path or list the run's checkpoints/")
    if path.stat().st_size == 0:
        raise _damaged(path, "it is empty, 0 bytes")
    if not _checksum(path) and not _zip_crcs_hold(path):  # no checksum of ours: zip's own per-member CRCs
        raise _damaged(path, "its bytes do not match their CRC-32")
    try:
        with warnings.catch_warnings():  # torch's warnings about odd pickles: the user sees our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # intact bytes (checked above): really a pickle with code
        # weights_only refuses any pickle that would import or call code
        reason = str(e).strip().splitlines()
        raise UnsafeCheckpoint(
            f"refusing to load {path}: it holds pickled code or objects other than tensors and plain "
            f"values ({reason[-1] if reason else 'unsafe pickle'}); only load checkpoints written by grokmath"
        ) from None
    except Exception as e:  # torch.load is a parser: whatever else it raises, the file is unusable
        raise _damaged(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}") from None

"""Files: atomic writes (never seen half-written, never through a link), safe reads of tensors, checksums and
the run folder's lock; the floor every writer stands on.

- A file is written to a temporary file in the same folder, flushed, fsynced and renamed over the target, then
  the folder is fsynced: a crash or a full disk leaves the previous file intact. Renaming replaces a symbolic
  link itself, never the file it points to; a folder that is a link is refused (:func:`refuse_link`). The new
  file gets the permissions of the process's umask (``0666 & ~umask``), as an ordinary ``open`` would.
- Tensors are read with ``torch.load(weights_only=True)``, so no pickled code runs; :func:`tensor_checksum`
  (sha256 of names, dtypes, shapes and bytes) is stored with checkpoints and saved models and verified on load,
  so a flipped bit is refused rather than loaded.
- :func:`append_line` adds a line to a log file (a run's ``train.log``), never through a link.
- :class:`RunLock` keeps a second writer out of a run folder (an advisory ``flock`` on ``.lock``); :func:`lock_held`
  asks, without writing anything, whether a writer holds it (a run still training).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["atomic_write", "atomic_save", "write_json", "append_line", "load_tensors", "refuse_link",
           "tensor_checksum", "RunLock", "RunLocked", "lock_held", "describe_write_error", "is_write_failure"]


def refuse_link(path: str | os.PathLike) -> Path:
    """Refuse to write into or through a symbolic link (it may point outside the run folder).

    :returns: ``path``.
    :raises ValueError: if ``path`` is a link.
    """
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}); pyro-vae does not write through "
                         "links: remove it, or choose another folder")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write a file so that it is never seen half-written: ``write(f)`` to a temporary file in the same folder,
    fsync, rename over ``path``, fsync the folder. On any error the previous file is left intact."""
    path = Path(path)
    refuse_link(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the permissions open() would
        os.replace(tmp, path)  # replaces a link itself, never its target
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        stop = _stop_behind(e)
        if stop is not None:  # a signal inside torch.save surfaces as its failed write: the stop it is
            raise stop from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _stop_behind(e: BaseException) -> BaseException | None:
    """The stop (Ctrl-C, SIGTERM: a ``BaseException`` that is no ``Exception``) that ``e`` was raised while
    handling, when ``e`` is an error it caused (torch's writer fails with "unexpected pos" when a signal's exception
    interrupts ``torch.save``); None otherwise."""
    seen, cause = set(), e.__context__
    while isinstance(e, Exception) and cause is not None and id(cause) not in seen:
        if not isinstance(cause, Exception):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), binary=False)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log file, created if missing. A symbolic link at ``path`` is replaced by a new file (its
    target is never written, as with :func:`atomic_write`); a folder that is a link is refused."""
    path = Path(path)
    refuse_link(path.parent)
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "a") as f:
        f.write(line.rstrip("\n") + "\n")


def load_tensors(path: str | os.PathLike, what: str = "pyro-vae checkpoint") -> Any:
    """Load a file written by :func:`atomic_save` with ``torch.load(weights_only=True)``: no pickled code runs.

    :raises IsADirectoryError: if ``path`` is a folder (named so: "no checkpoint" would mislead).
    :raises FileNotFoundError: if there is no such file.
    :raises ValueError: if torch refuses it (corrupt, or not a safe file).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what}: move it away (or restore the file from a copy)")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (and others) for unsafe or corrupt files
        raise ValueError(f"{path} is not a valid {what} (refused by torch.load(weights_only=True): "
                         f"{type(e).__name__}); it may be corrupt or not a safe file") from e


def tensor_checksum(tensors: dict[str, Any]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a (nested) dict of tensors, in sorted order."""
    digest = hashlib.sha256()

    def feed(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                feed(f"{prefix}/{key}", value[key])
        elif torch.is_tensor(value):
            t = value.detach().cpu().contiguous()
            digest.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    feed("", tensors)
    return digest.hexdigest()


#: what torch's stream writer says when the bytes did not reach the disk (a full disk, a vanished folder)
_WRITE_FAILURE_MARKS = ("file write failed", "unexpected pos", "PytorchStreamWriter failed")


def is_write_failure(e: BaseException) -> bool:
    """An ``OSError``, or torch's ``RuntimeError`` for bytes that could not be written; any other
    ``RuntimeError`` (a bug, an unpicklable object) is not a write failure and is not described as one."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(m in str(e) for m in _WRITE_FAILURE_MARKS))


def describe_write_error(e: BaseException) -> str:
    """Why a write failed, in words: a full disk also shows as torch's ``RuntimeError`` from ``torch.save``."""
    if isinstance(e, OSError):
        return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "the folder is not writable",
                errno.EPERM: "the folder is not writable"}.get(e.errno, e.strerror or str(e))
    return f"the write failed ({str(e).splitlines()[0][:200]}): the disk is probably full"


class RunLocked(OSError, RuntimeError):
    """Another process holds the run folder (an ``OSError``, as a busy resource is)."""


_HELD: dict[str, list[Any]] = {}


class RunLock:
    """An exclusive advisory lock on a run folder (``flock`` on ``folder/.lock``), re-entrant within a process.

    A second process that tries to write the same folder (another ``pyro-vae train``, a ``--resume`` beside a
    running train) is refused at once with :class:`RunLocked`, before it writes anything.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.key = str(self.folder.resolve())

    def __enter__(self) -> "RunLock":
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
            return self
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        refuse_link(self.folder / ".lock")
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunLocked(f"another process is writing the run folder {self.folder} (it holds {self.folder}/.lock):"
                            " wait for it to finish, or choose another folder") from None
        _HELD[self.key] = [fd, 1]
        return self

    def __exit__(self, *exc: Any) -> None:
        held = _HELD[self.key]
        held[1] -= 1
        if held[1] == 0:
            import fcntl

            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])
            del _HELD[self.key]


def lock_held(folder: str | os.PathLike) -> bool:
    """Whether a writer holds the :class:`RunLock` of ``folder`` (a run still training), asked without creating or
    writing anything (a read-only run folder can be asked): a shared ``flock`` on ``.lock`` that cannot be had at
    once means another open of it holds the exclusive one, in this process or another."""
    folder = Path(folder)
    if str(folder.resolve()) in _HELD:
        return True
    path = folder / ".lock"
    if not path.is_file() or path.is_symlink():
        return False
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the shared lock, if it was had
    return False

"""Files: atomic writes (never seen half-written) and safe reads of tensors; the floor every writer stands on.

A file is written to a temporary file in the same folder, flushed, fsynced and renamed over the target, then
the folder is fsynced: a crash or a full disk leaves the previous file intact. Tensors are read with
``torch.load(weights_only=True)``, so no pickled code runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["atomic_write", "atomic_save", "write_json", "load_tensors"]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write a file so that it is never seen half-written: ``write(f)`` to a temporary file in the same folder,
    fsync, rename over ``path``, fsync the folder. On any error the previous file is left intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), binary=False)


def load_tensors(path: str | os.PathLike, what: str = "pyro-vae checkpoint") -> Any:
    """Load a file written by :func:`atomic_save` with ``torch.load(weights_only=True)``: no pickled code runs.

    :raises FileNotFoundError: if there is no such file.
    :raises ValueError: if torch refuses it (corrupt, or not a safe file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (and others) for unsafe or corrupt files
        raise ValueError(f"{path} is not a valid {what} (refused by torch.load(weights_only=True): "
                         f"{type(e).__name__}); it may be corrupt or not a safe file") from e

"""CPU threads: how many torch intra-op threads a run takes, and a block that uses that many.

More threads than free cores do not slow training a little, they collapse it: OpenMP's workers spin and wait on
one another while the other processes hold the cores. Measured (``benchmarks/threads.py``, ``docs/benchmarks.md``):
on 2 cores with one other busy process, 2 threads trained at 0.30 of 1 thread's speed (3,818 against 12,584
images/s); on 16 cores with 16 busy processes, 16 threads at 0.02 (236 against 13,251). :func:`free_cores` is
the default everywhere (``pyro_vae.fit(num_threads="auto")``, ``pyro-vae train --num-threads auto``): all the
cores of an idle machine, fewer as the load average grows.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["free_cores", "resolve_threads", "torch_threads"]


def free_cores() -> int:
    """The cores this process may use without competing: the cores it may run on (shared among the processes of
    one ``torchrun`` node) less the machine's one-minute load average, at least one.

    :returns: a whole number >= 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def resolve_threads(value: str | int | None, name: str = "num_threads") -> int | None:
    """``"auto"`` -> :func:`free_cores`; a whole number >= 1 -> itself; None -> None (leave torch's setting).

    :raises ValueError: naming ``name`` for anything else.
    """
    if value is None:
        return None
    if value == "auto":
        return free_cores()
    try:
        n = int(value)
        ok = not isinstance(value, bool) and n >= 1 and float(value) == n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer or 'auto', got {value!r}")
    return n


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use ``num_threads`` intra-op threads inside the block, torch's previous setting restored afterwards (None:
    leave it as it is)."""
    previous = torch.get_num_threads()
    if num_threads is not None and num_threads != previous:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)

"""CPU threads: how many torch intra-op threads a run takes, and a block that uses that many.

More threads than free cores do not slow training a little, they collapse it: OpenMP's workers spin and wait on
one another while the other processes hold the cores. Measured (``benchmarks/threads.py``, ``docs/benchmarks.md``):
on 2 cores with one other busy process, 2 threads trained at 0.30 of 1 thread's speed (3,818 against 12,584
images/s); on 16 cores with 16 busy processes, 16 threads at 0.02 (236 against 13,251). :func:`free_cores` is
the default everywhere (``pyro_vae.fit(num_threads="auto")``, ``pyro-vae train --num-threads auto``): all the
cores of an idle machine, fewer while other processes keep them busy.

**The rule counts other processes only.** :func:`other_demand` is the number of threads of *other* processes
that are running or waiting for a core right now: the kernel's count of runnable threads (the fourth field of
``/proc/loadavg``) less this process's own runnable threads (``/proc/self/task/*/stat``) and those of its
children and their descendants (``/proc/<pid>/task/*/children``), the median of three readings. It never counts
this process's own work, past or present (the one-minute load average did: a second ``fit`` right after a first
one, an evaluation or data loading, took one thread on an idle machine), and it sees a competitor that started a
moment ago (the load average takes a minute to see it). ``fit`` re-checks it at each epoch (:func:`adapt_threads`),
so a run gives cores back when a competitor comes and takes them again when it goes; a check reads a few small
``/proc`` files, about 0.3 ms on a 2-core machine (``benchmarks/threads.py --check-cost``), next to epochs of seconds.
Under ``torchrun`` the cores are shared among the node's ranks (``LOCAL_WORLD_SIZE``); the sibling ranks (the
other children of this process's parent) are not counted as competitors, they have their share. Where ``/proc``
cannot be read (not Linux), the rule falls back to the one-minute load average (which counts this process too).
"""

from __future__ import annotations

import contextlib
import os
import statistics
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["free_cores", "other_demand", "adapt_threads", "resolve_threads", "torch_threads"]

#: where the kernel's process information is read (tests point it at a fake tree)
PROC = Path("/proc")
#: readings of the runnable count per check; their median is taken (a single reading is a snapshot)
READINGS = 3


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least one."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_ranks() -> int:
    """The processes ``torchrun`` started on this node (``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _runnable_threads(pid: str) -> int:
    """Threads of process ``pid`` in state R (running or waiting for a core); 0 for a process that has gone."""
    count = 0
    try:
        tasks = list((PROC / pid / "task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
        if fields and fields[0] == "R":
            count += 1
    return count


def _children(pid: str) -> list[str]:
    """The pids of the children of process ``pid`` (every thread's), [] when the kernel does not list them."""
    out: list[str] = []
    try:
        tasks = list((PROC / pid / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += (task / "children").read_text().split()
        except OSError:
            continue
    return out


def _descendants(pid: str) -> list[str]:
    """``pid``'s children, their children and so on."""
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        if child not in found:
            found.append(child)
            todo += _children(child)
    return found


def _own_processes() -> list[str]:
    """This process and its descendants, and under torchrun the sibling ranks (the other children of its parent)
    with theirs."""
    me = str(os.getpid())
    own = [me, *_descendants(me)]
    if local_ranks() > 1:
        for sibling in _children(str(os.getppid())):
            if sibling not in own:
                own += [sibling, *_descendants(sibling)]
    return own


def _system_runnable() -> int:
    """The kernel's count of runnable threads, machine-wide (``/proc/loadavg``'s ``running/total`` field)."""
    return int((PROC / "loadavg").read_text().split()[3].split("/")[0])


def other_demand() -> float:
    """Threads of other processes running or waiting for a core now (see the module's docstring): the median over
    :data:`READINGS` readings of the machine's runnable threads less this process's own, its descendants' and
    (under torchrun) its sibling ranks'.

    :returns: a number >= 0.
    :raises OSError: where ``/proc`` cannot be read.
    """
    readings = []
    own = _own_processes()  # one walk of the process tree for the readings (a check costs it once)
    for _ in range(READINGS):
        before = sum(_runnable_threads(pid) for pid in own)
        total = _system_runnable()
        after = sum(_runnable_threads(pid) for pid in own)
        readings.append(max(0, total - max(before, after)))  # our own threads may wake between the readings
    return float(statistics.median(readings))


def free_cores() -> int:
    """The cores this process may use without competing: its share of the cores it may run on (shared among the
    ranks of one ``torchrun`` node) less its share of the other processes' demand (:func:`other_demand`; where
    ``/proc`` cannot be read, the one-minute load average), at least one.

    :returns: a whole number >= 1.
    """
    ranks = local_ranks()
    cores = max(1, available_cores() // ranks)
    try:
        busy = other_demand() / ranks
    except (OSError, ValueError, IndexError):
        try:
            busy = os.getloadavg()[0] / ranks
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


def adapt_threads(value: str | int | None) -> None:
    """With ``value == "auto"``, set torch's intra-op threads to :func:`free_cores` now (``fit`` calls it at the
    start of each epoch, inside :func:`torch_threads`, which restores the caller's setting); otherwise nothing."""
    if value == "auto":
        n = free_cores()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)


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

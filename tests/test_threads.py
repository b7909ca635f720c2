"""The thread rule (:mod:`pyro_vae.threads`): other processes' demand for the cores, never this process's own.

The rule reads ``/proc``; the deterministic tests point it at a fake tree (:data:`pyro_vae.threads.PROC`), so the
result does not depend on the machine's load. One test starts a real busy process (not a child of this one) and
checks that the rule sees it a second later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyro_vae
from pyro_vae import threads

_REAL_FREE_CORES = threads.free_cores  # the suite's autouse fixture replaces it by a constant in each test
linux = pytest.mark.skipif(not Path("/proc/loadavg").exists() or not hasattr(os, "sched_getaffinity"),
                           reason="needs Linux's /proc")


def _process(root: Path, pid: int, states: list[str], children: list[int] = ()) -> None:
    """A fake /proc/<pid> with one task per state (the first task lists the children)."""
    for i, state in enumerate(states):
        task = root / str(pid) / "task" / str(pid + i)
        task.mkdir(parents=True)
        (task / "stat").write_text(f"{pid + i} (py thon) {state} 1 2 3 4\n")
        (task / "children").write_text(" ".join(str(c) for c in children) + " " if i == 0 and children else "")


def fake_proc(tmp_path: Path, running: int, own: list[str], others: dict[int, list[str]] | None = None,
              children: dict[int, list[str]] | None = None, load1: float = 2.0, parent_children: list[int] = ()):
    """A fake /proc: ``running`` runnable threads machine-wide, this process's threads in states ``own``, its
    children, other processes, a high one-minute load average (this process's own past work) that the rule must
    ignore."""
    root = tmp_path / "proc"
    me, parent = os.getpid(), os.getppid()
    root.mkdir(parents=True)
    (root / "loadavg").write_text(f"{load1:.2f} {load1:.2f} {load1:.2f} {running}/300 12345\n")
    _process(root, me, own, list(children or {}))
    for pid, states in (children or {}).items():
        _process(root, pid, states)
    for pid, states in (others or {}).items():
        _process(root, pid, states)
    _process(root, parent, ["S"], list(parent_children))
    return root


@pytest.fixture
def rule(monkeypatch):
    """The real rule (the suite's autouse fixture replaces free_cores by a constant), on 2 cores."""
    monkeypatch.setattr(threads, "free_cores", _REAL_FREE_CORES)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return threads


def test_own_threads_and_children_are_not_demand(rule, monkeypatch, tmp_path):
    """Three of this process's threads and a child's thread run, a fourth thread sleeps; the load average is high
    from this process's own past work: nobody else wants a core, so every core is free."""
    monkeypatch.setattr(threads, "PROC", fake_proc(tmp_path, running=4, own=["R", "R", "R", "S"],
                                                   children={900001: ["R"]}, load1=3.0))
    assert threads.other_demand() == 0
    assert threads.free_cores() == 2


def test_other_processes_runnable_threads_are_demand(rule, monkeypatch, tmp_path):
    monkeypatch.setattr(threads, "PROC", fake_proc(tmp_path, running=3, own=["R", "S"],
                                                   others={900002: ["R", "R"]}, load1=0.0))
    assert threads.other_demand() == 2
    assert threads.free_cores() == 1  # at least one


def test_two_back_to_back_fits_both_get_every_core(rule, monkeypatch, tmp_path, digits):
    """The first fit's work (and any before it) raises the load average; the second call still gets every core,
    at the start and at each later epoch."""
    monkeypatch.setattr(threads, "PROC", fake_proc(tmp_path, running=2, own=["R", "R", "S"], load1=2.5))
    seen = []
    for _ in range(2):
        vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,))
        pyro_vae.fit(vae, torch.bernoulli(digits[:40]), epochs=2, batch_size=20, progress=False,
                     on_epoch_end=lambda record: seen.append(torch.get_num_threads()))
    assert seen == [2, 2, 2, 2]


def test_fit_rechecks_at_each_epoch(rule, monkeypatch, tmp_path, digits):
    """A competitor that comes during a run takes a core from the next epoch on; when it goes, the core returns."""
    idle = fake_proc(tmp_path / "a", running=1, own=["R"])
    busy = fake_proc(tmp_path / "b", running=2, own=["R"], others={900003: ["R"]})
    plan = iter([idle, busy, idle])
    monkeypatch.setattr(threads, "PROC", next(plan))
    seen = []

    def record(_):
        seen.append(torch.get_num_threads())
        monkeypatch.setattr(threads, "PROC", next(plan, idle))

    pyro_vae.fit(pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,)), torch.bernoulli(digits[:40]), epochs=3,
                 batch_size=20, progress=False, on_epoch_end=record)
    assert seen == [2, 1, 2]


def test_torchrun_shares_the_cores_among_local_ranks(rule, monkeypatch, tmp_path):
    """Under torchrun each of the node's ranks takes its share of the cores; the sibling ranks (the other children
    of this process's parent) are not competitors, other processes are, spread over the ranks."""
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    siblings = {900010 + i: ["R", "R", "R", "R"] for i in range(3)}
    monkeypatch.setattr(threads, "PROC", fake_proc(tmp_path / "a", running=16, own=["R"] * 4, others=siblings,
                                                   parent_children=[os.getpid(), *siblings]))
    assert threads.free_cores() == 4
    others = {**siblings, 900020: ["R"] * 4}
    monkeypatch.setattr(threads, "PROC", fake_proc(tmp_path / "b", running=20, own=["R"] * 4, others=others,
                                                   parent_children=[os.getpid(), *siblings]))
    assert threads.free_cores() == 3  # 4 other threads over 4 ranks: one core less each
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert threads.free_cores() == 1


def test_without_proc_the_load_average_is_the_fallback(rule, monkeypatch, tmp_path):
    monkeypatch.setattr(threads, "PROC", tmp_path / "missing")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert threads.free_cores() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.free_cores() == 2


@linux
def test_a_busy_process_started_a_second_before_is_seen(rule, monkeypatch):
    """A real competitor (a busy loop, started through a shell so that it is not this process's child) is counted
    one second after it started; the one-minute load average would take a minute to see it."""
    monkeypatch.setattr(threads, "available_cores", lambda: len(os.sched_getaffinity(0)))
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
    shell = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{spin}" >/dev/null 2>&1 & echo $!'],
                           capture_output=True, text=True, check=True)
    pid = int(shell.stdout.split()[0])
    try:
        time.sleep(1.0)
        assert str(pid) not in threads._own_processes()
        assert threads.other_demand() >= 1
        cores = threads.available_cores()
        assert threads.free_cores() <= max(1, cores - 1)
    finally:
        os.kill(pid, signal.SIGTERM)

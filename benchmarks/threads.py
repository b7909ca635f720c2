"""Training speed against the number of torch threads, on an idle machine and under competing processes.

What a user's ``pyro-vae train`` pays for its thread count: one epoch of ``pyro_vae.fit`` (the library VAE,
784-200-200-50, batch 100, dynamic binarization) on the first ``--train-size`` MNIST images, timed in a fresh
process for each setting so that no thread pool carries over, with 1 thread, half and all of the cores, and
``auto`` (what the CLI picks: :func:`pyro_vae.threads.free_cores`). Each setting runs on the idle machine and
again while ``--competitors`` other processes keep cores busy (busy Python loops, the situation of a shared
machine). Images per second are reported with the other processes' demand that ``auto`` saw
(:func:`pyro_vae.threads.other_demand`) and the load average at the start of each run; more threads than free cores
make OpenMP's workers wait on one another, so the busy rows show how far each setting collapses. ``--check-cost``
times one check of the rule (what ``fit`` pays at the start of each epoch with ``num_threads="auto"``).
Each process first trains on 200 images untimed: a fresh process's first ``fit`` pays once for the imports torch
makes at its first optimizer (about 2 s of ``torch._dynamo`` here), which a hand-written loop pays alike.

Usage::

    python benchmarks/threads.py --write-docs
    python benchmarks/threads.py --check-cost
    python benchmarks/threads.py --train-size 2000 --competitors 1 --smoke-test
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

from common import command_line, machine_info, machine_markdown, markdown_table, print_json, update_section, utc_date

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, os, sys, time, torch
sys.path.insert(0, {root!r})
threads = {threads!r}
from pyro_vae.threads import free_cores, other_demand
demand = other_demand()
n = free_cores() if threads == "auto" else int(threads)
torch.set_num_threads(n)
import pyro_vae
from pyro_vae import datasets
x = datasets.load("mnist", "train", root={root_data!r})[:{size}]
pyro_vae.fit(pyro_vae.VAE((1, 28, 28)), x[:200], epochs=1, batch_size=100, binarize=True, progress=False,
             device="cpu")  # warm-up
vae = pyro_vae.VAE((1, 28, 28))
load = os.getloadavg()[0]
t0 = time.perf_counter()
pyro_vae.fit(vae, x, epochs=1, batch_size=100, binarize=True, progress=False, seed=0, device="cpu")
print(json.dumps({{"threads": n, "seconds": time.perf_counter() - t0, "load": load, "other_demand": demand}}))
"""


def _spin(stop: "mp.synchronize.Event") -> None:  # a competing busy process
    while not stop.is_set():
        sum(range(10000))


def _run(threads: str, size: int, data: str, timeout: float) -> dict:
    """One epoch in a fresh process; a run past ``timeout`` seconds (a collapse) is recorded as that bound."""
    code = _CHILD.format(root=str(ROOT), threads=threads, root_data=data, size=size)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"threads": threads, "seconds": timeout, "load": os.getloadavg()[0], "timed_out": True}
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_cost(repeats: int = 2000) -> dict:
    """The time of one check of the thread rule (``free_cores()``, what ``fit`` pays per epoch), in this process."""
    sys.path.insert(0, str(ROOT))
    from pyro_vae.threads import free_cores

    free_cores()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats // 5):
            free_cores()
        times.append((time.perf_counter() - t0) / (repeats // 5))
    return {"benchmark": "threads", "metric": "check_seconds", "median": sorted(times)[2], "min": min(times),
            "free_cores": free_cores()}


def main(args: argparse.Namespace) -> None:
    if args.check_cost:
        print_json(check_cost())
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = ["1", str(max(1, cores // 2)), str(cores), "auto"] if cores > 2 else ["1", str(cores), "auto"]
    settings = list(dict.fromkeys(settings))
    data = args.data_root or os.environ.get("PYRO_VAE_DATA", str(ROOT.parent / "shared" / "data"))
    competitors = args.competitors if args.competitors is not None else cores
    rows = []
    for busy in (0, competitors):
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        if busy:
            time.sleep(args.settle)  # let them start (the rule sees them at once, the load average in a minute)
        try:
            for setting in settings:
                r = _run(setting, args.train_size, data, args.timeout)
                record = {"competing_processes": busy, "setting": setting, **r,
                          "images_per_s": args.train_size / r["seconds"]}
                print_json(record)
                rows.append(record)
        finally:
            stop.set()
            for p in spinners:
                p.join()
    if args.write_docs:
        best = {b: max(r["images_per_s"] for r in rows if r["competing_processes"] == b) for b in (0, competitors)}
        table = markdown_table(
            ["competing busy processes", "threads setting", "threads used", "others' demand seen",
             "load average at start", "images/s", "of the best setting"],
            [[r["competing_processes"], r["setting"], r["threads"], f"{r.get('other_demand', float('nan')):.1f}",
              f"{r['load']:.1f}",
              ("< " if r.get("timed_out") else "") + f"{r['images_per_s']:,.0f}",
              f"{r['images_per_s'] / best[r['competing_processes']]:.2f}"] for r in rows])
        body = (f"## Threads: training speed against the thread count, idle and under load\n\n"
                f"`{command_line()}` ({utc_date()}; {args.train_size} MNIST images, one epoch of `pyro_vae.fit`, "
                f"each setting in a fresh process; `auto` is what `pyro-vae train` picks, the free cores)\n\n"
                f"{machine_markdown(machine_info(device='cpu'))}\n\n{table}\n")
        update_section(f"threads-{cores}cores", body)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=10000, help="training images (default: 10000)")
    p.add_argument("--competitors", type=int, default=None, help="busy processes in the loaded runs (default: "
                                                                  "one per core)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between starting the competitors and the runs")
    p.add_argument("--check-cost", action="store_true", help="time one check of the thread rule and stop")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take (a collapse is cut there)")
    p.add_argument("--data-root", default=None, help="data folder (default: $PYRO_VAE_DATA, else ../shared/data)")
    p.add_argument("--write-docs", action="store_true", help="update this benchmark's section of docs/benchmarks.md")
    p.add_argument("--smoke-test", action="store_true", help="a tiny run (the tests run it)")
    a = p.parse_args()
    if a.smoke_test:
        a.train_size, a.competitors, a.settle = min(a.train_size, 300), 1, 0.5
    main(a)

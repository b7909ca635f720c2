"""Memory over time: a long ``fit`` on digits and a K = 5000 ``log_likelihood`` over a data set, sampling RSS.

Two measurements, each in this one process, on the CPU:

(a) ``--epochs`` epochs of :func:`pyro_vae.fit` on scikit-learn's digits (1200 training images, dynamic
    binarization, a checkpoint every epoch, validation every epoch), reading the resident set size (``VmRSS`` of
    ``/proc/self/status``) after every epoch. A leak shows as a steady rise; the figure is the growth from the
    end of the warm-up (``--warmup`` epochs, when allocator pools and caches have filled) to the last epoch, and
    the least-squares slope in MiB per 100 epochs over the same span.
(b) :func:`pyro_vae.infer.log_likelihood` with ``K = --num-particles`` importance samples over ``--eval-size``
    datapoints (digits' 1797 images, repeated to reach the size when larger), reading RSS between batches of
    ``--eval-batch-size`` datapoints. The particles are drawn in chunks, and only ``K`` log weights per
    datapoint are kept, so memory should stay flat across batches: the figures are the growth from the end of
    the first batch to the last, the highest sample above the first, and the peak above the baseline taken
    before the call.

Output: one JSON object (``print_json``) with the machine, the command, the samples and the figures.

Usage::

    python benchmarks/memory.py --smoke-test
    python benchmarks/memory.py --epochs 300 --eval-size 10000 --num-particles 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported from elsewhere (the tests do)
from common import command_line, machine_info, print_json, utc_date  # noqa: E402

import pyro_vae  # noqa: E402

MIB = 1024.0 * 1024.0


def rss_mib() -> float:
    """The resident set size of this process in MiB, from ``/proc/self/status`` (``VmRSS``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def _slope_per_100(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index, times 100."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(n))
    return 100.0 * num / den


def train_memory(epochs: int, warmup: int = 20, batch_size: int = 100, seed: int = 0) -> dict[str, Any]:
    """Train a digits VAE for ``epochs`` epochs and return RSS after every epoch with the growth figures."""
    x = pyro_vae.datasets.load("digits", "train-without-valid")
    val = pyro_vae.datasets.load("digits", "valid")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=8, hidden_dims=(128,))
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        pyro_vae.fit(vae, x, epochs=epochs, batch_size=batch_size, lr=3e-3, binarize=True, val_data=val,
                     checkpoint_dir=run, seed=seed, progress=False, device="cpu",
                     on_epoch_end=lambda record: samples.append(rss_mib()))
        seconds = time.perf_counter() - t0
    warmup = min(warmup, max(len(samples) - 2, 0))
    steady = samples[warmup:]
    return {
        "epochs": epochs, "warmup": warmup, "seconds": seconds, "rss_mib": [round(v, 2) for v in samples],
        "rss_after_warmup_mib": steady[0], "rss_last_mib": samples[-1], "rss_max_mib": max(samples),
        "growth_after_warmup_mib": samples[-1] - steady[0], "slope_mib_per_100_epochs": _slope_per_100(steady),
    }


def eval_memory(num_particles: int, size: int, batch_size: int = 100, seed: int = 0, latent_dim: int = 8,
                hidden_dims: tuple[int, ...] = (128,)) -> dict[str, Any]:
    """``log_likelihood`` with ``num_particles`` particles over ``size`` datapoints; RSS after every batch."""
    x = pyro_vae.datasets.load("digits", "train") if size <= 1500 else torch.cat(
        [pyro_vae.datasets.load("digits", s) for s in ("train", "test")])
    x = x.repeat((size + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:size]
    pyro.set_rng_seed(seed)
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=latent_dim, hidden_dims=hidden_dims)
    x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    baseline = rss_mib()
    samples: list[float] = []

    def transform(batch: torch.Tensor) -> torch.Tensor:  # called once per batch, before it is scored
        samples.append(rss_mib())
        return batch

    t0 = time.perf_counter()
    result = pyro_vae.infer.log_likelihood(vae.model, vae.guide, x, num_particles=num_particles,
                                           batch_size=batch_size, diagnostics=False, progress=False, seed=seed,
                                           transform=transform)
    seconds = time.perf_counter() - t0
    samples.append(rss_mib())
    return {
        "num_particles": num_particles, "datapoints": size, "batch_size": batch_size, "seconds": seconds,
        "log_likelihood": result.mean, "rss_baseline_mib": baseline, "rss_mib": [round(v, 2) for v in samples],
        "peak_above_baseline_mib": max(samples) - baseline,
        "growth_first_to_last_batch_mib": samples[-1] - samples[1] if len(samples) > 2 else 0.0,
        "last_above_early_max_mib": samples[-1] - max(samples[1:3]) if len(samples) > 2 else 0.0,
        "max_above_first_batch_mib": max(samples[1:]) - samples[1] if len(samples) > 2 else 0.0,
        "slope_mib_per_100_batches": _slope_per_100(samples[1:]),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke_test:
        args.epochs, args.warmup, args.eval_size, args.num_particles = 6, 2, 200, 500
    torch.set_num_threads(args.num_threads)
    out = {"benchmark": "memory", "date": utc_date(), "command": command_line(), "machine": machine_info(),
           "pid": os.getpid()}
    out["train"] = train_memory(args.epochs, warmup=args.warmup, seed=args.seed)
    out["evaluate"] = eval_memory(args.num_particles, args.eval_size, batch_size=args.eval_batch_size, seed=args.seed)
    print_json(out)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300, help="training epochs on digits (default: 300)")
    p.add_argument("--warmup", type=int, default=20, help="epochs left out of the growth figures (default: 20)")
    p.add_argument("--num-particles", type=int, default=5000, help="K of the evaluation (default: 5000)")
    p.add_argument("--eval-size", type=int, default=10000, help="datapoints evaluated (default: 10000)")
    p.add_argument("--eval-batch-size", type=int, default=100, help="datapoints per pass (default: 100)")
    p.add_argument("--num-threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true", help="a few seconds: 6 epochs, K=500 over 200 points")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

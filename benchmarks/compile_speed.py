"""Whole ``pyro_vae.fit`` calls with ``compile=True`` against ``compile=False``, and the time the IWAE paper's full
schedule would take at the measured step time.

The network is the IWAE paper's one-stochastic-layer VAE (784-200-200-50, tanh, Bernoulli likelihood) on
dynamically binarized MNIST, the single-sample ELBO, Adam (lr 1e-3). For each batch size, one ``VAE`` (its weights
carry over between calls) is trained by whole ``fit`` calls of ``--call-epochs`` epochs over ``--train-size``
images, ``compile=False`` and ``compile=True`` taking turns for ``--repeats`` rounds (the order rotating), so that
both see the same background load. The compile time is measured apart, before the rounds: the first
``compile=True`` call of the process (two steps: the first eager, the second compiles the loss and the update)
minus two eager steps, with an empty inductor cache (a new ``TORCHINDUCTOR_CACHE_DIR``; ``--warm-cache`` keeps
the user's, where an earlier run left the kernels). The timed compiled calls then reuse the compiled graphs (one
architecture, one batch shape: ``--train-size`` is a multiple of every batch size).

The estimate: the IWAE paper trains for 3,280 passes over 60,000 images at batch 20, 9.84 million steps; the time
is that many steps at the measured median step time (whole calls, setup included, divided by their steps), the
evaluation left out.

Usage::

    python benchmarks/compile_speed.py --smoke-test
    python benchmarks/compile_speed.py --batch-size 20,100 --train-size 6000 --call-epochs 1 --repeats 5 --write-docs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

if "--warm-cache" not in sys.argv:  # a cold start: inductor's compiled kernels are not read from an earlier run
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_speed-")

import pyro
import torch
from common import command_line, machine_info, machine_markdown, markdown_table, print_json, update_section, utc_date

import pyro_vae
from pyro_vae import datasets

#: the IWAE paper's schedule: 3**0 + ... + 3**7 passes over the 60,000 training images
PAPER_PASSES, PAPER_IMAGES, PAPER_BATCH = 3280, 60000, 20


def _call(vae: pyro_vae.VAE, x: torch.Tensor, batch_size: int, epochs: int, compile: bool, device: str) -> float:
    """Seconds of one whole ``fit`` call."""
    t0 = time.perf_counter()
    pyro_vae.fit(vae, x, epochs=epochs, batch_size=batch_size, binarize=True, progress=False, device=device,
                 num_threads=torch.get_num_threads(), compile=compile)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(x: torch.Tensor, batch_size: int, args: argparse.Namespace) -> dict:
    """Compile time, then ``--repeats`` rounds of a ``compile=False`` and a ``compile=True`` call."""
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(x.shape[1:], latent_dim=50, hidden_dims=(200, 200))
    eager_two = _call(vae, x[:2 * batch_size], batch_size, 1, False, args.device)
    eager_two = min(eager_two, _call(vae, x[:2 * batch_size], batch_size, 1, False, args.device))
    first_compiled = _call(vae, x[:2 * batch_size], batch_size, 1, True, args.device)
    steps = args.call_epochs * len(x) // batch_size
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for compile in ((False, True) if r % 2 == 0 else (True, False)):
            seconds[compile].append(_call(vae, x, batch_size, args.call_epochs, compile, args.device))
    eager, compiled = statistics.median(seconds[False]), statistics.median(seconds[True])
    ratios = sorted(e / c for e, c in zip(seconds[False], seconds[True]))
    return {"batch_size": batch_size, "steps_per_call": steps, "compile_seconds": first_compiled - eager_two,
            "eager_ms_per_step": 1e3 * eager / steps, "compiled_ms_per_step": 1e3 * compiled / steps,
            "eager_images_per_second": len(x) * args.call_epochs / eager,
            "compiled_images_per_second": len(x) * args.call_epochs / compiled,
            "speedup": statistics.median(ratios), "speedup_range": [ratios[0], ratios[-1]],
            "seconds": {"eager": seconds[False], "compiled": seconds[True]}}


def paper_hours(ms_per_step: float) -> float:
    """Hours of the IWAE paper's 3,280 passes at batch 20 at ``ms_per_step``."""
    return PAPER_PASSES * PAPER_IMAGES / PAPER_BATCH * ms_per_step / 3.6e6


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    started = machine_info(args.threads, args.device)
    name = "digits" if args.smoke_test else "mnist"
    x = datasets.load(name, "train", root=args.data_root)[:args.train_size].to(args.device)
    sizes = [int(b) for b in args.batch_size.split(",")]
    rows, results = [], []
    for b in sizes:
        r = measure(x, b, args)
        print_json(r)
        results.append(r)
        lo, hi = r["speedup_range"]
        rows.append([b, f"{r['compile_seconds']:.1f}", f"{r['eager_ms_per_step']:.2f}",
                     f"{r['compiled_ms_per_step']:.2f}", f"**{r['speedup']:.2f}** ({lo:.2f} to {hi:.2f})",
                     f"{paper_hours(r['eager_ms_per_step']):.0f} / {paper_hours(r['compiled_ms_per_step']):.0f}"
                     if b == PAPER_BATCH else "-"])
    if not args.write_docs:
        return
    ended = machine_info(args.threads, args.device)["load_average"]
    body = f"""## compile_speed: whole `fit` calls with `compile=True` against `compile=False` ({args.device})

Script: [`benchmarks/compile_speed.py`](../benchmarks/compile_speed.py). The IWAE paper's one-layer VAE
(784-200-200-50, tanh, Bernoulli likelihood) on dynamically binarized {name.upper() if name == 'mnist' else name}
({len(x):,} training images), single-sample ELBO, Adam (lr 1e-3). Whole `fit` calls of {args.call_epochs}
epoch(s), `compile=False` and `compile=True` taking turns for {args.repeats} rounds on one model; "speedup" is the
eager call's time over the compiled one's, the median (and range) of the rounds. The compile time is measured
apart (the first compiled call, less two eager steps; {"a warm" if args.warm_cache else "an empty"} inductor cache;
the second batch size reuses the update's kernels) and is not in the timed calls. The last column is the
IWAE paper's 3,280 passes over 60,000 images at batch 20 (9.84 million steps) at the median step time,
evaluation left out: an estimate, not a run.

- date: {utc_date()}
- command: `{command_line()}`
{machine_markdown(started)}
- load average when it ended (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in ended or [])}

{markdown_table(["batch size", "compile time (s)", "eager ms/step", "compiled ms/step",
                 "speedup (range)", "3,280 passes, hours (eager / compiled)"], rows)}
"""
    path = update_section(f"compile_speed-{args.device}", body)
    print(f"wrote {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", default="20,100", help="comma-separated batch sizes")
    p.add_argument("--train-size", type=int, default=6000, help="training images per call (a multiple of each "
                   "batch size)")
    p.add_argument("--call-epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--smoke-test", action="store_true", help="digits, 200 images, 2 rounds: seconds plus compiling")
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's cache of compiled kernels (default: "
                   "an empty one, so that the compile time is a cold start's)")
    p.add_argument("--write-docs", action="store_true", help="write the result into docs/benchmarks.md")
    a = p.parse_args()
    if a.smoke_test:
        a.train_size, a.repeats, a.batch_size = 200, 2, "20"
    main(a)

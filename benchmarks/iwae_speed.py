"""IWAE speed: training with K particles and evaluating K = 5000, the library against plain PyTorch, in one run.

Three measurements on the IWAE paper's one-layer network (784-200-200-50, tanh, Bernoulli) and MNIST:

1. ``train``: images per second of ``pyro_vae.fit(objective="iwae", num_particles=K)`` against a hand-written
   vectorized IWAE loop (the same network, initial weights, Adam, batch size and per-batch binarization), for
   each K and batch size asked for. The two alternate, ``--repeats`` times each; the ratio is of the medians.
2. ``evaluate``: ``pyro_vae.infer.iwae_bound(..., num_particles=5000, chunk_size=C)`` against a hand-written
   chunked log-sum-exp estimator, on ``--eval-num`` test images, with the peak resident memory of each
   (``VmHWM`` of this process, reset before each side by writing 5 to ``/proc/self/clear_refs``), and the time
   extrapolated to the 10,000 test images.
3. the scaling of training throughput with the batch size and with K, as a table and a figure
   (``docs/figures/iwae_speed_scaling.png``).

Prints one JSON line per measurement; ``--write-docs`` records the tables in ``docs/benchmarks.md``.

Run::

    python benchmarks/iwae_speed.py --write-docs
    python benchmarks/iwae_speed.py --smoke-test
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    REPO_ROOT,
    command_line,
    machine_info,
    machine_markdown,
    markdown_table,
    print_json,
    update_section,
    utc_date,
)
from torch.distributions import Normal
from train_mnist import ReferenceVAE

import pyro_vae
from pyro_vae import datasets, infer

BENCHMARK = "iwae_speed"


def reference_log_weights(ref: ReferenceVAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """``(K, N)`` log importance weights, vectorized over particles, in plain PyTorch."""
    z_loc, z_log_scale = ref.encoder(x).chunk(2, dim=-1)
    z_scale = z_log_scale.exp()
    z = z_loc + z_scale * torch.randn((k, *z_loc.shape), dtype=x.dtype, device=x.device)
    logits = ref.decoder(z)
    log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(z_loc, z_scale).log_prob(z).sum(-1)
    return log_px + log_pz - log_qz


def reference_train(ref: ReferenceVAE, data: torch.Tensor, batch_size: int, k: int, epochs: int) -> float:
    """The hand-written IWAE loop; returns seconds."""
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    n = data.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n)
        for step in range(math.ceil(n / batch_size)):
            x = torch.bernoulli(data[order[step * batch_size:(step + 1) * batch_size]])
            lw = reference_log_weights(ref, x, k)
            loss = -(torch.logsumexp(lw, 0) - math.log(k)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def library_train(vae: pyro_vae.VAE, data: torch.Tensor, batch_size: int, k: int, epochs: int) -> float:
    """``fit`` with the IWAE objective; returns the seconds of its training epochs (``fit``'s own per-epoch
    timing, the same span the reference loop times: not the one-off input checks before the first epoch)."""
    history = pyro_vae.fit(vae, data, epochs=epochs, batch_size=batch_size, objective="iwae" if k > 1 else "elbo",
                           num_particles=k, binarize=True, device="cpu", progress=False)
    return sum(h["seconds"] for h in history)


def measure_train(data: torch.Tensor, batch_size: int, k: int, epochs: int, repeats: int) -> dict:
    torch.manual_seed(0)
    vae = pyro_vae.VAE((784,), latent_dim=50, hidden_dims=(200, 200))
    torch.manual_seed(0)
    ref = ReferenceVAE()
    lib_t, ref_t = [], []
    for r in range(repeats):  # alternate, so that outside load hits both sides alike
        pair = [("lib", lambda: library_train(vae, data, batch_size, k, epochs)),
                ("ref", lambda: reference_train(ref, data, batch_size, k, epochs))]
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            (lib_t if name == "lib" else ref_t).append(fn())
    images = data.shape[0] * epochs
    lib_ips, ref_ips = images / statistics.median(lib_t), images / statistics.median(ref_t)
    return {"benchmark": BENCHMARK, "what": "train", "batch_size": batch_size, "num_particles": k,
            "pyro_vae_images_per_second": lib_ips, "reference_images_per_second": ref_ips,
            "ratio": lib_ips / ref_ips}


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@torch.no_grad()
def reference_iwae(ref: ReferenceVAE, x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    acc = None
    for start in range(0, k, chunk):
        lse = torch.logsumexp(reference_log_weights(ref, x, min(chunk, k - start)), 0)
        acc = lse if acc is None else torch.logaddexp(acc, lse)
    return acc - math.log(k)


def measure_eval(test: torch.Tensor, k: int, chunk: int | None, batch_size: int, repeats: int,
                 ref_chunk: int | None = None) -> dict:
    """``iwae_bound`` with ``chunk_size=chunk`` (None: the library's default rule) against the hand-written
    estimator in chunks of ``ref_chunk`` (default: ``chunk``, or 500 when that is None)."""
    ref_chunk = ref_chunk or chunk or 500
    torch.manual_seed(0)
    vae = pyro_vae.VAE((784,), latent_dim=50, hidden_dims=(200, 200)).eval()
    torch.manual_seed(0)
    ref = ReferenceVAE().eval()
    times: dict[str, list[float]] = {"lib": [], "ref": []}
    peaks: dict[str, float] = {"lib": 0.0, "ref": 0.0}
    base = _peak_mib()
    for r in range(repeats):
        order = ["lib", "ref"] if r % 2 == 0 else ["ref", "lib"]
        for name in order:
            _reset_peak()
            before = _peak_mib()
            t0 = time.perf_counter()
            for start in range(0, test.shape[0], batch_size):
                x = test[start:start + batch_size]
                if name == "lib":
                    with torch.no_grad():
                        infer.iwae_bound(vae.model, vae.guide, x, num_particles=k, chunk_size=chunk)
                else:
                    reference_iwae(ref, x, k, ref_chunk)
            times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], _peak_mib() - before)
    lib_s, ref_s = statistics.median(times["lib"]), statistics.median(times["ref"])
    n = test.shape[0]
    return {"benchmark": BENCHMARK, "what": "evaluate", "num_particles": k,
            "chunk_size": "default" if chunk is None else chunk,
            "default_chunk_size": infer.particles_per_chunk(k, test[:batch_size]), "reference_chunk_size": ref_chunk,
            "batch_size": batch_size, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "num_datapoints": n, "pyro_vae_seconds": lib_s, "reference_seconds": ref_s,
            "ratio": ref_s / lib_s, "pyro_vae_seconds_10k_extrapolated": lib_s * 10000 / n,
            "pyro_vae_peak_extra_mib": peaks["lib"], "reference_peak_extra_mib": peaks["ref"],
            "process_rss_mib_at_start": base}


def measure_eval_interleaved(test: torch.Tensor, k: int, chunks: list[int | None], ref_chunk: int, batch_size: int,
                             repeats: int) -> list[dict]:
    """``iwae_bound`` at each of ``chunks`` (None: the default rule) and the hand-written estimator, taking turns
    in every round (the order rotating), so that all see the same outside load; one row per side with the
    median seconds, its ratio to the reference and to the first side, and the peak extra memory."""
    torch.manual_seed(0)
    vae = pyro_vae.VAE((784,), latent_dim=50, hidden_dims=(200, 200)).eval()
    torch.manual_seed(0)
    ref = ReferenceVAE().eval()
    sides: list[tuple[str, int | None]] = [("pyro_vae", c) for c in chunks] + [("reference", ref_chunk)]
    times: list[list[float]] = [[] for _ in sides]
    cpu: list[list[float]] = [[] for _ in sides]  # this process's CPU seconds: far less moved by outside load
    peaks = [0.0 for _ in sides]
    loads = [os.getloadavg()[0]]
    for r in range(repeats):
        for i in [(j + r) % len(sides) for j in range(len(sides))]:
            name, chunk = sides[i]
            _reset_peak()
            before = _peak_mib()
            t0, c0 = time.perf_counter(), time.process_time()
            for start in range(0, test.shape[0], batch_size):
                x = test[start:start + batch_size]
                with torch.no_grad():
                    if name == "pyro_vae":
                        infer.iwae_bound(vae.model, vae.guide, x, num_particles=k, chunk_size=chunk)
                    else:
                        reference_iwae(ref, x, k, chunk)
            times[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
            peaks[i] = max(peaks[i], _peak_mib() - before)
        loads.append(os.getloadavg()[0])
    medians = [statistics.median(t) for t in times]
    cpu_medians = [statistics.median(t) for t in cpu]
    rows = []
    for (name, chunk), sec, csec, peak, t in zip(sides, medians, cpu_medians, peaks, times):
        rows.append({"benchmark": BENCHMARK, "what": "evaluate-interleaved", "side": name, "num_particles": k,
                     "chunk_size": "default" if chunk is None else chunk,
                     "particles_per_pass": infer.particles_per_chunk(k, test[:batch_size], chunk),
                     "batch_size": batch_size, "num_datapoints": test.shape[0], "threads": torch.get_num_threads(),
                     "seconds_median": sec, "seconds_all": t, "ratio_reference_over_this": medians[-1] / sec,
                     "ratio_first_over_this": medians[0] / sec, "cpu_seconds_median": csec,
                     "cpu_ratio_reference_over_this": cpu_medians[-1] / csec,
                     "cpu_ratio_first_over_this": cpu_medians[0] / csec, "peak_extra_mib": peak,
                     "load_average_1min_per_round": loads})
    return rows


def scaling_figure(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for i, (key, label) in enumerate([("batch_size", "batch size (K = 1)"), ("num_particles", "K (batch 100)")]):
        ax = fig.add_subplot(1, 2, i + 1)
        sel = [r for r in rows if r["sweep"] == key]
        xs = [r[key] for r in sel]
        ax.plot(xs, [r["pyro_vae_images_per_second"] for r in sel], marker="o", label="pyro_vae")
        ax.plot(xs, [r["reference_images_per_second"] for r in sel], marker="s", label="plain PyTorch")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("training images / s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    train = datasets.load("mnist", "train", root=args.data_root).reshape(-1, 784)[: args.train_num]
    test = torch.bernoulli(datasets.load("mnist", "test", root=args.data_root).reshape(-1, 784)[: args.eval_num],
                           generator=torch.Generator().manual_seed(0))
    t_start = time.perf_counter()
    if args.eval_only:  # the chunk sizes (0: the default rule) and the hand-written estimator, taking turns
        rows = measure_eval_interleaved(test, args.eval_particles, [c or None for c in args.eval_chunk_sizes],
                                        args.chunk_size, args.eval_batch_size, args.repeats)
        for row in rows:
            print_json(row)
        return rows
    results = []
    for k in args.particles:
        for b in args.batch_sizes:
            r = measure_train(train, b, k, args.epochs, args.repeats)
            print_json(r)
            results.append(r)
    scaling = []
    for b in args.scaling_batch_sizes:
        r = measure_train(train, b, 1, args.epochs, args.repeats)
        scaling.append(dict(r, sweep="batch_size"))
        print_json(scaling[-1])
    for k in args.scaling_particles:
        r = measure_train(train, 100, k, args.epochs, args.repeats)
        scaling.append(dict(r, sweep="num_particles"))
        print_json(scaling[-1])
    ev = measure_eval(test, args.eval_particles, args.chunk_size, args.eval_batch_size, args.repeats)
    print_json(ev)
    info = machine_info(threads=args.threads, device="cpu")
    if args.write_docs:
        fig_path = REPO_ROOT / "docs" / "figures" / "iwae_speed_scaling.png"
        scaling_figure(scaling, fig_path)
        body = "\n".join([
            "## iwae_speed: IWAE training and K = 5000 evaluation against plain PyTorch", "",
            "Script: [`benchmarks/iwae_speed.py`](../benchmarks/iwae_speed.py). The one-layer network "
            "(784-200-200-50, tanh, Bernoulli) on dynamically binarized MNIST "
            f"({train.shape[0]} training images, {args.epochs} epoch(s) per timing, {args.repeats} alternating "
            "timings per side, medians). The reference is a hand-written vectorized IWAE in plain PyTorch with "
            "the same layers, initial weights, Adam and batch size. Ratio = pyro_vae images/s over the "
            "reference's (evaluation: reference seconds over pyro_vae seconds); 1.0 = no overhead. The library's "
            "time is `fit`'s own per-epoch timing (the one-off input checks before the first epoch are not "
            "timed, as in `train_mnist`). Each timing is a whole epoch of each side, so a burst of outside load "
            "during one of them moves a ratio (see the load average below); `train_mnist` above interleaves short "
            "rounds and is the steadier measure of training overhead.",
            "",
            f"- date: {utc_date()}", f"- command: `{command_line()}`", machine_markdown(info),
            f"- total run time: {time.perf_counter() - t_start:.0f} s", "",
            "### Training with the IWAE objective", "",
            markdown_table(["K", "batch size", "pyro_vae images/s", "reference images/s", "ratio"],
                           [[r["num_particles"], r["batch_size"], f"{r['pyro_vae_images_per_second']:,.0f}",
                             f"{r['reference_images_per_second']:,.0f}", f"**{r['ratio']:.3f}**"]
                            for r in results]), "",
            "### Evaluation: `iwae_bound` with K = 5000, chunked", "",
            markdown_table(["K", "chunk", "datapoints", "pyro_vae s", "reference s", "ratio",
                            "pyro_vae s for 10k (extrapolated)", "peak extra memory pyro_vae / reference (MiB)"],
                           [[ev["num_particles"], ev["chunk_size"], ev["num_datapoints"],
                             f"{ev['pyro_vae_seconds']:.2f}", f"{ev['reference_seconds']:.2f}",
                             f"**{ev['ratio']:.3f}**", f"{ev['pyro_vae_seconds_10k_extrapolated']:.0f}",
                             f"{ev['pyro_vae_peak_extra_mib']:.0f} / {ev['reference_peak_extra_mib']:.0f}"]]), "",
            "Memory is bounded by the chunk: a pass holds `chunk x batch` particles' activations "
            f"({args.chunk_size} x {args.eval_batch_size} here), whatever K is.", "",
            "### How training cost grows with the batch size and with K", "",
            markdown_table(["sweep", "batch size", "K", "pyro_vae images/s", "reference images/s", "ratio"],
                           [[r["sweep"], r["batch_size"], r["num_particles"],
                             f"{r['pyro_vae_images_per_second']:,.0f}", f"{r['reference_images_per_second']:,.0f}",
                             f"{r['ratio']:.3f}"] for r in scaling]), "",
            "![throughput against batch size and K](figures/iwae_speed_scaling.png)",
        ])
        update_section(BENCHMARK, body)
    return results + scaling + [ev]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--particles", type=_ints, default=[5, 50], help="K for the IWAE training ratio (default: 5,50)")
    p.add_argument("--batch-sizes", type=_ints, default=[100], help="batch sizes for it (default: 100)")
    p.add_argument("--scaling-batch-sizes", type=_ints, default=[20, 100, 1000])
    p.add_argument("--scaling-particles", type=_ints, default=[1, 5, 50, 500])
    p.add_argument("--train-num", type=int, default=6000, help="training images per timing (default: 6000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-particles", type=int, default=5000)
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--eval-batch-size", type=int, default=100)
    p.add_argument("--eval-num", type=int, default=200, help="test images for the evaluation timing")
    p.add_argument("--eval-only", action="store_true",
                   help="only the evaluation, for each of --eval-chunk-sizes (the reference in --chunk-size chunks)")
    p.add_argument("--eval-chunk-sizes", type=_ints, default=[5000, 0, 250, 1000],
                   help="with --eval-only: the library's chunk sizes, taking turns with the reference (0: its default "
                        "rule, chunk_size=None; 5000: one pass of K = 5000, the former default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None)
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--smoke-test", action="store_true")
    a = p.parse_args()
    if a.smoke_test:
        a.particles, a.scaling_batch_sizes, a.scaling_particles = [5], [100], [1, 5]
        a.train_num, a.repeats, a.eval_particles, a.eval_num, a.chunk_size = 500, 1, 100, 20, 50
        a.eval_chunk_sizes = [0, 50]
    main(a)

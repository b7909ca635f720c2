"""Training speed of ``pyro_vae.fit`` against a plain-PyTorch VAE, on dynamically binarized MNIST.

Both sides train the one-layer network of Burda, Grosse & Salakhutdinov (2016), 784-200-200-50 with tanh
units, a Bernoulli likelihood and a diagonal Gaussian guide whose scale is ``exp`` of the encoder's output,
on the single-sample ELBO with Adam (lr 1e-3, betas (0.9, 0.999), eps 1e-8) and the same batch size:

(a) the library: ``pyro_vae.VAE(...)`` trained by ``pyro_vae.fit(..., binarize=True, progress=False)``
    (Pyro's ``Trace_ELBO`` through ``differentiable_loss``);
(b) the reference: the same layers (``nn.Linear`` default initialisation, built in the same order from the
    same seed) and a hand-written loop: a fresh ``torch.bernoulli`` draw of each batch, one reparameterized
    sample ``z = z_loc + z_scale * eps`` and the loss ``-mean_n [log p(x_n | z_n) + log p(z_n) - log q(z_n |
    x_n)]`` with ``log p(x | z) = -binary_cross_entropy_with_logits(...).sum()`` and ``log p(z)``, ``log q(z |
    x)`` from ``torch.distributions.Normal``: the same Monte Carlo estimator, with the same gradient, as
    ``Trace_ELBO``.

The two take turns in short rounds, so that both see the same background load: each epoch draws one
permutation of the training set and cuts it into ``--rounds`` slices (whole batches); for each slice the
library makes one ``fit`` call over it that resumes from its own checkpoint (weights, Adam state and random
number generators carry over; ``fit`` counts each call as an epoch) and the reference makes one pass over
it, who goes first alternating. Only the training steps are timed (shuffling, batching, binarization,
forward, backward, optimizer step; the data already sit on the device as one tensor): for the library that
is the ``seconds`` of ``fit``'s history, which leaves out its set-up and checkpoint writing, for the
reference the same span of its own loop. Afterwards both are scored on the same binarized test set (one
fixed-seed Bernoulli draw of the test images), one ``z`` sample per datapoint.

Output: one JSON line per implementation and batch size, then one line per batch size with the ratio of
images per second (library / reference): ``ratio``, the median of the per-round ratios (robust to bursts of
outside load), with their quartiles and range, and ``ratio_of_totals`` from the total times.
``--write-docs`` records the result in ``docs/benchmarks.md``.

Usage::

    python benchmarks/train_mnist.py --smoke-test
    python benchmarks/train_mnist.py --epochs 3 --batch-size 100 --write-docs
    python benchmarks/train_mnist.py --batch-size 20,100,1000 --train-size 20000
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import pyro
import torch
import torch.nn.functional as F
from common import (  # run as ``python benchmarks/train_mnist.py``: benchmarks/ is on the path
    REPO_ROOT,
    command_line,
    machine_info,
    machine_markdown,
    markdown_table,
    print_json,
    update_section,
    utc_date,
)
from torch import nn
from torch.distributions import Normal

import pyro_vae  # after common, which makes the repository importable without installing it

BENCHMARK = "train_mnist"
INPUT_DIM = 784
HIDDEN_DIMS = (200, 200)
LATENT_DIM = 50
LR = 1e-3
EVAL_BATCH = 1000


class ReferenceVAE(nn.Module):
    """The same network as ``pyro_vae.VAE((784,), 50, (200, 200), "tanh", "bernoulli")``, in plain PyTorch.

    The layers are created in the same order as the library's (encoder, then decoder), so the same seed gives
    the same initial weights.
    """

    def __init__(self, input_dim: int = INPUT_DIM, hidden_dims: tuple[int, ...] = HIDDEN_DIMS,
                 latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = self._mlp([input_dim, *hidden_dims, 2 * latent_dim])
        self.decoder = self._mlp([latent_dim, *reversed(hidden_dims), input_dim])

    @staticmethod
    def _mlp(sizes: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Single-sample ELBO of each datapoint. :param x: ``(N, 784)`` in {0, 1}. :returns: ``(N,)``."""
        z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
        z_scale = z_log_scale.exp()
        eps = torch.randn(z_loc.shape, generator=generator, device=z_loc.device, dtype=z_loc.dtype)
        z = z_loc + z_scale * eps  # reparameterized, as Normal.rsample
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_pz = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
        log_qz = Normal(z_loc, z_scale).log_prob(z).sum(-1)
        return log_px + log_pz - log_qz


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epoch(ref: ReferenceVAE, optimizer: torch.optim.Optimizer, data: torch.Tensor, batch_size: int,
                    shuffle: torch.Generator, noise: torch.Generator | None,
                    elbo: Callable[[torch.Tensor], torch.Tensor] | None = None, rank: int = 0,
                    world: int = 1) -> tuple[float, float]:
    """One epoch of the reference loop (the same span ``fit`` times). :returns: ``(seconds, mean loss)``.

    ``elbo`` (default ``ref.elbo`` drawing from ``noise``) scores a batch; with ``world > 1`` (a
    ``DistributedDataParallel`` run, see ``benchmarks/distributed.py``) rank ``rank`` takes datapoints ``rank,
    rank + world, ...`` of each batch and divides its summed loss by the batch's size over ``world``, as ``fit``
    does; the mean loss is then this rank's."""
    elbo = elbo if elbo is not None else (lambda x: ref.elbo(x, noise))
    n = data.shape[0]
    device = data.device
    _sync(device)
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=shuffle).to(device)
    total = torch.zeros((), device=device)
    for step in range(math.ceil(n / batch_size)):
        index = order[step * batch_size:(step + 1) * batch_size]
        x = torch.bernoulli(data[index[rank::world]], generator=noise)
        loss_sum = -elbo(x).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / (index.numel() / world)).backward()
        optimizer.step()
        total += loss_sum.detach()
    _sync(device)
    seconds = time.perf_counter() - t0
    return seconds, (total * world / n).item()


@torch.no_grad()
def _summary(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


@torch.no_grad()
def library_test_elbo(vae: pyro_vae.VAE, test: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean and standard error of the single-sample ELBO with ``pyro_vae.infer.elbo``."""
    pyro.set_rng_seed(seed)
    vae.eval()
    values = torch.cat([pyro_vae.infer.elbo(vae.model, vae.guide, test[i:i + EVAL_BATCH], num_particles=1)
                        for i in range(0, test.shape[0], EVAL_BATCH)])
    assert values.shape == (test.shape[0],)
    return _summary(values)


@torch.no_grad()
def reference_test_elbo(ref: ReferenceVAE, test: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean and standard error of the reference's single-sample ELBO."""
    g = torch.Generator(device=test.device).manual_seed(seed)
    values = torch.cat([ref.elbo(test[i:i + EVAL_BATCH], g) for i in range(0, test.shape[0], EVAL_BATCH)])
    return _summary(values)


def check_same_estimator(train: torch.Tensor, batch_size: int, seed: int) -> dict[str, float]:
    """Check that both sides compute the same loss and gradient when they draw the same random numbers.

    Builds both networks from the same seed, evaluates the library's ``"elbo"`` objective (what ``fit`` uses)
    and the reference loss on one binarized batch with the same ``eps``, and compares.

    :returns: ``{"loss_difference": ..., "max_grad_difference": ...}`` (absolute; 0 means bit-identical).
    """
    from pyro_vae.infer.objectives import get_objective

    device = train.device
    torch.manual_seed(seed)
    vae = pyro_vae.VAE((INPUT_DIM,), latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS).to(device)
    torch.manual_seed(seed)
    ref = ReferenceVAE().to(device)
    x = torch.bernoulli(train[:batch_size], generator=torch.Generator(device=device).manual_seed(seed))
    pyro.set_rng_seed(seed + 7)
    loss_lib = get_objective("elbo")(vae.model, vae.guide, x, num_particles=1, max_plate_nesting=1) / x.shape[0]
    loss_lib.backward()
    loss_ref = -ref.elbo(x, torch.Generator(device=device).manual_seed(seed + 7)).mean()
    loss_ref.backward()
    lib_params, ref_params = list(vae.parameters()), list(ref.parameters())
    assert [p.shape for p in lib_params] == [p.shape for p in ref_params], "the two networks differ"
    return {
        "loss_difference": abs(loss_lib.item() - loss_ref.item()),
        "max_grad_difference": max((a.grad - b.grad).abs().max().item() for a, b in zip(lib_params, ref_params)),
    }


def epoch_slices(n: int, batch_size: int, rounds: int) -> list[tuple[int, int]]:
    """Cut ``n`` positions into at most ``rounds`` consecutive slices whose boundaries fall on whole batches."""
    steps = math.ceil(n / batch_size)
    c = max(1, min(int(rounds), steps))
    bounds = [min(n, batch_size * round(i * steps / c)) for i in range(c)] + [n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def run_batch_size(batch_size: int, train: torch.Tensor, test: torch.Tensor, epochs: int, seed: int,
                   device: torch.device, rounds: int) -> dict[str, Any]:
    """Train both implementations for ``epochs`` epochs, interleaved in short rounds, and score them on ``test``.

    Each epoch draws one permutation of the training set and cuts it into ``rounds`` slices; for each slice
    the library (one ``fit`` call that resumes from its checkpoint, so weights and Adam state carry over) and
    the reference each make one pass over it, the order alternating between rounds. Both sides see the same
    images in each round, and the two timings of a round are taken seconds apart, under the same load.
    """
    n = train.shape[0]
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = pyro_vae.VAE((INPUT_DIM,), latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS, activation="tanh",
                       likelihood="bernoulli")
    torch.manual_seed(seed)
    ref = ReferenceVAE().to(device)
    optimizer = torch.optim.Adam(ref.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    epoch_order = torch.Generator().manual_seed(seed + 3)
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    times: dict[str, list[float]] = {"pyro_vae": [], "reference": []}
    losses: dict[str, list[tuple[float, int]]] = {"pyro_vae": [], "reference": []}
    calls = 0
    with tempfile.TemporaryDirectory(prefix="train_mnist_") as ckpt_dir:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=epoch_order).to(device)
            for a, b in epoch_slices(n, batch_size, rounds):
                part = train[perm[a:b]]  # the round's images, gathered outside the timed span
                bs = min(batch_size, b - a)
                order = ("pyro_vae", "reference") if len(times["reference"]) % 2 == 0 else ("reference", "pyro_vae")
                for impl in order:
                    if impl == "pyro_vae":
                        _sync(device)
                        # resume=True continues from the last call's checkpoint (weights, Adam state, RNGs);
                        # fit counts each call as one epoch (over ``part``)
                        calls += 1
                        history = pyro_vae.fit(vae, part, epochs=calls, batch_size=bs, lr=LR, objective="elbo",
                                               num_particles=1, device=device, checkpoint_dir=ckpt_dir,
                                               resume=True, seed=seed, progress=False, binarize=True)
                        assert len(history) == calls
                        seconds, loss = history[-1]["seconds"], history[-1]["loss"]
                    else:
                        ref.train()
                        seconds, loss = reference_epoch(ref, optimizer, part, bs, shuffle, noise)
                    times[impl].append(seconds)
                    losses[impl].append((loss, b - a))
    ref.eval()
    elbos = {"pyro_vae": library_test_elbo(vae, test, seed + 2), "reference": reference_test_elbo(ref, test, seed + 2)}
    rounds_per_epoch = len(times["pyro_vae"]) // epochs
    result: dict[str, Any] = {"batch_size": batch_size, "impls": {}}
    for impl in ("pyro_vae", "reference"):
        last = losses[impl][-rounds_per_epoch:]
        result["impls"][impl] = {
            "benchmark": BENCHMARK, "impl": impl, "batch_size": batch_size, "epochs": epochs,
            "images_per_second": epochs * n / sum(times[impl]),
            "images_per_second_median_round": statistics.median(k / t for (_, k), t in zip(losses[impl], times[impl])),
            "test_elbo": elbos[impl][0],
            "device": str(device), "test_elbo_stderr": elbos[impl][1], "train_size": n, "test_size": test.shape[0],
            "seconds": sum(times[impl]), "last_epoch_train_loss": sum(v * k for v, k in last) / sum(k for _, k in last),
        }
    paired = sorted(r / p for p, r in zip(times["pyro_vae"], times["reference"]))  # images/s ratio per round
    q1, median, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    result["same_estimator"] = check_same_estimator(train, batch_size, seed)
    result["ratio"] = {
        "benchmark": BENCHMARK, "metric": "images_per_second_ratio", "numerator": "pyro_vae",
        "denominator": "reference", "batch_size": batch_size, "epochs": epochs, "device": str(device),
        "ratio": median, "ratio_quartiles": [q1, q3], "rounds": len(paired),
        "ratio_of_totals": (result["impls"]["pyro_vae"]["images_per_second"]
                            / result["impls"]["reference"]["images_per_second"]),
        "ratio_min_max": [paired[0], paired[-1]],
        **result["same_estimator"],
    }
    return result


def docs_section(results: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace,
                 command: str, date: str, total_seconds: float) -> str:
    rows = []
    for r in results:
        lib, ref, ratio = r["impls"]["pyro_vae"], r["impls"]["reference"], r["ratio"]
        q1, q3 = ratio["ratio_quartiles"]
        rows.append([
            r["batch_size"], f"{lib['images_per_second_median_round']:,.0f}",
            f"{ref['images_per_second_median_round']:,.0f}", f"**{ratio['ratio']:.3f}** ({q1:.3f} to {q3:.3f})",
            f"{ratio['ratio_of_totals']:.3f}", f"{lib['images_per_second']:,.0f} / {ref['images_per_second']:,.0f}",
            f"{lib['test_elbo']:.2f} ± {lib['test_elbo_stderr']:.2f}",
            f"{ref['test_elbo']:.2f} ± {ref['test_elbo_stderr']:.2f}",
        ])
    table = markdown_table(
        ["batch size", "pyro_vae images/s", "reference images/s", "ratio (quartiles)", "ratio of totals",
         "images/s from totals (pyro_vae / reference)", "pyro_vae test ELBO", "reference test ELBO"], rows)
    n_train = results[0]["impls"]["pyro_vae"]["train_size"]
    rounds = results[0]["ratio"]["rounds"]
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    try:
        end_load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        end_load = "unknown"
    loss_diff = max(r["same_estimator"]["loss_difference"] for r in results)
    grad_diff = max(r["same_estimator"]["max_grad_difference"] for r in results)
    return f"""## train_mnist: training throughput of `pyro_vae.fit` against plain PyTorch

Script: [`benchmarks/train_mnist.py`](../benchmarks/train_mnist.py). Both sides train the IWAE paper's
one-layer network (784-200-200-50, tanh, Bernoulli likelihood, diagonal Gaussian guide) on dynamically
binarized MNIST ({n_train:,} training images, a fresh Bernoulli draw per batch) for {epochs}
with the single-sample ELBO and Adam (lr 1e-3): `pyro_vae.VAE` + `pyro_vae.fit` (Pyro's `Trace_ELBO`)
against a hand-written PyTorch loop with the same layers, initial weights, optimizer, batch size and
Monte Carlo estimator. In one process, the two take turns on the same slices of each epoch
({rounds // args.epochs} rounds per epoch, {rounds} in all; the library resumes from its checkpoint, so its
weights and Adam state carry over); only the training steps are timed.
"Ratio" is pyro_vae's images per second divided by the reference's (1.0 = no overhead; below 1 = slower),
the median (with quartiles) of the {rounds} per-round ratios, each from two timings seconds apart; the
images/s columns are medians over the rounds too. The ratio and images/s of the total times are shown
for comparison. The test ELBO (nats, mean ± standard error over the
{results[0]["impls"]["pyro_vae"]["test_size"]:,} test images, one `z` sample each) uses one fixed-seed
binarization of the test set, shared by both.

- date: {date}
- command: `{command}`
{machine_markdown(info)}
- load average when it ended (1, 5, 15 min): {end_load}
- total run time: {total_seconds:.0f} s

{table}

The machine is shared, has two cores, and other jobs ran on it at the same time: the absolute images/s are
noisy and say little. The ratio is the number to read: being a median over paired rounds, a burst of
outside load during a few rounds cannot move it much (the ratio of totals it can, by a lot). When other jobs keep
the cores busy, torch's worker threads contend with them and both sides can slow down several-fold,
unevenly; `--threads 1` then gives steadier numbers.
Given the same random numbers, the two sides compute the same loss and gradient (checked in this run on
one batch: the losses differ by {loss_diff:.1e} nats, float rounding, and the gradients by at most
{grad_diff:.1e}); in training they draw different random numbers (binarization, `eps`,
order within a round), so their test ELBOs differ by training noise, a nat or two after a few epochs.
"""


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size takes an integer or a comma list of integers, got {text!r}")
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.smoke_test:
        args.epochs, args.train_size, args.test_size = 1, 1000, 1000
    torch.set_num_threads(args.threads)
    device = pyro_vae.train.resolve_device(args.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    info = machine_info(threads=torch.get_num_threads(), device=device)

    root = args.data_root or os.environ.get("PYRO_VAE_DATA")
    if root is None and (REPO_ROOT.parent / "shared" / "data").is_dir():
        root = REPO_ROOT.parent / "shared" / "data"  # where the project's checks find the data (DESIGN.md)
    train = pyro_vae.datasets.load("mnist", "train", root=root).flatten(1)
    test = pyro_vae.datasets.load("mnist", "test", root=root).flatten(1)
    if args.train_size is not None:
        if not 1 <= args.train_size <= train.shape[0]:
            raise SystemExit(f"--train-size must be between 1 and {train.shape[0]}, got {args.train_size}")
        train = train[:args.train_size]
    if args.test_size is not None:
        test = test[:args.test_size]
    too_big = [b for b in args.batch_size if b > train.shape[0]]
    if too_big:
        raise SystemExit(f"batch size(s) {too_big} exceed the {train.shape[0]} training images")
    train = train.to(device).contiguous()
    # one fixed binarization of the test set, the same tensor for both implementations
    test = torch.bernoulli(test, generator=torch.Generator().manual_seed(12345)).to(device)

    t_start = time.perf_counter()
    results = []
    for batch_size in args.batch_size:
        r = run_batch_size(batch_size, train, test, args.epochs, args.seed, device, args.rounds)
        for impl in ("pyro_vae", "reference"):
            print_json(r["impls"][impl])
        results.append(r)
    for r in results:
        print_json(r["ratio"])
    total = time.perf_counter() - t_start

    if args.write_docs:
        if args.smoke_test:
            print("--smoke-test: not writing docs/benchmarks.md", file=sys.stderr)
        else:
            path = update_section(BENCHMARK, docs_section(results, info, args, command_line(), utc_date(), total))
            print(f"wrote the {BENCHMARK} section of {path}", file=sys.stderr)
    return results


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs per implementation and batch size (default 5)")
    p.add_argument("--batch-size", type=parse_batch_sizes, default=[100],
                   help="batch size, or a comma list such as 20,100,1000 (default 100)")
    p.add_argument("--rounds", type=int, default=10,
                   help="slices of each epoch that the two implementations take turns on (default 10)")
    p.add_argument("--train-size", type=int, default=None, help="use the first N training images (default all)")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test images (default all 10,000)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--data-root", default=None,
                   help="folder holding mnist/ (default $PYRO_VAE_DATA, else ../shared/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true", help="1,000 images, 1 epoch: checks that it runs")
    p.add_argument("--write-docs", action="store_true", help="update this benchmark's section of docs/benchmarks.md")
    return p


if __name__ == "__main__":
    main(make_parser().parse_args())

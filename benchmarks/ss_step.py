"""What an unlabelled step of the semi-supervised VAE (M2) costs, against hand-written PyTorch.

One batch of binarized MNIST through Pyro's example's M2 network (784-500-50 softplus, 10 classes, batch 200), the
label summed exactly. Timed in milliseconds per step (loss, gradients and an Adam update; the median over rounds,
the variants taking turns in one process, in an order that rotates each round):

- ``reference``: the hand-written loss of the same network (:func:`reference_loss`): every label at once, the first
  layers split by input, the draws of ``z`` in one call;
- ``pyro-vae``: what :func:`pyro_vae.fit_semi_supervised` runs on an unlabelled batch: the library's objective on
  the engine's terms of ``SSVAE.model``/``SSVAE.guide``, the label enumerated by the engine;
- ``pyro-vae, joined input``: the same, with the first layers of ``q(z | x, y)`` and ``p(x | y, z)`` fed the joined
  input ``[x, y]`` (what the library did before ``_on_joined``: ``x``'s product computed once per label).

The reference computes the library's loss for the same seed (``tests/test_benchmarks.py`` checks it), so the
comparison is like for like. ``--write-docs`` records the table in ``docs/benchmarks.md``.

Usage::

    python benchmarks/ss_step.py --smoke-test
    python benchmarks/ss_step.py --threads 1 --write-docs
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from typing import Any, Callable, Iterator

import pyro
import torch
import torch.nn.functional as F
from common import command_line, machine_info, machine_markdown, markdown_table, update_section, utc_date

import pyro_vae.models.semi_supervised as semi_supervised
from pyro_vae import SSVAE, datasets
from pyro_vae.infer.objectives import get_objective
from pyro_vae.infer.weights import terms_producer

BENCHMARK = "ss_step"


def _mlp_on(net: torch.nn.Sequential, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``net([a, b])``, the first layer's product split by input (by hand, as a PyTorch user writes it)."""
    first, width = net[0], a.shape[-1]
    h = F.softplus(F.linear(a, first.weight[:, :width], first.bias) + F.linear(b, first.weight[:, width:]))
    return net[2](h)


def reference_loss(ssvae: SSVAE, x: torch.Tensor) -> torch.Tensor:
    """The negative ELBO of an unlabelled batch, summed over it, the label summed exactly (Kingma et al.'s
    ``-U(x)``), written in plain PyTorch for an :class:`SSVAE` with one hidden layer and a Bernoulli likelihood."""
    c = ssvae.num_classes
    flat = x.flatten(1)
    log_q_y = F.log_softmax(ssvae.encoder_y(flat), -1)  # (N, C)
    labels = torch.eye(c, dtype=x.dtype).unsqueeze(1)  # (C, 1, C): every label against every datapoint
    loc, log_scale = _mlp_on(ssvae.encoder_z, flat, labels).chunk(2, -1)  # (C, N, L)
    eps = torch.empty(loc.shape, dtype=x.dtype).normal_()  # one call, as the guide's z site draws
    z = loc + log_scale.exp() * eps
    logits = _mlp_on(ssvae.decoder, z, labels)  # (C, N, D)
    log_px = -F.binary_cross_entropy_with_logits(logits, flat.expand_as(logits), reduction="none").sum(-1)
    log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * eps.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)
    bound = log_px + log_pz - log_qz - math.log(c)  # (C, N): log p(x, y, z) - log q(z | x, y), p(y) = 1 / C
    q_y = log_q_y.exp().T
    return -(q_y * (bound - log_q_y.T)).sum()


def library_loss(ssvae: SSVAE, x: torch.Tensor) -> torch.Tensor:
    """The loss of an unlabelled batch as :func:`pyro_vae.fit_semi_supervised` computes it (summed)."""
    produce = terms_producer(ssvae.model, ssvae.guide, x, max_plate_nesting=1)
    return get_objective("elbo")(produce, num_particles=1)


def _joined(net: torch.nn.Sequential, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return net(torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1))


@contextlib.contextmanager
def joined_input() -> Iterator[None]:
    """The library's model and guide with the joined input of the first layers (before ``_on_joined``)."""
    split = semi_supervised._on_joined
    semi_supervised._on_joined = _joined
    try:
        yield
    finally:
        semi_supervised._on_joined = split


def _timed_steps(ssvae: SSVAE, x: torch.Tensor, loss_of: Callable[[SSVAE, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Milliseconds per step (loss, backward, Adam), over ``steps`` steps."""
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (loss_of(ssvae, x) / x.shape[0]).backward()
        optimizer.step()
    return 1000 * (time.perf_counter() - t0) / steps


def measure(batch_size: int, rounds: int, steps: int, data_root: str | None = None,
            smoke: bool = False) -> dict[str, Any]:
    shape = (1, 8, 8) if smoke else (1, 28, 28)
    hidden, latent = ((32,), 4) if smoke else ((500,), 50)
    if smoke:
        x = torch.rand(batch_size, *shape).round()
    else:
        grey = datasets.load("mnist", "train", data_root, num_samples=batch_size)
        x = datasets.binarize(grey, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ssvae = SSVAE(shape, hidden_dims=hidden, latent_dim=latent)
    optimizer = torch.optim.Adam(ssvae.parameters(), lr=1e-4)
    pyro.enable_validation(False)  # as fit_semi_supervised after its first step
    variants: dict[str, Callable[[], float]] = {
        "reference": lambda: _timed_steps(ssvae, x, reference_loss, optimizer, steps),
        "pyro-vae": lambda: _timed_steps(ssvae, x, library_loss, optimizer, steps),
    }

    def joined() -> float:
        with joined_input():
            return _timed_steps(ssvae, x, library_loss, optimizer, steps)

    variants["pyro-vae, joined input"] = joined
    for run in variants.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):  # the order rotates each round: no variant always runs first
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(variants[name]())
    return {name: statistics.median(t) for name, t in times.items()}


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.batch_size, args.rounds, args.steps = 8, 1, 1
    info = machine_info(threads=args.threads)
    result = measure(args.batch_size, args.rounds, args.steps, args.data_root, smoke=args.smoke_test)
    ref = result["reference"]
    rows = [[name, f"{ms:.1f}", f"{ref / ms:.2f}"] for name, ms in result.items()]
    table = markdown_table(["unlabelled step", "ms per step", "speed against the reference"], rows)
    print(table)
    if args.write_docs and not args.smoke_test:
        body = "\n".join([
            "## The semi-supervised VAE's unlabelled step (`ss_step.py`)", "",
            f"Command: `{command_line()}` ({utc_date()}). Pyro's example's M2 network (784-500-50 softplus, 10 "
            f"classes), a batch of {args.batch_size} binarized MNIST digits, the label summed; milliseconds per "
            f"step (loss, gradients, Adam), the median of {args.rounds} rounds of {args.steps} steps, the variants "
            "taking turns in one process. The reference is the same loss in plain PyTorch (checked equal to the "
            "library's for the same seed); \"joined input\" is the library before it split the first layers of "
            "q(z | x, y) and p(x | y, z) by input.", "",
            machine_markdown(info), "", table])
        update_section(BENCHMARK, body)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="steps per round and variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None, help="the folder holding mnist/ (default: $PYRO_VAE_DATA)")
    p.add_argument("--write-docs", action="store_true", help="record the table in docs/benchmarks.md")
    p.add_argument("--smoke-test", action="store_true", help="a tiny network, one step each")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

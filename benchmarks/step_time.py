"""Milliseconds per ``fit`` step of the library's VAE and of a user's own pair, for comparing two versions of the
code on one machine (a regression check, not a ratio to hand-written PyTorch: ``train_mnist.py`` is that).

The network is the IWAE paper's 784-200-200-50 on dynamically binarized MNIST. ``pyro_vae`` is imported from
wherever ``PYTHONPATH`` points, so an older commit can be timed in turn with the current one::

    git worktree add /tmp/old 2aa39c8
    for i in 1 2 3; do
        PYTHONPATH=/tmp/old python benchmarks/step_time.py --batch-size 20
        PYTHONPATH=. python benchmarks/step_time.py --batch-size 20
    done
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch
from train_mnist import UserPair

import pyro_vae
from pyro_vae import datasets


def step_ms(pair: object, x: torch.Tensor, batch_size: int, epochs: int) -> float:
    pyro_vae.fit(pair, x[:200], epochs=1, batch_size=batch_size, device="cpu", progress=False)  # warm-up
    t0 = time.perf_counter()
    pyro_vae.fit(pair, x, epochs=epochs, batch_size=batch_size, device="cpu", progress=False)
    return (time.perf_counter() - t0) / (epochs * len(x) / batch_size) * 1e3


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    x = datasets.load("digits" if args.smoke_test else "mnist", "train", root=args.data_root)[:args.train_size]
    x = datasets.binarize(x, torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(x.shape[1:], latent_dim=50, hidden_dims=(200, 200))
    pyro.set_rng_seed(0)
    pair = UserPair(input_dim=x[0].numel()) if args.smoke_test else UserPair()
    where = Path(pyro_vae.__file__).resolve().parent.parent
    for name, model, data in (("library VAE", vae, x), ("user pair", pair, x.flatten(1))):
        print(f"{where}: {name}, batch {args.batch_size}: {step_ms(model, data, args.batch_size, args.epochs):.3f} "
              "ms per step", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None)
    p.add_argument("--smoke-test", action="store_true", help="digits instead of MNIST, seconds")
    main(p.parse_args())

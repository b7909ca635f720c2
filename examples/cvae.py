"""A conditional VAE on Pyro's CVAE task: from one quadrant of an MNIST digit, predict the other three.

``y`` is the top-left 14x14 quadrant of a binarized digit, ``x`` the other three quadrants (588 pixels). The
conditional VAE (Sohn, Lee & Yan 2015) models

.. math::

    p_\\theta(x \\mid y) = \\int p_\\theta(x \\mid z, y) \\, p(z) \\, dz, \\qquad
    q_\\phi(z \\mid x, y) = \\mathcal{N}(\\mu_\\phi(x, y), \\operatorname{diag}\\sigma_\\phi(x, y)^2),

as ``pyro_vae.VAE((588,), condition_shape=(196,))`` trained by ``pyro_vae.fit(..., condition=y)``. As in Pyro's
example, a deterministic network from ``y`` to Bernoulli logits of ``x`` is the baseline; its
``log p(x | y)`` is exact (a product of Bernoullis). Instead of only a loss, both are scored by the conditional
log-likelihood of the test images (the CVAE's by IWAE_K, a lower bound), with their paired difference.

Run::

    python examples/cvae.py --data-root ../shared/data
    python examples/cvae.py --data-root ../shared/data --smoke-test

``--data-root`` is the folder holding ``mnist/`` (default: the ``PYRO_VAE_DATA`` environment variable).

Reference: K. Sohn, H. Lee, X. Yan, "Learning Structured Output Representation using Deep Conditional Generative
Models", NeurIPS 2015.
"""

from __future__ import annotations

import argparse

import pyro
import torch
import torch.nn.functional as F
from torch import nn

import pyro_vae
from pyro_vae import datasets, infer


def split(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 1, 28, 28)`` -> ``x`` ``(N, 588)`` (three quadrants) and ``y`` ``(N, 196)`` (the top-left one)."""
    img = images[:, 0]
    y = img[:, :14, :14].flatten(1)
    x = torch.cat([img[:, :14, 14:].flatten(1), img[:, 14:, :].flatten(1)], 1)
    return x, y


def train_baseline(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(196, 500), nn.ReLU(), nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 588))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(100):
            loss = F.binary_cross_entropy_with_logits(net(y[idx]), x[idx], reduction="sum") / idx.numel()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def main(args: argparse.Namespace) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    n_train, n_test = (1000, 100) if args.smoke_test else (None, args.num_test)
    epochs = 1 if args.smoke_test else args.epochs
    binarize = torch.Generator().manual_seed(args.seed)
    train = datasets.binarize(datasets.load("mnist", "train", root=args.data_root)[:n_train], binarize)
    test = datasets.binarize(datasets.load("mnist", "test", root=args.data_root)[:n_test], binarize)
    x_train, y_train = split(train)
    x_test, y_test = split(test)

    baseline = train_baseline(x_train, y_train, epochs, args.seed)
    with torch.no_grad():
        base = -F.binary_cross_entropy_with_logits(baseline(y_test), x_test, reduction="none").sum(-1)

    cvae = pyro_vae.VAE((588,), latent_dim=args.latent_dim, hidden_dims=(500, 500), activation="relu",
                        condition_shape=(196,))
    pyro_vae.fit(cvae, x_train, condition=y_train, epochs=epochs, batch_size=100, lr=1e-3, seed=args.seed,
                 progress=False)
    result = infer.log_likelihood(cvae.model, cvae.guide, x_test, condition=y_test, num_particles=args.num_particles,
                                  seed=args.seed, progress=False, diagnostics=False)
    print(f"{x_test.shape[0]} test digits, {epochs} epochs: log p(three quadrants | one quadrant), nats per digit")
    print(f"  deterministic baseline (exact):  {float(base.mean()):9.2f} ± {float(base.std() / n_test ** 0.5):.2f}"
          if n_test else "")
    print(f"  conditional VAE (IWAE_{args.num_particles}): {result.mean:9.2f} ± {result.stderr:.2f} "
          f"(Monte Carlo ± {result.mean_mc_stderr:.2f})")
    print(f"  {infer.compare(result, base, names=('CVAE', 'baseline')).summary()}")
    samples = cvae.sample(5, y=y_test[0])
    print(f"  five completions of the first test digit's quadrant: {tuple(samples.shape)}, mean pixel "
          f"{float(samples.mean()):.3f} (the true three quadrants: {float(x_test[0].mean()):.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None, help="folder with mnist/ (default: $PYRO_VAE_DATA)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--num-particles", type=int, default=100, help="K of the IWAE estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="1,000 training digits, 100 test, one epoch")
    args = parser.parse_args()
    try:
        main(args)
    except datasets.DataNotFoundError as e:  # one line saying where to point, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e} (from the command line: --data-root FOLDER)\n")

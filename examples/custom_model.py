"""Train your own Pyro model/guide pair with ``pyro_vae.fit`` (no ``pyro_vae.VAE`` involved).

Any pair of Pyro programs works with the library's training loop and estimators when it keeps the site
contract: ``model(x)`` and ``guide(x)`` take a batch ``x`` of shape ``(N, *event_shape)``, both open
``pyro.plate("data", N)``, and the observation site is named ``"x"``. Here the pair is written by hand for
the 2-D ``ring`` toy set of Doersch's tutorial (:math:`z \\sim \\mathcal{N}(0, I_2)`,
:math:`x = z / 10 + z / \\lVert z \\rVert`):

.. math::

    z \\sim \\mathcal{N}(0, I_2), \\qquad x \\mid z \\sim \\mathcal{N}(f_\\theta(z), \\sigma^2 I), \\qquad
    q_\\phi(z \\mid x) = \\mathcal{N}(\\mu_\\phi(x), \\operatorname{diag} s_\\phi(x)^2)

with the networks registered by ``pyro.module`` and the noise scale :math:`\\sigma` a constrained
``pyro.param``. The pair is a plain object, not an ``nn.Module``, so :func:`pyro_vae.fit` trains the
parameters it finds in Pyro's param store. The script prints the test ELBO (and an IWAE bound) before and
after training.

Run::

    python examples/custom_model.py
    python examples/custom_model.py --smoke-test
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

import pyro_vae
from pyro_vae import datasets
from pyro_vae.infer import elbo, iwae_bound


class RingVAE:
    """A hand-written model/guide pair for 2-D data: MLP decoder and encoder, learned observation noise.

    :param data_dim: the dimension of ``x``.
    :param latent_dim: the dimension of ``z``.
    :param hidden_dim: the width of the hidden layers.
    """

    def __init__(self, data_dim: int = 2, latent_dim: int = 2, hidden_dim: int = 64) -> None:
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, data_dim))
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, 2 * latent_dim))

    def model(self, x: torch.Tensor) -> None:
        """:param x: a batch of shape ``(N, data_dim)``."""
        pyro.module("decoder", self.decoder)
        x_scale = pyro.param("x_scale", lambda: x.new_tensor(0.5), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), x_scale).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """:param x: a batch of shape ``(N, data_dim)``."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


@torch.no_grad()
def report(pair: RingVAE, x: torch.Tensor, when: str, num_particles: int) -> float:
    """Print the mean test ELBO and IWAE bound (nats per datapoint); return the ELBO."""
    value = elbo(pair.model, pair.guide, x, num_particles=10).mean().item()
    bound = iwae_bound(pair.model, pair.guide, x, num_particles=num_particles).mean().item()
    print(f"{when}: test ELBO {value:.3f} nats, IWAE bound (K={num_particles}) {bound:.3f} nats")
    return value


def main(args: argparse.Namespace) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    num_train = 1000 if args.smoke_test else None
    epochs = 2 if args.smoke_test else args.epochs
    x_train = datasets.load("ring", "train", root=args.data_root, num_samples=num_train, seed=args.seed)
    x_test = datasets.load("ring", "test", root=args.data_root, seed=args.seed)

    pair = RingVAE(hidden_dim=args.hidden_dim)
    before = report(pair, x_test, "before training", args.eval_particles)
    history = pyro_vae.fit(pair, x_train, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                           device="cpu", seed=args.seed, progress=False)
    after = report(pair, x_test, f"after {len(history)} epochs", args.eval_particles)
    x_scale = pyro.param("x_scale").item()
    print(f"learned observation noise sigma = {x_scale:.3f}; the ELBO went up by {after - before:.3f} nats")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--eval-particles", type=int, default=100, help="K of the IWAE bound")
    parser.add_argument("--data-root", default=None,
                        help="data folder, as every example takes it (the ring toy set is drawn, it needs none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="1000 points, 2 epochs")
    main(parser.parse_args())

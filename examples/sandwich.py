"""How wrong is my log p(x)? The ELBO, IWAE_K and AIS side by side, and the BDMC sandwich.

Trains a small VAE on scikit-learn's bundled 8x8 digits (no data files), then, on the same test images:

- the ELBO, the IWAE bound with K particles and an AIS estimate (``pyro_vae.infer.ais``), each with the spread
  over datapoints *and* its own Monte Carlo error, and their paired differences (``pyro_vae.infer.compare``);
- BDMC (``pyro_vae.infer.bdmc``) on data simulated from the trained model: forward AIS (a lower bound) and
  reverse AIS from the exact latents (an upper bound) sandwich ``log p(x)``; their gap says how far AIS with this
  schedule can be from the truth on data like these.

.. math::

    \\mathrm{ELBO}(x) \\le \\mathcal{L}_K(x) \\le \\log p(x), \\qquad
    \\mathbb{E}[\\log \\hat p_{\\mathrm{AIS}}(x)] \\le \\log p(x) \\le -\\mathbb{E}[\\log \\hat w_{\\mathrm{rev}}].

Run::

    python examples/sandwich.py
    python examples/sandwich.py --smoke-test
"""

from __future__ import annotations

import argparse

import pyro
import torch

import pyro_vae
from pyro_vae import datasets, infer


def main(args: argparse.Namespace) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    epochs = 3 if args.smoke_test else args.epochs
    steps = 20 if args.smoke_test else args.num_steps
    n_test = 8 if args.smoke_test else args.num_test
    x_train = datasets.load("digits", "train", root=args.data_root)
    x_test = datasets.binarize(datasets.load("digits", "test", root=args.data_root)[:n_test],
                               torch.Generator().manual_seed(args.seed))
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(64,))
    pyro_vae.fit(vae, x_train, epochs=epochs, batch_size=100, lr=3e-3, binarize=True, seed=args.seed, progress=False)
    vae.eval()

    with torch.no_grad():
        elbo = infer.elbo(vae.model, vae.guide, x_test, num_particles=args.num_particles)
    iwae = infer.log_likelihood(vae.model, vae.guide, x_test, num_particles=args.num_particles, seed=args.seed,
                                progress=False, diagnostics=False)
    ais = infer.ais(vae.model, vae.guide, x_test, num_chains=args.num_chains, num_steps=steps, seed=args.seed)
    print(f"{n_test} test images, after {epochs} epochs (nats per image; ± over images, then ± Monte Carlo):")
    print(f"  ELBO          {float(elbo.mean()):9.3f} ± {float(elbo.std() / n_test ** 0.5):.3f}")
    print(f"  IWAE K={args.num_particles:<5d} {iwae.mean:9.3f} ± {iwae.stderr:.3f} ± {iwae.mean_mc_stderr:.3f}")
    print(f"  AIS T={steps:<6d} {ais.mean:9.3f} ± {ais.stderr:.3f} ± {ais.mean_mc_stderr:.3f} "
          f"(acceptance {float(ais.acceptance_rate.mean()):.2f})")
    print(f"  {infer.compare(ais, iwae, names=('AIS', 'IWAE')).summary()}")
    print(f"  {infer.compare(iwae, elbo, names=('IWAE', 'ELBO')).summary()}")

    sandwich = infer.bdmc(vae.model, vae.guide, x_test, num_chains=args.num_chains, num_steps=steps, seed=args.seed)
    print(sandwich.summary())
    print("the gap is an upper bound on how far the forward AIS estimate can be from log p(x) on data like these: "
          "raise --num-steps until it is as small as you need")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--num-test", type=int, default=100, help="test images")
    parser.add_argument("--num-particles", type=int, default=1000, help="K of the IWAE bound")
    parser.add_argument("--num-chains", type=int, default=16, help="AIS chains per image")
    parser.add_argument("--num-steps", type=int, default=500, help="AIS intermediate distributions")
    parser.add_argument("--data-root", default=None,
                        help="data folder, as every example takes it (the bundled digits need none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="3 epochs, 8 images, 20 AIS steps")
    main(parser.parse_args())

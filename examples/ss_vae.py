"""The semi-supervised VAE (M2) on MNIST with few labels, the label summed exactly (enumerated).

Kingma et al.'s M2 (2014) as in Pyro's SS-VAE tutorial: ``p(y) p(z) p(x | y, z)`` with the guide
``q(y | x) q(z | x, y)``, trained on a few labelled digits (balanced over the classes) and the rest of MNIST's
training set unlabelled, with the auxiliary classification loss (``alpha = 46``). The label of an unlabelled digit
is summed exactly in the ELBO (as Pyro's ``TraceEnum_ELBO``) and inside every importance weight of the test
``log p(x)`` (IWAE_K with the label summed: ``pyro_vae.infer.log_likelihood(ssvae.model, ssvae.guide, x)``),
which neither Pyro's tutorial nor Kingma et al. report. Reports the test accuracy of ``argmax_y q(y | x)``.

Run::

    python examples/ss_vae.py --labels 100 --epochs 50
    python examples/ss_vae.py --smoke-test
"""

from __future__ import annotations

import argparse

import pyro
import torch

from pyro_vae import SSVAE, datasets, fit_semi_supervised, infer
from pyro_vae.train import balanced_split


def main(args: argparse.Namespace) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if args.smoke_test:
        args.epochs, args.hidden, args.latent_dim, args.num_test, args.num_particles = 1, 64, 8, 200, 10
    x, y = datasets.load("mnist", "train", root=args.data_root, return_labels=True)
    x_test, y_test = datasets.load("mnist", "test", root=args.data_root, return_labels=True)
    if args.smoke_test:
        x, y = x[:2000], y[:2000]
    labelled, unlabelled = balanced_split(y, args.labels, 10, args.seed)
    if args.num_unlabelled is not None:
        unlabelled = unlabelled[torch.randperm(unlabelled.numel())[: args.num_unlabelled]]
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    ssvae = SSVAE(x.shape[1:], num_classes=10, latent_dim=args.latent_dim, hidden_dims=(args.hidden,),
                  aux_loss_multiplier=args.aux_loss_multiplier).to(device)
    history = fit_semi_supervised(ssvae, x[labelled], y[labelled], x[unlabelled], epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, binarize=not args.grey, seed=args.seed,
                                  progress=not args.smoke_test, time_limit=args.max_minutes * 60.0,
                                  labelled_passes=args.labelled_passes)
    ssvae.eval()
    accuracy = ssvae.accuracy(x_test, y_test)
    test = datasets.binarize(x_test[: args.num_test], torch.Generator().manual_seed(args.seed)).to(device)
    result = infer.log_likelihood(ssvae.model, ssvae.guide, test, num_particles=args.num_particles, batch_size=50,
                                  seed=args.seed, progress=False, diagnostics=False)
    minutes = sum(r["seconds"] for r in history) / 60
    print(f"M2 with {labelled.numel()} labels ({args.labelled_passes} pass(es) per epoch) and {unlabelled.numel()} "
          f"unlabelled digits, {len(history)} epoch(s) ({minutes:.1f} min on {device})")
    print(f"  test accuracy of argmax q(y|x): {accuracy:.4f} on {x_test.shape[0]} digits")
    print(f"  test log p(x), label summed (IWAE_{args.num_particles}, {test.shape[0]} digits, fixed binarization): "
          f"{result.mean:.2f} ± {result.stderr:.2f} nats (ELBO {float(result.elbo.mean()):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=100, help="labelled training digits (balanced over classes)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="no new epoch after this long")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=4.2e-4)
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--aux-loss-multiplier", type=float, default=46.0)
    parser.add_argument("--num-test", type=int, default=1000, help="test digits for log p(x)")
    parser.add_argument("--num-particles", type=int, default=1000, help="K of the IWAE estimate")
    parser.add_argument("--labelled-passes", type=int, default=1,
                        help="passes over the labelled digits per epoch (1: Pyro's schedule)")
    parser.add_argument("--num-unlabelled", type=int, default=None, help="a random subset of the unlabelled digits")
    parser.add_argument("--grey", action="store_true",
                        help="train on the grey levels as Bernoulli targets, as Pyro's tutorial does (no density of "
                             "the images: the test log p(x) stays that of binarized digits); default: a fresh "
                             "binarization of every batch")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--data-root", default=None, help="folder holding mnist/ (default: $PYRO_VAE_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="2,000 training digits, tiny nets, one epoch")
    try:
        main(parser.parse_args())
    except datasets.DataNotFoundError as e:  # one line saying where to point, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e} (from the command line: --data-root FOLDER)\n")

"""The semi-supervised VAE (M2) on MNIST with few labels, the label summed exactly (enumerated).

Kingma et al.'s M2 (2014) as in Pyro's SS-VAE tutorial: ``p(y) p(z) p(x | y, z)`` with the guide
``q(y | x) q(z | x, y)``, trained on a few labelled digits (balanced over the classes) and the rest of MNIST's
training set unlabelled, with the auxiliary classification loss (``alpha = 46``). The label of an unlabelled digit
is summed exactly in the ELBO (as Pyro's ``TraceEnum_ELBO``) and inside every importance weight of the test
``log p(x)`` (IWAE_K with the label summed: ``pyro_vae.infer.log_likelihood(ssvae.model, ssvae.guide, x)``),
which neither Pyro's tutorial nor Kingma et al. report. Reports the test accuracy of ``argmax_y q(y | x)`` at the
last epoch and at the epoch of best validation accuracy (Pyro's protocol: the last 10,000 training digits
validate, the first 50,000 give the labelled and the unlabelled ones).

Run::

    python examples/ss_vae.py --labels 100 --epochs 50
    python examples/ss_vae.py --smoke-test
"""

from __future__ import annotations

import argparse
import tempfile

import pyro
import torch

import pyro_vae
from pyro_vae import SSVAE, datasets, fit_semi_supervised, infer
from pyro_vae.train import balanced_split
from pyro_vae.train.semi_supervised import init_hidden_normal_


def main(args: argparse.Namespace) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if args.smoke_test:
        args.epochs, args.hidden, args.latent_dim, args.num_test, args.num_particles = 1, 64, 8, 200, 10
    # Pyro's protocol: the first 50,000 training digits labelled or not, the last 10,000 the validation split
    x, y = datasets.load("mnist", "train-without-valid", root=args.data_root, return_labels=True)
    x_valid, y_valid = datasets.load("mnist", "valid", root=args.data_root, return_labels=True)
    x_test, y_test = datasets.load("mnist", "test", root=args.data_root, return_labels=True)
    if args.smoke_test:
        x, y, x_valid, y_valid = x[:2000], y[:2000], x_valid[:500], y_valid[:500]
    labelled, unlabelled = balanced_split(y, args.labels, 10, args.seed)
    if args.num_unlabelled is not None:
        g = torch.Generator().manual_seed(args.seed)
        unlabelled = unlabelled[torch.randperm(unlabelled.numel(), generator=g)[: args.num_unlabelled]]
    if not args.grey:  # the classifier is scored on binary digits, as it is trained (one fixed draw)
        x_valid = datasets.binarize(x_valid, torch.Generator().manual_seed(args.seed))
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    ssvae = SSVAE(x.shape[1:], num_classes=10, latent_dim=args.latent_dim, hidden_dims=(args.hidden,),
                  aux_loss_multiplier=args.aux_loss_multiplier)
    if args.init_std is not None:
        init_hidden_normal_(ssvae, args.init_std)
    ssvae.to(device)
    with tempfile.TemporaryDirectory() as best_dir:
        history = fit_semi_supervised(ssvae, x[labelled], y[labelled], x[unlabelled], epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr, betas=(args.adam_beta1, 0.999),
                                      binarize=not args.grey, seed=args.seed, val_data=(x_valid, y_valid),
                                      progress=not args.smoke_test, time_limit=args.max_minutes * 60.0,
                                      labelled_passes=args.labelled_passes, aux_step=args.aux_step,
                                      loss_scale=args.loss_scale, best_dir=best_dir,
                                      labelled_schedule=args.labelled_schedule)
        best = pyro_vae.load(best_dir, map_location=device)  # the model of the best validation accuracy
    ssvae.eval()
    accuracy, best_accuracy = ssvae.accuracy(x_test, y_test), best.accuracy(x_test, y_test)
    test = datasets.binarize(x_test[: args.num_test], torch.Generator().manual_seed(args.seed)).to(device)
    result = infer.log_likelihood(ssvae.model, ssvae.guide, test, num_particles=args.num_particles, batch_size=50,
                                  seed=args.seed, progress=False, diagnostics=False)
    minutes = sum(r["seconds"] for r in history) / 60
    epoch = history[-1]["best_epoch"]
    print(f"M2 with {labelled.numel()} labels ({args.labelled_passes} pass(es) per epoch) and {unlabelled.numel()} "
          f"unlabelled digits, {len(history)} epoch(s) ({minutes:.1f} min on {device})")
    print(f"  test accuracy of argmax q(y|x): {accuracy:.4f} at the last epoch, {best_accuracy:.4f} at epoch {epoch} "
          f"(best validation accuracy {history[epoch - 1]['val_accuracy']:.4f}) on {x_test.shape[0]} digits")
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
    parser.add_argument("--labelled-passes", type=int, default=10,
                        help="passes over the labelled digits per epoch (default 10, what moved the accuracy most in "
                             "docs/results.md §5.1; 1: Pyro's schedule)")
    parser.add_argument("--num-unlabelled", type=int, default=None, help="a random subset of the unlabelled digits")
    parser.add_argument("--grey", action="store_true",
                        help="train on the grey levels as Bernoulli targets, as Pyro's tutorial does (no density of "
                             "the images: the test log p(x) stays that of binarized digits); default: a fresh "
                             "binarization of every batch")
    parser.add_argument("--aux-step", default="joint", choices=("joint", "separate"),
                        help="the auxiliary loss in the bound's Adam update, or one of its own (Pyro's)")
    parser.add_argument("--loss-scale", default="mean", choices=("mean", "sum"),
                        help="each step's loss per datapoint, or summed (Pyro's)")
    parser.add_argument("--labelled-schedule", default="interleaved", choices=("interleaved", "mixed"),
                        help="labelled batches as steps of their own (Pyro's) or mixed into every unlabelled step")
    parser.add_argument("--adam-beta1", type=float, default=0.9, help="Adam's beta1 (Pyro's example: 0.95)")
    parser.add_argument("--init-std", type=float, default=None,
                        help="hidden layers' initial weights from N(0, std^2) (Pyro's example: 0.001)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--data-root", default=None, help="folder holding mnist/ (default: $PYRO_VAE_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="2,000 training digits, tiny nets, one epoch")
    try:
        main(parser.parse_args())
    except datasets.DataNotFoundError as e:  # one line saying where to point, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e} (from the command line: --data-root FOLDER)\n")

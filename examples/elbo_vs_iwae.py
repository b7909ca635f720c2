"""ELBO against the importance-weighted bound: how the gap closes as the number of particles K grows.

Trains a VAE (or loads a run folder written by ``pyro-vae train``), then estimates ``log p(x)`` of the test set
with ``K`` importance samples per datapoint and draws two figures:

- ``k_curve.png``: the ELBO and the IWAE bound :math:`\\mathcal{L}_K` for K = 1, 5, 50, 500, 5000 with
  standard-error bars: :math:`\\mathrm{ELBO} = \\mathcal{L}_1 \\le \\mathcal{L}_5 \\le \\dots \\le \\log p(x)`;
- ``gaps.png``: the histogram of the per-datapoint gap :math:`\\mathcal{L}_K - \\mathrm{ELBO}`.

Run::

    python examples/elbo_vs_iwae.py                          # digits, trains in seconds, K = 5000
    python examples/elbo_vs_iwae.py --run runs/mnist --num 1000 --data-root ../shared/data
    python examples/elbo_vs_iwae.py --smoke-test

The figures and ``elbo_vs_iwae.json`` go to ``--out`` (default ``runs/elbo_vs_iwae``; ``runs/elbo_vs_iwae-smoke``
with ``--smoke-test``). A run folder's test data are read from ``--data-root`` (default: the run's data folder,
else the ``PYRO_VAE_DATA`` environment variable).

Reference: Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae import datasets, infer, plots


def main(args: argparse.Namespace) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if args.run:
        from pyro_vae.runs import load_run

        vae, config = load_run(args.run)
        root = args.data_root if args.data_root is not None else config.get("data_root")
        test = datasets.load(config["dataset"], config.get("splits", {}).get("test", "test"), root=root)
        binarize = bool(config.get("training", {}).get("binarize"))
    else:
        train = datasets.load("digits", "train")
        test = datasets.load("digits", "test")
        vae = pyro_vae.VAE(train.shape[1:], latent_dim=8, hidden_dims=(128,))
        pyro_vae.fit(vae, train, epochs=args.epochs, batch_size=100, lr=3e-3, binarize=True, seed=args.seed,
                     progress=False)
        binarize = True
    if args.num is not None:
        test = test[: args.num]
    if binarize:  # one fixed binarization of the test set, shared by every K
        test = datasets.binarize(test, torch.Generator().manual_seed(args.seed))
    result = infer.log_likelihood(vae.model, vae.guide, test, num_particles=args.num_particles, seed=args.seed,
                                  progress=not args.smoke_test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots.k_curve(result, out / "k_curve.png")
    plots.gap_histogram(result, out / "gaps.png")
    summary = result.as_dict()
    (out / "elbo_vs_iwae.json").write_text(json.dumps(summary, indent=2))
    print(result.summary())
    print(f"wrote {out / 'k_curve.png'}, {out / 'gaps.png'}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="a run folder to load instead of training on digits")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs on digits (default: 100)")
    parser.add_argument("--num-particles", type=int, default=5000, help="K (default: 5000)")
    parser.add_argument("--num", type=int, default=None, help="evaluate only the first NUM test datapoints")
    parser.add_argument("--out", default=None,
                        help="folder for the figures (default: runs/elbo_vs_iwae, runs/elbo_vs_iwae-smoke with "
                             "--smoke-test)")
    parser.add_argument("--data-root", default=None,
                        help="data folder of --run's data set (default: the run's, else $PYRO_VAE_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="a few epochs, 50 datapoints, K = 50")
    args = parser.parse_args()
    if args.smoke_test:
        args.epochs, args.num, args.num_particles = 2, 50, 50
    if args.out is None:  # under runs/ (ignored by git), never the current folder itself
        args.out = "runs/elbo_vs_iwae-smoke" if args.smoke_test else "runs/elbo_vs_iwae"
    try:
        main(args)
    except datasets.DataNotFoundError as e:  # one line saying where to point, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e} (from the command line: --data-root FOLDER)\n")

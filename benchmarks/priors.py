"""Richer priors and guides on dynamically binarized MNIST, under one budget: the standard prior, a mixture of
Gaussians, the VampPrior, the IAF guide and VampPrior + IAF, the same one-layer network (784-300-300-40, as the
VampPrior paper's one stochastic layer; tanh here), the same epochs, Adam and seed.

Each model is scored with IWAE_K on the same fixed binarization of the first ``--eval-num`` test images, and
compared with the standard prior by the paired difference (``pyro_vae.infer.compare``); active units
(``latent_usage``) and sample grids side by side. ``--write-docs`` records the table in ``docs/results.md``.

Usage::

    python benchmarks/priors.py --smoke-test
    python benchmarks/priors.py --epochs 10 --eval-num 1000 --eval-k 1000 --write-docs
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch
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

import pyro_vae
from pyro_vae import datasets, infer

CONFIGS: dict[str, dict[str, Any]] = {
    "standard prior": {},
    "mixture prior (K=50)": {"prior": "mixture", "prior_options": {"num_components": 50}},
    "VampPrior (K=500)": {"prior": "vamp", "prior_options": {"num_components": 500}},
    "IAF guide (2 flows)": {"guide_flow": "iaf", "num_flows": 2},
    "VampPrior + IAF": {"prior": "vamp", "prior_options": {"num_components": 500}, "guide_flow": "iaf",
                        "num_flows": 2},
}
PUBLISHED = ("Published, one stochastic layer, IWAE_5000 on the full test set: VampPrior paper (Tomczak & Welling "
             "2018, Table 2): standard prior -88.56, VampPrior -85.57; pythae's reproduction (Chadebec et al. 2022, "
             "its README's VampPrior table): VAE -89.78, VampPrior -85.79.")


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.epochs, args.train_size, args.eval_num, args.eval_k = 1, 1000, 50, 20
    root = args.data_root or os.environ.get("PYRO_VAE_DATA")
    if root is None and (REPO_ROOT.parent / "shared" / "data").is_dir():
        root = REPO_ROOT.parent / "shared" / "data"
    train = datasets.load("mnist", "train", root=root)[: args.train_size or None]
    test = datasets.binarize(datasets.load("mnist", "test", root=root)[: args.eval_num],
                             torch.Generator().manual_seed(1234))
    hidden, latent = (300, 300), 40
    rows, results, samples = [], {}, {}
    t_start = time.perf_counter()
    for name, config in CONFIGS.items():
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        options = dict(config)
        if args.smoke_test and "prior_options" in options:
            options["prior_options"] = {"num_components": 5}
        vae = pyro_vae.VAE((1, 28, 28), latent_dim=latent, hidden_dims=hidden, **options)
        vae.init_output_bias(train)
        t0 = time.perf_counter()
        history = pyro_vae.fit(vae, train, epochs=args.epochs, batch_size=100, lr=1e-3, binarize=True,
                               seed=args.seed, progress=False, device="cpu")
        seconds = time.perf_counter() - t0
        r = infer.log_likelihood(vae.model, vae.guide, test, num_particles=args.eval_k, batch_size=50,
                                 seed=args.seed, progress=False, diagnostics=False)
        usage = infer.latent_usage(vae.model, vae.guide, test, seed=args.seed)["z"]
        results[name] = r
        pyro.set_rng_seed(args.seed)
        samples[name] = vae.sample(64).cpu()
        record = {"row": name, "log_likelihood": r.mean, "stderr": r.stderr, "mc_stderr": r.mean_mc_stderr,
                  "train_loss": history[-1]["loss"], "active_units": usage["active_units"], "seconds": seconds}
        print_json(record)
        rows.append(record)
    base = results["standard prior"]
    for record in rows:
        c = infer.compare(results[record["row"]], base)
        record["vs_standard"] = (c.mean, c.stderr)
    if args.write_docs and not args.smoke_test:
        figure = Path(REPO_ROOT) / "docs" / "figures" / "priors_samples.png"
        _grid(samples, figure)
        table = markdown_table(
            ["model", f"test log p(x) (IWAE_{args.eval_k})", "paired difference to the standard prior",
             "active units (of 40)", "training time"],
            [[r["row"], f"{r['log_likelihood']:.2f} ± {r['stderr']:.2f} (MC ± {r['mc_stderr']:.2f})",
              "—" if r["row"] == "standard prior" else f"{r['vs_standard'][0]:+.2f} ± {r['vs_standard'][1]:.2f}",
              r["active_units"], f"{r['seconds']:.0f} s"] for r in rows])
        body = f"""## 4. Richer priors and guides (VampPrior, mixture, IAF)

Script: [`benchmarks/priors.py`](../benchmarks/priors.py). The same one-stochastic-layer network
(784-300-300-40, tanh), dynamically binarized MNIST ({train.shape[0]:,} training images), Adam (lr 1e-3,
batch 100), {args.epochs} epochs for every model, seed {args.seed}; test log p(x) by IWAE_{args.eval_k} on one fixed
binarization of the first {args.eval_num:,} test images (mean ± standard error over images, then the Monte Carlo
error of the mean); the paired difference to the standard prior (`pyro_vae.infer.compare`) removes the spread
that the images share.

- date: {utc_date()}
- command: `{command_line()}`
{machine_markdown(machine_info(threads=torch.get_num_threads(), device="cpu"))}
- total run time: {time.perf_counter() - t_start:.0f} s

{table}

{PUBLISHED} The budget here is far from the papers': they train for hundreds to thousands of epochs with
warm-up and early stopping, and evaluate with K = 5000 on all 10,000 test images; {args.epochs} epochs on two CPU
cores is a few percent of that, so the absolute numbers are far below theirs and only the ordering of the rows
under the same budget is evidence (and, at this budget, weak evidence). Training times are wall-clock on a shared
two-core machine, some rows measured while other jobs ran: they are indicative only.

![64 samples of each model, side by side](figures/priors_samples.png)
"""
        path = update_section("priors", body, Path(REPO_ROOT) / "docs" / "results.md")
        print(f"wrote the priors section of {path}", file=sys.stderr)
    return rows


def _grid(samples: dict[str, torch.Tensor], path: Path) -> None:
    from pyro_vae.plots import image_panels

    # at most three panels a row, titles in a large font: readable when the page shrinks the figure
    image_panels(samples, path, ncols=3, dpi=90)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=0, help="the first N training images (0: all 60,000)")
    p.add_argument("--eval-num", type=int, default=1000)
    p.add_argument("--eval-k", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--smoke-test", action="store_true")
    p.add_argument("--write-docs", action="store_true")
    return p


if __name__ == "__main__":
    main(make_parser().parse_args())

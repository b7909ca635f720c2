"""Reproduce rows of Table 1 of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders".

Each row trains one model with the paper's recipe and measures it the paper's way:

- architecture: one stochastic layer (784-200-200-50, :class:`pyro_vae.VAE`) or two
  (784-200-200-100-100-100-50, :class:`pyro_vae.HierarchicalVAE`), tanh units, ``exp`` scales, Bernoulli
  pixels, the decoder's output bias initialised to the logit of the mean training pixel;
- objective: the VAE's ELBO (``k`` samples averaged) or the IWAE bound with ``k`` particles;
- optimisation: Adam (beta1 0.9, beta2 0.999, eps 1e-4), batch 20, the paper's schedule (``lr_schedule="iwae"``:
  stage ``i`` runs ``3**i`` passes at ``1e-3 * 10**(-i/7)``; 8 stages are 3280 passes). ``--passes`` stops early:
  a run of ``P`` passes is the first ``P`` passes of the paper's schedule;
- data: MNIST, dynamically binarized (a fresh Bernoulli draw per batch, 60,000 training images), or the fixed
  binarization of Larochelle (``--binarization fixed``, 60,000 = train+valid, appendix D);
- test log p(x): the mean over the test set of IWAE_5000 (``--eval-k``), on the first ``--eval-num`` test images
  (all 10,000 in the paper), the dynamically binarized test set drawn once with a fixed seed;
- active units: dimensions whose posterior mean varies over the test set by more than 0.01 (section 5.2).

Results go to ``OUT/ROW.json`` (one file per row) and one JSON line per row on stdout.

Usage::

    python benchmarks/reproduce_iwae.py --smoke-test
    nice -n 10 python benchmarks/reproduce_iwae.py --rows vae-k1-l1,iwae-k5-l1 --passes 4 --eval-num 500 \\
        --out runs/reproduce_iwae
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from common import command_line, machine_info, print_json, utc_date

import pyro_vae
from pyro_vae import datasets, infer
from pyro_vae.models import HierarchicalVAE

#: test log p(x) in nats from Table 1 (and appendix D for the fixed binarization)
PAPER = {
    ("vae", 1, 1, "dynamic"): -86.76, ("vae", 5, 1, "dynamic"): -86.47, ("vae", 50, 1, "dynamic"): -86.35,
    ("iwae", 1, 1, "dynamic"): -86.76, ("iwae", 5, 1, "dynamic"): -85.54, ("iwae", 50, 1, "dynamic"): -84.78,
    ("vae", 1, 2, "dynamic"): -85.33, ("vae", 5, 2, "dynamic"): -85.01, ("vae", 50, 2, "dynamic"): -84.78,
    ("iwae", 1, 2, "dynamic"): -85.33, ("iwae", 5, 2, "dynamic"): -83.89, ("iwae", 50, 2, "dynamic"): -82.90,
    ("iwae", 50, 1, "fixed"): -87.10,
}
PAPER_PASSES = 3280
ONE_LAYER = {"latent_dim": 50, "hidden_dims": (200, 200)}
TWO_LAYERS = ((200, 200, 100), (100, 100, 50))


def parse_row(name: str) -> tuple[str, int, int]:
    """``"iwae-k50-l2"`` -> ``("iwae", 50, 2)``."""
    m = re.fullmatch(r"(vae|iwae)-k(\d+)-l([12])", name)
    if m is None:
        raise ValueError(f"a row is OBJECTIVE-kK-lLAYERS, e.g. vae-k1-l1 or iwae-k50-l2; got {name!r}")
    return m.group(1), int(m.group(2)), int(m.group(3))


def build(layers: int, input_shape: tuple[int, ...], small: bool = False) -> torch.nn.Module:
    if layers == 1:
        if small:
            return pyro_vae.VAE(input_shape, latent_dim=4, hidden_dims=(32, 32))
        return pyro_vae.VAE(input_shape, **ONE_LAYER)
    return HierarchicalVAE(input_shape, layers=((32, 8), (16, 4)) if small else TWO_LAYERS)


def run_row(name: str, args: argparse.Namespace, x_train: torch.Tensor, x_test: torch.Tensor,
            binarize: bool) -> dict[str, Any]:
    objective, k, layers = parse_row(name)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = build(layers, tuple(x_train.shape[1:]), small=args.smoke_test)
    vae.init_output_bias(x_train)
    t0 = time.perf_counter()
    history = pyro_vae.fit(
        vae, x_train, epochs=args.passes, batch_size=args.batch_size, lr=1e-3,
        objective="elbo" if objective == "vae" else "iwae", num_particles=k, device=args.device, seed=args.seed,
        progress=False, binarize=binarize, lr_schedule="iwae", betas=(0.9, 0.999), eps=1e-4, compile=args.compile,
        on_epoch_end=lambda r: print(f"  [{name}] pass {r['epoch']}: loss {r['loss']:.2f} "
                                     f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True))
    train_seconds = time.perf_counter() - t0
    vae.eval()
    device = next(vae.parameters()).device
    x_eval = x_test[:args.eval_num].to(device)
    if binarize:  # one fixed draw of the test set, the same for every row
        x_eval = datasets.binarize(x_eval, generator=torch.Generator(device=device).manual_seed(1234))
    t0 = time.perf_counter()
    result = infer.log_likelihood(vae.model, vae.guide, x_eval, num_particles=args.eval_k,
                                  batch_size=args.eval_batch_size, seed=args.seed, progress=False,
                                  k_values=(1, 5, 50, 500, 5000))
    eval_seconds = time.perf_counter() - t0
    usage = infer.latent_usage(vae.model, vae.guide, x_eval, seed=args.seed)
    paper = PAPER.get((objective, k, layers, args.binarization))
    record = {
        "row": name, "objective": objective, "k": k, "stochastic_layers": layers,
        "binarization": args.binarization, "passes": len(history), "paper_passes": PAPER_PASSES,
        "fraction_of_paper_budget": len(history) / PAPER_PASSES, "batch_size": args.batch_size,
        "train_size": int(x_train.shape[0]), "eval_num": int(x_eval.shape[0]), "eval_k": args.eval_k,
        "test_log_likelihood": result.mean, "test_log_likelihood_stderr": result.stderr,
        "test_elbo": float(result.elbo.double().mean()),
        "test_log_likelihood_values": result.values.tolist(),
        "iwae_curve": {str(kk): float(v.double().mean()) for kk, v in result.curve.items()},
        "active_units": {site: u["active_units"] for site, u in usage.items()},
        "latent_dims": {site: u["dimensions"] for site, u in usage.items()},
        "paper_test_log_likelihood": paper,
        "difference_to_paper": None if paper is None else result.mean - paper,
        "history": [{k2: h[k2] for k2 in ("epoch", "loss", "lr", "seconds")} for h in history],
        "train_seconds": train_seconds, "eval_seconds": eval_seconds, "num_unreliable_khat": result.num_unreliable,
        "machine": machine_info(device=device), "command": command_line(), "date": utc_date(),
        "smoke_test": bool(args.smoke_test),
    }
    return record, vae


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.smoke_test:
        args.passes, args.eval_k, args.eval_num, args.batch_size, args.train_num = 2, 20, 40, 20, 300
        dataset, train_split, test_split = "digits", "train", "test"
    elif args.binarization == "fixed":
        dataset, train_split, test_split = "binarized-mnist", "train+valid", "test"
    else:
        dataset, train_split, test_split = "mnist", "train", "test"
    binarize = args.binarization == "dynamic"
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train = datasets.load(dataset, train_split, root=args.data_root)
    x_test = datasets.load(dataset, test_split, root=args.data_root)
    if args.train_num:
        x_train = x_train[:args.train_num]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.rows.split(","):
        record, vae = run_row(name.strip(), args, x_train, x_test, binarize)
        record["dataset"] = dataset
        (out / f"{record['row']}-{args.binarization}.json").write_text(json.dumps(record, indent=1))
        torch.save(vae.state_dict(), out / f"{record['row']}-{args.binarization}.pt")
        print_json({k: v for k, v in record.items() if k not in ("history", "machine", "test_log_likelihood_values")})
        records.append(record)
    return records


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="vae-k1-l1,iwae-k5-l1",
                   help="comma-separated rows OBJECTIVE-kK-lLAYERS (default: vae-k1-l1,iwae-k5-l1)")
    p.add_argument("--passes", type=int, default=PAPER_PASSES, help=f"training passes (paper: {PAPER_PASSES})")
    p.add_argument("--batch-size", type=int, default=20, help="batch size (paper: 20)")
    p.add_argument("--binarization", choices=("dynamic", "fixed"), default="dynamic")
    p.add_argument("--eval-k", type=int, default=5000, help="particles of the test log p(x) (paper: 5000)")
    p.add_argument("--eval-num", type=int, default=10000, help="test images evaluated (paper: all 10000)")
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--train-num", type=int, default=None, help="use only the first N training images")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="fit(..., compile=True): the compiled training step")
    p.add_argument("--out", default="runs/reproduce_iwae", help="folder for the per-row JSON and weights")
    p.add_argument("--smoke-test", action="store_true", help="2 passes of tiny models on 300 of sklearn's digits")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

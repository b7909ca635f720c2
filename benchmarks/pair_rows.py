"""Paired comparison of two rows written by ``reproduce_iwae.py``: both saved models are re-evaluated (IWAE_K)
on the same binarized test images, and the mean and standard error of the per-image *difference* are printed.

The per-image log p(x) of two models on the same images are strongly correlated, so the paired standard error
is much smaller than the two rows' standard errors combined.

Usage::

    python benchmarks/pair_rows.py runs/reproduce_iwae_40/vae-k1-l1-dynamic.json \\
        runs/reproduce_iwae_40/iwae-k5-l1-dynamic.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from common import print_json
from reproduce_iwae import build

from pyro_vae import datasets, infer


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    values = {}
    for path in (Path(args.a), Path(args.b)):
        rec = json.loads(path.read_text())
        dataset = rec.get("dataset", "mnist")
        x = datasets.load(dataset, "test", root=args.data_root)[:rec["eval_num"]]
        if rec["binarization"] == "dynamic":  # the same fixed draw as reproduce_iwae.py
            x = datasets.binarize(x, generator=torch.Generator().manual_seed(1234))
        vae = build(rec["stochastic_layers"], tuple(x.shape[1:]), small=rec.get("smoke_test", False))
        vae.load_state_dict(torch.load(path.with_suffix(".pt"), weights_only=True))
        vae.eval()
        r = infer.log_likelihood(vae.model, vae.guide, x, num_particles=args.k or rec["eval_k"], batch_size=50,
                                 seed=args.seed, progress=False, diagnostics=False)
        values[rec["row"]] = r
        print_json({"row": rec["row"], "log_likelihood": r.mean, "stderr": r.stderr})
    (a, ra), (b, rb) = values.items()
    c = infer.compare(rb, ra)  # the library's paired comparison: b - a
    va, vb = ra.values, rb.values
    out = {"a": a, "b": b, "mean_difference_b_minus_a": c.mean, "paired_stderr": c.stderr,
           "ci95": [c.ci_low, c.ci_high], "fraction_b_better": float((c.difference > 0).double().mean()),
           "unpaired_stderr": math.hypot(float(va.double().std()), float(vb.double().std())) / math.sqrt(va.numel())}
    print_json(out)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="row JSON written by reproduce_iwae.py (its .pt next to it)")
    p.add_argument("b", help="the other row")
    p.add_argument("--k", type=int, default=None, help="particles (default: the rows' eval_k)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    main(p.parse_args())

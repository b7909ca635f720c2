"""How the two-stage sampler's FCD depends on drawing ``z ~ p(z | u)`` or decoding stage 2's mean ``E[z | u]``,
and how much the FCD of one set of samples varies with the sampling seed, for runs of ``two_stage.py``.

It reads a run folder of ``benchmarks/two_stage.py`` (``two_stage.json`` for the architecture, ``models.pt``,
``classifier.pt``), draws ``--num-fcd`` samples with each sampler for each of ``--seeds`` seeds, and prints one
JSON line per run: the FCD of every draw, their mean and standard deviation, and stage 2's learned ``gamma``.

Usage::

    python benchmarks/two_stage_sampling.py runs/two_stage_mnist runs/two_stage_mnist_s2e50
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from common import command_line, print_json, utc_date

from pyro_vae import datasets
from pyro_vae.frechet import frechet_classifier_distance, load_classifier
from pyro_vae.models import TwoStageVAE


def measure(folder: Path, seeds: int, data_root: str | None) -> dict[str, Any]:
    rec = json.loads((folder / "two_stage.json").read_text())
    dataset = "digits" if rec.get("smoke_test") else rec["dataset"]
    real = datasets.load(dataset, "test", root=data_root)[:rec["num_fcd"]]
    shape = tuple(real.shape[1:])
    tsv = TwoStageVAE(shape, latent_dim=rec["latent_dim"], hidden_dims=tuple(rec["hidden_dims"]),
                      stage2_hidden_dims=tuple(rec["stage2_hidden_dims"]), activation="relu",
                      encoder=rec["encoder"], decoder=rec["decoder"])
    tsv.load_state_dict(torch.load(folder / "models.pt", weights_only=True)["two_stage"])
    tsv.eval()
    clf = load_classifier(folder / "classifier.pt", shape)
    fcd: dict[str, list[float]] = {"z drawn from p(z | u) (the sampler)": [], "z = E[z | u] (decoder mean)": []}
    for seed in range(seeds):
        for name, mean in zip(fcd, (False, True)):
            torch.manual_seed(seed)
            with torch.no_grad():
                x = tsv.stage1.decode(tsv.stage2.sample(len(real), mean=mean)).clamp(0, 1)
            fcd[name].append(frechet_classifier_distance(clf, real, x))
    return {"run": str(folder), "dataset": dataset, "num_fcd": len(real), "seeds": seeds,
            "stage2_gamma": float(tsv.stage2.likelihood.gamma.detach()),
            "fcd": {k: {"values": v, "mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
                    for k, v in fcd.items()},
            "command": command_line(), "date": utc_date()}


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = [measure(Path(folder), args.seeds, args.data_root) for folder in args.runs]
    for record in out:
        print_json(record)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="--out folders of two_stage.py")
    p.add_argument("--seeds", type=int, default=4, help="sampling seeds per sampler")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=None)
    return p


if __name__ == "__main__":
    main(parser().parse_args())

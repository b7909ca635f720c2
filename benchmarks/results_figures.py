"""Figures for ``docs/results.md`` from the runs of ``reproduce_iwae.py`` and ``two_stage.py``.

- ``iwae_samples.png``: 64 samples (pixel means) of each trained Table 1 row, side by side;
- ``two_stage_<dataset>_gamma.png``: stage 1's gamma and validation ELBO per epoch (log scale for gamma);
- the sample panels of ``two_stage.py`` are copied as ``two_stage_<dataset>_samples.png``.

Usage::

    python benchmarks/results_figures.py --iwae runs/reproduce_iwae runs/reproduce_iwae_13 \
        --two-stage runs/two_stage_mnist runs/two_stage_fashion
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import REPO_ROOT  # noqa: E402
from reproduce_iwae import build  # noqa: E402

from pyro_vae.plots import image_panels  # noqa: E402

FIGURES = REPO_ROOT / "docs" / "figures"


def iwae_samples(folders: list[Path], out: Path) -> None:
    rows = [path for folder in folders for path in sorted(folder.glob("*.json"))]
    panels = []
    for path in rows:
        rec = json.loads(path.read_text())
        if rec.get("smoke_test"):
            continue
        vae = build(rec["stochastic_layers"], (1, 28, 28))
        vae.load_state_dict(torch.load(path.with_suffix(".pt"), weights_only=True))
        vae.eval()
        torch.manual_seed(0)
        title = (f"{rec['objective'].upper()} k={rec['k']}, {rec['stochastic_layers']} layer(s)\n"
                 f"{rec['passes']} passes, log p(x) {rec['test_log_likelihood']:.2f}")
        panels.append((title, vae.sample(64)))
    if not panels:
        return
    # at most three panels a row, titles in a large font: readable when the page shrinks the figure
    image_panels(dict(panels), out, ncols=3, dpi=80)
    print(f"wrote {out}")


def two_stage(folder: Path) -> None:
    rec = json.loads((folder / "two_stage.json").read_text())
    name = rec["dataset"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = range(1, len(rec["gamma_trajectory"]) + 1)
    a.semilogy(epochs, rec["gamma_trajectory"], marker="o")
    a.set_xlabel("epoch")
    a.set_ylabel("stage-1 decoder variance gamma")
    a.set_title("gamma falls towards 0")
    b.plot(epochs, rec["stage1_val_elbo"], marker="o", label="learned gamma")
    b.plot(epochs, rec["plain_val_elbo"], marker="s", label="gamma = 1")
    b.set_xlabel("epoch")
    b.set_ylabel("validation ELBO (nats, density)")
    b.set_title("the ELBO grows as gamma falls")
    b.legend()
    fig.tight_layout()
    out = FIGURES / f"two_stage_{name}_gamma.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"wrote {out}")
    if (folder / "samples.png").exists():
        shutil.copy(folder / "samples.png", FIGURES / f"two_stage_{name}_samples.png")
        print(f"wrote {FIGURES / f'two_stage_{name}_samples.png'}")


def main(args: argparse.Namespace) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    if args.iwae:
        iwae_samples([Path(f) for f in args.iwae], FIGURES / "iwae_samples.png")
    for folder in args.two_stage or []:
        two_stage(Path(folder))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iwae", nargs="*", default=None, help="--out folders of reproduce_iwae.py")
    p.add_argument("--two-stage", nargs="*", default=None, help="--out folders of two_stage.py")
    main(p.parse_args())

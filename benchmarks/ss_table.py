"""The semi-supervised VAE's table (``docs/results.md`` §5), by Pyro's protocol, resumable cell by cell.

Every cell is one run folder of ``pyro-vae train --semi-supervised`` (:func:`pyro_vae.pipeline.train_run`) under
``--root``: a number of labels, a seed and a *variant* (the run options that differ from the defaults). MNIST's
first 50,000 training digits give the labelled and the unlabelled ones, the last 10,000 the validation split;
each run reports the test accuracy at its last epoch and at its best validation epoch (its model kept in
``best/``) and ``log p(x)`` with the label summed (IWAE). A finished cell (its ``test_metrics.json``) is skipped, an
unfinished one resumed, and a finished one of fewer epochs than ``--epochs`` extended (resumed to the new budget), so
the CPU hours can be spread over several calls, and a GPU, where there is one, can fill the table. ``--write-docs``
writes the table (mean ± sd over the seeds of each row) into its section of ``docs/results.md`` with the command,
the date, the machine and the budget.

Two tables: ``--table ablation`` (100 labels, the variants of :data:`ABLATION`, one option changed from today's
defaults each, at a reduced budget) and ``--table labels`` (the numbers of labels of Pyro's tutorial with the
defaults).

Run::

    python benchmarks/ss_table.py --table ablation --seeds 0,1 --epochs 20 --num-unlabelled 10000 --write-docs
    python benchmarks/ss_table.py --table labels --labels 100,600,1000,3000 --seeds 0,1,2 --epochs 50 --write-docs
    python benchmarks/ss_table.py --table labels --labels 100 --variant "init std 0.001 and labelled passes 10"
    python benchmarks/ss_table.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    command_line,
    machine_info,
    machine_markdown,
    markdown_table,
    update_section,
    utc_date,
)

from pyro_vae.io import write_json

#: the paper's network and Pyro's training settings, shared by every cell (the CLI's defaults for the kind)
BASE = {"dataset": "mnist", "semi_supervised": True, "num_threads": 1}
#: the defaults when the ablation ran (2026-12-06): one labelled pass an epoch (the kind's default is now 10, which
#: the ablation chose), so that every cell of the ablation, run then or later, changes one setting from the same base
ABLATION_BASE: dict[str, Any] = {"labelled_passes": 1}
#: one option changed at a time from the defaults (the first row: the defaults themselves)
ABLATION: dict[str, dict[str, Any]] = {
    "defaults": {},
    "aux step separate (Pyro)": {"aux_step": "separate"},
    "loss summed (Pyro)": {"loss_scale": "sum"},
    "Adam beta1 0.95 (Pyro)": {"adam_beta1": 0.95},
    "init std 0.001 (Pyro)": {"init_std": 0.001},
    "grey targets (Pyro)": {"binarize": "no"},
    "labelled passes 10": {"labelled_passes": 10},
    "labelled passes 50": {"labelled_passes": 50},
    "init std 0.001 and labelled passes 10": {"init_std": 0.001, "labelled_passes": 10},
    "mixed minibatches (Kingma) and labelled passes 10": {"labelled_schedule": "mixed", "labelled_passes": 10},
    "latent 10 and labelled passes 10": {"labelled_passes": 10, "latent_dim": 10},
    "latent 5 and labelled passes 10": {"labelled_passes": 10, "latent_dim": 5},
    "all of Pyro's settings": {"aux_step": "separate", "loss_scale": "sum", "adam_beta1": 0.95, "init_std": 0.001,
                               "binarize": "no"},
}
#: the tutorial's test accuracies (Pyro's SS-VAE tutorial, M2 with the auxiliary loss)
TUTORIAL = {100: 0.9319, 600: 0.9437, 1000: 0.9487, 3000: 0.9582}
RESULTS_PATH = REPO_ROOT / "docs" / "results.md"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _trained_epochs(out: Path) -> int:
    """The epochs of a finished cell, as its test metrics say (0 when it has none): a cell of a smaller budget is
    extended. Not the configuration's: an extension writes its new budget there before it trains, so a cell stopped
    while it was extended would read as finished, with the test metrics of the smaller budget."""
    path = out / "test_metrics.json"
    return int(json.loads(path.read_text())["epochs"]) if path.is_file() else 0


def run_cell(root: Path, labels: int, seed: int, variant: str, options: dict[str, Any], args: argparse.Namespace,
             say: Any = print) -> dict[str, Any] | None:
    """Train (or resume, or skip) one cell; returns its test metrics with the run's wall time (None: a cell not
    finished, with ``--only-finished``)."""
    from pyro_vae.pipeline import train_run

    out = root / f"labels{labels}-{_slug(variant)}-seed{seed}"
    if _trained_epochs(out) >= args.epochs:
        say(f"{out.name}: finished, skipped")
    elif args.only_finished:
        say(f"{out.name}: not finished, left out of the table")
        return None
    else:
        opts = {**BASE, **options, "labels": labels, "seed": seed, "epochs": args.epochs,
                "num_unlabelled": args.num_unlabelled, "test_particles": args.test_particles,
                "data_root": args.data_root, "device": args.device}
        resume = (out / "checkpoint.pt").is_file()
        how = "started" if not resume else "extended" if _trained_epochs(out) else "resumed"
        say(f"{out.name}: {how} ({json.dumps(options) if options else 'defaults'}, {args.epochs} epochs)")
        t0 = time.perf_counter()
        train_run(opts, out, resume=resume, progress=False, say=lambda *a, **k: None)
        with open(out / "wall_seconds.txt", "a") as f:
            f.write(f"{time.perf_counter() - t0:.1f}\n")
    metrics = json.loads((out / "test_metrics.json").read_text())
    if "model_accuracy" not in metrics:  # a cell finished before the metric existed: scored now, once
        say(f"{out.name}: the generative model's accuracy added to its test metrics")
        metrics.update(model_accuracies(out))
        write_json(metrics, out / "test_metrics.json")
    wall = out / "wall_seconds.txt"
    metrics["minutes"] = sum(float(v) for v in wall.read_text().split()) / 60 if wall.is_file() else float("nan")
    return metrics


def model_accuracies(out: Path) -> dict[str, float]:
    """The test accuracy of the generative model's own classifier (``model_accuracy``) of a finished run's last and
    best-validation models, as its test metrics hold it when the run computes them (the same test data and seed)."""
    import torch

    import pyro_vae
    from pyro_vae.pipeline.kinds.semi_supervised import BEST_DIR, model_accuracy

    torch.set_num_threads(BASE["num_threads"])
    config = json.loads((out / "config.json").read_text())
    seed = int(config["training"]["seed"])
    x, y = pyro_vae.runs.run_test_data(config, labels=True, seed=seed)  # the run's own binarization of them
    scored = {"model_accuracy": model_accuracy(pyro_vae.load(out / "model").eval(), x, y, seed=seed)}
    if (out / BEST_DIR).is_dir():
        scored["best_model_accuracy"] = model_accuracy(pyro_vae.load(out / BEST_DIR).eval(), x, y, seed=seed)
    return scored


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table_rows(cells: dict[tuple[Any, str], list[dict[str, Any]]], by_labels: bool) -> list[list[Any]]:
    """One row per (labels, variant): accuracy at the last and the best-validation epoch, mean ± sd over seeds."""
    rows = []
    for (labels, variant), runs in cells.items():
        first = (labels if variant == "defaults" else f"{labels} ({variant})") if by_labels else variant
        row: list[Any] = [first, len(runs),
                          _mean_sd([r["accuracy"] for r in runs]),
                          _mean_sd([r["best_accuracy"] for r in runs if "best_accuracy" in r]),
                          _mean_sd([r["best_epoch"] for r in runs if "best_epoch" in r], 1),
                          f"{_mean_sd([r['model_accuracy'] for r in runs])} / "
                          f"{_mean_sd([r['best_model_accuracy'] for r in runs if 'best_model_accuracy' in r])}",
                          _mean_sd([r["log_likelihood"] for r in runs], 2),
                          _mean_sd([r["minutes"] for r in runs], 1)]
        if by_labels:
            row.insert(4, f"{TUTORIAL[labels]:.4f}" if labels in TUTORIAL else "–")
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> dict[tuple[Any, str], list[dict[str, Any]]]:
    if args.smoke_test:
        args.table, args.labels, args.seeds, args.epochs, args.num_unlabelled = "ablation", "20", "0", 1, 200
        args.test_particles, args.variants = 2, "defaults,aux step separate (Pyro)"
        BASE.update(dataset="digits", hidden_dims="32", latent_dim=4)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in str(args.seeds).split(",")]
    if args.table == "ablation":
        chosen = [v.strip() for v in args.variants.split(",")] if args.variants else list(ABLATION)
        unknown = [v for v in chosen if v not in ABLATION]
        if unknown:
            raise SystemExit(f"unknown variant {unknown[0]!r}; the variants are: {', '.join(ABLATION)}")
        plan = [(int(args.labels.split(",")[0]), v, {**ABLATION_BASE, **ABLATION[v]}) for v in chosen]
    else:
        if args.variant not in ABLATION:
            raise SystemExit(f"unknown variant {args.variant!r}; the variants are: {', '.join(ABLATION)}")
        plan = [(int(n), args.variant, ABLATION[args.variant]) for n in str(args.labels).split(",")]
    info = machine_info(threads=BASE["num_threads"])
    began = time.perf_counter()
    cells: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for labels, variant, options in plan:
        runs = [run_cell(root, labels, seed, variant, options, args) for seed in seeds]
        if any(r is not None for r in runs):
            cells[(labels, variant)] = [r for r in runs if r is not None]
    by_labels = args.table == "labels"
    headers = ["labels" if by_labels else f"variant ({plan[0][0]} labels)", "seeds", "test accuracy, last epoch",
               "at the best valid epoch", "best epoch", "model's own p(y given x): accuracy, last / best",
               "log p(x), label summed", "minutes per run"]
    if by_labels:
        headers.insert(4, "Pyro's tutorial")
    table = markdown_table(headers, table_rows(cells, by_labels))
    print(table)
    if args.write_docs and not args.smoke_test:
        unlabelled = args.num_unlabelled or "all the other"
        minutes = sum(r["minutes"] for runs in cells.values() for r in runs)
        budget = (f"{args.epochs} epochs, {unlabelled} unlabelled digits, seeds {args.seeds}, "
                  f"IWAE_{args.test_particles} on the 10,000 test digits, one thread per run; the runs' wall time "
                  f"{minutes:.0f} min in all (this call {(time.perf_counter() - began) / 60:.1f} min)")
        body = "\n".join([f"Command (resumable: finished cells are skipped): `{command_line()}`", "",
                          f"Date: {utc_date()}. Budget: {budget}.", "", machine_markdown(info), "", table])
        variant = "" if args.table == "ablation" or args.variant == "defaults" else f"-{_slug(args.variant)}"
        update_section(args.section or f"ss-{args.table}{variant}", body, RESULTS_PATH)
    return cells


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=("ablation", "labels"), default="ablation")
    p.add_argument("--labels", default="100", help="comma-separated numbers of labels (ablation: the first)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--variants", default=None, help="comma-separated names of ABLATION (default: all)")
    p.add_argument("--variant", default="defaults",
                   help="--table labels: the ABLATION variant of every row (default: the defaults)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--num-unlabelled", type=int, default=None, help="default: all the rest of the 50,000")
    p.add_argument("--test-particles", type=int, default=100, help="K of the test log p(x)")
    p.add_argument("--root", default="runs/ss-table", help="the folder of the cells' run folders")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/results.md §5")
    p.add_argument("--section", default=None,
                   help="the section of docs/results.md to write (default: ss-TABLE, and the variant's name)")
    p.add_argument("--only-finished", action="store_true",
                   help="train nothing: the table of the cells already finished (the others left out, and said)")
    p.add_argument("--smoke-test", action="store_true", help="digits, two variants, one tiny epoch")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

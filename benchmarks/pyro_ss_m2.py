"""Pyro's own semi-supervised VAE (``examples/vae/ss_vae_M2.py``) beside pyro-vae's, on the same split and budget.

Issue 32 asks whether the gap between ``docs/results.md`` §5 and Pyro's SS-VAE tutorial is the library's or the
tutorial's unpublished settings. This script answers it with Pyro's program itself: it reads ``ss_vae_M2.py`` and
its ``utils/custom_mlp.py`` from a Pyro checkout you give (``--pyro-examples``: the folder ``examples/vae``; nothing
of it is copied into this repository) and runs its ``main`` **unchanged in everything but the data loading**:

- ``utils.mnist_cached`` is replaced by loaders over the split a pyro-vae run of the same seed uses (the labelled
  digits, as many of each class, and the unlabelled ones from the first 50,000 training digits; the last 10,000
  for validation; the test digits), as grey levels in [0, 1] as Pyro's loader gives them; ``MNISTCached`` keeps
  Pyro's ``train_data_size`` (50,000), so the labelled batches come at Pyro's period;
- ``utils.vae_plots``, ``visdom`` and ``pyro.contrib.examples.util`` (which imports torchvision) are stand-ins
  for plotting and logging only.

Every other line, the model, the guide, ``TraceEnum_ELBO`` with parallel enumeration, the auxiliary ``SVI`` and
its two Adam updates per batch, the periodic interleaving and the best-validation bookkeeping, is Pyro's. Each
cell (labels, seed) writes ``result.json`` under ``--root`` and is skipped when that exists; ``--write-docs``
writes the table into ``docs/results.md`` (section ``--section``) beside the pyro-vae runs of the same budget
(``benchmarks/ss_table.py``'s folders under ``--ours``, when they are there).

Run (the budget of the ablation: 10,000 unlabelled digits, 20 epochs, seeds 0 and 1, one thread each)::

    python benchmarks/pyro_ss_m2.py --pyro-examples PATH/TO/pyro/examples/vae --labels 100 --seeds 0,1 \\
        --epochs 20 --num-unlabelled 10000 --ours runs/ss-ablation --write-docs --section ss-pyro-ablation
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import pyro
import torch
from common import command_line, machine_info, machine_markdown, markdown_table, update_section, utc_date
from ss_table import RESULTS_PATH, TUTORIAL, _mean_sd, _slug

from pyro_vae.io import write_json

#: Pyro's example run (EXAMPLE_RUN in ss_vae_M2.py), the settings of its tutorial
PYRO_SETTINGS = {"aux_loss": True, "aux_loss_multiplier": 46.0, "enum_discrete": "parallel", "z_dim": 50,
                 "hidden_layers": [500], "learning_rate": 0.00042, "beta_1": 0.95, "batch_size": 200,
                 "jit": False, "cuda": False, "visualize": False}
_EPOCH_LINE = re.compile(r"^(\d+) epoch: avg losses .* validation accuracy ([0-9.]+) test accuracy ([0-9.]+)")
_FINAL_LINE = re.compile(r"best validation accuracy ([0-9.]+) corresponding testing accuracy ([0-9.]+) "
                         r"last testing accuracy ([0-9.]+)")


def pyro_split(labels: int, seed: int, num_unlabelled: int | None, data_root: str | None,
               dataset: str = "mnist") -> dict[str, Any]:
    """The data of a pyro-vae semi-supervised run of this seed (its split, grey levels), as Pyro's loaders hold it:
    images flattened (784 values in [0, 1] for MNIST), labels one-hot."""
    from pyro_vae.pipeline.registry import get_kind
    from pyro_vae.pipeline.settings import run_settings

    options = {"dataset": dataset, "semi_supervised": True, "labels": labels, "seed": seed, "binarize": "no",
               "num_unlabelled": num_unlabelled, "data_root": data_root}
    with tempfile.TemporaryDirectory() as tmp:
        s, out = run_settings(options, Path(tmp) / "run")
        s, data = get_kind(s.kind).read_data(s, out, False)

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).float()

    def one_hot(y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(y.long(), 10).float()

    lab, unlab = data.extra["labelled"], data.extra["unlabelled"]
    y_train = data.labels["train"]
    return {"sup": (flat(data.train[lab]), one_hot(y_train[lab])),
            "unsup": (flat(data.train[unlab]), torch.full((unlab.numel(), 1), float("nan"))),
            "valid": (flat(data.valid), one_hot(data.labels["valid"])),
            "test": (flat(data.test), one_hot(data.labels["test"]))}


def load_pyro_example(examples: Path, split: dict[str, Any]) -> types.ModuleType:
    """Pyro's ``ss_vae_M2`` module, read from ``examples``, with its data loading given ``split``."""
    script = examples / "ss_vae_M2.py"
    if not script.is_file() or not (examples / "utils" / "custom_mlp.py").is_file():
        raise SystemExit(f"--pyro-examples {examples}: no ss_vae_M2.py and utils/custom_mlp.py there (give the "
                         "folder examples/vae of a Pyro checkout)")

    class MNISTCached:  # what ss_vae_M2 reads of it: the size of Pyro's training split
        train_data_size = 50000

    def setup_data_loaders(dataset: Any, use_cuda: bool, batch_size: int, sup_num: Any = None,
                           **kwargs: Any) -> dict[str, torch.utils.data.DataLoader]:
        assert sup_num is not None and int(sup_num) == split["sup"][0].shape[0], (sup_num, split["sup"][0].shape)
        return {mode: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*split[mode]),
                                                  batch_size=batch_size, shuffle=True)
                for mode in ("unsup", "test", "sup", "valid")}

    def print_and_log(logger: Any, msg: str) -> None:  # Pyro's, without the torchvision import of its module
        print(msg, flush=True)
        if logger is not None:
            logger.write(f"{msg}\n")
            logger.flush()

    stand_ins = {
        "utils.mnist_cached": {"MNISTCached": MNISTCached, "setup_data_loaders": setup_data_loaders,
                               "mkdir_p": lambda path: Path(path).mkdir(parents=True, exist_ok=True)},
        "utils.vae_plots": {"mnist_test_tsne_ssvae": lambda **kw: None,
                            "plot_conditional_samples_ssvae": lambda *a, **kw: None},
        "visdom": {"Visdom": object},
        "pyro.contrib.examples.util": {"print_and_log": print_and_log},
    }
    for name in [n for n in list(sys.modules) if n == "utils" or n.startswith("utils.") or n == "ss_vae_M2"]:
        del sys.modules[name]
    sys.path.insert(0, str(examples))
    try:
        for name, attrs in stand_ins.items():
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
        spec = importlib.util.spec_from_file_location("ss_vae_M2", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(examples))
    return module


def run_cell(root: Path, labels: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Pyro's program for one (labels, seed), or its saved result."""
    out = root / f"labels{labels}-seed{seed}"
    result_path = out / "result.json"
    if result_path.is_file():
        print(f"{out.name}: finished, skipped")
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    split = pyro_split(labels, seed, args.num_unlabelled, args.data_root, args.dataset)
    module = load_pyro_example(Path(args.pyro_examples), split)
    torch.set_num_threads(args.threads)
    # Pyro's script runs once a process: a param store left by the previous cell would hand pyro.module the old
    # cell's parameters (the optimizer would train those, the new networks would never change)
    pyro.clear_param_store()
    log = out / "pyro.log"
    ns = argparse.Namespace(**PYRO_SETTINGS, seed=seed, num_epochs=args.epochs, sup_num=float(labels),
                            logfile=str(log))
    print(f"{out.name}: Pyro's ss_vae_M2.main, {args.epochs} epochs, {split['unsup'][0].shape[0]} unlabelled",
          flush=True)
    t0 = time.perf_counter()
    module.main(ns)
    minutes = (time.perf_counter() - t0) / 60
    lines = log.read_text().splitlines()
    epochs = [m.groups() for m in map(_EPOCH_LINE.match, lines) if m]
    final = [m.groups() for m in map(_FINAL_LINE.search, lines) if m]
    if len(epochs) != args.epochs or not final:
        raise SystemExit(f"{log}: expected {args.epochs} epoch lines and a final line from Pyro's program")
    best_valid, best_test, last_test = map(float, final[-1])
    best_epoch = next(int(e) + 1 for e, v, _ in epochs if float(v) == best_valid)
    result = {"labels": labels, "seed": seed, "epochs": args.epochs, "num_unlabelled": split["unsup"][0].shape[0],
              "accuracy": last_test, "best_accuracy": best_test, "best_val_accuracy": best_valid,
              "best_epoch": best_epoch, "minutes": minutes,
              "history": [{"epoch": int(e) + 1, "val_accuracy": float(v), "accuracy": float(t)} for e, v, t in epochs]}
    write_json(result, result_path)
    return result


def _ours(root: Path | None, labels: int, seeds: list[int], variant: str) -> list[dict[str, Any]]:
    """The finished pyro-vae cells of ``benchmarks/ss_table.py`` for these labels, seeds and variant."""
    if root is None:
        return []
    found = []
    for seed in seeds:
        path = root / f"labels{labels}-{_slug(variant)}-seed{seed}" / "test_metrics.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def main(args: argparse.Namespace) -> list[list[Any]]:
    root = Path(args.root)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    info = machine_info(threads=args.threads)
    for labels in (int(n) for n in args.labels.split(",")):
        pyro_runs = [run_cell(root, labels, seed, args) for seed in seeds]
        rows.append([labels, "Pyro's ss_vae_M2.py (its example run's settings)", len(pyro_runs),
                     _mean_sd([r["accuracy"] for r in pyro_runs]), _mean_sd([r["best_accuracy"] for r in pyro_runs]),
                     _mean_sd([r["best_epoch"] for r in pyro_runs], 1), _mean_sd([r["minutes"] for r in pyro_runs], 1)])
        ours_root = Path(args.ours) if args.ours else None
        for variant in args.variants.split(","):
            ours = _ours(ours_root, labels, seeds, variant)
            if ours:
                rows.append([labels, f"pyro-vae, {variant}", len(ours), _mean_sd([r["accuracy"] for r in ours]),
                             _mean_sd([r["best_accuracy"] for r in ours if "best_accuracy" in r]),
                             _mean_sd([r["best_epoch"] for r in ours if "best_epoch" in r], 1), "–"])
        rows.append([labels, "Pyro's tutorial (its table)", "–", f"{TUTORIAL[labels]:.4f}" if labels in TUTORIAL
                     else "–", "–", "–", "–"])
    table = markdown_table(["labels", "program", "seeds", "test accuracy, last epoch", "at the best valid epoch",
                            "best epoch", "minutes per run"], rows)
    print(table)
    if args.write_docs:
        unlabelled = args.num_unlabelled or "all the other"
        body = "\n".join([f"Command: `{command_line()}`", "",
                          f"Date: {utc_date()}. Budget: {args.epochs} epochs, {unlabelled} unlabelled digits, "
                          f"seeds {args.seeds}, {args.threads} thread per run; the split of each seed is the "
                          "pyro-vae run's.", "", machine_markdown(info), "", table])
        update_section(args.section, body, RESULTS_PATH)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyro-examples", required=True, help="the folder examples/vae of a Pyro checkout")
    p.add_argument("--labels", default="100", help="comma-separated numbers of labels")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-unlabelled", type=int, default=None, help="default: all the rest of the 50,000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="runs/ss-pyro", help="the folder of the cells' results")
    p.add_argument("--ours", default=None, help="ss_table.py's --root with the pyro-vae cells of the same budget")
    p.add_argument("--variants", default="defaults,all of Pyro's settings",
                   help="comma-separated ss_table.py variants shown beside Pyro's program")
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset", default="mnist", help="the data set of the split (Pyro's program reads 784 pixels)")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/results.md (--section)")
    p.add_argument("--section", default="ss-pyro", help="the section of docs/results.md that --write-docs writes")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

"""The ``pyro-vae`` command line: train a VAE on a data set, then sample from it and reconstruct with it.

Usage::

    pyro-vae train [--dataset digits] [--out RUN] [--epochs E] [...]   # writes a run folder
    pyro-vae train --out RUN --resume --epochs 60                       # continue that run
    pyro-vae sample RUN [--num-samples 64] [--out samples.png] [--seed 0]
    pyro-vae reconstruct RUN [--num 32] [--out recon.png]
    pyro-vae plot RUN [--out DIR]                                       # every figure of the run
    pyro-vae train --config run.yaml --epochs 5                         # options from a file, flags win

A run folder holds ``config.json`` (the VAE's ``.config``, the data set and the training settings, written
before training starts), ``checkpoint.pt`` and ``metrics.jsonl`` (written by :func:`pyro_vae.fit` after every
epoch), and at the end ``model/`` (:meth:`pyro_vae.VAE.save` of the trained VAE), ``samples.png``,
``training.png`` and ``test_metrics.json``. :func:`load_run` rebuilds the trained VAE from such a folder.
``--config FILE`` reads train options from YAML (``yaml.safe_load``) with the command line overriding it;
``--tensorboard`` logs every epoch to ``RUN/tensorboard``.

Each subcommand is a pair of functions, ``_add_<name>(subparsers)`` and ``_run_<name>(args) -> int``,
registered in :data:`SUBCOMMANDS`; adding one is adding an entry there. Errors the library raises for bad
input (``ValueError``, ``TypeError``, ``OSError`` such as a missing file) are printed as
``pyro-vae: error: <message>`` with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .run_files import CHECKPOINT_NAME, CONFIG_NAME, MODEL_DIR, PROG, TEST_METRICS_NAME

__all__ = ["SUBCOMMANDS", "build_parser", "load_run", "main"]


def load_run(run_dir: Any, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """:func:`pyro_vae.runs.load_run` (imported when called)."""
    from .runs import load_run as load

    return load(run_dir, device=device)


def _read_config(run_dir: Any) -> dict[str, Any]:
    from .runs import read_config

    return read_config(run_dir)


def _run_lock(folder: Path) -> Any:
    from .io import RunLock

    return RunLock(folder)


#: names with fixed values, spelled here so that parsing imports neither torch nor Pyro (a test checks them
#: against pyro_vae.likelihoods.LIKELIHOODS, pyro_vae.nets.ACTIVATIONS and pyro_vae.infer.objectives.OBJECTIVES)
LIKELIHOOD_NAMES = ("bernoulli", "continuous_bernoulli", "normal", "normal-learned", "normal-gamma")
ACTIVATION_NAMES = ("tanh", "relu", "softplus", "elu", "gelu", "silu")
OBJECTIVE_NAMES = ("elbo", "mean-field", "iwae", "iwae-dreg")


def _objective_name(text: str) -> str:
    """An objective's name, the older ``_`` spellings (``mean_field``, ``iwae_dreg``) taken for ``-``."""
    return text.replace("_", "-") if text.replace("_", "-") in OBJECTIVE_NAMES else text


#: settings that depend on the data set when not given on the command line
_IMAGE_DEFAULTS = {"latent_dim": 50, "hidden_dims": "200,200", "epochs": 20}
_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # digits: 1200 8x8 images; these train in a few seconds on 2 CPU cores and give digit-like samples
    "digits": {"latent_dim": 8, "hidden_dims": "128", "epochs": 100, "lr": 3e-3},
    "ring": {"latent_dim": 2, "hidden_dims": "64,64", "epochs": 30, "likelihood": "normal"},
    "linear-gaussian": {"latent_dim": 2, "hidden_dims": "64", "epochs": 30, "likelihood": "normal"},
}
_GLOBAL_DEFAULTS: dict[str, Any] = {
    "likelihood": "bernoulli", "activation": "tanh", "encoder": "mlp", "decoder": "mlp", "objective": "elbo",
    "batch_size": 100, "lr": 1e-3, "device": "auto", "seed": 0, "binarize": "auto", "num_threads": "auto",
    "prior": "normal", "prior_components": None, "flow": None, "num_flows": 2,
}
#: settings that define the model and the data: fixed for a run, a resumed run must keep them
_RUN_IDENTITY = ("dataset", "likelihood", "latent_dim", "hidden_dims", "activation", "encoder", "decoder", "prior",
                 "prior_components", "flow", "num_flows")
#: training settings stored in config.json; on --resume they are taken from there unless given again
_TRAINING_KEYS = ("epochs", "batch_size", "lr", "objective", "num_particles", "seed", "binarize", "device",
                  "num_threads")


# ---------------------------------------------------------------------------------------------- helpers
def _default(dataset: str, key: str) -> Any:
    spec = _DATASET_DEFAULTS.get(dataset, {})
    if key in spec:
        return spec[key]
    if key in _IMAGE_DEFAULTS:
        return _IMAGE_DEFAULTS[key]
    return _GLOBAL_DEFAULTS[key]


def _parse_dims(text: str | list[int]) -> list[int]:
    if isinstance(text, list):
        return [int(t) for t in text]
    try:
        dims = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--hidden-dims must be comma-separated sizes such as 200,200; got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"--hidden-dims must be a comma-separated list of positive sizes; got {text!r}")
    return dims


def _write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON so that the file is never seen half-written (see :func:`pyro_vae.io.atomic_write`)."""
    from .io import write_json

    write_json(obj, path)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use ``num_threads`` intra-op threads inside the block (restored afterwards; None: leave as is)."""
    import torch

    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _resolve_threads(value: str | int, dataset: str) -> int | None:
    if value == "auto":
        # the small nets of digits and the toy sets gain nothing from intra-op threads, and they lose a lot when
        # another process competes for the cores; the image sets keep torch's default
        return 1 if dataset in _DATASET_DEFAULTS else None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--num-threads must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--num-threads must be a positive integer or 'auto', got {value!r}")
    return n


def _splits(dataset: str) -> tuple[str, str, str]:
    """The (train, validation, test) splits of a data set."""
    from .datasets import SPLITS

    splits = SPLITS[dataset]
    train = "train-without-valid" if "train-without-valid" in splits else "train"
    return train, "valid", "test"


def _is_binary(x: Any) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _seed_everything(seed: int) -> None:
    import pyro

    pyro.set_rng_seed(int(seed))


# ---------------------------------------------------------------------------------------------- train
def _add_train(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a VAE and write a run folder",
        description="Train a VAE on a data set. The run folder gets config.json, checkpoint.pt, metrics.jsonl, "
                    "samples.png, training.png and test_metrics.json; the test ELBO is printed at the end. "
                    "Unset options take per-data-set defaults (digits: latent 8, hidden 128, 100 epochs, "
                    "lr 3e-3; image sets: latent 50, hidden 200,200, 20 epochs; toy sets: latent 2, normal "
                    "likelihood).")
    p.add_argument("--dataset", default=None, help="data set name (default: digits, which needs no files)")
    p.add_argument("--data-root", default=None, help="folder with mnist/, fashion-mnist/, binarized-mnist/ "
                                                     "(default: $PYRO_VAE_DATA)")
    p.add_argument("--likelihood", default=None, choices=LIKELIHOOD_NAMES,
                   help="observation distribution (default: bernoulli for images, normal for the toy sets)")
    p.add_argument("--binarize", dest="binarize", action="store_const", const="yes", default=None,
                   help="dynamic binarization of grey images (default: on with a bernoulli likelihood and "
                        "data that are not already binary)")
    p.add_argument("--no-binarize", dest="binarize", action="store_const", const="no")
    p.add_argument("--latent-dim", type=int, default=None, help="dimension of z")
    p.add_argument("--hidden-dims", default=None, help="comma-separated hidden layer sizes, e.g. 200,200")
    p.add_argument("--activation", default=None, choices=ACTIVATION_NAMES, help="MLP activation (default: tanh)")
    p.add_argument("--encoder", default=None, choices=["mlp", "conv"], help="the encoder network (default: mlp)")
    p.add_argument("--decoder", default=None, choices=["mlp", "conv"], help="the decoder network (default: mlp)")
    p.add_argument("--objective", default=None, type=_objective_name, choices=OBJECTIVE_NAMES,
                   help="the training objective (default: elbo; mean_field and iwae_dreg are taken too)")
    p.add_argument("--prior", default=None, choices=["normal", "mixture", "vamp", "flow"],
                   help="the prior (default: normal)")
    p.add_argument("--prior-components", type=int, default=None,
                   help="components of a mixture or VampPrior (default: 10 for mixture, 500 for vamp)")
    p.add_argument("--flow", default=None, choices=["iaf", "spline"],
                   help="a flow guide (default: none, a Gaussian guide)")
    p.add_argument("--num-flows", type=int, default=None, help="flow layers of the guide (default: 2)")
    p.add_argument("--num-particles", type=int, default=None,
                   help="particles per datapoint (default: 1 for elbo/mean-field, 5 for the IWAE objectives)")
    p.add_argument("--epochs", type=int, default=None, help="total number of epochs (also when resuming)")
    p.add_argument("--batch-size", type=int, default=None, help="datapoints per step (default: 100)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3; 3e-3 for digits)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: auto)")
    p.add_argument("--num-threads", default=None,
                   help="torch intra-op CPU threads, or auto (default: 1 for digits and the toy sets, else "
                        "torch's default)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--two-stage", action="store_true", default=None,
                   help="Dai & Wipf's two-stage VAE: stage 1 with a learned decoder variance gamma (likelihood "
                        "normal-gamma, grey levels, no binarization), stage 2 a VAE on stage 1's codes; samples go "
                        "through both stages (writes history.json with gamma per epoch, model.pt, samples.png)")
    p.add_argument("--stage2-epochs", type=int, default=None, help="epochs of stage 2 (default: --epochs)")
    p.add_argument("--stage2-codes", default=None, choices=("samples", "means"),  # train.two_stage.STAGE2_CODES
                   help="what stage 2 trains on: samples z ~ q(z|x) redrawn at every visit (Dai & Wipf; the "
                        "default) or stage 1's posterior means")
    p.add_argument("--layers", default=None,
                   help="a hierarchical VAE (several stochastic layers), e.g. '200,200,100;100,100,50' for the IWAE "
                        "paper's two-layer model: per layer the hidden sizes then the latent size, bottom first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--config", default=None,
                   help="a YAML (or JSON) file of train options, e.g. 'dataset: mnist' and 'hidden_dims: [200, 200]'; "
                        "options given on the command line override the file")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log the metrics of every epoch for TensorBoard into RUN/tensorboard (needs "
                        "pip install 'pyro-vae[tensorboard]')")


def _apply_config_file(args: argparse.Namespace) -> None:
    """Fill the options not given on the command line from ``--config FILE`` (YAML through ``yaml.safe_load``)."""
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(f"--config {path} needs PyYAML to read YAML: pip install pyyaml (or give a .json "
                             "file)") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path} is not valid YAML: {e}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of option names to values, got {type(values).__name__}")
    known = {k for k in vars(args) if k not in ("command", "config", "exit_stack")}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"--config {path}: unknown option {key!r}; known: "
                             f"{', '.join(sorted(k.replace('_', '-') for k in known))}")
        value = _typed_option(path, name, value)
        if getattr(args, name) in (None, False):  # the command line wins
            setattr(args, name, value)


def _typed_option(path: Path, name: str, value: Any) -> Any:
    """A value from a config file, checked and converted as the command line would, with an error naming it."""
    action = next((a for a in _train_actions() if a.dest == name), None)
    option = f"--config {path}: {name.replace('_', '-')}"
    if name == "binarize":
        choices = {True: "yes", False: "no", "yes": "yes", "no": "no", "auto": None}
        if not isinstance(value, (bool, str)) or value not in choices:
            raise ValueError(f"{option} must be true, false or auto, got {value!r}")
        return choices[value]
    if name == "hidden_dims" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if action is not None and isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{option} must be true or false, got {value!r}")
        return value or None
    if action is not None and action.type in (int, float) and value is not None:
        if isinstance(value, bool):
            raise ValueError(f"{option} must be a number, got {value!r}")
        try:
            converted = action.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"{option} must be {'an integer' if action.type is int else 'a number'}, got "
                             f"{value!r}") from None
        if action.type is int and isinstance(value, float) and value != converted:
            raise ValueError(f"{option} must be an integer, got {value!r}")
        return converted
    if value is not None and not isinstance(value, (str, int, float)):
        raise ValueError(f"{option} must be a single value, got {value!r}")
    if action is not None and callable(action.type) and action.type not in (int, float) and value is not None:
        value = action.type(str(value))  # a spelling normalised as on the command line
    if action is not None and action.choices is not None and value is not None and value not in action.choices:
        raise ValueError(f"{option} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value if value is None or action is None or action.type is None else str(value)


def _train_actions() -> list[argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    _add_train(parser.add_subparsers(dest="command"))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices["train"]._actions)


#: training datapoints (the first ones) whose ELBO, rate and distortion are recorded after every epoch
TRAIN_METRICS_SIZE = 2000


def _require_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'pyro-vae[tensorboard]'") from None


def _train_settings(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Merge the command line with the defaults (or, with --resume, with the run's config.json)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out, the run folder to continue")
        out = Path(args.out)
        saved = _read_config(out)
        missing = [k for k in _TRAINING_KEYS if k != "num_threads" and k not in (saved.get("training") or {})]
        if not isinstance(saved.get("training"), dict) or missing:
            raise ValueError(f"{out / CONFIG_NAME} lacks the training settings {missing or ['training']}: the run "
                             "folder is damaged, and cannot be resumed (start a new run)")
        settings = {"dataset": saved["dataset"], "data_root": saved.get("data_root"), **saved["training"],
                    "vae_config": saved["vae"], "class": saved.get("class", "VAE")}
        settings.update({k: saved["model_args"][k] for k in _RUN_IDENTITY if k in saved.get("model_args", {})})
        for key in _RUN_IDENTITY:
            if key in given and key in settings:
                new = _parse_dims(given[key]) if key == "hidden_dims" else given[key]
                old = _parse_dims(settings[key]) if key == "hidden_dims" else settings[key]
                if new != old:
                    raise ValueError(f"--{key.replace('_', '-')} {given[key]} differs from the run's {old!r}: a "
                                     f"resumed run keeps its model and data set (start a new run instead)")
        for key in (*_TRAINING_KEYS, "data_root"):
            if key in given:
                settings[key] = given[key]
        if "binarize" in given:
            settings["binarize"] = given["binarize"] == "yes"
        return settings, out
    dataset = given.get("dataset", "digits")
    settings = {"dataset": dataset, "data_root": given.get("data_root")}
    for key in ("likelihood", "latent_dim", "hidden_dims", "activation", "encoder", "decoder", "objective",
                "epochs", "batch_size", "lr", "device", "seed", "num_threads", "prior", "prior_components", "flow",
                "num_flows"):
        settings[key] = given.get(key, _default(dataset, key))
    settings["hidden_dims"] = _parse_dims(settings["hidden_dims"])
    settings["binarize"] = {"yes": True, "no": False}.get(given.get("binarize", "auto"), "auto")
    objective = settings["objective"]
    settings["num_particles"] = given.get("num_particles", 5 if objective.startswith("iwae") else 1)
    out = Path(given["out"]) if "out" in given else Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return settings, out


def _run_train(args: argparse.Namespace) -> int:
    import pyro

    from . import datasets, distributed
    from .infer.objectives import get_objective
    from .models import VAE
    from .plots import save_samples, training_curves
    from .runs import model_for_resume
    from .train import TensorBoard, TrainingMetrics, check_data, evaluate_elbo, fit, resolve_device

    main = distributed.is_main_process()  # under torchrun rank 0 alone writes and prints; every rank trains
    say = print if main else _silent

    pyro.clear_param_store()
    if getattr(args, "config", None):
        _apply_config_file(args)
        _resolve_named_run_folder(args)  # an 'out' from the file is followed as one from the command line
    s, out = _train_settings(args)
    if getattr(args, "two_stage", None) or getattr(args, "layers", None) or s.get("class", "VAE") != "VAE":
        return _run_train_variant(args, s, out)
    num_threads = _resolve_threads(s.get("num_threads", "auto"), s["dataset"])
    # validate everything cheap before any folder is made or any data is read
    get_objective(s["objective"])
    if args.tensorboard:
        _require_tensorboard()
    device = resolve_device(s["device"])
    for key in ("epochs", "batch_size", "num_particles", "latent_dim"):
        if int(s[key]) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {s[key]}")
    if not s["lr"] > 0:
        raise ValueError(f"--lr must be > 0, got {s['lr']}")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise FileExistsError(f"{out} already holds a run; continue it with --resume or choose another --out")

    shape = datasets.event_shape(s["dataset"])  # an unknown data set fails here, before any file is read
    train_split, valid_split, test_split = _splits(s["dataset"])
    with _torch_threads(num_threads):
        _seed_everything(s["seed"])
        if "vae_config" in s:  # resuming: the very model of the run, its config checked against its weights
            vae = model_for_resume(VAE, s["vae_config"], out)
        else:
            prior_options = {"num_components": int(s["prior_components"])} if s.get("prior_components") else {}
            vae = VAE(input_shape=shape, latent_dim=int(s["latent_dim"]), hidden_dims=tuple(s["hidden_dims"]),
                      activation=s["activation"], likelihood=s["likelihood"], encoder=s["encoder"],
                      decoder=s["decoder"], prior=s.get("prior", "normal"), prior_options=prior_options,
                      guide_flow=s.get("flow"), num_flows=int(s.get("num_flows", 2)))
        x_train = datasets.load(s["dataset"], train_split, root=s["data_root"])
        x_valid = datasets.load(s["dataset"], valid_split, root=s["data_root"])
        x_test = datasets.load(s["dataset"], test_split, root=s["data_root"])
        if s["binarize"] == "auto":
            s["binarize"] = s["likelihood"] == "bernoulli" and not _is_binary(x_train)
        # the data against the model (shape, NaN, the likelihood's support) before anything is written
        check_data(x_train, f"the {train_split} split of {s['dataset']!r}", vae, bool(s["binarize"]))
        _check_step_fits(int(s["num_particles"]), min(int(s["batch_size"]), x_train.shape[0]), shape, device)
        config = {
            "vae": vae.config,
            "dataset": s["dataset"],
            "data_root": s["data_root"],
            "splits": {"train": train_split, "valid": valid_split, "test": test_split},
            "model_args": {k: s[k] for k in _RUN_IDENTITY if k in s},
            "training": {k: s[k] for k in _TRAINING_KEYS},
            "pyro_vae_version": _version(),
        }
        if main:
            args.exit_stack.enter_context(_run_lock(out))  # refuses a second writer before anything is written
            _write_json_atomic(config, out / CONFIG_NAME)
        world = f" on {distributed.world_size()} processes" if distributed.launched() else ""
        say(f"run folder: {out}", flush=True)
        say(f"data: {s['dataset']} {train_split} {tuple(x_train.shape)}, {valid_split} {x_valid.shape[0]}, "
            f"{test_split} {x_test.shape[0]}; likelihood {s['likelihood']}"
            f"{' with dynamic binarization' if s['binarize'] else ''}{world}", flush=True)
        # training metrics are added to each epoch's record before the checkpoint, so they are saved with it
        callbacks: list[Any] = [TrainingMetrics(vae, x_train[:TRAIN_METRICS_SIZE].to(device), bool(s["binarize"]))]
        if args.tensorboard and main:
            callbacks.append(TensorBoard(out / "tensorboard"))
        t0 = time.perf_counter()
        history = fit(vae, x_train, epochs=int(s["epochs"]), batch_size=min(int(s["batch_size"]), x_train.shape[0]),
                      lr=float(s["lr"]), objective=s["objective"], num_particles=int(s["num_particles"]),
                      device=device, val_data=x_valid, checkpoint_dir=out, resume=bool(args.resume),
                      seed=int(s["seed"]), progress=not args.no_progress, binarize=bool(s["binarize"]),
                      config={"dataset": s["dataset"]}, callbacks=callbacks)
        seconds = time.perf_counter() - t0
        if main:
            vae.save(out / MODEL_DIR)  # configuration + weights of the trained VAE (pyro_vae.load reads it)
        vae.eval()
        _seed_everything(s["seed"])  # the test ELBO of dynamically binarized data is a random draw: fix it
        metrics = evaluate_elbo(vae, x_test.to(device), binarize=bool(s["binarize"]))  # every rank takes part
        if not main:
            return 0
        _write_json_atomic({"split": test_split, **metrics, "epochs": len(history)}, out / TEST_METRICS_NAME)
        _seed_everything(s["seed"])
        reference = x_train[:2000] if x_train.dim() == 2 else None
        save_samples(vae, out / "samples.png", num_samples=64 if reference is None else 2000, data=reference)
        training_curves(history, out / "training.png")
    last = history[-1] if history else {}
    if "val_elbo" in last:
        print(f"epoch {last['epoch']}: train loss {last['loss']:.2f}, valid ELBO {last['val_elbo']:.2f} nats "
              f"({seconds:.1f} s)")
    print(f"wrote {out / 'samples.png'}, {out / 'training.png'}")
    print(f"test ELBO: {metrics['elbo']:.2f} nats (rate {metrics['rate']:.2f}, distortion "
          f"{metrics['distortion']:.2f}; {test_split} split, {x_test.shape[0]} datapoints)")
    return 0


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` on the ranks other than 0."""


def _parse_layers(text: str) -> list[list[int]]:
    """``"200,200,100;100,100,50"`` -> ``[[200, 200, 100], [100, 100, 50]]``."""
    try:
        layers = [[int(t) for t in part.split(",") if t.strip()] for part in str(text).replace(" ", "").split(";")]
    except ValueError:
        raise ValueError(f"--layers must look like 200,200,100;100,100,50; got {text!r}") from None
    if not layers or any(not layer or min(layer) < 1 for layer in layers):
        raise ValueError(f"--layers must be ';'-separated lists of positive sizes, e.g. 200,200,100;100,100,50; "
                         f"got {text!r}")
    return layers


def _device_memory(device: Any) -> int | None:
    """Bytes of memory on ``device`` (the GPU's, or the machine's for the CPU); None if unknown."""
    import torch

    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def _check_step_fits(num_particles: int, batch_size: int, shape: Any, device: Any) -> None:
    """Refuse, before anything is written, a step that cannot fit in memory: the decoder's output alone holds
    ``num_particles * batch_size * prod(shape)`` float32 numbers, a lower bound of what a step needs."""
    import math

    from .distributed import world_size

    per_process = math.ceil(int(batch_size) / world_size())  # under torchrun each rank takes its part of the batch
    need = 4 * int(num_particles) * per_process * math.prod(shape)
    have = _device_memory(device)
    if have is not None and need > have:
        raise ValueError(f"one training step needs more than {need / 2**30:,.1f} GiB (--num-particles "
                         f"{num_particles} x {per_process} datapoints per process x {math.prod(shape)} values per "
                         f"datapoint, float32), and the {device.type} has {have / 2**30:,.1f} GiB: lower "
                         "--num-particles or --batch-size")


def _run_train_variant(args: argparse.Namespace, s: dict[str, Any], out: Path) -> int:
    """``train --two-stage`` (Dai & Wipf) or ``train --layers`` (a HierarchicalVAE): a run folder with
    config.json (``"class"`` names the model), fit's checkpoint.pt/metrics.jsonl (``stage1/`` and ``stage2/`` for
    the two-stage VAE, plus history.json with gamma per epoch), ``model/`` (the one saved-model format),
    samples.png and test_metrics.json. ``--resume`` continues them; ``load_run`` reads them. Everything is checked
    before anything is written."""
    import pyro

    from . import datasets, distributed
    from .infer.objectives import get_objective
    from .models import HierarchicalVAE, TwoStageVAE
    from .plots import image_grid, is_image_shape
    from .runs import model_for_resume
    from .train import check_data, evaluate_elbo, fit, resolve_device
    from .train.two_stage import STAGE2_CODES

    if distributed.launched():
        raise ValueError("--two-stage and --layers runs take one process: launch them without torchrun")
    if args.two_stage and args.layers:
        raise ValueError("choose either --two-stage or --layers, not both")
    two_stage = bool(args.two_stage) or s.get("class") == "TwoStageVAE"
    if not args.resume and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another --out (or continue its run with --resume)")
    pyro.clear_param_store()
    get_objective(s["objective"])
    device = resolve_device(s["device"])
    for key in ("epochs", "batch_size", "num_particles"):
        if int(s[key]) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {s[key]}")
    if not s["lr"] > 0:
        raise ValueError(f"--lr must be > 0, got {s['lr']}")
    shape = datasets.event_shape(s["dataset"])
    train_split, valid_split, test_split = _splits(s["dataset"])
    num_threads = _resolve_threads(s.get("num_threads", "auto"), s["dataset"])
    stage2_epochs = args.stage2_epochs if args.stage2_epochs is not None else s.get("stage2_epochs")
    # a resumed run keeps what its stage 2 trains on; runs written before the option existed trained on the means
    saved_codes = s.get("stage2_codes") or ("means" if "vae_config" in s else None)
    stage2_codes = args.stage2_codes or saved_codes or "samples"
    if stage2_codes not in STAGE2_CODES:  # a value read back from config.json
        raise ValueError(f"--stage2-codes must be one of {', '.join(STAGE2_CODES)}, got {stage2_codes!r}")
    if saved_codes and stage2_codes != saved_codes and (out / "stage2" / CHECKPOINT_NAME).exists():
        raise ValueError(f"--stage2-codes {stage2_codes} differs from the run's {saved_codes!r}, and its stage 2 has "
                         "started: a resumed stage 2 keeps its training data (start a new run instead)")
    with _torch_threads(num_threads):
        _seed_everything(s["seed"])
        if "vae_config" in s:  # resuming: the very model of the run, its config checked against its weights
            model: Any = model_for_resume(TwoStageVAE if two_stage else HierarchicalVAE, s["vae_config"], out)
        elif two_stage:
            likelihood = s["likelihood"] if s["likelihood"] in ("normal-gamma", "normal-learned") else "normal-gamma"
            model = TwoStageVAE(shape, latent_dim=int(s["latent_dim"]), hidden_dims=tuple(s["hidden_dims"]),
                                stage2_hidden_dims=tuple(s["hidden_dims"]), activation=s["activation"],
                                encoder=s["encoder"], decoder=s["decoder"], stage1_likelihood=likelihood)
        else:
            model = HierarchicalVAE(shape, layers=_parse_layers(args.layers), activation=s["activation"],
                                    likelihood=s["likelihood"])
        x_train = datasets.load(s["dataset"], train_split, root=s["data_root"])
        x_valid = datasets.load(s["dataset"], valid_split, root=s["data_root"])
        x_test = datasets.load(s["dataset"], test_split, root=s["data_root"])
        if two_stage:
            binarize = False
        elif s["binarize"] == "auto":
            binarize = s["likelihood"] == "bernoulli" and not _is_binary(x_train)
        else:
            binarize = bool(s["binarize"])
        stage1 = model.stage1 if two_stage else model
        check_data(x_train, f"the {train_split} split of {s['dataset']!r}", stage1, binarize)
        _check_step_fits(int(s["num_particles"]), min(int(s["batch_size"]), x_train.shape[0]), shape, device)
        common = dict(batch_size=min(int(s["batch_size"]), x_train.shape[0]), lr=float(s["lr"]), device=device,
                      seed=int(s["seed"]), progress=not args.no_progress, checkpoint_dir=out,
                      resume=bool(args.resume))
        config = {"class": type(model).__name__, "vae": model.config, "dataset": s["dataset"],
                  "data_root": s["data_root"], "splits": {"train": train_split, "valid": valid_split,
                                                          "test": test_split},
                  "training": {k: s[k] for k in _TRAINING_KEYS if k in s}, "pyro_vae_version": _version()}
        config["training"]["binarize"] = binarize
        if two_stage:
            config["training"].update(stage2_epochs=stage2_epochs, stage2_codes=stage2_codes)
        args.exit_stack.enter_context(_run_lock(out))  # refuses a second writer before anything is written
        _write_json_atomic(config, out / CONFIG_NAME)
        print(f"run folder: {out}", flush=True)
        if two_stage:
            history = model.fit(x_train, epochs=int(s["epochs"]), stage2_epochs=stage2_epochs, val_data=x_valid,
                                stage2_codes=stage2_codes, **common)
            _write_json_atomic(history, out / "history.json")  # both stages; stage 1's with gamma per epoch
            last = history["stage1"][-1]
            print(f"stage 1: valid ELBO {last.get('val_elbo', float('nan')):.2f}, gamma {model.gamma:.5f}; "
                  f"stage 2: valid ELBO {history['stage2'][-1].get('val_elbo', float('nan')):.2f}")
        else:
            fit(model, x_train, epochs=int(s["epochs"]), objective=s["objective"],
                num_particles=int(s["num_particles"]), val_data=x_valid, binarize=binarize, **common)
        model.eval()
        model.save(out / MODEL_DIR)
        _seed_everything(s["seed"])
        metrics = evaluate_elbo(stage1, x_test.to(device), binarize=binarize)
        if two_stage:
            metrics["gamma"] = model.gamma
        _write_json_atomic({"split": test_split, **metrics}, out / TEST_METRICS_NAME)
        _seed_everything(s["seed"])
        if is_image_shape(shape):
            image_grid(model.sample(64).clamp(0, 1).cpu(), path=out / "samples.png",
                       title="two-stage samples" if two_stage else "samples")
            print(f"wrote {out / 'samples.png'}")
    print(f"test ELBO: {metrics['elbo']:.2f} nats (rate {metrics['rate']:.2f}, distortion {metrics['distortion']:.2f}"
          f"; {test_split} split, {x_test.shape[0]} datapoints)")
    return 0


def _version() -> str:
    from ._version import __version__

    return __version__


# ---------------------------------------------------------------------------------------------- sample
def _add_sample(subparsers: Any) -> None:
    p = subparsers.add_parser("sample", help="draw samples from a trained run",
                              description="Draw z from the prior, decode it and save the picture.")
    p.add_argument("run", help="run folder written by 'pyro-vae train'")
    p.add_argument("--num-samples", type=int, default=64, help="how many samples (default: 64)")
    p.add_argument("--out", default=None, help="image file to write (default: RUN/samples-sample.png)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def _run_sample(args: argparse.Namespace) -> int:
    from .plots import save_samples

    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    vae, _ = load_run(args.run, device=args.device)
    _seed_everything(args.seed)
    out = Path(args.out) if args.out is not None else Path(args.run) / "samples-sample.png"
    save_samples(vae, out, num_samples=args.num_samples)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- reconstruct
def _add_reconstruct(subparsers: Any) -> None:
    p = subparsers.add_parser("reconstruct", help="reconstruct test data with a trained run",
                              description="Encode test datapoints of the run's data set, decode the posterior "
                                          "mean and save originals (odd rows) above their reconstructions.")
    p.add_argument("run", help="run folder written by 'pyro-vae train'")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=32,
                   help="how many test datapoints (default: 32)")
    p.add_argument("--out", default=None, help="image file to write (default: RUN/reconstructions.png)")
    p.add_argument("--data-root", default=None, help="data folder (default: the run's, else $PYRO_VAE_DATA)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the binarization (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def _run_reconstruct(args: argparse.Namespace) -> int:
    from . import datasets
    from .plots import save_reconstructions

    if args.num < 1:
        raise ValueError(f"--num-datapoints must be >= 1, got {args.num}")
    vae, config = load_run(args.run, device=args.device)
    root = args.data_root if args.data_root is not None else config.get("data_root")
    split = config.get("splits", {}).get("test", "test")
    x = datasets.load(config["dataset"], split, root=root)[: args.num]
    _seed_everything(args.seed)
    if config.get("training", {}).get("binarize"):
        x = datasets.binarize(x)  # show what the model was trained on: binary images
    out = Path(args.out) if args.out is not None else Path(args.run) / "reconstructions.png"
    save_reconstructions(vae, x, out, n=args.num)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def _add_evaluate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="estimate log p(x) of test data with importance sampling",
        description="Estimate log p(x) of the run's test split with K importance samples per datapoint (IWAE), "
                    "next to the ELBO, rate and distortion, the bound as a function of K, the effective sample "
                    "size, the Pareto k-hat (PSIS) and latent usage. Writes evaluation.json and figures into the "
                    "run folder. Dynamically binarized runs are evaluated on one fixed binarization (--seed).")
    p.add_argument("run", help="run folder written by 'pyro-vae train'")
    p.add_argument("--num-particles", type=int, default=5000, help="K per datapoint (default: 5000)")
    p.add_argument("--split", default=None, help="data split (default: the run's test split)")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=None,
                   help="evaluate only the first NUM datapoints (under torchrun spell it out: torchrun reads --num "
                        "as its own --numa-binding)")
    p.add_argument("--batch-size", type=int, default=100, help="datapoints per pass (default: 100)")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per pass (default: automatic)")
    p.add_argument("--data-root", default=None, help="data folder (default: the run's, else $PYRO_VAE_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the Pareto k-hat")
    p.add_argument("--ais-steps", type=int, default=0,
                   help="also estimate log p(x) of the same datapoints by annealed importance sampling with this many "
                        "steps, reported beside the ELBO and IWAE with the paired difference (default: 0, off)")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint (default: 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_evaluate(args: argparse.Namespace) -> int:
    from . import datasets, distributed, infer, plots

    if args.num_particles < 1:
        raise ValueError(f"--num-particles must be >= 1, got {args.num_particles}")
    if args.num is not None and args.num < 1:
        raise ValueError(f"--num-datapoints must be >= 1, got {args.num}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.ais_steps < 0 or args.ais_chains < 1:
        raise ValueError(f"--ais-steps must be >= 0 and --ais-chains >= 1, got {args.ais_steps} and "
                         f"{args.ais_chains}")
    vae, config = load_run(args.run, device=args.device)
    if distributed.is_main_process() and not os.access(args.run, os.W_OK):
        raise PermissionError(f"the run folder {args.run} is not writable: evaluate writes evaluation.json and its "
                              "figures there (copy the run somewhere writable)")
    root = args.data_root if args.data_root is not None else config.get("data_root")
    split = args.split or config.get("splits", {}).get("test", "test")
    x = datasets.load(config["dataset"], split, root=root)
    if args.num is not None:
        x = x[: args.num]
    device = next(vae.parameters()).device
    x = x.to(device)
    if config.get("training", {}).get("binarize"):
        import torch

        x = datasets.binarize(x, torch.Generator(device=device).manual_seed(args.seed))
    result = infer.log_likelihood(vae.model, vae.guide, x, num_particles=args.num_particles,
                                  batch_size=args.batch_size, chunk_size=args.chunk_size,
                                  diagnostics=not args.no_diagnostics, seed=args.seed,
                                  progress=not args.no_progress)
    if not distributed.is_main_process():  # under torchrun every rank took its batches; rank 0 reports
        return 0
    usage = infer.latent_usage(vae.model, vae.guide, x, seed=args.seed)
    run_dir = Path(args.run)
    out = {"split": split, "seed": args.seed, **result.as_dict(),
           "latent_usage": {name: {k: v for k, v in u.items() if k != "mean_variance"} for name, u in usage.items()}}
    ais = None
    if args.ais_steps:  # the same datapoints, side by side with the ELBO and IWAE
        ais = infer.log_likelihood(vae.model, vae.guide, x, method="ais", batch_size=args.batch_size,
                                   num_chains=args.ais_chains, num_steps=args.ais_steps, seed=args.seed,
                                   distributed=False)
        paired = infer.compare(ais, result)
        out["ais"] = {"num_steps": args.ais_steps, "num_chains": args.ais_chains, "log_likelihood": ais.mean,
                      "stderr": ais.stderr, "mc_stderr": ais.mean_mc_stderr,
                      "acceptance_rate": float(ais.acceptance_rate.mean()),
                      "minus_iwae": {"mean": paired.mean, "stderr": paired.stderr,
                                     "ci95": [paired.ci_low, paired.ci_high]}}
    _write_json_atomic(out, run_dir / "evaluation.json")
    written = [run_dir / "evaluation.json"]
    plots.k_curve(result, run_dir / "k_curve.png")
    plots.gap_histogram(result, run_dir / "gaps.png")
    written += [run_dir / "k_curve.png", run_dir / "gaps.png"]
    if result.khat is not None:
        plots.khat_plot(result, run_dir / "khat.png")
        written.append(run_dir / "khat.png")
    print(result.summary())
    if ais is not None:
        print(f"log p(x) (AIS, {args.ais_chains} chains, {args.ais_steps} steps): {ais.mean:.3f} +- {ais.stderr:.3f} "
              f"(Monte Carlo {ais.mean_mc_stderr:.3f}); AIS - IWAE: {out['ais']['minus_iwae']['mean']:.3f} +- "
              f"{out['ais']['minus_iwae']['stderr']:.3f} (paired)")
    for name, u in usage.items():
        mi = u["mutual_information"]
        print(f"latent {name!r}: {u['active_units']} of {u['dimensions']} units active; rate per dimension "
              f"{_fmt_list(u['kl_per_dim'])}; I(x; z) = {mi:.3f} nats (at most {u['mutual_information_max']:.2f})"
              if mi is not None else f"latent {name!r}: {u['active_units']} of {u['dimensions']} units active")
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def _fmt_list(values: list[float] | None) -> str:
    return "n/a" if values is None else "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


# ---------------------------------------------------------------------------------------------- plot
def _add_plot(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plot", help="draw every figure of a trained run",
        description="Draw the figures of a run folder: training curves, reconstructions, samples, the latent space "
                    "coloured by label, a latent traversal (the decoded 2-D manifold for 2-D latents), and from "
                    "an importance-sampling estimate on test data the bound against K, the per-datapoint gaps "
                    "and the Pareto k-hat (ArviZ).")
    p.add_argument("run", help="run folder written by 'pyro-vae train'")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: the run folder)")
    p.add_argument("--num-particles", type=int, default=1000, help="K of the importance sampling (default: 1000)")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=500,
                   help="test datapoints to use (default: 500)")
    p.add_argument("--data-root", default=None, help="data folder (default: the run's, else $PYRO_VAE_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--format", dest="fmt", default="png", choices=["png", "pdf", "svg"],
                   help="figure file format (default: png)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of raster figures (default: 100)")


def _run_plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    written = plot_run(args.run, args.out, num_particles=args.num_particles, num=args.num, data_root=args.data_root,
                       seed=args.seed, device=args.device, fmt=args.fmt, dpi=args.dpi)
    for path in written.values():
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------- main
#: name -> (add the subparser, run it); a new subcommand is one more entry
SUBCOMMANDS: dict[str, tuple[Callable[[Any], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, _run_train),
    "sample": (_add_sample, _run_sample),
    "reconstruct": (_add_reconstruct, _run_reconstruct),
    "evaluate": (_add_evaluate, _run_evaluate),
    "plot": (_add_plot, _run_plot),
}


#: the subcommands that work under ``torchrun`` (every rank computes, rank 0 writes)
DISTRIBUTED_SUBCOMMANDS = ("train", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-vae`` with one subparser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog=PROG, description="Variational autoencoders as Pyro programs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, (add, _) in SUBCOMMANDS.items():
        add(subparsers)
    return parser


def _resolve_named_run_folder(args: argparse.Namespace) -> None:
    """A run folder named on the command line that is itself a link (``runs/latest``) is the user's choice: it is
    followed once, here, and everything is written inside the folder it points to. Links *inside* a run folder
    are never written through (:func:`pyro_vae.io.atomic_write`)."""
    for name in ("run",) + (("out",) if args.command == "train" else ()):
        value = getattr(args, name, None)
        if value is None or not Path(value).is_symlink():
            continue
        target = Path(value).resolve()
        if not target.exists():
            raise FileNotFoundError(f"{value} is a link to {os.readlink(value)}, which does not exist: create that "
                                    "folder, or choose another")
        if target.is_dir():
            setattr(args, name, str(target))


class Terminated(BaseException):
    """SIGTERM (a scheduler's or torchrun's stop), raised where the program is, so that it ends as Ctrl-C does: locks
    released, no half-written file (every write is atomic), a message instead of a silent exit."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _signal_handling() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block; the previous handler is restored after it. Only the
    main thread can set handlers; elsewhere nothing changes. (A stop that arrives after the work, while the
    interpreter shuts down, is the console script's to handle: :func:`pyro_vae._console.run`.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run ``pyro-vae`` with the arguments ``argv`` (default: ``sys.argv[1:]``).

    :param argv: the command-line arguments, without the program name.
    :returns: the exit status: 0 on success, 2 for a usage error or bad input (the message goes to stderr as
        ``pyro-vae: error: <message>``), 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM).
    """
    resume_hint = f"a training run continues with '{PROG} train --out RUN --resume'"
    try:
        with _signal_handling():
            return _main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted ({resume_hint})", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG}: terminated by SIGTERM ({resume_hint})", file=sys.stderr)
        return 143


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and usage errors (2)
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        from .distributed import launched  # after parsing: --help and usage errors import neither torch nor Pyro

        if launched() and args.command not in DISTRIBUTED_SUBCOMMANDS:
            raise ValueError(f"'{PROG} {args.command}' runs in one process: launch it without torchrun (only "
                             f"{' and '.join(DISTRIBUTED_SUBCOMMANDS)} use several)")
        _resolve_named_run_folder(args)
        with contextlib.ExitStack() as stack:
            args.exit_stack = stack  # what a command holds until it returns (the run folder's lock)
            status = SUBCOMMANDS[args.command][1](args)
        from .distributed import finish

        finish()  # under torchrun: every rank waits for rank 0's files before any exits
        return status
    except (ValueError, TypeError, OSError, FloatingPointError) as e:  # RunLocked is an OSError
        hint = " (on the command line: --data-root FOLDER)" if "PYRO_VAE_DATA" in str(e) else ""
        print(f"{PROG}: error: {e}{hint}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's allocator: a size option too large for this machine
        if "memory" not in str(e).lower() and "allocat" not in str(e).lower():
            raise
        print(f"{PROG}: error: not enough memory ({str(e).splitlines()[0][:160]}): lower --latent-dim, "
              "--hidden-dims, --batch-size or --num-particles", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``pyro-vae`` command line: argparse and printing only; the work is :mod:`pyro_vae.pipeline`'s.

Usage::

    pyro-vae train [--dataset digits] [--out RUN] [--epochs E] [...]   # writes a run folder
    pyro-vae train --out RUN --resume --epochs 60                       # continue that run
    pyro-vae train --config run.yaml --epochs 5                         # options from a file, flags win
    pyro-vae train --semi-supervised --labels 100 [--dataset mnist]    # Kingma et al.'s M2 on few labels
    pyro-vae evaluate RUN [--num-particles 5000] [--ais-steps 500]      # log p(x): IWAE, diagnostics, AIS
    pyro-vae sample RUN [--num-samples 64] [--out samples.png] [--seed 0]
    pyro-vae reconstruct RUN [--num 32] [--out recon.png]
    pyro-vae plot RUN [--out DIR]                                       # every figure of the run
    pyro-vae compare RUN RUN [RUN...] [--num-particles K] [--out DIR]   # paired log p(x) on the same points
    pyro-vae report RUN|COMPARISON --out report.html                    # one self-contained HTML page

``train`` is :func:`pyro_vae.pipeline.train_run`, ``evaluate`` :func:`pyro_vae.pipeline.evaluate_run` and ``plot``
:func:`pyro_vae.plots.plot_run`: a notebook calling them gets exactly what the command line does. The run folder's
files are described in :mod:`pyro_vae.runs`. ``--config FILE`` reads train options from YAML (``yaml.safe_load``)
with the command line overriding it; ``--tensorboard`` logs every epoch to ``RUN/tensorboard``.

Each subcommand is a pair of functions, ``_add_<name>(subparsers)`` and ``_run_<name>(args) -> int``,
registered in :data:`SUBCOMMANDS`; adding one is adding an entry there; options several subcommands share are
added by :func:`_add_run_options`. Errors the library raises for bad input (``ValueError``, ``TypeError``,
``OSError`` such as a missing file) are printed as ``pyro-vae: error: <message>`` with exit status 2, without a
traceback. Parsing imports neither torch nor Pyro (``pyro-vae --help`` answers at once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .run_files import PROG

__all__ = ["SUBCOMMANDS", "build_parser", "load_run", "main"]


def load_run(run_dir: Any, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """:func:`pyro_vae.runs.load_run` (imported when called)."""
    from .runs import load_run as load

    return load(run_dir, device=device)


#: names with fixed values, spelled here so that parsing imports neither torch nor Pyro (a test checks them
#: against pyro_vae.likelihoods.LIKELIHOODS, pyro_vae.nets.ACTIVATIONS, pyro_vae.infer.objectives.OBJECTIVES and
#: pyro_vae.priors.PRIORS)
LIKELIHOOD_NAMES = ("bernoulli", "continuous_bernoulli", "normal", "normal-learned", "normal-gamma")
ACTIVATION_NAMES = ("tanh", "relu", "softplus", "elu", "gelu", "silu")
OBJECTIVE_NAMES = ("elbo", "mean-field", "iwae", "iwae-dreg")
PRIOR_NAMES = ("normal", "mixture", "vamp", "flow")
#: a semi-supervised run's schedule options (train.semi_supervised's AUX_STEPS, LOSS_SCALES, LABELLED_SCHEDULES)
AUX_STEP_NAMES = ("joint", "separate")
LOSS_SCALE_NAMES = ("mean", "sum")
LABELLED_SCHEDULE_NAMES = ("interleaved", "mixed")


def _objective_name(text: str) -> str:
    """An objective's name, the older ``_`` spellings (``mean_field``, ``iwae_dreg``) taken for ``-``."""
    return text.replace("_", "-") if text.replace("_", "-") in OBJECTIVE_NAMES else text


def _seed_everything(seed: int) -> None:
    import pyro

    pyro.set_rng_seed(int(seed))


#: the options several subcommands share, added by one function: (flags, keyword arguments of add_argument)
_RUN_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "run": (("run",), {"help": "run folder written by 'pyro-vae train'"}),
    "data_root": (("--data-root",), {"default": None, "help": "folder with mnist/, fashion-mnist/, binarized-mnist/ "
                                                              "(default: the run's, else $PYRO_VAE_DATA)"}),
    "device": (("--device",), {"default": "auto", "help": "auto, cpu or cuda (default: auto)"}),
    "seed": (("--seed",), {"type": int, "default": 0, "help": "random seed (default: 0)"}),
}


def _add_run_options(p: argparse.ArgumentParser, *names: str, unset: bool = False) -> None:
    """Add the shared options ``names`` (``run``, ``data_root``, ``device``, ``seed``) to ``p``; with ``unset``
    their value is None when not given (``train --resume`` then takes the run's own; the help's default applies to
    a new run)."""
    for name in names:
        flags, kwargs = _RUN_OPTIONS[name]
        p.add_argument(*flags, **({**kwargs, "default": None} if unset else kwargs))


# ---------------------------------------------------------------------------------------------- train
def _add_train(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a VAE and write a run folder",
        description="Train a VAE on a data set. The run folder gets config.json, checkpoint.pt, metrics.jsonl, "
                    "train.log, samples.png, training.png and test_metrics.json; the test ELBO is printed at the end. "
                    "Unset options take per-data-set defaults (digits: latent 8, hidden 128, 100 epochs, "
                    "lr 3e-3; image sets: latent 50, hidden 200,200, 20 epochs; toy sets: latent 2, normal "
                    "likelihood). A --semi-supervised run prints its test accuracy and test log p(x) with the "
                    "label summed instead of the test ELBO.")
    p.add_argument("--dataset", default=None, help="data set name (default: digits, which needs no files)")
    _add_run_options(p, "data_root", "device", "seed", unset=True)
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
    p.add_argument("--prior", default=None, choices=PRIOR_NAMES,
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
    p.add_argument("--num-threads", default=None,
                   help="torch intra-op CPU threads, or auto (default: 1 for digits and the toy sets, else the "
                        "free cores: all on an idle machine, fewer when other processes keep them busy, since more "
                        "threads than free cores make training collapse)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last complete epoch (any kind of run; a --semi-supervised "
                        "one keeps its labelled and unlabelled data)")
    p.add_argument("--two-stage", action="store_true", default=None,
                   help="Dai & Wipf's two-stage VAE: stage 1 with a learned decoder variance gamma (likelihood "
                        "normal-gamma, grey levels, no binarization), stage 2 a VAE on stage 1's codes; samples go "
                        "through both stages (the run folder also gets history.json, both stages' histories with gamma "
                        "per epoch)")
    p.add_argument("--stage2-epochs", type=int, default=None, help="epochs of stage 2 (default: --epochs)")
    p.add_argument("--stage2-codes", default=None, choices=("samples", "means"),  # train.two_stage.STAGE2_CODES
                   help="what stage 2 trains on: samples z ~ q(z|x) redrawn at every visit (Dai & Wipf; the "
                        "default) or stage 1's posterior means")
    p.add_argument("--layers", default=None,
                   help="a hierarchical VAE (several stochastic layers), e.g. '200,200,100;100,100,50' for the IWAE "
                        "paper's two-layer model: per layer the hidden sizes then the latent size, bottom first")
    p.add_argument("--kind", default=None,
                   help="the run kind by its registered name (VAE, HierarchicalVAE, TwoStageVAE, SSVAE, or one of "
                        "your own, see pyro_vae.pipeline.register_kind); --layers, --two-stage and --semi-supervised "
                        "select theirs")
    p.add_argument("--semi-supervised", action="store_true", default=None,
                   help="Kingma et al.'s semi-supervised VAE (M2): trained on --labels N labelled training datapoints "
                        "(as many of each class) and the rest unlabelled, the label summed exactly; the test accuracy "
                        "of argmax q(y|x) and the test log p(x) with the label summed (IWAE) are printed and written "
                        "to test_metrics.json. Data sets with labels: digits, mnist, fashion-mnist; MLP networks, "
                        "bernoulli likelihood, normal prior and the elbo, iwae or iwae-dreg objective; checkpoint.pt "
                        "and metrics.jsonl after every epoch, so --resume continues it")
    p.add_argument("--labels", type=int, default=None,
                   help="labelled training datapoints of a --semi-supervised run, a multiple of the number of classes")
    p.add_argument("--num-unlabelled", type=int, default=None,
                   help="unlabelled datapoints of a --semi-supervised run, drawn at random (default: the rest of the "
                        "training split)")
    p.add_argument("--aux-loss-multiplier", type=float, default=None,
                   help="alpha of a --semi-supervised run's classification loss per labelled datapoint (default: 46)")
    p.add_argument("--labelled-passes", type=int, default=None,
                   help="passes over the labelled datapoints per epoch of a --semi-supervised run (default: 10; "
                        "Pyro's schedule: 1)")
    p.add_argument("--test-particles", type=int, default=None,
                   help="K of a --semi-supervised run's test log p(x) (IWAE, the label summed; default: 100)")
    p.add_argument("--aux-step", default=None, choices=AUX_STEP_NAMES,
                   help="a --semi-supervised run's auxiliary loss: in the bound's Adam update (joint, the default) or "
                        "an update of its own on every batch, a momentum step on unlabelled ones (separate, Pyro's)")
    p.add_argument("--loss-scale", default=None, choices=LOSS_SCALE_NAMES,
                   help="a --semi-supervised run's step loss per datapoint of its batch (mean, the default) or summed "
                        "(sum, Pyro's: a labelled datapoint then weighs as an unlabelled one)")
    p.add_argument("--labelled-schedule", default=None, choices=LABELLED_SCHEDULE_NAMES,
                   help="a --semi-supervised run's labelled batches: steps of their own spread among the unlabelled "
                        "ones (interleaved, Pyro's, the default) or joined to every unlabelled batch in one step "
                        "(mixed, Kingma et al.'s mixed minibatches)")
    p.add_argument("--adam-beta1", type=float, default=None,
                   help="Adam's beta1 of a --semi-supervised run (default: 0.9; Pyro's example 0.95)")
    p.add_argument("--init-std", type=float, default=None,
                   help="a --semi-supervised run's hidden layers start with weights from N(0, std^2) and zero biases "
                        "(Pyro's example: 0.001; default: torch's initialisation)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="compile the training step with torch.compile (CUDA graphs on a GPU): faster where a step is "
                        "bound by Python and kernel launches, e.g. small networks on a GPU; a resumed run compiles "
                        "when given it again")
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
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path} is not valid JSON: {e}") from None
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

def _run_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .pipeline import train_run

    if getattr(args, "config", None):
        _apply_config_file(args)
        _resolve_named_run_folder(args)  # an 'out' from the file is followed as one from the command line
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out, the run folder to continue")
    skip = ("command", "config", "exit_stack", "out", "resume", "no_progress", "tensorboard")
    options = {k: v for k, v in vars(args).items() if k not in skip}
    run = train_run(options, args.out, resume=bool(args.resume), progress=not args.no_progress,
                    tensorboard=bool(args.tensorboard), hold=args.exit_stack)
    if not distributed.is_main_process():
        return 0
    history, m = run.history, run.test_metrics
    if "accuracy" in m:  # semi-supervised
        if run.written:
            print("wrote " + ", ".join(str(w) for w in run.written))
        print(f"test accuracy of argmax q(y|x): {m['accuracy']:.4f} ({m['split']} split, {m['num_datapoints']} "
              f"datapoints; {m['labels']} labels, {m['num_unlabelled']} unlabelled, {m['epochs']} epochs, "
              f"{run.seconds:.1f} s)")
        print(f"test accuracy of the model's own argmax p(y|x): {m['model_accuracy']:.4f} (how much of the class its "
              f"label carries)")
        print(f"test log p(x), label summed (IWAE, K={m['num_particles']}): {m['log_likelihood']:.2f} +- "
              f"{m['log_likelihood_stderr']:.2f} nats (Monte Carlo error {m['log_likelihood_mc_stderr']:.3f}; ELBO "
              f"{m['elbo']:.2f})")
        return 0
    if isinstance(history, dict):  # two stages
        s1, s2 = (h[-1] if h else {} for h in (history["stage1"], history["stage2"]))
        gamma = m.get("gamma") or float("nan")
        print(f"stage 1: valid ELBO {s1.get('val_elbo', float('nan')):.2f}, gamma {gamma:.5f}; "
              f"stage 2: valid ELBO {s2.get('val_elbo', float('nan')):.2f} ({run.seconds:.1f} s)")
    elif history and "val_elbo" in history[-1]:
        last = history[-1]
        print(f"epoch {last['epoch']}: train loss {last['loss']:.2f}, valid ELBO {last['val_elbo']:.2f} nats "
              f"({run.seconds:.1f} s)")
    if run.written:
        print("wrote " + ", ".join(str(w) for w in run.written))
    print(f"test ELBO: {m['elbo']:.2f} nats (rate {m['rate']:.2f}, distortion {m['distortion']:.2f}; {m['split']} "
          f"split, {m['num_datapoints']} datapoints)")
    return 0


# ---------------------------------------------------------------------------------------------- sample
def _add_sample(subparsers: Any) -> None:
    p = subparsers.add_parser("sample", help="draw samples from a trained run",
                              description="Draw z from the prior, decode it and save the picture.")
    _add_run_options(p, "run")
    p.add_argument("--num-samples", type=int, default=64, help="how many samples (default: 64)")
    p.add_argument("--out", default=None, help="image file to write (default: RUN/samples-sample.png)")
    _add_run_options(p, "seed", "device")


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
    _add_run_options(p, "run")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=32,
                   help="how many test datapoints (default: 32)")
    p.add_argument("--out", default=None, help="image file to write (default: RUN/reconstructions.png)")
    _add_run_options(p, "data_root", "seed", "device")


def _run_reconstruct(args: argparse.Namespace) -> int:
    from .plots import save_reconstructions
    from .runs import run_test_data

    if args.num < 1:
        raise ValueError(f"--num-datapoints must be >= 1, got {args.num}")
    vae, config = load_run(args.run, device=args.device)
    # binarized runs show what the model was trained on: binary images (the same draw as evaluate and plot)
    x, _ = run_test_data(config, num=args.num, data_root=args.data_root, seed=args.seed)
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
                    "run folder. Dynamically binarized runs are evaluated on one fixed binarization (--seed). A "
                    "semi-supervised run's log p(x) sums the label exactly, and the accuracy of argmax q(y|x) is "
                    "reported too.")
    _add_run_options(p, "run")
    p.add_argument("--num-particles", type=int, default=5000, help="K per datapoint (default: 5000)")
    p.add_argument("--split", default=None, help="data split (default: the run's test split)")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=None,
                   help="evaluate only the first NUM datapoints (under torchrun spell it out: torchrun reads --num "
                        "as its own --numa-binding)")
    p.add_argument("--batch-size", type=int, default=100, help="datapoints per pass (default: 100)")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per pass (default: automatic)")
    _add_run_options(p, "data_root", "device", "seed")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the Pareto k-hat")
    p.add_argument("--ais-steps", type=int, default=0,
                   help="also estimate log p(x) of the same datapoints by annealed importance sampling with this many "
                        "steps, reported beside the ELBO and IWAE with the paired difference (default: 0, off; not for "
                        "a semi-supervised run, whose discrete label AIS cannot anneal)")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint (default: 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_evaluate(args: argparse.Namespace) -> int:
    from . import distributed
    from .pipeline import evaluate_run

    out = evaluate_run(args.run, num_particles=args.num_particles, split=args.split, num=args.num,
                       batch_size=args.batch_size, chunk_size=args.chunk_size, data_root=args.data_root,
                       device=args.device, seed=args.seed, diagnostics=not args.no_diagnostics,
                       ais_steps=args.ais_steps, ais_chains=args.ais_chains, progress=not args.no_progress)
    if not distributed.is_main_process():  # under torchrun every rank took its batches; rank 0 reports
        return 0
    if out["replaced"]:
        print(f"note: {out['replaced']}")
    print(f"model: {out['model']}")
    print(out["result"].summary())
    if "accuracy" in out:
        print(f"accuracy of argmax q(y|x): {out['accuracy']:.4f} on the same {out['num_datapoints']} datapoints")
    ais = out["ais_result"]
    if ais is not None:
        paired = out["ais"]["minus_iwae"]
        print(f"log p(x) (AIS, {args.ais_chains} chains, {args.ais_steps} steps): {ais.mean:.3f} +- {ais.stderr:.3f} "
              f"(Monte Carlo {ais.mean_mc_stderr:.3f}); AIS - IWAE: {paired['mean']:.3f} +- {paired['stderr']:.3f} "
              "(paired)")
    for name, u in out["latent_usage"].items():
        mi = u["mutual_information"]
        print(f"latent {name!r}: {u['active_units']} of {u['dimensions']} units active; rate per dimension "
              f"{_fmt_list(u['kl_per_dim'])}; I(x; {name}) = {mi:.3f} nats (at most {u['mutual_information_max']:.2f})"
              if mi is not None else f"latent {name!r}: {u['active_units']} of {u['dimensions']} units active")
    print("wrote " + ", ".join(str(w) for w in out["written"]))
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
    _add_run_options(p, "run")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: the run folder)")
    p.add_argument("--num-particles", type=int, default=1000, help="K of the importance sampling (default: 1000)")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=500,
                   help="test datapoints to use (default: 500)")
    _add_run_options(p, "data_root", "device", "seed")
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


# ---------------------------------------------------------------------------------------------- compare
def _add_compare(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare", help="compare runs on the same test points, paired",
        description="Estimate log p(x) of every run on the same test datapoints, with the same fixed binarization and "
                    "the same seeds, and print one row per run (ELBO, IWAE_K, AIS where asked, the share of k-hat "
                    "above 0.7, active units, parameters, epochs, training time) and each run's paired difference "
                    "from the first with its standard error and Monte Carlo part. A run's evaluation.json measured "
                    "in the same setting is reused (and said so); nothing is written into the runs. Writes "
                    "comparison.json, comparison_values.pt, k_curves.png and differences.png into --out. Refuses runs "
                    "on different data, a run still training, and a semi-supervised run beside plain ones unless "
                    "--allow label-summed.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by 'pyro-vae train' (two or more; the "
                                                         "differences are against the first)")
    p.add_argument("--num-particles", type=int, default=5000, help="K per datapoint (default: 5000, as evaluate)")
    p.add_argument("--num-datapoints", "--num", dest="num", type=int, default=None,
                   help="only the first NUM test datapoints (default: all)")
    p.add_argument("--ais-steps", type=int, default=0,
                   help="also AIS with this many steps, for the runs whose kind allows it (default: 0, off)")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint (default: 16)")
    p.add_argument("--split", default=None, help="data split (default: the runs' test split)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="datapoints per seeded pass (default: 100, as evaluate; an evaluation is reused only with "
                        "the same)")
    p.add_argument("--chunk-size", type=int, default=None, help="particles per pass (default: automatic)")
    p.add_argument("--allow", action="append", default=[], metavar="WHAT",
                   help="compare what the runs' kinds measure differently: label-summed (a semi-supervised run's "
                        "log p(x) with the label summed beside plain runs')")
    p.add_argument("--out", default="comparison", help="folder for comparison.json and the figures (default: "
                                                       "comparison)")
    _add_run_options(p, "data_root", "device", "seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_compare(args: argparse.Namespace) -> int:
    from .pipeline.compare import compare_runs, table_rows

    out = compare_runs(args.runs, args.out, num_particles=args.num_particles, num=args.num, split=args.split,
                       batch_size=args.batch_size, chunk_size=args.chunk_size, data_root=args.data_root,
                       device=args.device, seed=args.seed, ais_steps=args.ais_steps, ais_chains=args.ais_chains,
                       allow=args.allow, progress=not args.no_progress, say=print)
    s = out["setting"]
    print(f"{s['dataset']} {s['split']} split, {s['num_datapoints']} datapoints, K={s['num_particles']}, seed "
          f"{s['seed']} (the same points, binarization and seeds for every run)")
    headers, rows, diff_headers, diff_rows = table_rows(out)
    print(_text_table(headers, rows))
    if diff_rows:
        print("paired differences against the first run (the Monte Carlo part is inside the paired SE):")
        print(_text_table(diff_headers, diff_rows))
    for row in out["runs"]:
        if isinstance(row.get("ais"), dict) and "left_out" in row["ais"]:
            print(f"AIS left out of {row['name']}: {row['ais']['left_out']}")
    print("wrote " + ", ".join(str(w) for w in out["written"]))
    return 0


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


# ---------------------------------------------------------------------------------------------- report
def _add_report(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="one self-contained HTML page of a run or a comparison",
        description="Write one HTML file that needs nothing else (figures inlined, no network): for a run its "
                    "settings, data, training curves, samples, reconstructions, latent space, evaluation and the "
                    "last lines of train.log; for a comparison's folder its table and figures.")
    p.add_argument("source", metavar="RUN|COMPARISON", help="a run folder, or a folder written by 'pyro-vae compare'")
    p.add_argument("--out", default=None, help="the HTML file (default: SOURCE/report.html)")
    _add_run_options(p, "data_root", "seed")


def _run_report(args: argparse.Namespace) -> int:
    from .pipeline.reports import report

    path = report(args.source, args.out, data_root=args.data_root, seed=args.seed)
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
    "compare": (_add_compare, _run_compare),
    "report": (_add_report, _run_report),
}


#: the subcommands that work under ``torchrun`` (every rank computes, rank 0 writes)
DISTRIBUTED_SUBCOMMANDS = ("train", "evaluate")


def _version() -> str:
    from ._version import __version__

    return __version__


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

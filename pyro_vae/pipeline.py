"""The run pipeline: what ``pyro-vae train`` and ``pyro-vae evaluate`` do, as functions a notebook calls too.

:func:`train_run` takes the options of a run (any unset one gets its data set's default; with ``resume`` they come
from the run's ``config.json``), checks all of them before anything is written, trains any model kind (a
:class:`~pyro_vae.VAE`, a :class:`~pyro_vae.HierarchicalVAE` with ``layers``, a :class:`~pyro_vae.TwoStageVAE`
with ``two_stage``, the semi-supervised :class:`~pyro_vae.SSVAE` with ``semi_supervised`` and ``labels``) and leaves
a complete run folder (:mod:`pyro_vae.runs`); :func:`evaluate_run` estimates
``log p(x)`` of a run's test data and writes ``evaluation.json`` and its figures; :func:`pyro_vae.plots.plot_run`
draws every figure. The command line (:mod:`pyro_vae.cli`) only parses options and prints what these return.

Example::

    from pyro_vae.pipeline import train_run, evaluate_run
    run = train_run({"dataset": "digits", "epochs": 5}, "runs/digits")
    print(run.test_metrics["elbo"])
    evaluation = evaluate_run("runs/digits", num_particles=1000)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import datasets, distributed, threads
from .io import RunLock, write_json
from .run_files import CHECKPOINT_NAME, CONFIG_NAME, MODEL_DIR, PROG, TEST_METRICS_NAME
from .runs import (
    EVALUATION_NAME,
    load_run,
    model_for_resume,
    read_config,
    read_evaluation,
    read_metrics,
    run_test_data,
    write_config,
)

__all__ = ["train_run", "evaluate_run", "run_settings", "TrainedRun", "DATASET_DEFAULTS", "RUN_IDENTITY",
           "TRAINING_KEYS", "TRAIN_METRICS_SIZE", "SEMI_SUPERVISED_CLASSES", "SEMI_SUPERVISED_DEFAULTS", "parse_dims",
           "parse_layers", "resolve_threads", "check_step_fits"]

#: defaults of the image data sets, and per data set where they differ (digits trains in seconds on 2 CPU cores)
_IMAGE_DEFAULTS = {"latent_dim": 50, "hidden_dims": "200,200", "epochs": 20}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
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
RUN_IDENTITY = ("dataset", "likelihood", "latent_dim", "hidden_dims", "activation", "encoder", "decoder", "prior",
                "prior_components", "flow", "num_flows")
#: training settings stored in config.json; on resume they are taken from there unless given again
TRAINING_KEYS = ("epochs", "batch_size", "lr", "objective", "num_particles", "seed", "binarize", "device",
                 "num_threads")
#: training datapoints (the first ones) whose ELBO, rate and distortion are recorded after every epoch
TRAIN_METRICS_SIZE = 2000
#: datapoints per pass of :func:`evaluate_run` by default (a semi-supervised run's test log p(x) uses the same, so
#: that ``pyro-vae evaluate RUN --num-particles K --seed S`` draws the same particles)
EVALUATE_BATCH_SIZE = 100
#: the priors that take a number of components
_PRIORS_WITH_COMPONENTS = ("mixture", "vamp")
#: the data sets a semi-supervised run takes (images with class labels) and their number of classes
SEMI_SUPERVISED_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10}
#: the options of a semi-supervised run alone (stored in config.json's ``training``), and their defaults: the
#: labelled training datapoints (required), the unlabelled ones (None: the rest of the training split), Kingma et
#: al.'s alpha, passes over the labelled data per epoch, and K of the test log p(x)
SEMI_SUPERVISED_DEFAULTS: dict[str, Any] = {"labels": None, "num_unlabelled": None, "aux_loss_multiplier": 46.0,
                                            "labelled_passes": 1, "test_particles": 100}
#: the options a semi-supervised run refuses, with the one value (or the values) each may take (None: none)
_NOT_SEMI_SUPERVISED: dict[str, Any] = {
    "two_stage": None, "layers": None, "stage2_epochs": None, "stage2_codes": None, "prior": "normal",
    "prior_components": None, "flow": None, "encoder": "mlp", "decoder": "mlp",
    "objective": ("elbo", "iwae", "iwae-dreg"), "likelihood": "bernoulli"}
_NO_RESUME = ("semi-supervised runs cannot be resumed (pyro_vae.fit_semi_supervised keeps no checkpoint to continue "
              "from): start a new run with the --epochs you want")


def _default(dataset: str, key: str) -> Any:
    spec = DATASET_DEFAULTS.get(dataset, {})
    if key in spec:
        return spec[key]
    if key in _IMAGE_DEFAULTS:
        return _IMAGE_DEFAULTS[key]
    return _GLOBAL_DEFAULTS[key]


def parse_dims(text: str | list[int] | tuple[int, ...]) -> list[int]:
    """``"200,200"`` (or a list) -> ``[200, 200]``.

    :raises ValueError: for anything but positive whole sizes.
    """
    if isinstance(text, (list, tuple)):
        values: list[Any] = list(text)
    else:
        values = [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        dims = [int(t) for t in values]
    except (TypeError, ValueError):
        raise ValueError(f"--hidden-dims must be comma-separated sizes such as 200,200; got {text!r}") from None
    if not dims or any(d < 1 for d in dims) or any(isinstance(v, float) and v != int(v) for v in values):
        raise ValueError(f"--hidden-dims must be a comma-separated list of positive sizes; got {text!r}")
    return dims


def parse_layers(text: str | list[list[int]]) -> list[list[int]]:
    """``"200,200,100;100,100,50"`` -> ``[[200, 200, 100], [100, 100, 50]]`` (the stochastic layers of a
    :class:`~pyro_vae.HierarchicalVAE`, bottom first).

    :raises ValueError: for anything else.
    """
    try:
        layers = ([[int(t) for t in layer] for layer in text] if isinstance(text, list) else
                  [[int(t) for t in part.split(",") if t.strip()] for part in str(text).replace(" ", "").split(";")])
    except (TypeError, ValueError):
        raise ValueError(f"--layers must look like 200,200,100;100,100,50; got {text!r}") from None
    if not layers or any(not layer or min(layer) < 1 for layer in layers):
        raise ValueError(f"--layers must be ';'-separated lists of positive sizes, e.g. "
                         f"200,200,100;100,100,50; got {text!r}")
    return layers


def resolve_threads(value: str | int | None, dataset: str) -> int | None:
    """The torch intra-op threads of a run: a positive number, or ``"auto"``: one thread for digits and the toy
    sets (their small nets gain nothing from threads), else :func:`pyro_vae.threads.free_cores` (all cores on an
    idle machine, fewer when other processes keep the cores busy). None means ``"auto"``.

    :raises ValueError: for anything else.
    """
    if value is None or value == "auto":
        return 1 if dataset in DATASET_DEFAULTS else threads.free_cores()
    return threads.resolve_threads(value, "--num-threads")


def _splits(dataset: str) -> tuple[str, str, str]:
    """The (train, validation, test) splits of a data set."""
    splits = datasets.SPLITS[dataset]
    train = "train-without-valid" if "train-without-valid" in splits else "train"
    return train, "valid", "test"


# ---------------------------------------------------------------------------------------------------- settings
def run_settings(options: dict[str, Any], out: str | os.PathLike[str] | None = None,
                 resume: bool = False) -> tuple[dict[str, Any], Path]:
    """The settings of a run: the given ``options`` (unset or None ones take the data set's defaults), or with
    ``resume`` the run's ``config.json`` with the training options given again replacing the saved ones. Every
    value is checked here, before anything is read or written.

    :param options: option names as in ``config.json`` (``dataset``, ``epochs``, ``hidden_dims``, ``layers``,
        ``two_stage``, ``semi_supervised`` with ``labels`` and the other keys of :data:`SEMI_SUPERVISED_DEFAULTS`,
        ...); ``binarize`` may be True, False, ``"auto"``, ``"yes"`` or ``"no"``. Messages name
        the options as the command line spells them (``--lr``).
    :param out: the run folder (default: ``runs/<dataset>-<timestamp>``; needed with ``resume``).
    :returns: ``(settings, out)``.
    :raises ValueError: naming the option and what to do.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if "binarize" in given:
        b = given["binarize"]
        given["binarize"] = {"yes": True, "no": False, True: True, False: False}.get(b, b)
    if resume:
        if out is None:
            raise ValueError("--resume needs --out, the run folder to continue")
        if given.get("semi_supervised") or any(k in given for k in SEMI_SUPERVISED_DEFAULTS):
            raise ValueError(_NO_RESUME)
        s, out = _resumed_settings(given, Path(out))
    else:
        dataset = given.get("dataset", "digits")
        s = {"dataset": dataset, "data_root": given.get("data_root")}
        for key in ("likelihood", "latent_dim", "hidden_dims", "activation", "encoder", "decoder", "objective",
                    "epochs", "batch_size", "lr", "device", "seed", "num_threads", "prior", "prior_components", "flow",
                    "num_flows", "binarize"):
            s[key] = given.get(key, _default(dataset, key))
        s["num_particles"] = given.get("num_particles", 5 if str(s["objective"]).startswith("iwae") else 1)
        if given.get("layers") is not None:
            s["class"], s["layers"] = "HierarchicalVAE", parse_layers(given["layers"])
        if given.get("two_stage"):
            if given.get("layers") is not None:
                raise ValueError("choose either --two-stage or --layers, not both")
            s["class"] = "TwoStageVAE"
        for key in ("stage2_epochs", "stage2_codes"):
            s[key] = given.get(key)
        _semi_supervised_settings(given, s)
        out = Path(out) if out is not None else Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_settings(s)
    return s, out


def _resumed_settings(given: dict[str, Any], out: Path) -> tuple[dict[str, Any], Path]:
    saved = read_config(out)
    training = saved.get("training")
    missing = [k for k in TRAINING_KEYS if k != "num_threads" and k not in (training or {})]
    if not isinstance(training, dict) or missing:
        raise ValueError(f"{out / CONFIG_NAME} lacks the training settings {missing or ['training']}: the run folder "
                         "is damaged, and cannot be resumed (start a new run)")
    s = {"dataset": saved["dataset"], "data_root": saved.get("data_root"), **training, "vae_config": saved["vae"],
         "class": saved.get("class", "VAE")}
    s.update({k: saved["model_args"][k] for k in RUN_IDENTITY if k in (saved.get("model_args") or {})})
    for key in RUN_IDENTITY:
        if key in given and key in s:
            new = parse_dims(given[key]) if key == "hidden_dims" else given[key]
            old = parse_dims(s[key]) if key == "hidden_dims" else s[key]
            if new != old:
                raise ValueError(f"--{key.replace('_', '-')} {given[key]} differs from the run's {old!r}: a resumed "
                                 "run keeps its model and data set (start a new run instead)")
    kind = s["class"]
    if kind == "SSVAE":
        raise ValueError(f"the run in {out} is semi-supervised: {_NO_RESUME}")
    if given.get("two_stage") and kind != "TwoStageVAE" or given.get("layers") and kind != "HierarchicalVAE":
        raise ValueError(f"the run in {out} trains a {s['class']}: a resumed run keeps its model (start a new run "
                         "instead)")
    for key in (*TRAINING_KEYS, "data_root", "stage2_epochs", "stage2_codes"):
        if key in given:
            s[key] = given[key]
    return s, out


def _semi_supervised_settings(given: dict[str, Any], s: dict[str, Any]) -> None:
    """A new run's semi-supervised options into ``s`` (``class`` SSVAE), or the refusal of options that do not go
    with them: M2 here is an MLP pair with a Bernoulli decoder, the standard normal prior and a Gaussian guide,
    trained on the ELBO (or an IWAE objective) with the label enumerated."""
    if not given.get("semi_supervised"):
        stray = [k for k in SEMI_SUPERVISED_DEFAULTS if k in given]
        if stray:
            flag = "--" + stray[0].replace("_", "-")
            raise ValueError(f"{flag} applies to semi-supervised runs: add --semi-supervised (Kingma et al.'s M2 "
                             f"trained on --labels N labelled datapoints), or drop {flag}")
        return
    dataset = s["dataset"]
    if dataset not in SEMI_SUPERVISED_CLASSES:
        raise ValueError(f"--semi-supervised needs a data set of images with class labels, and {dataset!r} has none "
                         f"that fit: choose --dataset {', '.join(SEMI_SUPERVISED_CLASSES)}")
    if given.get("labels") is None:
        raise ValueError(f"--semi-supervised needs --labels N, the number of labelled training datapoints (a "
                         f"multiple of the {SEMI_SUPERVISED_CLASSES[dataset]} classes, e.g. --labels 100)")
    for key, allowed in _NOT_SEMI_SUPERVISED.items():
        value = given.get(key)
        if value is None or value is False or value == allowed or isinstance(allowed, tuple) and value in allowed:
            continue
        flag = "--" + key.replace("_", "-")
        spelled = flag if value is True else f"{flag} {value}"
        why = {"objective": "the label is summed exactly in elbo, iwae and iwae-dreg, and mean-field has no closed "
                            "form for it (choose one of those three)",
               "likelihood": "the semi-supervised VAE's decoder is Bernoulli"}.get(
                   key, "the semi-supervised VAE is one MLP model with a Gaussian guide and the standard normal prior")
        raise ValueError(f"--semi-supervised does not take {spelled}: {why} (drop {flag})")
    s["class"] = "SSVAE"
    for key, default in SEMI_SUPERVISED_DEFAULTS.items():
        s[key] = given.get(key, default)


def _check_semi_supervised(s: dict[str, Any]) -> None:
    """Refuse semi-supervised options no run can take (before anything is read)."""
    for key in ("labels", "num_unlabelled", "labelled_passes", "test_particles"):
        value = s.get(key)
        if value is None and key == "num_unlabelled":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or int(value) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1 (a whole number), got {value!r}")
        s[key] = int(value)
    classes = SEMI_SUPERVISED_CLASSES[s["dataset"]]
    if s["labels"] % classes:
        raise ValueError(f"--labels {s['labels']} is not a multiple of the {classes} classes of {s['dataset']!r}: the "
                         f"labelled datapoints are as many of each class (e.g. --labels "
                         f"{max(classes, s['labels'] // classes * classes)})")
    alpha = s.get("aux_loss_multiplier")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"--aux-loss-multiplier must be >= 0 and finite, got {alpha!r}")
    s["aux_loss_multiplier"] = float(alpha)
    if distributed.launched():
        raise ValueError("semi-supervised runs take one process: launch them without torchrun")


def _check_settings(s: dict[str, Any]) -> None:
    """Refuse, before anything is read or written, a setting no run can take."""
    from .infer.objectives import get_objective

    if s["dataset"] not in datasets.SPLITS:
        datasets.event_shape(s["dataset"])  # names the known data sets
    get_objective(s["objective"])
    for key in ("epochs", "batch_size", "num_particles", "latent_dim", "stage2_epochs"):
        if s.get(key) is None and key in ("latent_dim", "stage2_epochs"):  # a resumed --layers run has no latent_dim
            continue
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or int(value) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1 (a whole number), got {value!r}")
        s[key] = int(value)
    lr = s["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"--lr must be > 0 and finite, got {lr!r}")
    if s.get("hidden_dims") is not None:
        s["hidden_dims"] = parse_dims(s["hidden_dims"])
    resolve_threads(s.get("num_threads"), s["dataset"])
    if s.get("binarize") not in (True, False, "auto"):
        raise ValueError(f"--binarize must be true, false or auto, got {s.get('binarize')!r}")
    if s.get("prior_components") is not None and s.get("prior") not in _PRIORS_WITH_COMPONENTS:
        raise ValueError(f"--prior-components applies to the "
                         f"{' and '.join(_PRIORS_WITH_COMPONENTS)} priors, not to {s.get('prior')!r}")
    if s.get("class") in ("TwoStageVAE", "HierarchicalVAE") and distributed.launched():
        raise ValueError("two-stage and hierarchical (--layers) runs take one process: launch them without torchrun")
    if s.get("class") == "SSVAE":
        _check_semi_supervised(s)
    codes = s.get("stage2_codes")
    if codes is not None:
        from .train.two_stage import STAGE2_CODES

        if codes not in STAGE2_CODES:
            raise ValueError(f"--stage2-codes must be one of {', '.join(STAGE2_CODES)}, got {codes!r}")


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class TrainedRun:
    """What :func:`train_run` leaves: the run folder, the trained model, its history and its test metrics."""

    out: Path
    model: Any
    history: Any
    test_metrics: dict[str, Any]
    seconds: float
    written: list[Path] = field(default_factory=list)


def _device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (the GPU's, or the machine's for the CPU); None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def check_step_fits(num_particles: int, batch_size: int, shape: Any, device: torch.device) -> None:
    """Refuse, before anything is written, a step that cannot fit in memory: the decoder's output alone holds
    ``num_particles * batch_size * prod(shape)`` float32 numbers, a lower bound of what a step needs.

    :raises ValueError: naming the options to lower.
    """
    per_process = math.ceil(int(batch_size) / distributed.world_size())  # each rank takes its part of the batch
    need = 4 * int(num_particles) * per_process * math.prod(shape)
    have = _device_memory(device)
    if have is not None and need > have:
        raise ValueError(f"one training step needs more than {need / 2**30:,.1f} GiB (--num-particles "
                         f"{num_particles} x {per_process} datapoints per process x {math.prod(shape)} values per "
                         f"datapoint, float32), and the {device.type} has {have / 2**30:,.1f} GiB: lower "
                         "--num-particles or --batch-size")


def _require_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'pyro-vae[tensorboard]'") from None


def _build_model(s: dict[str, Any], shape: tuple[int, ...], out: Path) -> Any:
    from .models import VAE, HierarchicalVAE, TwoStageVAE

    cls = {"VAE": VAE, "HierarchicalVAE": HierarchicalVAE, "TwoStageVAE": TwoStageVAE}[s.get("class", "VAE")]
    if "vae_config" in s:  # resuming: the very model of the run, its config checked against its weights
        return model_for_resume(cls, s["vae_config"], out)
    if cls is TwoStageVAE:
        likelihood = s["likelihood"] if s["likelihood"] in ("normal-gamma", "normal-learned") else "normal-gamma"
        return TwoStageVAE(shape, latent_dim=s["latent_dim"], hidden_dims=tuple(s["hidden_dims"]),
                           stage2_hidden_dims=tuple(s["hidden_dims"]), activation=s["activation"],
                           encoder=s["encoder"], decoder=s["decoder"], stage1_likelihood=likelihood)
    if cls is HierarchicalVAE:
        return HierarchicalVAE(shape, layers=s["layers"], activation=s["activation"], likelihood=s["likelihood"])
    prior_options = {"num_components": int(s["prior_components"])} if s.get("prior_components") else {}
    return VAE(input_shape=shape, latent_dim=s["latent_dim"], hidden_dims=tuple(s["hidden_dims"]),
               activation=s["activation"], likelihood=s["likelihood"], encoder=s["encoder"], decoder=s["decoder"],
               prior=s.get("prior", "normal"), prior_options=prior_options, guide_flow=s.get("flow"),
               num_flows=int(s.get("num_flows", 2)))


def _epochs_done(out: Path, two_stage: bool) -> tuple[int, int]:
    """Complete epochs of a run (stage 1's and stage 2's for a two-stage run), from its metrics files."""
    if two_stage:
        return len(read_metrics(out / "stage1")), len(read_metrics(out / "stage2"))
    return len(read_metrics(out)), 0


def train_run(options: dict[str, Any], out: str | os.PathLike[str] | None = None, *, resume: bool = False,
              progress: bool = True, tensorboard: bool = False, say: Callable[..., None] = print,
              hold: contextlib.ExitStack | None = None) -> TrainedRun:
    """Train a run and write its folder: what ``pyro-vae train`` does.

    Every option is checked, the data are read and checked against the model, and a step's memory is compared
    with the device's, all before the folder is locked and ``config.json`` written; then :func:`pyro_vae.fit`
    (:func:`~pyro_vae.train.fit_two_stage` for a two-stage run) trains with a checkpoint after every epoch
    (:func:`~pyro_vae.train.fit_semi_supervised` for a semi-supervised run: ``metrics.jsonl`` after every epoch, no
    checkpoint; its test metrics are the accuracy of ``argmax q(y|x)`` and ``log p(x)`` with the label summed), and the
    trained model (``model/``), the test metrics (``test_metrics.json``), the samples and the training curves are
    written. Under ``torchrun`` every rank trains and rank 0 alone writes and speaks.

    :param options: the run's options (see :func:`run_settings`).
    :param out: the run folder.
    :param resume: continue the run in ``out`` from its last complete epoch. A finished run given more epochs
        trains them; given no more, it says so and only writes its outputs again. A two-stage run whose stage 2
        has started and that is given more stage-1 epochs trains them, then trains stage 2 again from the start on
        the new codes (stage 2 learned the old ones; its folder is kept as ``stage2-on-stage1-epochN``); given
        only more stage-2 epochs (``stage2_epochs``), stage 2 continues.
    :param progress: show progress (a bar on a terminal, otherwise a line per epoch on standard error).
    :param tensorboard: also log every epoch for TensorBoard into ``out/tensorboard``.
    :param say: prints the run's lines (the folder, the data, what resuming does); rank 0 only.
    :param hold: an exit stack that keeps the run folder's lock until it closes (default: released on return).
    :returns: a :class:`TrainedRun`.
    :raises ValueError: for bad options or data, before anything is written.
    :raises FileExistsError: when ``out`` already holds a run and ``resume`` is not set.
    """
    from .plots import image_grid, is_image_shape, save_samples, training_curves
    from .train import TensorBoard, TrainingMetrics, check_data, evaluate_elbo, fit, resolve_device

    main = distributed.is_main_process()
    say = say if main else (lambda *a, **k: None)
    s, out = run_settings(options, out, resume)
    kind = s.get("class", "VAE")
    two_stage = kind == "TwoStageVAE"
    if tensorboard:
        _require_tensorboard()
    device = resolve_device(s["device"])
    if not resume and (out / CHECKPOINT_NAME).exists() or not resume and kind != "VAE" and out.exists() \
            and any(out.iterdir()):
        raise FileExistsError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if kind == "SSVAE":
        return _train_semi_supervised(s, out, device, progress=progress, tensorboard=tensorboard, say=say, hold=hold)
    if two_stage:  # a resumed run keeps what its stage 2 trains on; runs older than the option trained on the means
        saved_codes = (read_config(out).get("training") or {}).get("stage2_codes", "means") if resume else None
        codes = s.get("stage2_codes") or saved_codes or "samples"
        if saved_codes and codes != saved_codes and (out / "stage2" / CHECKPOINT_NAME).exists():
            raise ValueError(f"--stage2-codes {codes} differs from the run's {saved_codes!r}, and its stage 2 has "
                             "started: a resumed stage 2 keeps its training data (start a new run instead)")
        s["stage2_codes"] = codes
    done = _epochs_done(out, two_stage) if resume else (0, 0)
    # more stage-1 epochs change the codes stage 2 learned: stage 2 then starts again (its old folder is kept)
    restart_stage2 = two_stage and done[1] > 0 and s["epochs"] > done[0]
    shape = datasets.event_shape(s["dataset"])
    train_split, valid_split, test_split = _splits(s["dataset"])
    with threads.torch_threads(resolve_threads(s.get("num_threads"), s["dataset"])):
        import pyro

        pyro.clear_param_store()
        pyro.set_rng_seed(s["seed"])
        model = _build_model(s, shape, out)
        x_train = datasets.load(s["dataset"], train_split, root=s["data_root"])
        x_valid = datasets.load(s["dataset"], valid_split, root=s["data_root"])
        x_test = datasets.load(s["dataset"], test_split, root=s["data_root"])
        if two_stage:
            s["binarize"] = False
        elif s["binarize"] == "auto":
            s["binarize"] = s["likelihood"] == "bernoulli" and not bool(((x_train == 0) | (x_train == 1)).all())
        binarize = bool(s["binarize"])
        stage1 = model.stage1 if two_stage else model
        # the data against the model (shape, NaN, the likelihood's support) before anything is written
        check_data(x_train, f"the {train_split} split of {s['dataset']!r}", stage1, binarize)
        batch_size = min(s["batch_size"], x_train.shape[0])
        check_step_fits(s["num_particles"], batch_size, shape, device)
        config = {"vae": model.config, "dataset": s["dataset"], "data_root": s["data_root"],
                  "splits": {"train": train_split, "valid": valid_split, "test": test_split},
                  "model_args": {k: s[k] for k in RUN_IDENTITY if k in s},
                  "training": {k: s[k] for k in TRAINING_KEYS}, "pyro_vae_version": _version()}
        if kind != "VAE":
            config["class"] = kind
        if two_stage:
            config["training"].update(stage2_epochs=s.get("stage2_epochs"), stage2_codes=s["stage2_codes"])
        with contextlib.ExitStack() as stack:
            if main:
                (hold or stack).enter_context(RunLock(out))  # refuses a second writer before anything is written
                write_config(config, out)
            world = f" on {distributed.world_size()} processes" if distributed.launched() else ""
            say(f"run folder: {out}", flush=True)
            say(f"data: {s['dataset']} {train_split} {tuple(x_train.shape)}, {valid_split} {x_valid.shape[0]}, "
                f"{test_split} {x_test.shape[0]}; likelihood {stage1.config['likelihood']}"
                f"{' with dynamic binarization' if binarize else ''}{world}", flush=True)
            stage2_epochs = s.get("stage2_epochs") or s["epochs"]
            if restart_stage2 and main:
                kept = _unused(out / f"stage2-on-stage1-epoch{done[0]}")
                (out / "stage2").rename(kept)
                say(f"stage 1 trains from epoch {done[0]} to {s['epochs']}; stage 2 was fitted to the codes of epoch "
                    f"{done[0]}, so it starts again on the new ones (the old stage 2 is kept in {kept})", flush=True)
            elif resume and done[0] >= s["epochs"] and (not two_stage or done[1] >= stage2_epochs):
                say(f"the run has {done[0]} complete epochs{f' (stage 2: {done[1]})' if two_stage else ''}, as many as "
                    f"asked (--epochs {s['epochs']}): nothing to train; its outputs are written again", flush=True)
            callbacks: list[Any] = []
            if not two_stage:  # training metrics join each epoch's record before the checkpoint: saved with it
                callbacks.append(TrainingMetrics(model, x_train[:TRAIN_METRICS_SIZE].to(device), binarize))
            if tensorboard and main:
                callbacks.append(TensorBoard(out / "tensorboard"))
            common = dict(batch_size=batch_size, lr=float(s["lr"]), device=device, seed=s["seed"], progress=progress,
                          checkpoint_dir=out, resume=resume, callbacks=callbacks)
            t0 = time.perf_counter()
            if two_stage:
                history: Any = model.fit(x_train, epochs=s["epochs"], stage2_epochs=s.get("stage2_epochs"),
                                         val_data=x_valid, stage2_codes=s["stage2_codes"], **common)
                if main:
                    write_json(history, out / "history.json")  # both stages; stage 1's with gamma per epoch
            else:
                history = fit(model, x_train, epochs=s["epochs"], objective=s["objective"],
                              num_particles=s["num_particles"], val_data=x_valid, binarize=binarize,
                              config={"dataset": s["dataset"]}, **common)
            seconds = time.perf_counter() - t0
            if main:
                model.save(out / MODEL_DIR)  # configuration + weights (pyro_vae.load reads it)
            model.eval()
            pyro.set_rng_seed(s["seed"])  # the test ELBO of dynamically binarized data is a random draw: fix it
            metrics = evaluate_elbo(stage1, x_test.to(device), binarize=binarize)  # every rank takes part
            if two_stage:
                metrics["gamma"] = model.gamma
            metrics = {"split": test_split, **metrics, "num_datapoints": int(x_test.shape[0]),
                       "epochs": len(history["stage1"] if two_stage else history)}
            written: list[Path] = []
            if main:
                write_json(metrics, out / TEST_METRICS_NAME)
                pyro.set_rng_seed(s["seed"])
                if two_stage and is_image_shape(shape):
                    image_grid(model.sample(64).clamp(0, 1).cpu(), path=out / "samples.png",
                               title="two-stage samples (decoder means)")
                else:
                    reference = x_train[:2000] if x_train.dim() == 2 else None
                    save_samples(model, out / "samples.png", num_samples=64 if reference is None else 2000,
                                 data=reference)
                training_curves(history["stage1"] if two_stage else history, out / "training.png")
                written = [out / "samples.png", out / "training.png"]
                stale = _mark_stale_evaluation(out, metrics["epochs"])
                if stale:
                    say(stale, flush=True)
    return TrainedRun(out, model, history, metrics, seconds, written)


def _label_split(y: torch.Tensor, s: dict[str, Any], num_classes: int,
                 split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled datapoints of a semi-supervised run (as many of each class) and its unlabelled ones (the rest
    of the split, or ``num_unlabelled`` of them drawn at random), both from the seed.

    :raises ValueError: naming the option, when the split has too few datapoints of a class or too few left.
    """
    from .train import balanced_split

    per, counts = s["labels"] // num_classes, torch.bincount(y, minlength=num_classes)
    if int(counts.min()) < per:
        raise ValueError(f"--labels {s['labels']} asks for {per} labelled datapoints of each class, and the {split} "
                         f"split of {s['dataset']!r} has only {int(counts.min())} of class {int(counts.argmin())}: "
                         f"give at most --labels {int(counts.min()) * num_classes}")
    labelled, unlabelled = balanced_split(y, s["labels"], num_classes, s["seed"])
    if s.get("num_unlabelled") is not None:
        if s["num_unlabelled"] > unlabelled.numel():
            raise ValueError(f"--num-unlabelled {s['num_unlabelled']} is more than the {unlabelled.numel()} datapoints "
                             f"of the {split} split of {s['dataset']!r} left unlabelled: give at most "
                             f"--num-unlabelled {unlabelled.numel()}, or leave it out (all of them)")
        g = torch.Generator().manual_seed(int(s["seed"]))
        unlabelled = unlabelled[torch.randperm(unlabelled.numel(), generator=g)[: s["num_unlabelled"]]]
    elif unlabelled.numel() == 0:
        raise ValueError(f"--labels {s['labels']} labels the whole {split} split of {s['dataset']!r}, leaving no "
                         "unlabelled datapoints: give fewer labels")
    return labelled, unlabelled


def _train_semi_supervised(s: dict[str, Any], out: Path, device: torch.device, *, progress: bool, tensorboard: bool,
                           say: Callable[..., None], hold: contextlib.ExitStack | None) -> TrainedRun:
    """:func:`train_run` of a semi-supervised run (settings checked): Kingma et al.'s M2 trained by
    :func:`~pyro_vae.train.fit_semi_supervised` on ``labels`` labelled training datapoints and the unlabelled rest,
    then the test accuracy of ``argmax_y q(y | x)`` and the test ``log p(x)`` with the label summed (IWAE with
    ``test_particles`` particles, the seed's batches as ``pyro-vae evaluate --num-particles K`` draws them).
    There is no checkpoint: ``metrics.jsonl`` is written after every epoch, the model at the end."""
    import pyro

    from . import infer
    from .models import SSVAE
    from .plots import save_samples, training_curves
    from .run_files import METRICS_NAME
    from .train import TensorBoard, check_data, fit_semi_supervised
    from .train.state import write_metrics

    dataset, shape = s["dataset"], datasets.event_shape(s["dataset"])
    num_classes = SEMI_SUPERVISED_CLASSES[dataset]
    train_split, valid_split, test_split = _splits(dataset)
    with threads.torch_threads(resolve_threads(s.get("num_threads"), dataset)):
        pyro.clear_param_store()
        pyro.set_rng_seed(s["seed"])
        x_train, y_train = datasets.load(dataset, train_split, root=s["data_root"], return_labels=True)
        x_valid, y_valid = datasets.load(dataset, valid_split, root=s["data_root"], return_labels=True)
        labelled, unlabelled = _label_split(y_train, s, num_classes, train_split)
        if s["binarize"] == "auto":
            s["binarize"] = not bool(((x_train == 0) | (x_train == 1)).all())
        binarize = bool(s["binarize"])
        if binarize:  # the classifier is scored on binary images, as it is trained (one fixed draw, from the seed)
            x_valid = datasets.binarize(x_valid, torch.Generator().manual_seed(int(s["seed"])))
        model = SSVAE(shape, num_classes=num_classes, latent_dim=s["latent_dim"], hidden_dims=tuple(s["hidden_dims"]),
                      activation=s["activation"], likelihood=s["likelihood"],
                      aux_loss_multiplier=s["aux_loss_multiplier"])
        check_data(x_train, f"the {train_split} split of {dataset!r}", model, binarize)
        batch_size = min(s["batch_size"], unlabelled.numel())
        # an unlabelled batch decodes every class: C times the datapoints of a VAE's step
        check_step_fits(s["num_particles"] * num_classes, batch_size, shape, device)
        semi = {k: s[k] for k in SEMI_SUPERVISED_DEFAULTS if k != "aux_loss_multiplier"}
        config = {"vae": model.config, "class": "SSVAE", "dataset": dataset, "data_root": s["data_root"],
                  "splits": {"train": train_split, "valid": valid_split, "test": test_split},
                  "model_args": {**{k: s[k] for k in RUN_IDENTITY if k in s},
                                 "aux_loss_multiplier": s["aux_loss_multiplier"]},
                  "training": {**{k: s[k] for k in TRAINING_KEYS}, **semi}, "pyro_vae_version": _version()}
        # the test data every command sees (one fixed binarization from the seed), read before anything is written
        x_test, y_test = run_test_data(config, seed=s["seed"], labels=True, device=device)
        assert y_test is not None
        num_l, num_u, passes = labelled.numel(), unlabelled.numel(), s["labelled_passes"]
        with contextlib.ExitStack() as stack:
            (hold or stack).enter_context(RunLock(out))  # refuses a second writer before anything is written
            write_config(config, out)
            say(f"run folder: {out}", flush=True)
            say(f"data: {dataset} {train_split} {tuple(x_train.shape)}, {valid_split} {x_valid.shape[0]}, "
                f"{test_split} {x_test.shape[0]}; likelihood {model.config['likelihood']}"
                f"{' with dynamic binarization' if binarize else ''}; {num_l} labelled ({num_l // num_classes} per "
                f"class), {num_u} unlabelled", flush=True)
            logger = TensorBoard(out / "tensorboard") if tensorboard else None
            history: list[dict[str, Any]] = []

            def on_epoch_end(record: dict[str, Any]) -> None:
                visits = num_u + num_l * passes
                record["loss"] = (record["loss_unlabelled"] * num_u + record["loss_labelled"] * num_l * passes) / visits
                record["lr"], record["images_per_second"] = float(s["lr"]), visits / record["seconds"]
                history.append(record)
                write_metrics(history, out / METRICS_NAME)
                if logger is not None:
                    logger.on_epoch_end(record)
                if progress:
                    print(f"epoch {record['epoch']}/{s['epochs']}: loss {record['loss']:.3f} (unlabelled "
                          f"{record['loss_unlabelled']:.3f}, labelled {record['loss_labelled']:.3f} + auxiliary "
                          f"{record['aux_loss']:.3f}), valid accuracy {record['val_accuracy']:.4f} "
                          f"({record['seconds']:.1f} s, {record['images_per_second']:,.0f} images/s)",
                          file=sys.stderr, flush=True)

            model.to(device)
            t0 = time.perf_counter()
            fit_semi_supervised(model, x_train[labelled], y_train[labelled], x_train[unlabelled], epochs=s["epochs"],
                                batch_size=batch_size, lr=float(s["lr"]), objective=s["objective"],
                                num_particles=s["num_particles"],
                                binarize=binarize, val_data=(x_valid, y_valid), seed=s["seed"], progress=False,
                                on_epoch_end=on_epoch_end, labelled_passes=passes)
            seconds = time.perf_counter() - t0
            if logger is not None:
                logger.on_train_end(history)
            model.save(out / MODEL_DIR)  # configuration + weights (pyro_vae.load reads it)
            model.eval()
            result = infer.log_likelihood(model.model, model.guide, x_test, num_particles=s["test_particles"],
                                          batch_size=EVALUATE_BATCH_SIZE, seed=s["seed"], diagnostics=False,
                                          progress=progress)
            d = result.as_dict()
            metrics = {"split": test_split, "accuracy": model.accuracy(x_test, y_test),
                       **{k: d[k] for k in ("log_likelihood", "log_likelihood_stderr", "log_likelihood_mc_stderr",
                                            "num_particles", "elbo", "elbo_stderr", "rate", "distortion")},
                       "seed": s["seed"], "num_datapoints": int(x_test.shape[0]), "epochs": len(history),
                       "labels": num_l, "num_unlabelled": num_u}
            write_json(metrics, out / TEST_METRICS_NAME)
            pyro.set_rng_seed(s["seed"])
            save_samples(model, out / "samples.png", num_samples=10 * num_classes, nrow=num_classes,
                         title="samples from the model: decoder means E[x|y,z],\nz ~ p(z), one class y a column")
            written = [out / "samples.png"]
            if history:
                training_curves(history, out / "training.png")
                written.append(out / "training.png")
    return TrainedRun(out, model, history, metrics, seconds, written)


def _mark_stale_evaluation(out: Path, epochs: int) -> str | None:
    """Mark an ``evaluation.json`` of the run's model at another epoch as stale (it stays, with the reason).

    :returns: the line to say, or None when there is nothing stale.
    """
    path = out / EVALUATION_NAME
    evaluation = read_evaluation(out)
    if evaluation is None or evaluation.get("epochs") == epochs or "stale" in evaluation:
        return None
    evaluation["stale"] = (f"the run trained on to epoch {epochs} after this evaluation (of epoch "
                           f"{evaluation.get('epochs', 'unknown')}): run '{PROG} evaluate' again")
    write_json(evaluation, path)
    return f"{path} is now stale ({evaluation['stale']})"


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... the first that does not exist."""
    candidate, i = path, 1
    while candidate.exists() or candidate.is_symlink():
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


def _version() -> str:
    from ._version import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_run(run: str | os.PathLike[str], *, num_particles: int = 5000, split: str | None = None,
                 num: int | None = None, batch_size: int = EVALUATE_BATCH_SIZE, chunk_size: int | None = None,
                 data_root: str | os.PathLike[str] | None = None, device: str = "auto", seed: int = 0,
                 diagnostics: bool = True, ais_steps: int = 0, ais_chains: int = 16,
                 progress: bool = True) -> dict[str, Any]:
    """Estimate ``log p(x)`` of a run's test data and write ``evaluation.json`` and its figures: what
    ``pyro-vae evaluate`` does. Under ``torchrun`` every rank takes its batches and rank 0 writes.

    For a two-stage run the model measured is stage 1 (its decoder under the prior ``N(0, I)``): the density the
    two-stage sampler draws from has no tractable ``log p(x)``; the result says so (``"model"``). For a
    semi-supervised run ``log p(x)`` sums the label exactly inside every importance weight, and ``"accuracy"`` is
    the classifier's (``argmax_y q(y | x)``) on the same datapoints; AIS is refused (it cannot anneal the discrete
    label).

    :param run: the run folder.
    :param num_particles: ``K`` per datapoint.
    :param split: the data split (default: the run's test split); ``num``: only the first ``num`` datapoints.
    :param ais_steps: also estimate ``log p(x)`` of the same datapoints by AIS with this many steps (0: off).
    :returns: what ``evaluation.json`` holds, plus ``"result"`` (the :class:`~pyro_vae.infer.LogLikelihood`),
        ``"ais_result"`` (or None), ``"latent_usage"`` and ``"written"`` (the files); ``{}`` on ranks other than 0.
    :raises ValueError: for bad options, before any work.
    """
    from . import infer, plots

    for name, value, low in (("num_particles", num_particles, 1), ("num", num, 1), ("chunk_size", chunk_size, 1),
                             ("ais_steps", ais_steps, 0), ("ais_chains", ais_chains, 1), ("batch_size", batch_size, 1)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < low):
            flag = "--num-datapoints" if name == "num" else "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= {low} (a whole number), got {value!r}")
    if ais_steps and read_config(run).get("class") == "SSVAE":
        raise ValueError(f"--ais-steps {ais_steps}: AIS cannot anneal the label y of a semi-supervised run (its guide "
                         "sums y exactly, and AIS moves continuous latents only); drop --ais-steps to measure log p(x) "
                         "with the label summed by IWAE")
    vae, config = load_run(run, device=device)
    run_dir = Path(run)
    semi_supervised = config.get("class") == "SSVAE"
    if distributed.is_main_process() and not os.access(run_dir, os.W_OK):
        raise PermissionError(f"the run folder {run_dir} is not writable: evaluate writes {EVALUATION_NAME} and its "
                              "figures there (copy the run somewhere writable)")
    x, y = run_test_data(config, split=split, num=num, data_root=data_root, seed=seed,
                         device=next(vae.parameters()).device, labels=semi_supervised)
    split = split or config.get("splits", {}).get("test", "test")
    measured = vae.stage1 if config.get("class") == "TwoStageVAE" else vae
    result = infer.log_likelihood(measured.model, measured.guide, x, num_particles=num_particles,
                                  batch_size=batch_size, chunk_size=chunk_size, diagnostics=diagnostics, seed=seed,
                                  progress=progress)
    if not distributed.is_main_process():
        return {}
    usage = infer.latent_usage(measured.model, measured.guide, x, seed=seed)
    model_name = ("stage 1 of the two-stage VAE (its decoder under the prior N(0, I)); the two-stage sampler's own "
                  "density has no tractable log p(x)" if config.get("class") == "TwoStageVAE"
                  else "SSVAE (the label y summed exactly)" if semi_supervised else config.get("class", "VAE"))
    two_stage = config.get("class") == "TwoStageVAE"
    epochs = len(read_metrics(run_dir / "stage1" if two_stage else run_dir))
    out: dict[str, Any] = {"split": split, "seed": seed, "num_datapoints": int(x.shape[0]), "model": model_name,
                           "epochs": epochs, **result.as_dict(),
                           "latent_usage": {name: {k: v for k, v in u.items() if k != "mean_variance"}
                                            for name, u in usage.items()}}
    if semi_supervised and y is not None:  # the classifier argmax q(y | x) on the same datapoints
        out["accuracy"] = vae.accuracy(x, y)
    ais = None
    if ais_steps:  # the same datapoints, side by side with the ELBO and IWAE
        ais = infer.log_likelihood(measured.model, measured.guide, x, method="ais", batch_size=batch_size,
                                   num_chains=ais_chains, num_steps=ais_steps, seed=seed, distributed=False)
        paired = infer.compare(ais, result)
        out["ais"] = {"num_steps": ais_steps, "num_chains": ais_chains, "log_likelihood": ais.mean,
                      "stderr": ais.stderr, "mc_stderr": ais.mean_mc_stderr,
                      "acceptance_rate": float(ais.acceptance_rate.mean()),
                      "minus_iwae": {"mean": paired.mean, "stderr": paired.stderr,
                                     "ci95": [paired.ci_low, paired.ci_high]}}
    replaced = _replaced_setting(run_dir / EVALUATION_NAME, out)
    write_json(out, run_dir / EVALUATION_NAME)
    written = [run_dir / EVALUATION_NAME]
    plots.k_curve(result, run_dir / "k_curve.png")
    plots.gap_histogram(result, run_dir / "gaps.png")
    written += [run_dir / "k_curve.png", run_dir / "gaps.png"]
    if result.khat is not None:
        plots.khat_plot(result, run_dir / "khat.png")
        written.append(run_dir / "khat.png")
    return {**out, "result": result, "ais_result": ais, "latent_usage": usage, "written": written,
            "replaced": replaced}


#: what makes two evaluations of a run comparable
_EVALUATION_SETTING = ("split", "num_datapoints", "num_particles", "seed", "epochs")


def _replaced_setting(path: Path, new: dict[str, Any]) -> str | None:
    """A notice when ``path`` holds an evaluation of another setting, which the new one replaces."""
    old = read_evaluation(path.parent)
    if old is None:
        return None
    changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in _EVALUATION_SETTING if old.get(k) != new.get(k)]
    if not changed:
        return None
    return f"replaced the evaluation of another setting in {path} ({', '.join(changed)})"

"""The settings of a run: every option of ``pyro-vae train`` (any model kind, the semi-supervised options too),
the data sets' defaults, and the checks that refuse a bad one before anything is read or written.

:func:`run_settings` turns a run's options (or, on resume, its ``config.json`` and the options given again) into
checked settings; :func:`check_step_fits` refuses a step that cannot fit in the device's memory. The trainers
(:mod:`pyro_vae.pipeline.training`, :mod:`pyro_vae.pipeline.semi_supervised`) and :mod:`pyro_vae.pipeline.evaluation`
take what these return.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import datasets, distributed, threads
from ..run_files import CONFIG_NAME
from ..runs import read_config

__all__ = ["run_settings", "TrainedRun", "DATASET_DEFAULTS", "RUN_IDENTITY", "TRAINING_KEYS", "TRAIN_METRICS_SIZE",
           "SEMI_SUPERVISED_CLASSES", "SEMI_SUPERVISED_DEFAULTS", "EVALUATE_BATCH_SIZE", "parse_dims", "parse_layers",
           "resolve_threads", "check_step_fits"]

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
#: datapoints per pass of :func:`~pyro_vae.pipeline.evaluate_run` by default (a semi-supervised run's test log p(x)
#: uses the same, so that ``pyro-vae evaluate RUN --num-particles K --seed S`` draws the same particles)
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
        _resumed_semi_supervised(given, s, saved, out)
    elif given.get("semi_supervised") or any(k in given for k in SEMI_SUPERVISED_DEFAULTS):
        flag = "--" + next(k for k in ("semi_supervised", *SEMI_SUPERVISED_DEFAULTS) if k in given).replace("_", "-")
        raise ValueError(f"the run in {out} trains a {kind}, not a semi-supervised VAE: {flag} does not apply to it "
                         f"(drop {flag}, or start a new run)")
    if given.get("two_stage") and kind != "TwoStageVAE" or given.get("layers") and kind != "HierarchicalVAE":
        raise ValueError(f"the run in {out} trains a {s['class']}: a resumed run keeps its model (start a new run "
                         "instead)")
    for key in (*TRAINING_KEYS, "data_root", "stage2_epochs", "stage2_codes"):
        if key in given:
            s[key] = given[key]
    return s, out


def _resumed_semi_supervised(given: dict[str, Any], s: dict[str, Any], saved: dict[str, Any], out: Path) -> None:
    """The semi-supervised options of a resumed run into ``s``: its labelled and unlabelled data, alpha and
    schedule are the run's (given again, they must be the same), ``test_particles`` may change."""
    _refuse_what_m2_lacks(given, f"the semi-supervised run in {out}")
    alpha = (saved.get("model_args") or {}).get("aux_loss_multiplier", SEMI_SUPERVISED_DEFAULTS["aux_loss_multiplier"])
    s["aux_loss_multiplier"] = alpha
    for key in ("labels", "num_unlabelled", "aux_loss_multiplier", "labelled_passes"):
        if key in given and given[key] != s.get(key):
            raise ValueError(f"--{key.replace('_', '-')} {given[key]} differs from the run's {s.get(key)!r}: a resumed "
                             "semi-supervised run keeps its labelled and unlabelled data and its schedule (start a "
                             "new run instead)")
    for key, default in SEMI_SUPERVISED_DEFAULTS.items():
        s[key] = given.get(key, s.get(key, default))


def _refuse_what_m2_lacks(given: dict[str, Any], who: str = "--semi-supervised") -> None:
    """Refuse the options the semi-supervised VAE does not take, naming why and what to drop or choose."""
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
        raise ValueError(f"{who} does not take {spelled}: {why} (drop {flag})")


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
    _refuse_what_m2_lacks(given)
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
    from ..infer.objectives import get_objective

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
        from ..train.two_stage import STAGE2_CODES

        if codes not in STAGE2_CODES:
            raise ValueError(f"--stage2-codes must be one of {', '.join(STAGE2_CODES)}, got {codes!r}")


# ------------------------------------------------------------------------------------------------ what a run is
@dataclass
class TrainedRun:
    """What :func:`~pyro_vae.pipeline.train_run` leaves: the run folder, the trained model, its history and its
    test metrics."""

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

def _version() -> str:
    from .._version import __version__

    return __version__

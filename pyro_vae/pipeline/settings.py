"""The settings of a run: :class:`RunSettings`, one typed field per option of ``pyro-vae train`` (every run kind's),
checked on creation; the data sets' defaults; :func:`run_settings`, which makes them from the options given (the
command line, a YAML/JSON file, a notebook's dict) or, on resume, from the run's ``config.json`` and the options
given again, before anything is read or written; :func:`check_step_fits`, which refuses a step that cannot fit in
the device's memory.

What a kind alone takes (``layers``, the two-stage and the semi-supervised options) is a field here too, and its
recipe (:mod:`pyro_vae.pipeline.kinds`) checks it and refuses what the kind does not take; the recipes are found by
name through :mod:`pyro_vae.pipeline.registry`, so nothing here imports one.
"""

from __future__ import annotations

import dataclasses
import difflib
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
from .registry import KINDS, get_kind

__all__ = ["RunSettings", "run_settings", "TrainedRun", "DATASET_DEFAULTS", "RUN_IDENTITY", "TRAINING_KEYS",
           "TRAIN_METRICS_SIZE", "EVALUATE_BATCH_SIZE", "parse_dims", "parse_layers", "resolve_threads",
           "check_step_fits", "run_splits", "whole_option"]

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
#: the options every new run takes a default for (the data set's, else the images', else the global one)
_DEFAULTED = ("likelihood", "latent_dim", "hidden_dims", "activation", "encoder", "decoder", "objective", "epochs",
              "batch_size", "lr", "device", "seed", "num_threads", "prior", "prior_components", "flow", "num_flows",
              "binarize")
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
#: options that are not settings of their own: ``kind`` names the run kind, and each kind's ``selected_by`` flag
#: (each kind's recipe names it) selects it
_SELECTORS = ("kind",)


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
    hierarchical VAE, bottom first).

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




def whole_option(key: str, value: Any, low: int = 1) -> int:
    """``value`` as an int, or the error naming the option as the command line spells it (not a whole number >=
    ``low``, or a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or int(value) < low:
        raise ValueError(f"--{key.replace('_', '-')} must be >= {low} (a whole number), got {value!r}")
    return int(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"--{key.replace('_', '-')} must be a name (a string), got {value!r}")
    return value


@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run, one typed field per option of ``pyro-vae train``, checked on creation (a wrong type or
    value fails here, where it is given, naming the option as the command line spells it). Frozen: a setting
    resolved later (``binarize="auto"`` once the data are read) is a new object, :func:`dataclasses.replace`.

    Make one with :func:`run_settings` (defaults and resuming) or :meth:`from_options`; ``settings["epochs"]`` reads
    a field as the dict settings of earlier versions did.
    """

    #: the run kind: a name in :mod:`pyro_vae.pipeline.registry` (the built-in kinds, or one of your own)
    kind: str = "VAE"
    dataset: str = "digits"
    data_root: str | None = None
    likelihood: str = "bernoulli"
    latent_dim: int | None = 8
    hidden_dims: list[int] | None = field(default_factory=lambda: [128])
    activation: str = "tanh"
    encoder: str = "mlp"
    decoder: str = "mlp"
    prior: str = "normal"
    prior_components: int | None = None
    flow: str | None = None
    num_flows: int = 2
    objective: str = "elbo"
    num_particles: int = 1
    epochs: int = 100
    batch_size: int = 100
    lr: float = 3e-3
    device: str = "auto"
    seed: int = 0
    #: ``"auto"`` (or None) or a number of threads
    num_threads: int | str | None = "auto"
    #: dynamic binarization: True, False, or ``"auto"`` until the data are read
    binarize: bool | str = "auto"
    #: compile the training step (``fit(..., compile=True)``); not part of the run: a resumed run compiles when
    #: ``--compile`` is given again
    compile: bool = False
    #: a hierarchical run's stochastic layers, bottom first (per layer the hidden sizes, then the latent size)
    layers: list[list[int]] | None = None
    #: a two-stage run's stage-2 epochs (None: ``epochs``) and what stage 2 trains on
    stage2_epochs: int | None = None
    stage2_codes: str | None = None
    #: a semi-supervised run's labelled and unlabelled datapoints, alpha, labelled passes per epoch, test K
    labels: int | None = None
    num_unlabelled: int | None = None
    aux_loss_multiplier: float | None = None
    labelled_passes: int | None = None
    test_particles: int | None = None
    #: a semi-supervised run's training options (:func:`~pyro_vae.train.fit_semi_supervised`): the auxiliary loss in
    #: the bound's Adam update or one of its own, each step's loss per datapoint or summed, the labelled batches as
    #: steps of their own or mixed into the unlabelled ones, Adam's beta1, and the
    #: standard deviation of the hidden layers' initial weights (None: torch's initialisation)
    aux_step: str | None = None
    loss_scale: str | None = None
    labelled_schedule: str | None = None
    adam_beta1: float | None = None
    init_std: float | None = None
    #: a resumed run's model configuration (config.json's ``vae``), None for a new run
    model_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for key in ("kind", "dataset", "likelihood", "activation", "encoder", "decoder", "prior", "objective",
                    "device"):
            _text(key, getattr(self, key))
        for key in ("flow", "stage2_codes"):
            if getattr(self, key) is not None:
                _text(key, getattr(self, key))
        if self.data_root is not None:
            set_(self, "data_root", os.fspath(self.data_root))
        for key in ("epochs", "batch_size", "num_particles"):
            set_(self, key, whole_option(key, getattr(self, key)))
        for key in ("latent_dim", "stage2_epochs", "prior_components"):  # a resumed --layers run has no latent_dim
            if getattr(self, key) is not None:
                set_(self, key, whole_option(key, getattr(self, key)))
        set_(self, "num_flows", whole_option("num_flows", self.num_flows, 0))
        set_(self, "seed", whole_option("seed", self.seed, 0))
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"--lr must be > 0 and finite, got {lr!r}")
        if self.hidden_dims is not None:
            set_(self, "hidden_dims", parse_dims(self.hidden_dims))
        if self.layers is not None:
            set_(self, "layers", parse_layers(self.layers))
        threads.resolve_threads(self.num_threads, "--num-threads") if self.num_threads not in (None, "auto") else None
        if not isinstance(self.compile, bool):
            raise ValueError(f"--compile must be true or false, got {self.compile!r}")
        if self.binarize not in (True, False, "auto"):
            raise ValueError(f"--binarize must be true, false or auto, got {self.binarize!r}")
        if self.prior_components is not None and self.prior not in _PRIORS_WITH_COMPONENTS:
            raise ValueError(f"--prior-components applies to the "
                             f"{' and '.join(_PRIORS_WITH_COMPONENTS)} priors, not to {self.prior!r}")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            raise ValueError(f"a resumed run's model configuration must be a mapping, got {self.model_config!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunSettings:
        """Settings from option names as in ``config.json`` (unset or None ones keep the field's default).

        :raises ValueError: for a name that is no option (with the closest one), or a bad value.
        """
        given = _given(options)
        return cls(**{k: v for k, v in given.items() if k in _FIELDS})

    def __getitem__(self, key: str) -> Any:
        """``settings["epochs"]``: a field, as the dict settings of earlier versions were read."""
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """A field, or ``default`` for a name that is not one."""
        return getattr(self, key) if key in _FIELDS else default

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """``{key: value}`` of ``keys``, in that order (what ``config.json`` stores)."""
        return {k: getattr(self, k) for k in keys}


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunSettings))


def _option_names() -> set[str]:
    """Every name an option may have: the fields, ``kind`` and the kinds' selecting flags."""
    return {*_FIELDS, *_SELECTORS, *(k.selected_by for k in KINDS.values() if k.selected_by)} - {"model_config"}


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options set (None is unset), ``binarize`` spelled as a setting, an unknown name refused."""
    names = _option_names()
    unknown = [k for k in options if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown run option {unknown[0]!r}{hint}; the options are {', '.join(sorted(names))}")
    given = {k: v for k, v in options.items() if v is not None}
    if "binarize" in given:
        b = given["binarize"]
        given["binarize"] = {"yes": True, "no": False, True: True, False: False}.get(b, b)
    return given


def _chosen_kind(given: dict[str, Any]) -> Any:
    """The kind the options select: ``kind``, or the last registered kind whose flag is given, else ``VAE``."""
    flagged = [k for k in KINDS.values() if k.selected_by and given.get(k.selected_by) not in (None, False)]
    if "kind" in given:
        return get_kind(given["kind"])
    return flagged[-1] if flagged else get_kind("VAE")


def _refuse_other_selectors(given: dict[str, Any], kind: Any) -> None:
    """A flag that selects another kind than the chosen one (once the kind had its say)."""
    for other in KINDS.values():
        if other is not kind and other.selected_by and given.get(other.selected_by) not in (None, False):
            flag = "--" + other.selected_by.replace("_", "-")
            raise ValueError(f"{flag} selects a {other.name} run, and the other options a {kind.name} one: choose "
                             f"one kind of run (drop {flag}, or --kind)")


def run_splits(dataset: str) -> tuple[str, str, str]:
    """The (train, validation, test) splits of a data set."""
    splits = datasets.SPLITS[dataset]
    train = "train-without-valid" if "train-without-valid" in splits else "train"
    return train, "valid", "test"


def run_settings(options: dict[str, Any], out: str | os.PathLike[str] | None = None,
                 resume: bool = False) -> tuple[RunSettings, Path]:
    """The settings of a run: the given ``options`` (unset or None ones take the data set's defaults), or with
    ``resume`` the run's ``config.json`` with the training options given again replacing the saved ones. Every
    value is checked here (by :class:`RunSettings` and the kind's recipe), before anything is read or written.

    :param options: option names as in ``config.json`` (``dataset``, ``epochs``, ``hidden_dims``, ``layers``, a
        kind's flag such as ``semi_supervised`` with ``labels``, ``kind``, ...; see :class:`RunSettings`);
        ``binarize`` may be True, False, ``"auto"``, ``"yes"`` or ``"no"``. Messages name the options as the command
        line spells them (``--lr``).
    :param out: the run folder (default: ``runs/<dataset>-<timestamp>``; needed with ``resume``).
    :returns: ``(settings, out)``.
    :raises ValueError: naming the option and what to do.
    """
    given = _given(options)
    if resume:
        if out is None:
            raise ValueError("--resume needs --out, the run folder to continue")
        s, out = _resumed_settings(given, Path(out))
    else:
        dataset = given.get("dataset", "digits")
        if not isinstance(dataset, str) or dataset not in datasets.SPLITS:
            datasets.event_shape(dataset)  # names the known data sets
        values = {key: given.get(key, _default(dataset, key)) for key in _DEFAULTED}
        values["num_particles"] = given.get("num_particles", 5 if str(values["objective"]).startswith("iwae") else 1)
        values["compile"] = given.get("compile", False)
        values.update({k: given[k] for k in ("layers", "stage2_epochs", "stage2_codes") if k in given})
        kind = _chosen_kind(given)
        for other in KINDS.values():
            if other is not kind:
                other.refuse_stray(given, kind, None)
        s = kind.configure(RunSettings(kind=kind.name, dataset=dataset, data_root=given.get("data_root"), **values),
                           given)
        _refuse_other_selectors(given, kind)
        out = Path(out) if out is not None else Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    from ..infer.objectives import get_objective

    get_objective(s.objective)
    kind = get_kind(s.kind)
    if kind.single_process and distributed.launched():
        flag = f"--{kind.selected_by.replace('_', '-')}" if kind.selected_by else f"--kind {kind.name}"
        raise ValueError(f"{flag} runs take one process (their trainer splits no batch over processes): launch them "
                         "without torchrun")
    kind.check(s)
    if s.compile and not getattr(kind, "compiles", False):
        raise ValueError(f"--compile compiles the training step of pyro_vae.fit, and a {s.kind} run trains with "
                         "another trainer: drop --compile")
    return s, out


def _resumed_settings(given: dict[str, Any], out: Path) -> tuple[RunSettings, Path]:
    saved = read_config(out)
    training = saved.get("training")
    missing = [k for k in TRAINING_KEYS if k != "num_threads" and k not in (training or {})]
    if not isinstance(training, dict) or missing:
        raise ValueError(f"{out / CONFIG_NAME} lacks the training settings {missing or ['training']}: the run folder "
                         "is damaged, and cannot be resumed (start a new run)")
    kind = get_kind(saved.get("class", "VAE"))
    model_args = {k: saved["model_args"][k] for k in RUN_IDENTITY if k in (saved.get("model_args") or {})}
    for key in RUN_IDENTITY:
        if key in given and key in model_args:
            new = parse_dims(given[key]) if key == "hidden_dims" else given[key]
            old = parse_dims(model_args[key]) if key == "hidden_dims" else model_args[key]
            if new != old:
                raise ValueError(f"--{key.replace('_', '-')} {given[key]} differs from the run's {old!r}: a resumed "
                                 "run keeps its model and data set (start a new run instead)")
    dataset = saved["dataset"]
    values = {key: _default(dataset, key) for key in _DEFAULTED if key != "latent_dim"}  # older runs lack some
    values.update({k: v for k, v in training.items() if k in _FIELDS})  # a newer version's own keys are left
    values.update({k: v for k, v in model_args.items() if k != "dataset"})
    values.setdefault("latent_dim", None)
    values.update({k: given[k] for k in (*TRAINING_KEYS, "data_root", "compile") if k in given})
    s = RunSettings(kind=kind.name, dataset=dataset, model_config=saved["vae"],
                    **{"data_root": saved.get("data_root"), **values})
    s = kind.resumed(s, given, saved, out)  # the kind's own refusals first, then the other kinds' options
    for other in KINDS.values():
        if other is not kind:
            other.refuse_stray(given, kind, out)
    return s, out


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

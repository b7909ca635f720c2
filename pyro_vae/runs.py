"""The run folder that ``pyro-vae train`` writes, read and written in one place (the CLI and the figures use it).

=====================  ==========================================================================================
file                   what it holds
=====================  ==========================================================================================
``config.json``        the model class and its ``config``, the data set, the training settings (written first)
``checkpoint.pt``      :func:`pyro_vae.fit`'s state after the last complete epoch (``stage1/``, ``stage2/`` for
                       a two-stage run; :func:`pyro_vae.fit_semi_supervised`'s for a semi-supervised run)
``metrics.jsonl``      one line of metrics per epoch, written with the checkpoint
``train.log``          what ``train`` said, one line per epoch, the test metrics, why it stopped (:class:`RunLog`)
``model/``             the trained model in the one saved-model format (:func:`pyro_vae.models.save_model`)
``test_metrics.json``  the test ELBO, rate and distortion (a semi-supervised run: the test accuracy of
                       ``argmax q(y|x)`` and the test ``log p(x)`` with the label summed, IWAE)
``evaluation.json``    what ``pyro-vae evaluate`` measured (IWAE ``log p(x)``, diagnostics, AIS)
``evaluation_values``  the same evaluation per datapoint (``evaluation_values.pt``: IWAE, ELBO, k-hat, K-curve,
                       Monte Carlo errors, AIS log weights), so that ``pyro-vae compare`` pairs it with another run's
``*.png``              figures
=====================  ==========================================================================================

:func:`load` reads a saved model folder or a run folder, whatever the model class; :func:`run_test_data` is the run's
test data as every command sees it (one split, one binarization). Training and evaluating a run are
:mod:`pyro_vae.pipeline`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from . import datasets
from .infer import LogLikelihoodResult
from .infer.annealing import AISResult
from .io import append_line, atomic_save, load_tensors, write_json
from .models import MODEL_CLASSES, SAVE_CONFIG, build_checked, load_model
from .run_files import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, METRICS_NAME, MODEL_DIR, PROG, TEST_METRICS_NAME
from .train import load_checkpoint, resolve_device
from .train.state import check_checkpoint

__all__ = ["CONFIG_NAME", "MODEL_DIR", "TEST_METRICS_NAME", "EVALUATION_NAME", "read_config", "write_config",
           "read_metrics", "read_evaluation", "load_run", "load", "model_for_resume", "run_test_data",
           "binarizes_test_data", "checkpoint_weights", "EVALUATION_VALUES_NAME", "write_evaluation_values",
           "read_evaluation_values", "values_state", "values_from_state"]

#: what ``pyro-vae evaluate`` writes into the run folder
EVALUATION_NAME = "evaluation.json"
#: the per-datapoint values of that evaluation (:func:`write_evaluation_values`)
EVALUATION_VALUES_NAME = "evaluation_values.pt"


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``config.json``, checked.

    :raises FileNotFoundError: when the folder has no ``config.json``.
    :raises ValueError: when it is damaged (the message says what to do).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {run_dir} does not exist (a run folder is what "
                                f"'{PROG} train --out FOLDER' writes)")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is not a folder; expected a run folder written by '{PROG} train'")
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a {PROG} run folder: it has no {CONFIG_NAME} (a run folder is "
                                f"what '{PROG} train --out FOLDER' writes)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run folder is damaged") from e
    if not isinstance(config, dict) or not isinstance(config.get("vae"), dict) or "dataset" not in config:
        raise ValueError(f"{path} is not a {PROG} run configuration (it needs the keys 'vae' and 'dataset')")
    return config


def write_config(config: dict[str, Any], run_dir: str | os.PathLike[str]) -> None:
    """Write ``config.json`` atomically."""
    write_json(config, Path(run_dir) / CONFIG_NAME)


class RunLog:
    """A run's ``train.log``: the lines ``train`` says (the folder, the data, each epoch, the test metrics, why it
    stopped), each stamped with the time. It is appended to, so a resumed run's lines follow the first ones; a link
    in its place is replaced, never written through.

    :param run_dir: the run folder.
    :param enabled: False writes nothing (the ranks other than 0).
    """

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path, self.enabled = Path(run_dir) / LOG_NAME, enabled

    def line(self, text: str) -> None:
        """Append ``text`` (each of its lines) with the time."""
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            for part in str(text).splitlines() or [""]:
                append_line(self.path, f"{stamp} {part}")

    @contextlib.contextmanager
    def stops(self) -> Iterator[None]:
        """Write why the block stopped (an error, Ctrl-C, SIGTERM), then let it go on up."""
        try:
            yield
        except BaseException as e:
            self.line(f"stopped: {type(e).__name__}{f': {e}' if str(e) else ''}")
            raise

    def saying(self, say: Any) -> Any:
        """``say`` (a ``print``) that also writes its line into the log."""

        def both(*args: Any, **kwargs: Any) -> None:
            say(*args, **kwargs)
            self.line(" ".join(str(a) for a in args))

        return both


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (empty if the file is missing or damaged)."""
    path = Path(run_dir) / METRICS_NAME
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []


def read_evaluation(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's ``evaluation.json`` (None if it is missing or damaged: it is rewritten by the next evaluation)."""
    path = Path(run_dir) / EVALUATION_NAME
    try:
        evaluation = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return evaluation if isinstance(evaluation, dict) else None


def write_evaluation_values(path: str | os.PathLike[str], setting: dict[str, Any], result: Any,
                            ais: Any = None) -> None:
    """Write an evaluation's per-datapoint values (``evaluation_values.pt`` beside ``evaluation.json``, or a
    comparison's), with the ``setting`` they were measured in, so that they can be paired with another run's later.

    :param setting: what makes two evaluations comparable (split, datapoints, particles, seed, batch size, epochs).
    :param result: the :class:`~pyro_vae.infer.LogLikelihoodResult`; ``ais``: the AIS result or None.
    """
    atomic_save(values_state(setting, result, ais), path)


def values_state(setting: dict[str, Any], result: Any, ais: Any = None) -> dict[str, Any]:
    """The tensors of a result (and its AIS result) as a dict ``torch.load(weights_only=True)`` reads back
    (:func:`values_from_state` makes the results again)."""
    iwae = {name: getattr(result, name) for name in ("values", "elbo", "rate", "distortion", "ess", "khat",
                                                      "mc_stderr")}
    state: dict[str, Any] = {"setting": dict(setting), "num_particles": int(result.num_particles),
                             "iwae": {**iwae, "curve": {int(k): v for k, v in result.curve.items()}}}
    if ais is not None:
        state["ais"] = {"log_weights": ais.log_weights, "mc_stderr": ais.mc_stderr,
                        "acceptance_rate": ais.acceptance_rate, "step_size": ais.step_size,
                        "num_steps": int(ais.num_steps), "num_leapfrog": int(ais.num_leapfrog),
                        "num_groups": int(ais.num_groups)}
    return state


def read_evaluation_values(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Any, Any] | None:
    """What :func:`write_evaluation_values` wrote: ``(setting, result, ais result or None)``; None when the file is
    missing or damaged (it is written again by the next evaluation)."""
    try:
        return values_from_state(load_tensors(path, "evaluation values file"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def values_from_state(state: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """``(setting, result, ais result or None)`` from what :func:`values_state` made.

    :raises KeyError, TypeError: when ``state`` is not such a dict.
    """
    iwae = dict(state["iwae"])
    curve = iwae.pop("curve")
    result = LogLikelihoodResult(**iwae, curve=curve, num_particles=int(state["num_particles"]))
    ais = AISResult(**state["ais"]) if "ais" in state else None
    return dict(state["setting"]), result, ais


def model_for_resume(cls: type, config: dict[str, Any], run_dir: str | os.PathLike[str]) -> Any:
    """The model a resumed run continues, built from its ``config.json`` entry only after its checkpoints were found
    resumable and the entry's shapes were checked, on the ``meta`` device, against the weights of the run's
    checkpoints (each folder of the class's ``checkpoint_parts``, ``stage1/`` and ``stage2/`` for a two-stage run,
    else the run folder): a tampered ``latent_dim`` cannot make the resume
    allocate what the weights do not hold.

    :raises ValueError: when the configuration does not describe a ``cls`` or does not fit the weights.
    """
    run_dir = Path(run_dir)
    folders = _checkpoint_folders(cls, run_dir)
    states = {part: checkpoint_weights(folder / CHECKPOINT_NAME, resumable=True) for part, folder in folders.items()
              if (folder / CHECKPOINT_NAME).exists()}  # a folder there is refused, before anything is written
    return build_checked(cls, config, None, run_dir, parts=states)


def checkpoint_weights(path: str | os.PathLike[str], resumable: bool = False) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint :func:`pyro_vae.fit` wrote (its ``pair`` -> ``module`` entry).

    :param resumable: also check everything resuming reads (:func:`pyro_vae.train.state.check_checkpoint`), so a
        resumed run names a damaged checkpoint before anything is written.
    :raises ValueError: naming the file, when it holds no such entry (an empty dict, a list, another file).
    """
    state = load_checkpoint(path)
    if resumable:
        check_checkpoint(state, path)
    pair = state.get("pair") if isinstance(state, dict) else None
    module = pair.get("module") if isinstance(pair, dict) else None
    if not isinstance(module, dict) or not all(torch.is_tensor(v) for v in module.values()):
        raise ValueError(f"{path} holds no model weights (no 'pair' -> 'module' state dict of tensors): it is not a "
                         f"checkpoint of {PROG} train, or it was damaged; restore it from a copy or start a new run")
    return module


def _model_class(config: dict[str, Any]) -> type:
    name = config.get("class", "VAE")
    if name not in MODEL_CLASSES:
        raise ValueError(f"the run's {CONFIG_NAME} names an unknown model class {name!r}")
    return MODEL_CLASSES[name]


def _checkpoint_folders(cls: type, run_dir: Path) -> dict[str, Path]:
    """The checkpoint folders of a run of model class ``cls``: ``{part: folder}`` of its ``checkpoint_parts`` (a model
    trained in parts, as a two-stage VAE's stages), else ``{"": run_dir}``."""
    parts = getattr(cls, "checkpoint_parts", None)
    return {part: run_dir / part for part in parts} if parts else {"": run_dir}


def _from_checkpoint(run_dir: Path, config: dict[str, Any]) -> Any:
    """The model of a run whose training has not finished: its config, the last checkpoint's weights."""
    cls = _model_class(config)
    if set(_checkpoint_folders(cls, run_dir)) != {""}:  # a model trained in parts (stages) has no single checkpoint
        raise FileNotFoundError(f"run folder {run_dir} has no {MODEL_DIR}/: its {cls.__name__} training did not finish "
                                f"(continue it with '{PROG} train --out {run_dir} --resume')")
    ckpt = run_dir / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise FileNotFoundError(f"run folder {run_dir} has no {CHECKPOINT_NAME}: its training did not finish a "
                                f"single epoch (continue it with '{PROG} train --out {run_dir} --resume')")
    module_state = checkpoint_weights(ckpt)
    # the config is checked against the weights' shapes before anything is allocated
    model = build_checked(cls, config["vae"], module_state, run_dir)
    try:
        model.load_state_dict(module_state)
    except RuntimeError as e:
        raise ValueError(f"the weights in {ckpt} do not fit the model described in {run_dir / CONFIG_NAME}: "
                         f"{e}") from e
    return model


def _legacy_model_pt(run_dir: Path, config: dict[str, Any]) -> Any:
    """A ``--layers`` / ``--two-stage`` run of version 0.1: weights in ``model.pt``."""
    weights = run_dir / "model.pt"
    cls = _model_class(config)
    try:
        model = cls.from_config(config["vae"])
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{run_dir / CONFIG_NAME} and {weights} do not describe a {cls.__name__} ({e}); the run "
                         "folder is damaged") from e
    except Exception as e:  # torch refuses an unsafe or corrupt file
        raise ValueError(f"{weights} is not a valid weights file (refused by torch.load(weights_only=True): "
                         f"{type(e).__name__})") from e
    return model


def load_run(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the trained model of a run folder written by ``pyro-vae train`` (any model class).

    :param run_dir: the run folder.
    :param device: where to put the model (``"auto"`` picks CUDA when present).
    :returns: ``(model, config)``: the model in eval mode with the weights of the end of training (or of the last
        complete epoch of an unfinished run), and the run's configuration (``config.json``).
    :raises FileNotFoundError: if the folder, its ``config.json`` or its weights are missing.
    :raises ValueError: if a file is not what a run folder holds.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    device = resolve_device(device)
    saved, ckpt = run_dir / MODEL_DIR, run_dir / CHECKPOINT_NAME
    if (saved / SAVE_CONFIG).is_file() and (not ckpt.is_file() or saved.stat().st_mtime >= ckpt.stat().st_mtime):
        model = load_model(saved, map_location=device)  # written after training
    elif (run_dir / "model.pt").is_file():
        model = _legacy_model_pt(run_dir, config)
    else:
        model = _from_checkpoint(run_dir, config)
    return model.to(device).eval(), config


def run_test_data(config: dict[str, Any], *, split: str | None = None, num: int | None = None,
              data_root: str | os.PathLike[str] | None = None, seed: int = 0, device: str | torch.device = "cpu",
              labels: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A run's test data as every command sees it (``evaluate``, ``reconstruct``, ``plot``): the split (the run's
    test split by default), its first ``num`` datapoints, and for a run trained on dynamically binarized data (or on
    grey levels as the targets of a Bernoulli likelihood) one fixed binarization drawn on the CPU from a generator
    seeded with ``seed`` (the same images on every device).

    :param config: the run's configuration (:func:`read_config`).
    :param data_root: the data folder (default: the run's, else ``$PYRO_VAE_DATA``).
    :param labels: also return the labels (None for a data set without them).
    :returns: ``(x, labels)``: ``x`` of shape ``(num, *event_shape)`` on ``device``.
    """
    root = data_root if data_root is not None else config.get("data_root")
    split = split or config.get("splits", {}).get("test", "test")
    y = None
    if labels:
        try:
            x, y = datasets.load(config["dataset"], split, root=root, return_labels=True)
        except ValueError:  # a data set without labels
            x = datasets.load(config["dataset"], split, root=root)
    else:
        x = datasets.load(config["dataset"], split, root=root)
    if num is not None:
        x, y = x[: int(num)], None if y is None else y[: int(num)]
    if binarizes_test_data(config):
        x = datasets.binarize(x, torch.Generator().manual_seed(int(seed)))
    return x.to(device), y


def binarizes_test_data(config: dict[str, Any]) -> bool:
    """Whether a run's test data are binarized (:func:`run_test_data`): it trained on dynamically binarized data, or
    on grey levels as the targets of a Bernoulli likelihood (whose log p(x) is that of binarized data); binary data
    are their own binarization."""
    bernoulli = (config.get("vae") or {}).get("likelihood") == "bernoulli"
    return bool(config.get("training", {}).get("binarize")) or bernoulli


def load(folder: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load a model: a folder written by ``model.save(folder)`` (any class) or a run folder of ``pyro-vae train``.

    :param folder: the folder.
    :param map_location: the device to put the model on.
    :returns: the model, of whichever registered class it was saved as (:data:`pyro_vae.saving.MODEL_CLASSES`), in
        eval mode.

    Example::

        >>> import tempfile, pyro_vae
        >>> folder = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,)).save(tempfile.mkdtemp() + "/m")
        >>> type(pyro_vae.load(folder)).__name__
        'VAE'
    """
    folder = Path(folder)
    if (folder / SAVE_CONFIG).is_file():
        return load_model(folder, map_location=map_location)
    if (folder / CONFIG_NAME).is_file():
        return load_run(folder, device=map_location)[0]
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: {folder}")
    raise FileNotFoundError(f"{folder} holds neither a saved model ({SAVE_CONFIG}) nor a run ({CONFIG_NAME})")

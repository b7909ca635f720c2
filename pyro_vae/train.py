"""The training loop: :func:`fit` trains anything with ``.model`` and ``.guide`` attributes.

The loss of each batch comes from an objective in :data:`pyro_vae.infer.objectives.OBJECTIVES` (Pyro's
``Trace_ELBO`` / ``TraceMeanField_ELBO``, or the project's IWAE and DReG objectives) through
``differentiable_loss`` and an ordinary ``torch.optim.Adam``, so learning-rate schedules and gradient
clipping are plain PyTorch. Data stay in memory on the training device; each epoch draws a permutation
from a dedicated generator, and dynamic binarization (``binarize=True``) is a fresh Bernoulli draw of every
pixel per batch, on the device.

``beta`` and KL warm-up scale the latent sites of model and guide (``log p(z) - log q(z | x)``) and leave the
observation site alone, i.e. the loss is ``distortion + beta_t * rate``.

Checkpoints (``checkpoint.pt`` in ``checkpoint_dir``) hold weights, optimizer and scheduler state, the
configuration, the epoch, the history and every random number generator's state; they are written
atomically (temporary file, fsync, rename) at the end of each epoch, and ``resume=True`` continues exactly
where the last complete epoch left off. Metrics are appended to ``metrics.jsonl``. A checkpoint that cannot be
written (disk full, read-only folder) raises a clear ``OSError`` and leaves the previous one intact.

Numerical trouble: the epoch's running loss total stays on the device (a NaN or inf loss makes it non-finite);
every ``nan_check_every`` steps and at the end of each epoch one check (the only host synchronisation) looks at
it and at the parameters. On a non-finite value the epoch is replayed from its start (kept in memory), every
value checked, to name the epoch, the first failing step and the site (a sample site whose value or
``log_prob`` is non-finite, a parameter whose gradient is, or a parameter an optimizer step made non-finite).
``on_nan="raise"`` (the default) raises ``FloatingPointError`` with that report and leaves the pair at the start
of the failing epoch;
``on_nan="rollback"`` restores the start of the epoch, halves the learning rate and goes on, recording the event
in the epoch's ``nan_events``. See ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import gc
import inspect
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn

from . import distributed as dist
from .datasets import binarize as binarize_batch
from .infer.objectives import get_objective
from .infer.weights import PARTICLE_PLATE, fast_path_owner, guess_max_plate_nesting, importance_terms

__all__ = ["fit", "atomic_write", "atomic_save", "evaluate_elbo", "resolve_device", "LR_SCHEDULES", "CHECKPOINT_NAME",
           "METRICS_NAME", "iwae_schedule", "load_checkpoint", "ON_NAN"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
#: what :func:`fit` does when a loss or gradient becomes NaN or inf
ON_NAN = ("raise", "rollback")


class ScaleLatents(Messenger):
    """Multiply the log density of every *latent* sample site by ``scale`` (observed sites untouched)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.scale


class _BatchLoss(nn.Module):
    """What ``DistributedDataParallel`` wraps: the pair (so every parameter of its encoder, decoder and likelihood
    is synchronised) and a forward that returns a batch's loss."""

    def __init__(self, pair: nn.Module) -> None:
        super().__init__()
        self.pair = pair

    def forward(self, x: torch.Tensor, compute_loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return compute_loss(x)


def _constant(epoch: int, epochs: int) -> float:
    return 1.0


def _cosine(epoch: int, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


def iwae_schedule(epoch: int, epochs: int) -> float:
    """Burda et al.'s schedule: stage ``i = 0, 1, ...`` lasts ``3**i`` passes at ``lr * 10**(-i/7)``.

    With ``lr = 1e-3`` and 8 stages this is the IWAE paper's 3280 passes. ``epochs`` is ignored: the stage depends
    on the epoch only, so a shorter run is the start of the paper's schedule.
    """
    stage, end = 0, 1
    while epoch >= end:
        stage += 1
        end += 3**stage
    return 10.0 ** (-stage / 7)


#: name -> ``factor(epoch, epochs)`` multiplying ``lr`` during ``epoch`` (0-based)
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {"constant": _constant, "cosine": _cosine,
                                                        "iwae": iwae_schedule}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error. Under ``torchrun``,
    ``"auto"`` and ``"cuda"`` mean this process's GPU, ``cuda:LOCAL_RANK``."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
    return dist.local_device(device)


def _check_data(data: Any, name: str, pair: Any, binarize: bool) -> torch.Tensor:
    if not torch.is_tensor(data):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, *event_shape), got {type(data).__name__}; "
                        "use pyro_vae.datasets.from_array for numpy arrays")
    if not data.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {data.dtype}; convert it with .float()")
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor of shape (N, *event_shape), got {tuple(data.shape)}")
    input_shape = getattr(pair, "input_shape", None)
    if input_shape is not None and tuple(data.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{name} has datapoints of shape {tuple(data.shape[1:])} but the model's input_shape is "
                         f"{tuple(input_shape)}: reshape the data or build the model with that input_shape")
    if not torch.isfinite(data).all():
        raise ValueError(f"{name} holds NaN or inf values: clean the data before training")
    likelihood = getattr(pair, "likelihood", None)
    if binarize:
        if ((data < 0) | (data > 1)).any():
            raise ValueError(f"binarize=True needs {name} in [0, 1] (pixel intensities), got values from "
                             f"{data.min().item():g} to {data.max().item():g}")
    elif likelihood is not None and hasattr(likelihood, "check_support"):
        likelihood.check_support(data)
    return data


def _collect_parameters(pair: Any, example: torch.Tensor, max_plate_nesting: int) -> list[torch.Tensor]:
    """The trainable tensors of a model/guide pair: an ``nn.Module``'s parameters, else the param store's."""
    if isinstance(pair, nn.Module):
        params = [p for p in pair.parameters() if p.requires_grad]
    else:
        with poutine.block(), torch.no_grad():
            rng = pyro.util.get_rng_state()
            guide_trace = poutine.trace(pair.guide, param_only=True).get_trace(example)
            model_trace = poutine.trace(pair.model, param_only=True).get_trace(example)
            pyro.util.set_rng_state(rng)
        store = dict(pyro.get_param_store().named_parameters())
        names = [n for tr in (guide_trace, model_trace) for n in tr.nodes if n in store]
        params = list({id(store[n]): store[n] for n in names}.values())
    if not params:
        raise ValueError("the model/guide pair has no trainable parameters (no nn.Module parameters and no "
                         "pyro.param sites)")
    return params


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": json.dumps(random.getstate()),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write a file so that it is never seen half-written: ``write(f)`` to a temporary file in the same folder,
    fsync, rename over ``path``, fsync the folder. On any error the previous file is left intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: no pickled code can run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (and others) for unsafe or corrupt files
        raise ValueError(f"{path} is not a valid pyro-vae checkpoint (refused by torch.load(weights_only=True): "
                         f"{type(e).__name__}); it may be corrupt or not a safe checkpoint") from e


def _write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    """Rewrite the JSON-lines metrics file atomically, so it always matches the last checkpoint."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(h) + "\n" for h in history)), binary=False)


@torch.no_grad()
def evaluate_elbo(pair: Any, data: torch.Tensor, batch_size: int = 1000, binarize: bool = False,
                  max_plate_nesting: int | None = None, distributed: bool | None = None) -> dict[str, float]:
    """Mean per-datapoint ELBO, rate and distortion (one sample each) of ``data``.

    :param distributed: under ``torchrun`` (None: when launched with several processes) every rank takes every
        ``world_size``-th batch and the sums are added up over the ranks; every rank must call it.
    :returns: ``{"elbo": ..., "rate": ..., "distortion": ...}`` in nats per datapoint, where
        ``rate = E_q[log q(z | x) - log p(z)]`` and ``distortion = -E_q[log p(x | z)]``.
    """
    distributed = dist.launched() if distributed is None else distributed
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    sums = torch.zeros(3, dtype=torch.float64, device=data.device)
    for start in range(rank * batch_size, data.shape[0], world * batch_size):
        x = data[start:start + batch_size]
        if binarize:
            x = binarize_batch(x)
        t = importance_terms(pair.model, pair.guide, x, num_particles=1, max_plate_nesting=max_plate_nesting)
        sums += torch.stack([t.log_weights.sum(), (t.log_guide - t.log_prior).sum(), -t.log_likelihood.sum()])
    if distributed:
        sums = dist.all_reduce(sums)
    elbo, rate, distortion = (sums / data.shape[0]).tolist()
    return {"elbo": elbo, "rate": rate, "distortion": distortion}


def _pair_state(pair: Any) -> dict[str, Any]:
    if isinstance(pair, nn.Module):
        return {"module": pair.state_dict()}
    return {"param_store": {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}}


def _load_pair_state(pair: Any, state: dict[str, Any]) -> None:
    if "module" in state:
        pair.load_state_dict(state["module"])
    else:
        store = dict(pyro.get_param_store().named_parameters())
        for name, value in state["param_store"].items():
            if name in store:
                store[name].data.copy_(value)


def _snapshot(pair: Any, optimizer: torch.optim.Optimizer, scheduler: Any, shuffle: torch.Generator) -> dict[str, Any]:
    """A copy in memory of everything an epoch changes: weights, optimizer, scheduler and generators."""
    pair_state = _pair_state(pair)
    if "module" in pair_state:
        pair_state = {"module": {k: v.detach().clone() for k, v in pair_state["module"].items()}}
    return {"pair": pair_state, "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": copy.deepcopy(scheduler.state_dict()), "shuffle": shuffle.get_state(), "rng": _rng_state()}


def _restore(snapshot: dict[str, Any], pair: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
             shuffle: torch.Generator) -> None:
    _load_pair_state(pair, snapshot["pair"])
    optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))  # load_state_dict may keep the tensors
    optimizer.zero_grad(set_to_none=True)
    scheduler.load_state_dict(copy.deepcopy(snapshot["scheduler"]))
    shuffle.set_state(snapshot["shuffle"])
    _set_rng_state(snapshot["rng"])


def _all_finite(params: list[torch.Tensor]) -> torch.Tensor:
    """Whether every parameter is finite, as a boolean tensor on their device (no host synchronisation)."""
    return torch.stack([torch.isfinite(p).all() for p in params]).all()


def _parameter_names(pair: Any) -> dict[int, str]:
    if isinstance(pair, nn.Module):
        return {id(p): n for n, p in pair.named_parameters()}
    return {id(v): k for k, v in pyro.get_param_store().named_parameters()}


def _nonfinite_sites(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
                     max_plate_nesting: int) -> str | None:
    """Trace guide and model on ``x`` (the current random state) and name the first sample site whose value or
    ``log_prob`` is not finite; None if every site is finite."""
    try:
        with pyro.validation_enabled(False), torch.no_grad(), poutine.block():
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
                guide_trace = poutine.trace(guide).get_trace(x)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
            for role, trace in (("guide", guide_trace), ("model", model_trace)):
                for name, site in trace.nodes.items():
                    if site["type"] != "sample":
                        continue
                    value = site["value"]
                    if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                        return f"sample site {name!r} of the {role} drew a non-finite value"
                    log_p = site["fn"].log_prob(value)
                    if torch.is_tensor(log_p) and not bool(torch.isfinite(log_p).all()):
                        kind = "observed" if site["is_observed"] else "latent"
                        return (f"the log_prob of the {kind} sample site {name!r} of the {role} is "
                                f"{log_p[~torch.isfinite(log_p)].flatten()[0].item()}")
    except Exception as e:  # a program that cannot be traced this way: report what we know
        return f"(the sites could not be traced: {type(e).__name__}: {e})"
    return None


def _is_invalid_values_error(e: ValueError) -> bool:
    """Whether ``e`` is a distribution's argument validation refusing NaN/inf (Pyro validates by default)."""
    return "found invalid values" in str(e)


def _checked_step(pair: Any, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                  compute_loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, model: Callable,
                  guide: Callable, num_particles: int, max_plate_nesting: int, clip_norm: float | None,
                  distributed: bool = False) -> str | None:
    """One training step on ``x`` exactly as :func:`fit` takes it, with every value checked (host syncs are fine:
    this runs only to locate a failure). Returns what went non-finite, or None.

    With ``distributed`` every rank runs it on its shard: the ranks agree on the loss check (the first rank's
    report), then average their gradients, so the later checks see the same values on every rank."""
    names = _parameter_names(pair)
    rng = pyro.util.get_rng_state()
    try:
        loss, refused = compute_loss(x), None
    except ValueError as e:
        if not _is_invalid_values_error(e):
            raise
        loss, refused = None, str(e).splitlines()[0]
    report = None
    if loss is None or not bool(torch.isfinite(loss)):
        pyro.util.set_rng_state(rng)  # the same draws again
        site = _nonfinite_sites(model, guide, x, num_particles, max_plate_nesting)
        if site is not None and not site.startswith("("):
            report = site
        elif refused is not None:
            report = f"a distribution refused its parameters: {refused}"
        else:
            report = f"the loss is {loss.item()} although every sample site is finite {site or ''}".rstrip()
    if distributed:
        report = dist.first_report(report)
    if report is not None:
        return report
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if distributed:
        dist.average_gradients(params)
    bad = [names.get(id(p), "?") for p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        return f"the gradient of parameter(s) {', '.join(bad)} is non-finite (the loss is finite)"
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    bad = [names.get(id(p), "?") for p in params if not bool(torch.isfinite(p).all())]
    if bad:
        return (f"the optimizer step made parameter(s) {', '.join(bad)} non-finite although the loss and the "
                "gradient were finite (the learning rate is too large)")
    return None


def _prepare_checkpoint_dir(folder: Path) -> None:
    """Create the checkpoint folder, check it is writable, and clear what a killed run left half-written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the checkpoint folder {folder}: {e.strerror}") from e
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"the checkpoint folder {folder} is not writable")
    _remove_stale_temporaries(folder)


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files that a process killed while writing a checkpoint leaves behind."""
    for name in (CHECKPOINT_NAME, METRICS_NAME):
        for tmp in folder.glob(name + ".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


def _save_checkpoint(state: dict[str, Any], history: list[dict[str, Any]], path: Path) -> None:
    """Write the checkpoint and the metrics atomically; a failure raises an ``OSError`` that says what to do."""
    previous = (f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint has been written yet")
    for target, write in ((path, lambda: atomic_save(state, path)),
                          (path.parent / METRICS_NAME, lambda: _write_metrics(history, path.parent / METRICS_NAME))):
        try:
            write()
        except OSError as e:
            reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                      errno.EROFS: "the file system is read-only", errno.EACCES: "the folder is not writable",
                      errno.EPERM: "the folder is not writable"}.get(e.errno, e.strerror or str(e))
            raise OSError(e.errno, f"could not write {target} after epoch {state['epoch']}: {reason}; {previous} "
                                   "(free some space or make the folder writable, then continue with resume=True, "
                                   "or 'pyro-vae train --resume')") from e


def fit(
    vae: Any,
    data: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    objective: str = "elbo",
    num_particles: int = 1,
    device: str | torch.device = "auto",
    val_data: torch.Tensor | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int | None = None,
    progress: bool = True,
    binarize: bool = False,
    beta: float = 1.0,
    kl_warmup_epochs: int = 0,
    lr_schedule: str | Callable[[int, int], float] = "constant",
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    clip_norm: float | None = None,
    max_plate_nesting: int | None = None,
    config: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    fast_path: bool = True,
    on_nan: str = "raise",
    nan_check_every: int = 50,
    max_rollbacks: int = 10,
    distributed: bool | None = None,
) -> list[dict[str, Any]]:
    """Train a model/guide pair by stochastic gradient ascent on a bound of ``log p(x)``.

    :param vae: a :class:`pyro_vae.VAE`, or any object with ``.model(x)`` and ``.guide(x)`` keeping the site
        contract (an ``nn.Module`` has its parameters trained; otherwise the ``pyro.param`` sites are).
    :param data: training data ``(N, *event_shape)``, a float tensor.
    :param epochs: passes over the data (the total, also when resuming).
    :param batch_size: datapoints per step (``<= N``).
    :param lr: Adam's learning rate (multiplied by the ``lr_schedule`` factor each epoch).
    :param objective: ``"elbo"``, ``"mean_field"``, ``"iwae"`` or ``"iwae-dreg"``.
    :param num_particles: particles per datapoint (``K`` for the IWAE objectives).
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
    :param val_data: validation data; its ELBO, rate and distortion are recorded each epoch.
    :param checkpoint_dir: folder for ``checkpoint.pt`` and ``metrics.jsonl`` (created if needed).
    :param resume: continue from ``checkpoint_dir/checkpoint.pt`` if it exists.
    :param seed: seeds Pyro's, torch's, numpy's and Python's generators and the shuffling.
    :param progress: show a progress bar (only on a terminal).
    :param binarize: dynamic binarization: a fresh Bernoulli draw of every pixel per batch.
    :param beta: weight of the rate term (beta-VAE); 1 is the ELBO.
    :param kl_warmup_epochs: ramp the rate weight linearly from 0 to ``beta`` over this many epochs.
    :param lr_schedule: a name from :data:`LR_SCHEDULES` or ``factor(epoch, epochs)``.
    :param betas: Adam's ``(beta1, beta2)``.
    :param eps: Adam's epsilon.
    :param clip_norm: clip the gradient's global norm to this value.
    :param max_plate_nesting: the model's deepest plate nesting; guessed if None.
    :param config: extra JSON-able settings recorded in the checkpoint (the CLI stores its arguments).
    :param fast_path: compute the library VAE's loss directly (equal in value and gradient to Pyro's trace
        path, tested) instead of tracing; user-written pairs always take Pyro's path.
    :param on_epoch_end: called with each epoch's metrics after its checkpoint is written (logging, early
        stopping by raising ``StopIteration``).
    :param on_nan: what to do when a loss or gradient becomes NaN or inf: ``"raise"`` a ``FloatingPointError``
        naming the epoch, the step and the site, or ``"rollback"``: restore the start of the epoch, halve the
        learning rate and go on (recorded in the epoch's ``nan_events``).
    :param nan_check_every: check the running loss and the parameters for NaN/inf every this many steps (and at
        each epoch's end); smaller stops sooner after a failure, larger synchronises with the device less often.
    :param max_rollbacks: with ``on_nan="rollback"``, raise after this many rollbacks in one run.
    :param distributed: train with every process that ``torchrun`` started (None: when it started more than one;
        see :mod:`pyro_vae.distributed`). ``batch_size`` is then the *global* batch: each step, rank ``r`` takes
        every ``world_size``-th datapoint of the batch from the ``r``-th on, and ``DistributedDataParallel``
        averages the gradients, so a step is the same step as in one process. Every rank is seeded differently
        (:func:`~pyro_vae.distributed.rank_seed`); rank 0 alone writes checkpoints and shows progress; every rank
        gets the same history and calls ``on_epoch_end`` (a ``StopIteration`` on any rank stops all). A run
        resumes on any number of processes (exactly, random streams included, on the same number).
    :returns: the history, one dict of metrics per epoch (``epoch``, ``loss``, ``lr``, ``beta``, ``seconds``,
        ``images_per_second``, with ``val_data`` ``val_elbo``, ``val_rate``, ``val_distortion``, and after a
        rollback ``nan_events``: a list of ``{"step", "site", "lr"}``).
    :raises FloatingPointError: on a non-finite loss or gradient with ``on_nan="raise"`` (or too many rollbacks).
    :raises OSError: when a checkpoint cannot be written (disk full, read-only folder); the previous one is intact.
    """
    if not (hasattr(vae, "model") and hasattr(vae, "guide")):
        raise TypeError("fit needs an object with .model and .guide attributes (a pyro_vae.VAE or your own pair)")
    loss_fn = get_objective(objective)
    if objective.startswith("iwae") and (beta != 1.0 or kl_warmup_epochs):
        raise ValueError("beta and kl_warmup_epochs weight the rate term of the ELBO; they do not apply to the "
                         f"{objective!r} objective (use objective='elbo' or 'mean_field')")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if on_nan not in ON_NAN:
        raise ValueError(f"unknown on_nan {on_nan!r}; choose one of {list(ON_NAN)}")
    if int(nan_check_every) < 1:
        raise ValueError(f"nan_check_every must be >= 1, got {nan_check_every}")
    if isinstance(lr_schedule, str):
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {sorted(LR_SCHEDULES)}")
        lr_schedule = LR_SCHEDULES[lr_schedule]
    data = _check_data(data, "data", vae, binarize)
    if val_data is not None:
        val_data = _check_data(val_data, "val_data", vae, binarize)
    n = data.shape[0]
    if not 1 <= int(batch_size) <= n:
        raise ValueError(f"batch_size must be between 1 and the number of datapoints ({n}), got {batch_size}")
    batch_size = int(batch_size)
    if checkpoint_dir is None and resume:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    device = resolve_device(device)
    distributed = dist.launched() if distributed is None else bool(distributed)
    if distributed:
        dist.init(device)
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    if distributed:
        dist.check_same_data(data)
    if batch_size < world:
        raise ValueError(f"batch_size ({batch_size}) is the global batch, split over {world} processes: it must be "
                         f"at least {world}")
    ckpt_path = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        dist.on_main_process(lambda: _prepare_checkpoint_dir(checkpoint_dir), distributed)
        ckpt_path = checkpoint_dir / CHECKPOINT_NAME
    base_seed = dist.shared_seed(seed) if distributed else seed
    if base_seed is not None:
        pyro.set_rng_seed(dist.rank_seed(base_seed, rank))
    if isinstance(vae, nn.Module):
        vae.to(device)
    data = data.to(device)
    val_data = val_data.to(device) if val_data is not None else None
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(vae.model, vae.guide, data[:2])
    params = _collect_parameters(vae, data[:2], max_plate_nesting)
    optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_schedule(e, int(epochs)))
    # the same permutation on every rank: each takes its part of every batch
    shuffle = torch.Generator().manual_seed(int(base_seed) if base_seed is not None else int(torch.randint(2**62, ())))

    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = None
    if resume and ckpt_path is not None:  # rank 0 reads the checkpoint and sends it to the others
        state = dist.on_main_process(lambda: load_checkpoint(ckpt_path) if ckpt_path.exists() else None, distributed)
    if state is not None:
        _load_pair_state(vae, state["pair"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        shuffle.set_state(state["shuffle_rng"])
        history = [json.loads(h) for h in state["history"]]
        start_epoch = int(state["epoch"])
        rng_ranks = state.get("rng_ranks") or [state["rng"]]
        if len(rng_ranks) == world:  # the same number of processes: every stream continues where it stopped
            _set_rng_state(rng_ranks[rank])
        else:  # another number: fresh streams, reproducible from the run's seed and the epoch
            saved_seed = state.get("base_seed")
            reseed = int(saved_seed) if saved_seed is not None else dist.shared_seed(None) if distributed else None
            if reseed is not None:
                pyro.set_rng_seed(dist.derive_seed(reseed, start_epoch, world, rank))
    runner: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor] | None = None
    if distributed and isinstance(vae, nn.Module):
        from torch.nn.parallel import DistributedDataParallel

        # construction copies rank 0's parameters and buffers to every rank; backward averages the gradients.
        # Buffers are sent again before every step only when some change in training (running statistics of
        # batch normalization): otherwise that is one more collective per step for nothing.
        running = any(getattr(m, "track_running_stats", False) for m in vae.modules())
        sync = "forward_sync_buffers"  # torch >= 2.13; ``broadcast_buffers`` before (now deprecated)
        sync = sync if sync in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
        runner = DistributedDataParallel(_BatchLoss(vae), device_ids=[device] if device.type == "cuda" else None,
                                         **{sync: running})
    elif distributed:  # a pair of pyro.param sites: the same start everywhere, gradients averaged by hand
        dist.broadcast_parameters(params)
    run_config = {"objective": objective, "num_particles": int(num_particles), "batch_size": batch_size,
                  "lr": lr, "epochs": int(epochs), "seed": seed, "binarize": binarize, "beta": beta,
                  "kl_warmup_epochs": kl_warmup_epochs, **(config or {})}

    steps_per_epoch = math.ceil(n / batch_size)
    bar = None
    if progress and sys.stderr.isatty() and start_epoch < epochs and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=(int(epochs) - start_epoch) * steps_per_epoch, desc="training", unit="step")
    particles = int(num_particles)
    check_every = int(nan_check_every)

    def batch_at(order: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
        """This rank's part of the step's batch, and what its summed loss is divided by: the global batch's size
        over the number of processes (averaging the ranks' gradients then gives the global batch's mean)."""
        index = order[step * batch_size:(step + 1) * batch_size]
        denominator = index.numel() / world
        x = data[index[rank::world] if world > 1 else index]
        return (binarize_batch(x) if binarize else x), denominator

    def train_step(x: torch.Tensor, denominator: float,
                   compute_loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        loss = runner(x, compute_loss) if runner is not None else compute_loss(x)
        optimizer.zero_grad(set_to_none=True)
        (loss / denominator).backward()
        if distributed and runner is None:
            dist.average_gradients(params)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        return loss.detach()

    rollbacks = 0
    if isinstance(vae, nn.Module):
        vae.train()
    for epoch in range(start_epoch, int(epochs)):
        warm = min(1.0, (epoch + 1) / kl_warmup_epochs) if kl_warmup_epochs > 0 else 1.0
        scale = beta * warm
        model, guide = vae.model, vae.guide
        fast = fast_path_owner(model, guide) if fast_path else None
        if scale != 1.0:
            model, guide = ScaleLatents(scale)(model), ScaleLatents(scale)(guide)

        def compute_loss(x: torch.Tensor, model: Callable = model, guide: Callable = guide, fast: Any = fast,
                         scale: float = scale) -> torch.Tensor:
            """The loss summed over the datapoints of ``x``."""
            if fast is not None:
                return fast.loss(x, objective, particles, scale)
            return loss_fn(model, guide, x, num_particles=particles, max_plate_nesting=max_plate_nesting)

        start = _snapshot(vae, optimizer, scheduler, shuffle)  # the last good state, for replay and rollback
        events: list[dict[str, Any]] = []
        while True:
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=shuffle).to(device)
            total = torch.zeros((), device=device)
            detected = None
            # several processes: a NaN must show as a non-finite loss on one rank, not as an exception that leaves
            # the other ranks waiting in an all-reduce, so distributions do not validate their arguments here
            with pyro.validation_enabled(False) if distributed else contextlib.nullcontext():
                for step in range(steps_per_epoch):
                    x, denominator = batch_at(order, step)
                    try:
                        loss = train_step(x, denominator, compute_loss)
                    except ValueError as e:  # a validated distribution met NaN parameters: locate it like any NaN
                        if not _is_invalid_values_error(e):
                            raise
                        detected = step
                        break
                    total += loss  # a NaN or inf loss makes the total non-finite: no per-step check needed
                    if bar is not None:
                        bar.update(1)
                        if step % 20 == 0:
                            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item() / x.shape[0]:.2f}")
                    if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                        # the only host synchronisation: every check_every steps and at the end of the epoch
                        finite = (torch.isfinite(total) & _all_finite(params)).float()
                        if distributed:
                            finite = dist.all_reduce(finite, "min")  # every rank stops at the same step
                        if not bool(finite):
                            detected = step
                            break
            if detected is None:
                break
            # replay the epoch from its start, checking every value, to find the first step that failed and why
            _restore(start, vae, optimizer, scheduler, shuffle)
            order = torch.randperm(n, generator=shuffle).to(device)
            bad_step, where = detected, ("it did not happen again when the epoch was replayed (a transient fault, "
                                         "or non-deterministic kernels)")
            for step in range(detected + 1):
                x, denominator = batch_at(order, step)
                found = _checked_step(vae, params, optimizer, lambda x, d=denominator: compute_loss(x) / d, x, model,
                                      guide, particles, max_plate_nesting, clip_norm, distributed)
                if found is not None:
                    bad_step, where = step, found
                    break
            _restore(start, vae, optimizer, scheduler, shuffle)
            report = f"NaN or inf in epoch {epoch + 1}, step {bad_step + 1} of {steps_per_epoch}: {where}"
            if on_nan == "raise":
                raise FloatingPointError(f"{report}. The model holds the parameters of the start of epoch "
                                         f"{epoch + 1}. Lower lr, set clip_norm, check the data, or pass "
                                         "on_nan='rollback' to roll back and halve the learning rate")
            if rollbacks >= int(max_rollbacks):
                raise FloatingPointError(f"{report}. Gave up after {rollbacks} rollbacks (max_rollbacks); the model "
                                         f"holds the parameters of the start of epoch {epoch + 1}")
            rollbacks += 1
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            scheduler.base_lrs = [b * 0.5 for b in scheduler.base_lrs]  # saved with the scheduler: resume keeps it
            start = _snapshot(vae, optimizer, scheduler, shuffle)
            new_lr = optimizer.param_groups[0]["lr"]
            events.append({"step": bad_step + 1, "site": where, "lr": new_lr})
            if rank == 0:
                warnings.warn(f"{report}; rolled back to the start of the epoch and lowered lr to {new_lr:g}",
                              RuntimeWarning, stacklevel=2)
        seconds = time.perf_counter() - t0
        if distributed:
            total = dist.all_reduce(total)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": (total / n).item(), "lr": optimizer.param_groups[0]["lr"],
                                  "beta": scale, "seconds": seconds, "images_per_second": n / seconds}
        if events:
            record["nan_events"] = events
        scheduler.step()
        if val_data is not None:
            if isinstance(vae, nn.Module):
                vae.eval()
            metrics = evaluate_elbo(vae, val_data, binarize=binarize, max_plate_nesting=max_plate_nesting,
                                    distributed=distributed)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            if isinstance(vae, nn.Module):
                vae.train()
        if distributed:
            record = dist.broadcast_object(record)  # rank 0's timings: the same history on every rank
        history.append(record)
        if ckpt_path is not None:
            rng_ranks = dist.all_gather_objects(_rng_state()) if distributed else [_rng_state()]
            checkpoint = {
                "epoch": epoch + 1, "pair": _pair_state(vae), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "shuffle_rng": shuffle.get_state(), "rng": rng_ranks[0],
                "rng_ranks": rng_ranks, "base_seed": base_seed, "world_size": world,
                "history": [json.dumps(h) for h in history], "config": json.dumps(run_config),
            }
            dist.on_main_process(lambda: _save_checkpoint(checkpoint, history, ckpt_path), distributed)
        stop = False
        if on_epoch_end is not None:
            try:
                on_epoch_end(record)
            except StopIteration:
                stop = True
        if distributed:
            stop = bool(dist.all_reduce(torch.tensor(float(stop)), "max"))
        if stop:
            break
    if bar is not None:
        bar.close()
    if runner is not None:  # free the DDP wrapper (and its reducer's pending work) now, not at interpreter exit
        runner = None
        gc.collect()
    if isinstance(vae, nn.Module):
        vae.eval()
    return history

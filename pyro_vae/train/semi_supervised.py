"""Training the semi-supervised VAE (:class:`pyro_vae.models.semi_supervised.SSVAE`) on labelled and unlabelled
data: :func:`fit_semi_supervised`, Kingma et al.'s :math:`\\mathcal{J}^\\alpha` (the bound of each batch, the label
summed on unlabelled ones, plus the auxiliary classification loss on labelled ones); :func:`balanced_split` picks the
labelled datapoints, as many of each class.

References: Kingma, Rezende, Mohamed, Welling, "Semi-Supervised Learning with Deep Generative Models", NeurIPS
2014; Pyro's ``examples/vae/ss_vae_M2.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pyro
import torch
from pyro.distributions import is_validation_enabled

from ..infer.objectives import get_objective
from ..infer.weights import terms_producer
from ..rng import rng_state, set_rng_state
from ..run_files import CHECKPOINT_NAME
from .state import (
    SEMI_SUPERVISED_TRAINER,
    check_checkpoint,
    load_checkpoint,
    load_pair_state,
    pair_state,
    prepare_checkpoint_dir,
    save_checkpoint,
)

__all__ = ["fit_semi_supervised", "balanced_split", "init_hidden_normal_", "AUX_STEPS", "LOSS_SCALES",
           "LABELLED_SCHEDULES"]

#: how the auxiliary classification loss is stepped: with the bound in one Adam update ("joint"), or in an Adam
#: update of its own after the bound's on every batch, a zero gradient on unlabelled batches (so a momentum step),
#: as Pyro's ``ss_vae_M2.py`` does with its second ``SVI`` ("separate")
AUX_STEPS = ("joint", "separate")
#: what a step's loss is divided by: its batch size ("mean": every step per datapoint, so a labelled batch half
#: the size of an unlabelled one weighs twice as much per datapoint) or nothing ("sum": Pyro's, every datapoint
#: visit weighs the same)
LOSS_SCALES = ("mean", "sum")
#: what a checkpoint written before these options trained with
_LEGACY_SCHEDULE = {"aux_step": "joint", "loss_scale": "mean", "labelled_schedule": "interleaved"}
#: how the labelled batches meet the unlabelled ones: as steps of their own spread among them ("interleaved",
#: Pyro's), or joined to every unlabelled batch in one step ("mixed", Kingma et al.'s mixed minibatches)
LABELLED_SCHEDULES = ("interleaved", "mixed")


def init_hidden_normal_(module: torch.nn.Module, std: float) -> torch.nn.Module:
    """Draw the weights of every hidden linear layer of ``module``'s networks from :math:`\\mathcal{N}(0,
    \\mathrm{std}^2)` and set their biases to zero (Pyro's ``ss_vae_M2.py`` initialises its hidden layers so, with
    ``std = 0.001``); each network's output layer keeps torch's initialisation. Uses torch's global generator.

    :param std: the standard deviation, > 0.
    :returns: ``module``.
    """
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
        raise ValueError(f"init_std must be a number > 0, got {std!r}")
    for net in module.modules():
        if isinstance(net, torch.nn.Sequential):
            linears = [m for m in net if isinstance(m, torch.nn.Linear)]
            with torch.no_grad():
                for layer in linears[:-1]:
                    layer.weight.normal_(0.0, float(std))
                    layer.bias.zero_()
    return module


def balanced_split(y: torch.Tensor, num_labels: int, num_classes: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of ``num_labels`` labelled datapoints, ``num_labels // num_classes`` of each class drawn at random
    (a generator seeded with ``seed``), and of the rest.

    :param y: ``(N,)`` class indices ``0 .. num_classes - 1``.
    :param num_labels: a positive multiple of ``num_classes``.
    :returns: ``(labelled, unlabelled)``, index tensors of shapes ``(num_labels,)`` and ``(N - num_labels,)``.
    :raises ValueError: when ``num_labels`` is not a positive multiple of ``num_classes``, or a class has fewer
        than ``num_labels // num_classes`` datapoints.
    """
    if isinstance(num_labels, bool) or int(num_labels) != num_labels or num_labels < 1 or num_labels % num_classes:
        raise ValueError(f"the number of labels must be a positive multiple of the {num_classes} classes (as many of "
                         f"each), got {num_labels!r}")
    per = int(num_labels) // int(num_classes)
    counts = torch.bincount(y.long(), minlength=int(num_classes))
    if int(counts.min()) < per:
        c = int(counts.argmin())
        raise ValueError(f"{num_labels} labels need {per} of each class, and class {c} has only {int(counts[c])} "
                         f"datapoints: at most {int(counts.min()) * int(num_classes)} labels")
    g = torch.Generator().manual_seed(int(seed))
    chosen = [torch.nonzero(y == c).flatten()[torch.randperm(int(counts[c]), generator=g)[:per]]
              for c in range(int(num_classes))]
    labelled = torch.cat(chosen)
    mask = torch.ones(y.shape[0], dtype=torch.bool)
    mask[labelled] = False
    return labelled, torch.nonzero(mask).flatten()


def fit_semi_supervised(
    ssvae: Any,
    x_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    x_unlabelled: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 200,
    lr: float = 4.2e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    objective: str = "elbo",
    num_particles: int = 1,
    binarize: bool = False,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    time_limit: float | None = None,
    labelled_passes: int = 1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    aux_step: str = "joint",
    loss_scale: str = "mean",
    best_dir: str | os.PathLike[str] | None = None,
    labelled_schedule: str = "interleaved",
) -> list[dict[str, Any]]:
    """Train an :class:`~pyro_vae.models.semi_supervised.SSVAE` on labelled and unlabelled data (Kingma et al.'s
    :math:`\\mathcal{J}^\\alpha`).

    Each epoch visits every unlabelled datapoint once in batches of ``batch_size``, and every labelled one
    ``labelled_passes`` times, its batches spread evenly among the unlabelled ones (with one pass, Pyro's
    ``ss_vae_M2.py`` schedule). The loop is the library's objective on the engine's terms
    (:func:`~pyro_vae.infer.weights.terms_producer`), not :func:`pyro_vae.fit`: a labelled batch adds the
    auxiliary loss, which is not a bound of the pair. A batch's loss is the
    objective's (:data:`pyro_vae.infer.objectives.OBJECTIVES`, the label summed on unlabelled batches) plus, on
    labelled batches, ``ssvae.aux_loss``; Adam on the sum divided by the batch size (``loss_scale``), the auxiliary
    loss in the same update or in one of its own (``aux_step``).

    :param ssvae: the model (its parameters on the device to train on).
    :param x_labelled: ``(L, *input_shape)``.
    :param y_labelled: ``(L,)`` class indices.
    :param x_unlabelled: ``(U, *input_shape)``.
    :param binarize: a fresh Bernoulli draw of every batch (dynamic binarization; grey-level data with the
        Bernoulli likelihood need it).
    :param val_data: ``(x, y)``: the classifier's accuracy on them after each epoch.
    :param time_limit: seconds: no new epoch starts once training has run this long.
    :param labelled_passes: passes over the labelled data per epoch (1: Pyro's schedule; more spends a small
        budget's steps on the few labels more often, as Kingma et al.'s mixed minibatches do).
    :param checkpoint_dir: a folder for ``checkpoint.pt`` (weights, Adam's state, every random generator, the
        history) and ``metrics.jsonl``, both written atomically after every epoch (after ``on_epoch_end``, so the
        records hold what it adds).
    :param resume: continue from the checkpoint in ``checkpoint_dir`` (if there is one) to ``epochs`` epochs in
        all: the same data give the same weights as a run never stopped. A new ``lr`` takes effect.
    :param aux_step: ``"joint"`` (the auxiliary loss in the bound's Adam update) or ``"separate"`` (an update of its
        own after the bound's on every batch, a momentum step on unlabelled ones: Pyro's; :data:`AUX_STEPS`).
    :param loss_scale: ``"mean"`` (each step's loss divided by its batch size) or ``"sum"`` (Pyro's; a labelled
        batch smaller than an unlabelled one then weighs less per step; :data:`LOSS_SCALES`).
    :param labelled_schedule: ``"interleaved"`` (labelled batches of ``batch_size`` spread evenly among the
        unlabelled ones, each its own step: Pyro's) or ``"mixed"`` (every step one unlabelled batch and its share of
        the epoch's ``labelled_passes`` passes over the labelled data, in one loss: Kingma et al.'s mixed
        minibatches; :data:`LABELLED_SCHEDULES`).
    :param best_dir: with ``val_data``, the model is saved there (``ssvae.save``) after every epoch whose validation
        accuracy beats all earlier ones (``pyro_vae.load(best_dir)`` gives the best-validation model; Pyro's
        tutorial reports the test accuracy of that epoch).
    :returns: one dict per epoch (those of the resumed checkpoint first): ``loss_unlabelled`` and
        ``loss_labelled`` (per datapoint visit, the latter without the auxiliary term), ``aux_loss`` (per labelled
        datapoint visit), ``val_accuracy`` and ``best_epoch`` (the epoch of the best validation accuracy so far,
        the first of ties), ``seconds``.
    :raises ValueError: for bad data or options, or a checkpoint that cannot be resumed (another trainer's, other
        data), before any step.
    """
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    if int(labelled_passes) < 1:
        raise ValueError(f"labelled_passes must be >= 1, got {labelled_passes!r}")
    if x_labelled.shape[0] != y_labelled.shape[0] or x_labelled.shape[0] == 0 or x_unlabelled.shape[0] == 0:
        raise ValueError(f"need labelled data with one label each and unlabelled data, got {x_labelled.shape[0]} "
                         f"labelled datapoints, {y_labelled.shape[0]} labels, {x_unlabelled.shape[0]} unlabelled")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to continue from")
    if aux_step not in AUX_STEPS:
        raise ValueError(f"aux_step must be one of {', '.join(AUX_STEPS)}, got {aux_step!r}")
    if labelled_schedule not in LABELLED_SCHEDULES:
        raise ValueError(f"labelled_schedule must be one of {', '.join(LABELLED_SCHEDULES)}, got {labelled_schedule!r}")
    if loss_scale not in LOSS_SCALES:
        raise ValueError(f"loss_scale must be one of {', '.join(LOSS_SCALES)}, got {loss_scale!r}")
    if best_dir is not None and val_data is None:
        raise ValueError("best_dir keeps the model of the best validation accuracy: it needs val_data")
    loss_fn = get_objective(objective)
    device = next(ssvae.parameters()).device
    params = [p for p in ssvae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas)
    # what a checkpoint must match to be continued: the data's sizes and the schedule
    data = {"labelled": int(x_labelled.shape[0]), "unlabelled": int(x_unlabelled.shape[0]),
            "batch_size": int(batch_size), "labelled_passes": int(labelled_passes), "aux_step": aux_step,
            "loss_scale": loss_scale, "labelled_schedule": labelled_schedule}
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict[str, Any]] = []
    if path is not None:
        prepare_checkpoint_dir(path.parent)
        if resume and path.exists():
            history = _resume(path, ssvae, optimizer, lr, data)

    def batch_loss(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """The objective's loss of a batch (summed), for a labelled one its auxiliary loss in the joint step (zero
        otherwise: the separate step computes it after the bound's update), and the batch's arguments of the model
        (on the device, binarized)."""
        x = x.to(device)
        if binarize:
            x = torch.bernoulli(x)
        args = (x,) if y is None else (x, y.to(device))
        produce = terms_producer(ssvae.model, ssvae.guide, *args, max_plate_nesting=1)
        aux = ssvae.aux_loss(*args) if y is not None and aux_step == "joint" else x.new_zeros(())
        return loss_fn(produce, num_particles=num_particles), aux, args

    began = time.perf_counter()
    validated = not is_validation_enabled()
    for epoch in range(len(history), int(epochs)):
        if time_limit is not None and time.perf_counter() - began > float(time_limit):
            break
        start = time.perf_counter()
        schedule = _epoch_schedule(x_unlabelled.shape[0], x_labelled.shape[0], int(batch_size), int(labelled_passes),
                                   labelled_schedule)
        # on the device, read once at the epoch's end: no host synchronisation per step
        sums = {k: torch.zeros((), device=device, dtype=torch.float64) for k in ("unlabelled", "labelled", "aux")}
        for step in schedule:
            # distributions validate their arguments on the run's first step only (as fit's): the checks read
            # every value on the host, a synchronisation per site and step
            with contextlib.nullcontext() if not validated else pyro.validation_enabled(False):
                parts = []  # (kind, loss, aux, args) of each batch of the step
                for kind, idx in step:
                    y_batch = None if kind == "unlabelled" else y_labelled[idx]
                    parts.append((kind, *batch_loss((x_unlabelled if y_batch is None else x_labelled)[idx], y_batch)))
                loss, aux = sum(p[1] for p in parts), sum(p[2] for p in parts)
                scale = sum(idx.numel() for _, idx in step) if loss_scale == "mean" else 1
                optimizer.zero_grad(set_to_none=True)
                ((loss + aux if aux_step == "joint" else loss) / scale).backward()
                if aux_step == "separate":  # Pyro's SVI leaves zero gradients, not None: every weight steps
                    _fill_zero_grads(params)
                optimizer.step()
                if aux_step == "separate":  # Pyro's second SVI: an update of every weight, zero gradients unlabelled
                    optimizer.zero_grad(set_to_none=False)  # every weight has a gradient since the fill above
                    labelled_args = [p[3] for p in parts if p[0] == "labelled"]
                    if labelled_args:
                        aux = sum(ssvae.aux_loss(*args) for args in labelled_args)
                        (aux / scale).backward()
                    optimizer.step()
            validated = True
            for kind, part_loss, _, _ in parts:
                sums[kind] += part_loss.detach()
            sums["aux"] += aux.detach()
        sums = dict(zip(sums, torch.stack(list(sums.values())).tolist()))  # the epoch's one synchronisation
        record = {"epoch": epoch + 1, "seconds": time.perf_counter() - start,
                  "loss_unlabelled": sums["unlabelled"] / x_unlabelled.shape[0],
                  "loss_labelled": sums["labelled"] / (x_labelled.shape[0] * int(labelled_passes)),
                  "aux_loss": sums["aux"] / (x_labelled.shape[0] * int(labelled_passes))}
        if val_data is not None:
            ssvae.eval()
            record["val_accuracy"] = ssvae.accuracy(*val_data)
            ssvae.train()
            accuracies = [h.get("val_accuracy", -1.0) for h in history] + [record["val_accuracy"]]
            record["best_epoch"] = 1 + accuracies.index(max(accuracies))  # the first of ties
            if record["best_epoch"] == epoch + 1 and best_dir is not None:
                ssvae.save(best_dir)
        history.append(record)
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  file=sys.stderr, flush=True)
        if on_epoch_end is not None:
            on_epoch_end(record)
        if path is not None:
            state = {"trainer": SEMI_SUPERVISED_TRAINER, "epoch": len(history), "pair": pair_state(ssvae),
                     "optimizer": optimizer.state_dict(), "rng": rng_state(),
                     "history": [json.dumps(h) for h in history], "config": json.dumps({"lr": lr, **data})}
            save_checkpoint(state, history, path)
    return history


def _epoch_schedule(num_unlabelled: int, num_labelled: int, batch_size: int, passes: int,
                    how: str) -> list[list[tuple[str, torch.Tensor]]]:
    """One epoch's steps, each a list of ``(kind, indices)`` batches: every unlabelled datapoint once in batches of
    ``batch_size``, every labelled one ``passes`` times (reshuffled each pass), interleaved as steps of their own
    (one labelled batch every ``every`` steps) or mixed into the unlabelled steps (the epoch's labelled stream cut
    into as many shares as there are unlabelled batches). Draws from torch's global generator."""
    unlabelled = torch.randperm(num_unlabelled).split(batch_size)
    if how == "mixed":
        stream = torch.cat([torch.randperm(num_labelled) for _ in range(passes)])
        shares = torch.tensor_split(stream, len(unlabelled))
        return [[("unlabelled", u)] + ([("labelled", share)] if share.numel() else [])
                for u, share in zip(unlabelled, shares)]
    labelled = torch.randperm(num_labelled).split(batch_size)
    if passes > 1:  # each labelled datapoint several times per epoch, reshuffled each time
        labelled = tuple(idx for _ in range(passes) for idx in torch.randperm(num_labelled).split(batch_size))
    every = max(1, (len(unlabelled) + len(labelled)) // len(labelled))
    schedule: list[list[tuple[str, torch.Tensor]]] = [[("unlabelled", idx)] for idx in unlabelled]
    for j, idx in enumerate(labelled):  # one labelled batch every `every` batches
        schedule.insert(min(j * every, len(schedule)), [("labelled", idx)])
    return schedule


def _fill_zero_grads(params: list[torch.Tensor]) -> None:
    """Give a zero gradient to every weight that got none (Adam then steps it on its momentum)."""
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)


def _resume(path: Path, ssvae: Any, optimizer: torch.optim.Optimizer, lr: float,
            data: dict[str, int]) -> list[dict[str, Any]]:
    """Load a checkpoint of :func:`fit_semi_supervised` into the model, the optimizer and every generator.

    :returns: its history.
    :raises ValueError: for a checkpoint of another trainer or of other data, before anything is changed.
    """
    state = load_checkpoint(path)
    check_checkpoint(state, path)
    if state.get("trainer") != SEMI_SUPERVISED_TRAINER:
        raise ValueError(f"{path} is a checkpoint of pyro_vae.fit, not of fit_semi_supervised: continue it with fit, "
                         "or give another checkpoint_dir")
    saved = {**_LEGACY_SCHEDULE, **json.loads(state.get("config") or "{}")}  # older checkpoints: the schedule then
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in data.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"{path} was trained on other data or another schedule ({', '.join(changed)}): a resumed "
                         "run continues on the same data (give the same ones, or another checkpoint_dir)")
    try:
        load_pair_state(ssvae, state["pair"])
    except RuntimeError as e:
        raise ValueError(f"the weights in {path} do not fit this model: {e}") from None
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # a new learning rate takes effect
        group["lr"] = lr
    set_rng_state(state["rng"])
    return [json.loads(h) for h in state["history"]]

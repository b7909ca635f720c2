"""The training loop: :func:`fit` trains anything with ``.model`` and ``.guide`` attributes.

Read :func:`run_fit` top to bottom: the options arrive checked (a :class:`~pyro_vae.train.config.FitConfig`), the
data are checked against the model; then the device, the data, the optimizer and (with ``resume``) the checkpoint
make a :class:`~pyro_vae.train.state.TrainState`; then each epoch is a pass of
:class:`~pyro_vae.train.step.TrainStep` over shuffled batches, watched by the
:class:`~pyro_vae.train.nan.NanGuard`, followed by validation, the checkpoint and the callbacks. :func:`fit` is
its keyword form. The parts live in their own modules: ``config`` (the options), ``step`` (one optimisation step),
``nan`` (detect, replay, roll back), ``state`` (snapshots, checkpoint and resume), ``parallel`` (torchrun),
``callbacks`` (progress, metrics, loggers), ``schedules`` (learning rate, beta and KL warm-up), ``validation``
(data checks, ELBO).

Data stay in memory on the training device; each epoch draws a permutation from a dedicated generator, and
dynamic binarization (``binarize=True``) is a fresh Bernoulli draw of every pixel per batch, on the device, and
``data_scale`` makes each batch a fresh Gaussian draw around its datapoints (stage 2 of the two-stage VAE trains
on ``z ~ q(z | x)`` so).
``beta`` and KL warm-up weigh the rate term of the objective: the loss is ``distortion + beta_t * rate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pyro
import torch
from torch import nn

from .. import distributed as dist
from ..datasets import binarize as binarize_batch
from ..infer.batches import BatchedArgs, first_transformed
from ..infer.objectives import OBJECTIVES
from ..infer.weights import check_data_plate, fast_path_owner, plate_layout
from ..io import RunLock
from ..threads import adapt_threads, resolve_threads, torch_threads
from .callbacks import Callback, CallbackList, EpochFunction, Progress
from .compiled import CompiledStep, refuse_distributed
from .config import FitConfig
from .nan import NanGuard, is_invalid_values_error
from .parallel import Parallel
from .schedules import rate_weight
from .state import CHECKPOINT_NAME, TrainState, prepare_checkpoint_dir
from .step import TrainStep, deprecated_fast_path
from .validation import check_data, collect_parameters, evaluate_elbo, resolve_device

__all__ = ["fit", "run_fit"]


def fit(
    vae: Any,
    data: torch.Tensor | tuple[torch.Tensor, ...] | torch.utils.data.Dataset,
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
    fast_path: bool | None = None,
    on_nan: str = "raise",
    nan_check_every: int = 50,
    max_rollbacks: int = 10,
    distributed: bool | None = None,
    callbacks: Sequence[Callback] = (),
    condition: torch.Tensor | None = None,
    val_condition: torch.Tensor | None = None,
    data_scale: torch.Tensor | None = None,
    direct_terms: bool = True,
    num_threads: int | str | None = "auto",
    data_plate: str = "data",
    collate_fn: Callable[[list], Any] | None = None,
    vectorize_particles: bool = True,
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Train a model/guide pair by stochastic gradient ascent on a bound of ``log p(x)``.

    :param vae: a :class:`pyro_vae.VAE`, or any object with ``.model(x)`` and ``.guide(x)`` keeping the site
        contract (an ``nn.Module`` has its parameters trained; otherwise the ``pyro.param`` sites are).
    :param data: training data ``(N, *event_shape)``, a float tensor (converted to the model's device and dtype);
        or a tuple of tensors batched along dim 0, passed as the model's positional arguments (the first, the
        observed tensor, is checked, converted and binarized like a tensor; the others are moved to the device); or
        a :class:`torch.utils.data.Dataset` whose ``collate_fn`` builds each batch's arguments (a deep Markov
        model's padded batch, ``PackedSequence``, mask and lengths). Shuffling, sharding over processes and seeds
        keep every argument of a datapoint together (:mod:`pyro_vae.infer.batches`).
    :param epochs: passes over the data (the total, also when resuming).
    :param batch_size: datapoints per step (``<= N``).
    :param lr: Adam's learning rate (multiplied by the ``lr_schedule`` factor each epoch). A different ``lr``
        given on resume takes effect from the resumed epoch (and is recorded).
    :param objective: a name of :data:`pyro_vae.infer.objectives.OBJECTIVES`: ``"elbo"``, ``"mean-field"``,
        ``"iwae"``, ``"iwae-dreg"`` or one added there.
    :param num_particles: particles per datapoint (``K`` for the IWAE objectives).
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
    :param val_data: validation data; its ELBO, rate and distortion are recorded each epoch.
    :param checkpoint_dir: folder for ``checkpoint.pt`` and ``metrics.jsonl`` (created if needed).
    :param resume: continue from ``checkpoint_dir/checkpoint.pt`` if it exists.
    :param seed: seeds Pyro's, torch's, numpy's and Python's generators and the shuffling.
    :param progress: show progress: a bar on a terminal, otherwise one line per epoch on standard error.
    :param binarize: dynamic binarization: a fresh Bernoulli draw of every pixel per batch.
    :param beta: weight of the rate term (beta-VAE); 1 is the ELBO.
    :param kl_warmup_epochs: ramp the rate weight linearly from 0 to ``beta`` over this many epochs.
    :param lr_schedule: a name from :data:`~pyro_vae.train.LR_SCHEDULES` or ``factor(epoch, epochs)``.
    :param betas: Adam's ``(beta1, beta2)``.
    :param eps: Adam's epsilon.
    :param clip_norm: clip the gradient's global norm to this value (> 0).
    :param max_plate_nesting: the model's deepest plate nesting; guessed if None.
    :param config: extra JSON-able settings recorded in the checkpoint (the CLI stores its arguments).
    :param on_epoch_end: called with each epoch's metrics after its checkpoint is written (logging, early
        stopping by raising ``StopIteration``); the same as ``callbacks=[EpochFunction(on_epoch_end)]``.
    :param direct_terms: let the library's models produce their importance terms directly (equal in value and
        gradient to the traced path, tested); False traces every pair.
    :param fast_path: the old name of ``direct_terms`` (deprecated: a ``DeprecationWarning``).
    :param num_threads: torch's intra-op CPU threads during the call (restored afterwards): ``"auto"`` (the
        default) takes :func:`pyro_vae.threads.free_cores`, all the cores of an idle machine and fewer when other
        processes keep them busy (more threads than free cores make training collapse, not merely slow down),
        re-checked at each epoch (this process's own work is never counted); a
        number sets it; None leaves torch's setting as it is.
    :param on_nan: what to do when a loss or gradient becomes NaN or inf: ``"raise"`` a ``FloatingPointError``
        naming the epoch, the step and the site, or ``"rollback"``: restore the start of the epoch, halve the
        learning rate and go on (recorded in the epoch's ``nan_events``).
    :param nan_check_every: check the running loss and the parameters for NaN/inf every this many steps (and at
        each epoch's end); smaller stops sooner after a failure, larger synchronises with the device less often.
    :param max_rollbacks: with ``on_nan="rollback"``, raise after this many rollbacks in one run.
    :param distributed: train with every process that ``torchrun`` started (None: when it started more than one;
        see :mod:`pyro_vae.train.parallel`). ``batch_size`` is then the *global* batch, every rank is seeded
        differently, rank 0 alone writes checkpoints and shows progress, every rank gets the same history and calls
        its callbacks (a ``StopIteration`` on any rank stops all). A run resumes on any number of processes
        (exactly, random streams included, on the same number).
    :param callbacks: :class:`~pyro_vae.train.Callback` instances (loggers, early stopping, metrics).
    :param condition: for a conditional model ``model(x, y)``: the conditions ``y`` ``(N, *condition_shape)``, one
        per datapoint of ``data``, batched with it.
    :param val_condition: the conditions of ``val_data``.
    :param data_scale: standard deviations of the shape of ``data``: each batch is then a fresh draw
        ``data + data_scale * eps``, ``eps ~ N(0, I)`` (training on samples of a Gaussian around each datapoint,
        redrawn at every visit; validation data are used as given). Not with ``binarize``.
    :param data_plate: the name of the pair's plate of datapoints (``pyro.plate(data_plate, N)`` in the model and
        the guide), as for every estimator; a name that is no plate of the pair is refused before any work.
    :param collate_fn: with a ``Dataset`` (``data``, ``val_data``): builds a batch's arguments from a list of
        datapoints; it must keep every datapoint, in order (checked on the first batch before any work).
    :param vectorize_particles: False: draw ``num_particles > 1`` particles one pass at a time, for a model or
        guide that cannot broadcast over a leading particle dimension (boolean-mask indexing, as Pyro's CVAE).
    :param compile: compile the library models' whole training step with ``torch.compile``, once per batch shape
        (the importance terms, the objective, backward, clipping and Adam's update; CUDA graphs on a GPU), where a
        step is bound by Python and kernel launches (small networks on a GPU); the same draws and, up to float
        rounding, the same training as ``False``. A pair of your own (traced terms) trains with the eager step,
        with a warning saying why; several processes are refused. See :mod:`pyro_vae.train.compiled`.
    :returns: the history, one dict of metrics per epoch (``epoch``, ``loss`` (the objective's loss per
        datapoint: the same meaning for every objective), ``lr``, ``beta``, ``seconds``, ``images_per_second``,
        with ``val_data`` ``val_elbo``, ``val_rate``, ``val_distortion``, and after a rollback ``nan_events``: a
        list of ``{"step", "site", "lr"}``).
    :raises TypeError: for an object without ``.model`` and ``.guide``, or a two-stage model (train it with
        ``TwoStageVAE.fit`` or :func:`~pyro_vae.train.fit_two_stage`).
    :raises FloatingPointError: on a non-finite loss or gradient with ``on_nan="raise"`` (or too many rollbacks).
    :raises OSError: when a checkpoint cannot be written (disk full, read-only folder); the previous one is intact.
    """
    _check_pair(vae)
    options = FitConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, objective=objective, num_particles=num_particles, device=device,
        checkpoint_dir=checkpoint_dir, resume=resume, seed=seed, progress=progress, binarize=binarize, beta=beta,
        kl_warmup_epochs=kl_warmup_epochs, lr_schedule=lr_schedule, betas=betas, eps=eps, clip_norm=clip_norm,
        max_plate_nesting=max_plate_nesting, extra=config, on_nan=on_nan, nan_check_every=nan_check_every,
        max_rollbacks=max_rollbacks, distributed=distributed, num_threads=num_threads,
        direct_terms=deprecated_fast_path(fast_path, direct_terms, "fit"), data_plate=data_plate,
        vectorize_particles=vectorize_particles, compile=compile)
    hooks = [*callbacks, *([EpochFunction(on_epoch_end)] if on_epoch_end is not None else [])]
    return run_fit(vae, data, options, val_data=val_data, condition=condition, val_condition=val_condition,
                   data_scale=data_scale, callbacks=hooks, collate_fn=collate_fn)


def run_fit(vae: Any, data: Any, options: FitConfig, *, val_data: Any = None,
            condition: torch.Tensor | None = None, val_condition: torch.Tensor | None = None,
            data_scale: torch.Tensor | None = None, callbacks: Sequence[Callback] = (),
            collate_fn: Callable[[list], Any] | None = None) -> list[dict[str, Any]]:
    """:func:`fit` with its options in a :class:`~pyro_vae.train.config.FitConfig` (the same run, the same history).

    :param vae: anything with ``.model`` and ``.guide`` (see :func:`fit`).
    :param data: training data ``(N, *event_shape)``.
    :param options: the checked options.
    :param val_data: validation data, as in :func:`fit`; ``condition``, ``val_condition`` and ``data_scale`` too.
    :param callbacks: :class:`~pyro_vae.train.Callback` instances.
    :returns: the history, one dict of metrics per epoch (see :func:`fit`).
    """
    o = options
    _check_pair(vae)
    hooks = CallbackList(callbacks)
    loss_fn = _objective_for(vae, o)
    d = _TrainData.checked(vae, o, data, val_data, condition, val_condition, data_scale, collate_fn)
    n, batch_size = d.train.n, o.batch_size

    # ---- device, processes, the run folder, seeds, data, parameters, optimizer: the state
    device = resolve_device(o.device)
    parallel = Parallel(o.distributed, device)
    refuse_distributed(o.compile, parallel.enabled)
    parallel.check(d.train.first if d.train.first is not None else torch.tensor(float(n)), batch_size)
    ckpt_path = Path(o.checkpoint_dir) / CHECKPOINT_NAME if o.checkpoint_dir is not None else None
    with _run_folder(ckpt_path, parallel), torch_threads(resolve_threads(o.num_threads)):
        base_seed = dist.shared_seed(o.seed) if parallel.enabled else o.seed
        if base_seed is not None:
            pyro.set_rng_seed(dist.rank_seed(base_seed, parallel.rank))
        if isinstance(vae, nn.Module):
            vae.to(device)
        d = d.to(vae, device)
        example = d.example(batch_size)
        max_plate_nesting = _plate_nesting(vae, example, o.max_plate_nesting, o.data_plate)
        params = collect_parameters(vae, example)
        optimizer = _adam(params, o)
        schedule = o.schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: schedule(e, o.epochs))
        # the same permutation on every rank: each takes its part of every batch
        first_seed = int(base_seed) if base_seed is not None else int(torch.randint(2**62, ()))
        state = TrainState(vae, optimizer, scheduler, torch.Generator().manual_seed(first_seed), parallel, base_seed)
        if o.resume:
            state.resume(ckpt_path, o.lr, schedule, o.epochs)
        parallel.wrap(vae, params)
        step = (CompiledStep if o.compile else TrainStep)(
            vae, loss_fn, optimizer, params, num_particles=o.num_particles, max_plate_nesting=max_plate_nesting,
            clip_norm=o.clip_norm, parallel=parallel, direct_terms=o.direct_terms, data_plate=o.data_plate,
            vectorize_particles=o.vectorize_particles)
        guard = NanGuard(o.on_nan, o.nan_check_every, o.max_rollbacks, parallel)
        steps = math.ceil(n / batch_size)
        if o.progress and parallel.rank == 0:
            hooks.prepend(Progress((o.epochs - state.epoch) * steps, o.epochs))

        size = d.batch_size_of

        def batches() -> Callable[[int], tuple[tuple, float]]:
            """This epoch's batches ``batch(i)``: the shuffling generator's next permutation (on the device for
            tensors; a ``Dataset``'s, whose items are read by Python indices, stays on the CPU: on a GPU, indices on
            the device would be read back, a host synchronisation each step)."""
            order = torch.randperm(n, generator=state.shuffle)
            return d.batches(order.to(device) if d.train.tensors is not None else order, parallel, batch_size,
                             o.binarize)

        # ---- the epochs
        if isinstance(vae, nn.Module):
            vae.train()
        first_epoch = state.epoch
        for epoch in range(first_epoch, o.epochs):
            if epoch > first_epoch:  # "auto": the free cores again (a competitor came or went)
                adapt_threads(o.num_threads)
            beta_t = rate_weight(epoch, o.beta, o.kl_warmup_epochs)
            start, events = state.snapshot(), []  # the last good state, for replay and rollback
            while True:
                t0 = time.perf_counter()
                batch, total, detected = batches(), torch.zeros((), device=device), None
                for i in range(steps):
                    args, denominator = batch(i)
                    try:
                        loss = step(args, denominator, beta_t)
                    except ValueError as e:  # a validated distribution met NaN parameters: locate it like any NaN
                        if not is_invalid_values_error(e):
                            raise
                        detected = i
                        break
                    total += loss  # a NaN or inf loss makes the total non-finite: no per-step check needed
                    hooks.on_step_end(epoch, i, steps, loss, size(args))
                    if guard.due(i, steps) and guard.failed(total, params):
                        detected = i
                        break
                if detected is None:
                    break
                state.restore(start)  # replay the epoch to find the step and the site, then go back again
                bad_step, where = guard.locate(step, vae, batches(), beta_t, detected)
                state.restore(start)
                events.append(guard.handle(epoch, bad_step, steps, where, optimizer, scheduler))
                start = state.snapshot()
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": (parallel.sum(total) / n).item(),
                                      "lr": optimizer.param_groups[0]["lr"], "beta": beta_t, "seconds": seconds,
                                      "images_per_second": n / seconds}
            if events:
                record["nan_events"] = events
            scheduler.step()
            if d.val is not None:
                record.update({f"val_{k}": v for k, v in _validate(vae, d.val, o.binarize, max_plate_nesting,
                                                                     parallel, o.data_plate).items()})
            record = parallel.broadcast(record)  # rank 0's timings: the same history on every rank
            hooks.on_epoch_metrics(record)
            state.history.append(record)
            if ckpt_path is not None:
                state.checkpoint(ckpt_path, o.run_config())
            if parallel.any(hooks.on_epoch_end(record)):
                break
        hooks.on_train_end(state.history)
        parallel.close()
        if isinstance(vae, nn.Module):
            vae.eval()
        return state.history


@dataclasses.dataclass(frozen=True)
class _TrainData:
    """What a run reads: the data and the validation data as the model's arguments (:class:`BatchedArgs`: a tensor,
    a tuple of tensors, or a ``Dataset`` and its ``collate_fn``; a condition is one more tensor), and the data's
    noise scale."""

    train: BatchedArgs
    val: BatchedArgs | None
    scale: torch.Tensor | None

    @classmethod
    def checked(cls, vae: Any, options: FitConfig, data: Any, val_data: Any, condition: Any, val_condition: Any,
                data_scale: Any, collate_fn: Callable[[list], Any] | None = None) -> _TrainData:
        """Refuse data the model cannot train on (before any work)."""
        train = _checked_args(vae, options, data, condition, "data", "condition", collate_fn)
        val = _checked_args(vae, options, val_data, val_condition, "val_data", "val_condition", collate_fn) \
            if val_data is not None else None
        if val_data is None and val_condition is not None:
            raise ValueError("val_condition was given without its data")
        if data_scale is not None and train.first is None:
            raise ValueError("data_scale draws noise around tensor data; with a Dataset, draw it in the collate_fn")
        data_scale = _check_data_scale(data_scale, train.first, options.binarize)
        n = train.n
        if options.batch_size > n:
            raise ValueError(f"batch_size must be between 1 and the number of datapoints ({n}), got "
                             f"{options.batch_size}")
        if train.tensors is None:  # a collate_fn that drops or reorders datapoints is refused before any work
            first = train.take(range(min(options.batch_size, n)))
            if options.binarize:
                first_transformed(first, lambda x: x, "binarize")
            if torch.is_tensor(first[0]):  # the observed tensor, checked as tensor data is (on its first batch)
                check_data(first[0], "the first batch of data (the collate_fn's first argument)", vae,
                           options.binarize)
        return cls(train, val, data_scale)

    def to(self, vae: Any, device: torch.device) -> _TrainData:
        """On ``device``, the data in the model's dtype (float16, bfloat16 or float64 data for a float32 model are
        converted)."""
        first = self.train.first
        fallback = first.dtype if first is not None and first.is_floating_point() else None
        dtype = next((p.dtype for p in vae.parameters()), fallback) if isinstance(vae, nn.Module) else fallback
        scale = self.scale.to(device=device, dtype=dtype) if self.scale is not None else None
        return _TrainData(self.train.to(device, dtype), self.val.to(device, dtype) if self.val is not None else None,
                          scale)

    def example(self, size: int) -> tuple:
        """The model's arguments for the first ``size`` datapoints."""
        return self.train.slice(0, size)

    @staticmethod
    def batch_size_of(args: tuple) -> int:
        """The datapoints of a batch's arguments."""
        a = args[0]
        return int(a.shape[0]) if torch.is_tensor(a) else int(getattr(a, "batch_sizes", [len(a)])[0])

    def batches(self, order: torch.Tensor, parallel: Parallel, batch_size: int,
                binarize: bool) -> Callable[[int], tuple[tuple, float]]:
        """``batch(i)``: the model's arguments for this rank's part of batch ``i`` of ``order``, and the
        denominator of its summed loss; binarized (the first argument) or noised afresh at each call."""
        train = self.train
        if train.is_tensor:  # a plain tensor: the path it always took, one index per batch
            data = train.first

            def batch(i: int) -> tuple[tuple, float]:
                index, denominator = parallel.batch(order, i, batch_size)
                x = binarize_batch(data[index]) if binarize else data[index]
                if self.scale is not None:
                    x = x + self.scale[index] * torch.randn_like(x)
                return (x,), denominator
            return batch

        def several(i: int) -> tuple[tuple, float]:
            index, denominator = parallel.batch(order, i, batch_size)
            args = train.take(index)
            if binarize:
                args = first_transformed(args, binarize_batch, "binarize")
            if self.scale is not None:
                args = (args[0] + self.scale[index] * torch.randn_like(args[0]),) + args[1:]
            return args, denominator
        return several


def _checked_args(vae: Any, options: FitConfig, data: Any, condition: Any, name: str, condition_name: str,
                  collate_fn: Callable[[list], Any] | None) -> BatchedArgs:
    """A data set as the model's arguments, its observed tensor checked against the model (a ``Dataset`` is checked
    on its first batch)."""
    if isinstance(data, torch.utils.data.Dataset):
        if condition is not None:
            raise ValueError(f"{condition_name}= goes with tensor data; with a Dataset, let the collate_fn return it")
    else:  # a tensor, or a tuple whose first tensor is the observed one (anything else: told how to convert)
        several = isinstance(data, (tuple, list))
        first = (data[0] if data else None) if several else data
        check_data(first, f"the first tensor of {name}" if several else name, vae, options.binarize)
        if condition is not None:
            _check_condition(condition, condition_name, first)
    return BatchedArgs.of(data, condition, collate_fn, name)


def _check_pair(vae: Any) -> None:
    """Refuse what is not one model/guide pair (a two-stage model holds two, trained one after the other)."""
    if hasattr(vae, "stage1") and hasattr(vae, "stage2"):
        raise TypeError(f"fit trains one model/guide pair, and a {type(vae).__name__} holds two (stage1 and stage2, "
                        "trained one after the other): use its .fit(data, epochs=...) method, or "
                        "pyro_vae.train.fit_two_stage(model, data, epochs=...)")
    if not (hasattr(vae, "model") and hasattr(vae, "guide")):
        raise TypeError("fit needs an object with .model and .guide attributes (a pyro_vae.VAE or your own pair)")


def _objective_for(vae: Any, options: FitConfig) -> Callable[..., torch.Tensor]:
    """The objective's function, refused when the model cannot serve it (mean-field needs a closed-form KL)."""
    loss_fn = options.loss_fn
    prior = getattr(vae, "prior", None)
    if loss_fn is OBJECTIVES.get("mean-field") and prior is not None and not getattr(prior, "has_closed_form_kl", True):
        raise ValueError(f"objective 'mean-field' needs KL(q || p) in closed form, and the model's "
                         f"{type(prior).__name__} has none: use objective='elbo'")
    return loss_fn


def _adam(params: list[torch.Tensor], options: FitConfig) -> torch.optim.Adam:
    """Adam, fused into one kernel where torch has one for these tensors (the same algorithm; on one CPU thread
    the update of a 784-200-200-50 VAE takes about a third of the time of torch's default loop over parameters),
    else torch's default implementation. A resumed optimizer keeps the implementation its checkpoint recorded."""
    try:
        return torch.optim.Adam(params, lr=options.lr, betas=options.betas, eps=options.eps, fused=True)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=options.lr, betas=options.betas, eps=options.eps)


def _run_folder(ckpt_path: Path | None, parallel: Parallel) -> contextlib.AbstractContextManager:
    """Prepare the checkpoint folder and hold its lock (one writer per run folder: a second train or resume is
    refused); rank 0 does both, and its refusal reaches every rank."""
    lock = contextlib.ExitStack()
    if ckpt_path is not None:
        parallel.on_main(lambda: prepare_checkpoint_dir(ckpt_path.parent))
        parallel.on_main(lambda: lock.enter_context(RunLock(ckpt_path.parent)) and None)
    return lock


def _plate_nesting(vae: Any, example: tuple, given: int | None, data_plate: str = "data") -> int:
    """The pair's deepest plate nesting: given, a library model's own, or guessed from one trace of a few
    datapoints (a whole batch if the pair needs it, e.g. a plate subsampled to more datapoints than the few):
    setup costs a fraction of a step, not a step. The same trace refuses a ``data_plate`` that is no plate of the
    pair (a library model's plate is ``"data"``: not traced)."""
    owner = fast_path_owner(vae.model, vae.guide)
    if data_plate == "data" and given is not None:
        return given
    if data_plate == "data" and getattr(owner, "max_plate_nesting", None) is not None:
        return owner.max_plate_nesting
    few = tuple(a[:8] for a in example) if all(torch.is_tensor(a) for a in example) else None
    try:
        if few is None:
            raise TypeError
        nesting, plates = plate_layout(vae.model, vae.guide, *few)
    except Exception:
        nesting, plates = plate_layout(vae.model, vae.guide, *example)
    check_data_plate(data_plate, plates)
    return given if given is not None else nesting


def _check_condition(condition: Any, name: str, data: torch.Tensor | None) -> torch.Tensor | None:
    """Refuse conditions that are not a finite float tensor with one row per datapoint."""
    if condition is None:
        return None
    if data is None:
        raise ValueError(f"{name} was given without its data")
    if not torch.is_tensor(condition) or not condition.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of shape (N, *condition_shape)")
    if condition.dim() < 1 or condition.shape[0] != data.shape[0]:
        raise ValueError(f"{name} must have one row per datapoint: {data.shape[0]}, got {tuple(condition.shape)}")
    if not bool(torch.isfinite(condition).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    return condition


def _check_data_scale(scale: Any, data: torch.Tensor, binarize: bool) -> torch.Tensor | None:
    """Refuse standard deviations that are not a finite non-negative float tensor of the data's shape."""
    if scale is None:
        return None
    if binarize:
        raise ValueError("data_scale draws Gaussian data and binarize Bernoulli data: give one of them")
    if not torch.is_tensor(scale) or not scale.is_floating_point() or scale.shape != data.shape:
        raise ValueError(f"data_scale must be a float tensor of the data's shape {tuple(data.shape)}, got "
                         f"{tuple(scale.shape) if torch.is_tensor(scale) else type(scale).__name__}")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError("data_scale must be finite and >= 0")
    return scale


def _validate(vae: Any, val_data: BatchedArgs, binarize: bool, max_plate_nesting: int,
              parallel: Parallel, data_plate: str) -> dict[str, float]:
    if isinstance(vae, nn.Module):
        vae.eval()
    try:
        return evaluate_elbo(vae, val_data, binarize=binarize, max_plate_nesting=max_plate_nesting,
                             distributed=parallel.enabled, data_plate=data_plate)
    finally:
        if isinstance(vae, nn.Module):
            vae.train()

"""The NaN guard: detect a non-finite loss or parameter cheaply, replay the epoch to locate it, roll back.

The epoch's running loss total stays on the device (a NaN or inf loss makes it non-finite); every
``check_every`` steps and at the end of each epoch one check (the only host synchronisation) looks at it and at
the parameters. On a non-finite value the epoch is replayed from its start (kept in memory, see
:class:`~pyro_vae.train.state.Snapshot`) with the real :class:`~pyro_vae.train.step.TrainStep`, whose check
hooks look at every value, to name the epoch, the first failing step and the site: a sample site whose value or
``log_prob`` is non-finite, a parameter whose gradient is, or a parameter an optimizer step made non-finite.
``on_nan="raise"`` raises ``FloatingPointError`` with that report and leaves the pair at the start of the
failing epoch; ``on_nan="rollback"`` restores the start of the epoch, halves the learning rate and goes on
(recorded in the epoch's ``nan_events``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from torch import nn

from ..infer.weights import PARTICLE_PLATE
from ..rng import rng_state, set_rng_state
from .parallel import Parallel
from .step import StepCheck, TrainStep

__all__ = ["ON_NAN", "NanGuard", "is_invalid_values_error"]

#: what :func:`~pyro_vae.train.fit` does when a loss or gradient becomes NaN or inf
ON_NAN = ("raise", "rollback")


def is_invalid_values_error(e: ValueError) -> bool:
    """Whether ``e`` is a distribution's argument validation refusing NaN/inf (Pyro validates by default)."""
    return "found invalid values" in str(e)


def _parameter_names(pair: Any) -> dict[int, str]:
    if isinstance(pair, nn.Module):
        return {id(p): n for n, p in pair.named_parameters()}
    return {id(v): k for k, v in pyro.get_param_store().named_parameters()}


def _nonfinite_sites(model: Callable, guide: Callable, args: tuple, num_particles: int,
                     max_plate_nesting: int) -> str | None:
    """Trace guide and model on ``x`` (the current random state) and name the first sample site whose value or
    ``log_prob`` is not finite; None if every site is finite."""
    try:
        with pyro.validation_enabled(False), torch.no_grad(), poutine.block():
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
                guide_trace = poutine.trace(guide).get_trace(*args)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
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


class _Found(Exception):
    """Raised by a check hook to stop the replayed step: ``report`` says what went non-finite."""

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report


class _Checks(StepCheck):
    """The replay's hooks into :class:`TrainStep` (host synchronisations are fine: this runs only to locate a
    failure). Under torchrun the ranks agree on the loss check (the first rank's report); the gradients are averaged
    before the later checks, so those see the same values on every rank."""

    def __init__(self, step: TrainStep, args: tuple, names: dict[int, str], parallel: Parallel) -> None:
        self.step, self.args, self.names, self.parallel = step, args, names, parallel
        self.rng = rng_state()  # the step's draws, to trace its sites again

    def explain(self, loss: torch.Tensor | None, refused: str | None = None) -> str:
        """Name the sample site behind a non-finite (or refused) loss, tracing the step's draws again."""
        set_rng_state(self.rng)
        step = self.step
        site = _nonfinite_sites(step.model, step.guide, self.args, step.num_particles, step.max_plate_nesting)
        if site is not None and not site.startswith("("):
            return site
        if refused is not None:
            return f"a distribution refused its parameters: {refused}"
        return f"the loss is {loss.item()} although every sample site is finite {site or ''}".rstrip()

    def loss(self, loss: torch.Tensor) -> None:
        report = self.parallel.first_report(None if bool(torch.isfinite(loss)) else self.explain(loss))
        if report is not None:
            raise _Found(report)

    def gradients(self, params: list[torch.Tensor]) -> None:
        bad = [self.names.get(id(p), "?") for p in params
               if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if bad:
            raise _Found(f"the gradient of parameter(s) {', '.join(bad)} is non-finite (the loss is finite)")

    def updated(self, params: list[torch.Tensor]) -> None:
        bad = [self.names.get(id(p), "?") for p in params if not bool(torch.isfinite(p).all())]
        if bad:
            raise _Found(f"the optimizer step made parameter(s) {', '.join(bad)} non-finite although the loss and "
                         "the gradient were finite (the learning rate is too large)")


class NanGuard:
    """Detect, locate and handle non-finite values during :func:`~pyro_vae.train.fit`.

    :param on_nan: ``"raise"`` or ``"rollback"``.
    :param check_every: steps between checks (each check is one host synchronisation).
    :param max_rollbacks: with ``"rollback"``, raise after this many rollbacks in one run.
    """

    def __init__(self, on_nan: str, check_every: int, max_rollbacks: int, parallel: Parallel) -> None:
        self.on_nan, self.check_every, self.max_rollbacks = on_nan, int(check_every), int(max_rollbacks)
        self.parallel = parallel
        self.rollbacks = 0

    def due(self, step: int, steps: int) -> bool:
        return (step + 1) % self.check_every == 0 or step + 1 == steps

    def failed(self, total: torch.Tensor, params: list[torch.Tensor]) -> bool:
        """Whether the running total or a parameter is non-finite on any rank (one host synchronisation)."""
        finite = torch.isfinite(total) & torch.stack([torch.isfinite(p).all() for p in params]).all()
        return not self.parallel.all_ok(finite)

    def locate(self, step: TrainStep, pair: Any, batches: Callable[[int], tuple[tuple, float]], beta: float,
               detected: int) -> tuple[int, str]:
        """Replay steps ``0..detected`` (the epoch's start already restored) with the real step, every value
        checked by a :class:`_Checks` hook.

        :returns: the failing step (0-based) and what went non-finite.
        """
        names = _parameter_names(pair)
        for i in range(detected + 1):
            args, denominator = batches(i)
            check = _Checks(step, args, names, self.parallel)
            try:
                step(args, denominator, beta, check=check)
            except _Found as found:
                return i, found.report
            except ValueError as e:  # a distribution's validation refused its parameters (one process only)
                if not is_invalid_values_error(e):
                    raise
                return i, check.explain(None, refused=str(e).splitlines()[0])
        return detected, ("it did not happen again when the epoch was replayed (a transient fault, or "
                          "non-deterministic kernels)")

    def handle(self, epoch: int, bad_step: int, steps: int, where: str, optimizer: torch.optim.Optimizer,
               scheduler: Any) -> dict[str, Any]:
        """Raise (``on_nan="raise"``, or too many rollbacks), or halve the learning rate after a rollback.

        :returns: the event to record in the epoch's ``nan_events``.
        """
        report = f"NaN or inf in epoch {epoch + 1}, step {bad_step + 1} of {steps}: {where}"
        if self.on_nan == "raise":
            raise FloatingPointError(f"{report}. The model holds the parameters of the start of epoch {epoch + 1}. "
                                     "Lower lr, set clip_norm, check the data, or pass on_nan='rollback' to roll back "
                                     "and halve the learning rate")
        if self.rollbacks >= self.max_rollbacks:
            raise FloatingPointError(f"{report}. Gave up after {self.rollbacks} rollbacks (max_rollbacks); the model "
                                     f"holds the parameters of the start of epoch {epoch + 1}")
        self.rollbacks += 1
        for group in optimizer.param_groups:
            group["lr"] *= 0.5
        scheduler.base_lrs = [b * 0.5 for b in scheduler.base_lrs]  # saved with the scheduler: resume keeps it
        new_lr = optimizer.param_groups[0]["lr"]
        if self.parallel.rank == 0:
            warnings.warn(f"{report}; rolled back to the start of the epoch and lowered lr to {new_lr:g}",
                          RuntimeWarning, stacklevel=4)
        return {"step": bad_step + 1, "site": where, "lr": new_lr}

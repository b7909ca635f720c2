"""One training step, shaped like Pyro's ``SVI.step``: a batch's loss and its gradients, then the optimizer.

The loss comes from an objective of :data:`pyro_vae.infer.objectives.OBJECTIVES` applied to the pair's
importance terms (:func:`pyro_vae.infer.weights.terms_producer`: the library model's own producer, or the
traced path for any pair), so every objective serves every pair. Distributions validate their arguments on the
first step only (when Pyro's validation is on): a model that builds an invalid distribution is refused at once,
and the following steps skip the checks (they cost about 10% of a step); a NaN that appears later is caught by
the NaN guard.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import pyro
import torch
from pyro.distributions import is_validation_enabled

from ..infer.weights import terms_producer
from .parallel import Parallel

__all__ = ["TrainStep", "StepCheck", "deprecated_fast_path"]


class StepCheck:
    """Hooks that :class:`TrainStep` calls at its checkpoints (the NaN guard's replay checks every value with
    them); each raises to stop the step. The base class checks nothing."""

    def loss(self, loss: torch.Tensor) -> None:
        """After the forward pass: the batch's loss divided by the denominator."""

    def gradients(self, params: list[torch.Tensor]) -> None:
        """After the backward pass (gradients averaged over the ranks), before clipping."""

    def updated(self, params: list[torch.Tensor]) -> None:
        """After the optimizer's step."""


class TrainStep:
    """``step(args, denominator, beta)``: one optimisation step on the batch ``args`` (the model's positional
    arguments: ``(x,)``, ``(x, y)`` for a conditional model, or a tuple's / collate_fn's several arguments); returns
    its summed loss.

    :param vae: anything with ``.model`` and ``.guide``.
    :param objective: an objective function ``loss(produce, *, num_particles, beta)``.
    :param optimizer: a ``torch.optim`` optimizer over ``params``.
    :param params: the trained tensors.
    :param num_particles: particles per datapoint.
    :param max_plate_nesting: the pair's deepest plate nesting.
    :param clip_norm: clip the gradient's global norm to this value (None: no clipping).
    :param parallel: the distributed plumbing.
    :param direct_terms: let a model class produce its importance terms directly (False: always the traced path).
    :param fast_path: the old name of ``direct_terms`` (deprecated).
    :param data_plate: the name of the pair's plate of datapoints.
    :param vectorize_particles: False: one pass per particle (programs that cannot broadcast over particles).
    """

    def __init__(self, vae: Any, objective: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                 params: list[torch.Tensor], *, num_particles: int, max_plate_nesting: int, clip_norm: float | None,
                 parallel: Parallel, direct_terms: bool = True, fast_path: bool | None = None,
                 data_plate: str = "data", vectorize_particles: bool = True) -> None:
        direct_terms = deprecated_fast_path(fast_path, direct_terms, "TrainStep")
        self.data_plate, self.vectorize_particles = data_plate, vectorize_particles
        self.objective, self.optimizer, self.params = objective, optimizer, params
        self.num_particles, self.max_plate_nesting, self.clip_norm = num_particles, max_plate_nesting, clip_norm
        self.parallel = parallel
        if direct_terms:
            self.model, self.guide = vae.model, vae.guide
        else:  # plain functions: the traced path
            self.model = lambda *args, **kwargs: vae.model(*args, **kwargs)
            self.guide = lambda *args, **kwargs: vae.guide(*args, **kwargs)
        # several processes: a NaN must show as a non-finite loss on one rank, not as an exception that leaves the
        # other ranks waiting in an all-reduce, so distributions never validate there
        self.validated = parallel.enabled or not is_validation_enabled()

    def loss(self, args: tuple, beta: float = 1.0) -> torch.Tensor:
        """The objective's loss summed over the batch's datapoints (a differentiable scalar).

        :param args: the model's arguments, ``(x,)`` or ``(x, y)``.
        """
        produce = terms_producer(self.model, self.guide, *args, max_plate_nesting=self.max_plate_nesting,
                                 data_plate=self.data_plate, vectorize_particles=self.vectorize_particles)
        return self.objective(produce, num_particles=self.num_particles, beta=beta)

    def validation(self) -> contextlib.AbstractContextManager:
        """Validate on the first step only."""
        if not self.validated:
            self.validated = True
            return contextlib.nullcontext()
        return pyro.validation_enabled(False)

    def __call__(self, args: tuple, denominator: float, beta: float = 1.0,
                 check: StepCheck | None = None) -> torch.Tensor:
        """:param check: hooks called after the loss, the gradients and the update (the NaN guard's replay).
        :returns: the batch's summed loss, detached (no host synchronisation)."""
        with self.validation():
            loss = self.parallel.loss(args, lambda args: self.loss(args, beta))
        if check is not None:
            check.loss(loss / denominator)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / denominator).backward()
        self.parallel.average_gradients(self.params)
        if check is not None:
            check.gradients(self.params)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        if check is not None:
            check.updated(self.params)
        return loss.detach()


def deprecated_fast_path(fast_path: bool | None, direct_terms: bool, where: str) -> bool:
    """``direct_terms``, or the value of the deprecated ``fast_path`` (with a ``DeprecationWarning``)."""
    if fast_path is None:
        return bool(direct_terms)
    warnings.warn(f"{where}(fast_path=) is deprecated: use direct_terms=", DeprecationWarning, stacklevel=3)
    return bool(fast_path)

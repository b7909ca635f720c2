"""The summary every per-datapoint estimate shares: the mean over datapoints and its two errors.

A result holds ``values`` ``(N,)``, one estimate of ``log p(x_n)`` per datapoint, and optionally ``mc_stderr``
``(N,)``, the Monte Carlo error of each (:func:`~pyro_vae.infer.replicate_stderr`). :class:`PerDatapointSummary`
gives it :attr:`~PerDatapointSummary.mean`, :attr:`~PerDatapointSummary.stderr` (the spread over datapoints) and
:attr:`~PerDatapointSummary.mean_mc_stderr` (the Monte Carlo error of the mean), once for every result class
(:class:`~pyro_vae.infer.LogLikelihoodResult`, :class:`~pyro_vae.infer.AISResult`,
:class:`~pyro_vae.infer.KDEResult`, :class:`~pyro_vae.infer.SUMOResult`), as Pyro's ``LogWeightsMixin`` does for
its importance samplers.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PerDatapointSummary", "standard_error"]


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values`` (any shape, flattened), in float64; NaN for fewer than two."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


class PerDatapointSummary:
    """The mean of ``self.values`` ``(N,)`` over datapoints and its errors (a mixin of the result classes)."""

    values: torch.Tensor

    @property
    def mean(self) -> float:
        """The mean over datapoints: the data set's ``log p(x)`` in nats per datapoint."""
        return float(self.values.double().mean())

    @property
    def stderr(self) -> float:
        """The standard error of :attr:`mean` from the spread over datapoints."""
        return standard_error(self.values)

    @property
    def mean_mc_stderr(self) -> float:
        """The Monte Carlo error of :attr:`mean` (the datapoints' ``mc_stderr`` combined), apart from
        :attr:`stderr`; NaN where the result has none."""
        mc = getattr(self, "mc_stderr", None)
        if mc is None:
            return float("nan")
        return float(mc.double().pow(2).sum().sqrt() / mc.numel())

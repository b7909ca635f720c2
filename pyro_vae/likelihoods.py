"""Observation distributions ``p(x | z)``, chosen by name.

A decoder network returns one parameter tensor of the data's shape (logits for Bernoulli pixels, the mean
for a Normal); the likelihood module turns it into a distribution whose event shape is the data's event
shape. Likelihoods that learn a scale own that parameter, so the decoder stays the same for every choice.

=========================  ============================================================  ==========
name                       ``p(x | z)``                                                  support
=========================  ============================================================  ==========
``bernoulli``              ``Bernoulli(logits=f(z))`` per pixel                          {0, 1}
``continuous_bernoulli``   ``ContinuousBernoulli(logits=f(z))`` (Loaiza-Ganem 2019)      [0, 1]
``normal``                 ``Normal(f(z), scale)`` with a fixed ``scale`` (Doersch)      reals
``normal-learned``         ``Normal(f(z), sigma_d)``, one learned scale per dimension    reals
``normal-gamma``           ``Normal(f(z), sqrt(gamma))``, one learned variance gamma     reals
                           (Dai & Wipf 2019)
=========================  ============================================================  ==========

Densities always come from :mod:`torch.distributions` / Pyro, never written by hand.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Likelihood", "LIKELIHOODS", "make_likelihood"]


class Likelihood(nn.Module):
    """Base class: maps the decoder's output ``(..., *event_shape)`` to a distribution over ``x``.

    :param event_shape: the shape of one datapoint, e.g. ``(1, 28, 28)``.
    """

    #: a short description of the support, used in error messages
    support_text = "the reals"

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """:param params: decoder output of shape ``(..., *event_shape)``.
        :returns: a distribution with ``event_shape`` equal to the data's and batch shape ``params.shape[:-e]``.
        """
        return self.base(params).to_event(len(self.event_shape))

    def base(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | params)`` summed over the event dimensions, shape ``params.shape[:-e]``.

        Equal to ``self(params).log_prob(x)``; subclasses may compute it without building a distribution (the
        library VAE's fast path calls it every step).
        """
        return self(params).log_prob(x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean of ``p(x | z)`` (what a reconstruction or a sample image shows). Shape of ``params``."""
        return params

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` holds values outside this likelihood's support."""
        if not torch.isfinite(x).all():
            raise ValueError("the data hold NaN or inf values: clean them before training or evaluating")


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with ``logits`` from the decoder."""

    support_text = "{0, 1}"

    def base(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params, validate_args=False)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # what torch's Bernoulli(logits).log_prob computes, without building the distribution
        # (negating after the sum is exact and spares a pass over the (K, N, *event) tensor)
        nll = F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return -nll.flatten(-len(self.event_shape)).sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x == 0) | (x == 1)).all():
            raise ValueError(
                "the 'bernoulli' likelihood needs binary data (every value 0 or 1), but the data hold grey "
                "levels: pass binarize=True (dynamic binarization, a fresh Bernoulli draw per batch), "
                "load 'binarized-mnist', or choose likelihood='continuous_bernoulli'"
            )


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli on ``[0, 1]`` (Loaiza-Ganem & Cunningham 2019), properly normalised."""

    support_text = "[0, 1]"

    def base(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=params, validate_args=False).mean

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if ((x < 0) | (x > 1)).any():
            raise ValueError(
                "the 'continuous_bernoulli' likelihood needs values in [0, 1], but the data hold values "
                f"from {x.min().item():g} to {x.max().item():g}: rescale the data or choose 'normal'"
            )


class Normal(Likelihood):
    """A Gaussian with the decoder's output as mean and a fixed ``scale`` (Doersch's tutorial).

    :param scale: the standard deviation, the same for every dimension.
    """

    def __init__(self, event_shape: tuple[int, ...], scale: float = 0.1) -> None:
        super().__init__(event_shape)
        if not scale > 0:
            raise ValueError(f"the 'normal' likelihood needs scale > 0, got {scale}")
        self.scale = float(scale)

    def base(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.scale, validate_args=False)


class NormalLearned(Likelihood):
    """A Gaussian with one learned standard deviation per data dimension (``exp`` of a free parameter), with the
    same smooth floor as ``normal-gamma``: ``log(min_scale) + softplus(log_scale - log(min_scale))`` near the
    floor, the parameter itself above it (a dimension with no variance drives the free parameter to minus
    infinity; the floor keeps the density finite instead of NaN).

    :param scale: the initial standard deviation.
    :param min_scale: the floor (1e-9: the parameter is used as it is, bit for bit, from about ``exp(20)`` times
        the floor, i.e. for scales above 5e-1; below that the floor's softplus differs from it by less than 1e-9).
    """

    def __init__(self, event_shape: tuple[int, ...], scale: float = 1.0, min_scale: float = 1e-9) -> None:
        super().__init__(event_shape)
        if not (isinstance(scale, (int, float)) and isinstance(min_scale, (int, float))
                and math.isfinite(scale) and scale > 0 and math.isfinite(min_scale) and min_scale > 0):
            raise ValueError(f"the 'normal-learned' likelihood needs a finite scale > 0 and min_scale > 0, got "
                             f"scale={scale!r}, min_scale={min_scale!r}")
        self.log_scale = nn.Parameter(torch.full(self.event_shape, math.log(scale)))
        self.min_log_scale = math.log(min_scale)

    def effective_log_scale(self) -> torch.Tensor:
        """``log_scale`` with the smooth floor at ``log(min_scale)``."""
        t = self.log_scale - self.min_log_scale
        return torch.where(t > 20, self.log_scale, self.min_log_scale + torch.nn.functional.softplus(t))

    def base(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.effective_log_scale().exp(), validate_args=False)


class NormalGamma(Likelihood):
    """A Gaussian with one learned scalar variance ``gamma`` shared by all dimensions (Dai & Wipf 2019).

    ``gamma = exp(log_gamma)`` may fall towards 0 during training, as Dai & Wipf predict for data on a
    low-dimensional manifold; the log parameterisation keeps it positive, and a smooth floor at ``min_gamma``
    keeps it finite: in float32, ``exp(log_gamma)`` underflows to 0 below ``log_gamma = -103`` and the density
    turns into ``inf``/NaN. The effective ``log_gamma`` is ``log_gamma`` itself above ``log(min_gamma) + 20``
    and ``log(min_gamma) + softplus(log_gamma - log(min_gamma))`` below (smooth, no hard clamp).

    :param gamma: the initial variance.
    :param min_gamma: the floor (1e-12: squared errors below it are not resolved in float32 anyway).
    """

    def __init__(self, event_shape: tuple[int, ...], gamma: float = 1.0, min_gamma: float = 1e-12) -> None:
        super().__init__(event_shape)
        if not gamma > 0 or not min_gamma > 0:
            raise ValueError(f"the 'normal-gamma' likelihood needs gamma > 0 and min_gamma > 0, got {gamma}, "
                             f"{min_gamma}")
        self.log_gamma = nn.Parameter(torch.tensor(math.log(gamma)))
        self.min_log_gamma = math.log(min_gamma)

    def effective_log_gamma(self) -> torch.Tensor:
        """``log_gamma`` with the smooth floor at ``log(min_gamma)``, a scalar tensor."""
        t = self.log_gamma - self.min_log_gamma
        return torch.where(t > 20, self.log_gamma, self.min_log_gamma + torch.nn.functional.softplus(t))

    @property
    def gamma(self) -> torch.Tensor:
        """The decoder variance, a scalar tensor (never below ``min_gamma``)."""
        return self.effective_log_gamma().exp()

    def base(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, (0.5 * self.effective_log_gamma()).exp(), validate_args=False)


#: name -> constructor ``(event_shape, **options) -> Likelihood``
LIKELIHOODS: dict[str, Callable[..., Likelihood]] = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "normal": Normal,
    "normal-learned": NormalLearned,
    "normal-gamma": NormalGamma,
}


def make_likelihood(likelihood: str | Likelihood, event_shape: tuple[int, ...], **options: float) -> Likelihood:
    """Build a likelihood by name (or pass an instance through).

    :param likelihood: a name from :data:`LIKELIHOODS` or a :class:`Likelihood` instance.
    :param event_shape: the shape of one datapoint.
    :returns: the likelihood module.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[likelihood](tuple(event_shape), **options)

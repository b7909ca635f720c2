"""A model-free baseline: the Gaussian kernel density (Parzen-window) estimate of ``log p(x)``.

.. math::

    \\hat p_\\sigma(x) = \\frac{1}{n} \\sum_{i=1}^n \\mathcal{N}(x; x_i, \\sigma^2 I_d), \\qquad
    \\log \\hat p_\\sigma(x) = \\operatorname{logsumexp}_i \\Big(-\\frac{\\lVert x - x_i \\rVert^2}{2\\sigma^2}\\Big)
    - \\log n - \\frac{d}{2} \\log(2 \\pi \\sigma^2),

with the bandwidth :math:`\\sigma` chosen to maximise the mean ``log p`` of validation data. The kernel centres
:math:`x_i` are what the caller passes: training images make it the model-free baseline Theis, van den Oord &
Bethge (2016) examine; samples of a model make it the estimate Breuleux et al. (2011) and Goodfellow et al.
(2014) used to score models without a tractable likelihood.

It is a weak yardstick in high dimension: with ``d = 784`` the estimate needs exponentially many kernels to
resolve the data's shape, its variance and bias are large, and its values are dominated by the nearest
training image (the ``d/2 log(2 pi sigma^2)`` term and a few nearest distances decide everything). Theis, van
den Oord & Bethge (2016) show that Parzen estimates rank models wrongly and that even the training set itself
scores poorly. Its values are densities of continuous ``x``: compare them with a model's density of the same
continuous data (a Gaussian decoder), never with the probability of binarized pixels.

References: Parzen 1962; Theis, van den Oord, Bethge, "A note on the evaluation of generative models", ICLR
2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .results import PerDatapointSummary

__all__ = ["KDEResult", "kde_log_likelihood", "kde_log_density"]


@dataclass
class KDEResult(PerDatapointSummary):
    """The Parzen-window estimate: per-datapoint ``values`` ``(N,)`` and the chosen ``bandwidth``."""

    values: torch.Tensor
    bandwidth: float
    #: ``{bandwidth: mean validation log p}`` for each bandwidth tried (empty if the bandwidth was given)
    validation: dict[float, float] = field(default_factory=dict)



@torch.no_grad()
def kde_log_density(train: torch.Tensor, test: torch.Tensor, bandwidth: float, batch_size: int = 256) -> torch.Tensor:
    """``log p_sigma(x)`` of each test point under the Gaussian kernel density of ``train``.

    :param train: ``(n, *event_shape)``, the kernel centres.
    :param test: ``(N, *event_shape)``.
    :param bandwidth: ``sigma > 0``.
    :returns: ``(N,)``, float64.
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    centres = train.reshape(train.shape[0], -1).double()
    points = test.reshape(test.shape[0], -1).double()
    if centres.shape[1] != points.shape[1]:
        raise ValueError(f"train and test datapoints differ in size: {centres.shape[1]} vs {points.shape[1]}")
    n, d = centres.shape
    c_sq = (centres ** 2).sum(1)
    out = []
    for i in range(0, points.shape[0], batch_size):
        x = points[i:i + batch_size]
        sq = ((x ** 2).sum(1, keepdim=True) + c_sq - 2 * x @ centres.T).clamp_min(0)  # (B, n)
        out.append(torch.logsumexp(-sq / (2 * bandwidth ** 2), 1))
    return torch.cat(out) - math.log(n) - 0.5 * d * math.log(2 * math.pi * bandwidth ** 2)


def kde_log_likelihood(
    train: torch.Tensor,
    test: torch.Tensor,
    bandwidth: float | None = None,
    *,
    val_data: torch.Tensor | None = None,
    bandwidths: Sequence[float] | None = None,
    num_validation: int = 1000,
    batch_size: int = 256,
) -> KDEResult:
    """Parzen-window estimate of ``log p(x)`` for each test point, a model-free baseline for a VAE's estimate.

    :param train: ``(n, *event_shape)``, the kernel centres (subsample large sets: the cost is ``O(n N d)``).
    :param test: ``(N, *event_shape)``.
    :param bandwidth: the kernel's standard deviation ``sigma``; None chooses it on validation data.
    :param val_data: validation data for choosing ``sigma``; if None, the last ``num_validation`` points of
        ``train`` are held out for the choice (and the final estimate uses all of ``train``).
    :param bandwidths: the grid tried (default: 25 values from 0.01 to 1, log-spaced).
    :param num_validation: how many validation points are scored per bandwidth.
    :returns: :class:`KDEResult` with ``values`` of shape ``(N,)``.
    """
    if train.shape[0] < 2 and bandwidth is None and val_data is None:
        raise ValueError("choosing the bandwidth needs validation data or at least 2 training points")
    validation: dict[float, float] = {}
    if bandwidth is None:
        if val_data is None:
            m = min(int(num_validation), train.shape[0] // 2)
            centres, val = train[:-m], train[-m:]
        else:
            centres, val = train, val_data[:num_validation]
        grid = list(bandwidths) if bandwidths is not None else torch.logspace(-2, 0, 25).tolist()
        for s in grid:
            validation[float(s)] = float(kde_log_density(centres, val, s, batch_size).mean())
        bandwidth = max(validation, key=validation.get)
    values = kde_log_density(train, test, float(bandwidth), batch_size)
    return KDEResult(values=values, bandwidth=float(bandwidth), validation=validation)

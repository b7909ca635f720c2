"""The Monte Carlo error of an importance-sampling estimate, measured from independent replicates (used by IWAE's
:func:`~pyro_vae.infer.log_likelihood` and by :func:`~pyro_vae.infer.ais`)."""

from __future__ import annotations

import math

import torch

__all__ = ["replicate_stderr"]


def replicate_stderr(log_w: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The Monte Carlo error of ``log mean_k w_k`` per datapoint, from independent replicates.

    The ``K`` weights (particles or chains) are split into ``num_groups`` disjoint groups; each group's mean
    weight is an independent unbiased estimate of ``p(x)``, so the spread of the group means over
    ``sqrt(num_groups)`` is the standard error of the overall mean, and dividing by the overall mean turns it into
    the error of its logarithm (the delta method). It is measured, not derived from an effective sample size.
    Where the weights' variance is infinite (Pareto k-hat of 0.5 and above) no error bar is reliable, this one
    included: a rare huge weight that none of the groups drew is missing from the spread as it is from the
    estimate.

    :param log_w: ``(K, N)``.
    :returns: ``(N,)`` (NaN with fewer than two groups).
    """
    k = log_w.shape[0]
    g = max(1, min(int(num_groups), k))
    if g < 2:
        return torch.full(log_w.shape[1:], float("nan"), dtype=log_w.dtype, device=log_w.device)
    per = k // g
    top = log_w.max(0).values
    means = torch.exp(torch.logsumexp(log_w[: per * g].reshape(g, per, -1), 1) - math.log(per) - top)
    return means.std(0) / math.sqrt(g) / means.mean(0)

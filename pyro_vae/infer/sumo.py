"""SUMO: an unbiased estimate of ``log p(x)`` by Russian-roulette debiasing of the IWAE bound (Luo et al. 2020).

The IWAE bound :math:`\\mathcal{L}_k(x) = \\mathbb{E}[\\mathrm{IWAE}_k(x)]`, with
:math:`\\mathrm{IWAE}_k = \\log \\frac{1}{k}\\sum_{i \\le k} w_i`, rises to :math:`\\log p(x)` as ``k`` grows.
Written as a telescoping series over one nested sequence of particles :math:`z_1, z_2, \\dots \\sim q(z \\mid x)`,

.. math::

    \\log p(x) = \\mathbb{E}\\Big[\\mathrm{IWAE}_m + \\sum_{j=1}^{\\infty} \\Delta_{m+j-1}\\Big], \\qquad
    \\Delta_k = \\mathrm{IWAE}_{k+1} - \\mathrm{IWAE}_k,

and the series is cut at a random length :math:`\\mathcal{K} \\ge 1`, each kept term divided by the probability
that it is kept (Russian roulette):

.. math::

    \\mathrm{SUMO}(x) = \\mathrm{IWAE}_m(x) + \\sum_{j=1}^{\\mathcal{K}} \\frac{\\Delta_{m+j-1}(x)}
        {P(\\mathcal{K} \\ge j)}, \\qquad \\mathbb{E}[\\mathrm{SUMO}(x)] = \\log p(x),

drawing :math:`\\mathcal{K}` independently of the particles (``m + K`` particles per estimate). The tail is Luo
et al.'s: :math:`P(\\mathcal{K} \\ge j) = 1/j` for :math:`j < \\alpha` and
:math:`\\alpha^{-1}(1 - b)^{j - \\alpha}` from :math:`\\alpha` on (``alpha = 80``, ``decay`` ``b = 0.1``), so the
expected cost is :math:`m + H_{\\alpha - 1} + 1/(\\alpha b)` particles (``m + 5.07`` with the defaults).

**Variance, honestly.** SUMO is unbiased in :math:`\\log p(x)` (IWAE is unbiased only in :math:`p(x)`), but
it pays in variance: the rare long series divide small differences by small probabilities, and with the
geometric tail the variance is not guaranteed finite. Each datapoint's estimate is therefore the mean of
``num_repeats`` independent SUMO draws, and its Monte Carlo error (``mc_stderr``) is measured from their spread,
never derived. Read it with the largest draw (``samples``) in view: a heavy tail shows as a few outlying repeats.

Guide sites marked for enumeration are summed in each weight, as everywhere in the engine
(:mod:`pyro_vae.infer.weights`); the data plate's subsample scale is not applied.

References: Luo, Beatson, Norouzi, Zhu, Duvenaud, Adams, Chen, "SUMO: Unbiased Estimation of Log Marginal
Probability for Latent Variable Models", ICLR 2020; Burda, Grosse, Salakhutdinov, ICLR 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch

from ..checks import whole_number
from .chunking import particles_per_chunk
from .results import PerDatapointSummary
from .weights import check_estimator_input, terms_producer

__all__ = ["SUMOResult", "sumo", "sumo_tail", "sample_series_length", "expected_series_length"]


def sumo_tail(j: torch.Tensor, alpha: int = 80, decay: float = 0.1) -> torch.Tensor:
    """The tail :math:`P(\\mathcal{K} \\ge j)` of the series length, for integers ``j >= 1``: ``1/j`` below
    ``alpha``, ``(1 - decay)^(j - alpha) / alpha`` from ``alpha`` on.

    :param j: integer tensor of any shape, ``>= 1``.
    :returns: float64 tensor of the shape of ``j``.
    """
    j = torch.as_tensor(j, dtype=torch.float64)
    return torch.where(j < alpha, 1.0 / j, (1.0 - decay) ** (j - alpha) / alpha)


def expected_series_length(alpha: int = 80, decay: float = 0.1) -> float:
    """:math:`\\mathbb{E}[\\mathcal{K}] = \\sum_{j \\ge 1} P(\\mathcal{K} \\ge j) = H_{\\alpha-1} + 1/(\\alpha b)`."""
    return sum(1.0 / j for j in range(1, int(alpha))) + 1.0 / (alpha * decay)


def sample_series_length(shape: tuple[int, ...], alpha: int = 80, decay: float = 0.1,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Draw series lengths :math:`\\mathcal{K} \\ge 1` with tail :func:`sumo_tail`, by inversion:
    :math:`\\mathcal{K} = \\max\\{j : u < P(\\mathcal{K} \\ge j)\\}` for :math:`u \\sim U(0, 1)` (torch's generator,
    so ``pyro.set_rng_seed`` fixes it).

    :returns: an int64 tensor of ``shape``.
    """
    u = torch.rand(shape, dtype=torch.float64, device=device).clamp_min(torch.finfo(torch.float64).tiny)
    short = torch.ceil(1.0 / u) - 1.0  # the largest j < 1/u, for u > 1/alpha
    long = alpha + torch.ceil(torch.log(u * alpha) / math.log(1.0 - decay)) - 1.0
    k = torch.where(u > 1.0 / alpha, short.clamp(max=alpha - 1), long.clamp(min=alpha))
    return k.clamp(min=1).long()


@dataclass
class SUMOResult(PerDatapointSummary):
    """Per-datapoint SUMO estimates from :func:`sumo` (tensors on the device of the data)."""

    #: ``(N,)``: the mean of the repeats, an unbiased estimate of each datapoint's ``log p(x)``
    values: torch.Tensor
    #: ``(N,)``: the Monte Carlo error of each value, the repeats' standard deviation over ``sqrt(num_repeats)``
    mc_stderr: torch.Tensor
    #: ``(R, N)``: every repeat's estimate
    samples: torch.Tensor
    #: ``(R, N)``: the series length drawn for each repeat (the estimate used ``m + K`` particles)
    series_lengths: torch.Tensor
    num_particles_min: int
    alpha: int
    decay: float

    @property
    def num_repeats(self) -> int:
        return int(self.samples.shape[0])

    @property
    def expected_cost(self) -> float:
        """The expected number of particles of one SUMO draw, ``m + E[K]``."""
        return self.num_particles_min + expected_series_length(self.alpha, self.decay)

    def summary(self) -> str:
        return (f"log p(x) (SUMO, m={self.num_particles_min}, {self.num_repeats} repeats, about "
                f"{self.expected_cost:.1f} particles each): {self.mean:.3f} +- {self.stderr:.3f} nats over "
                f"{self.values.numel()} datapoints (Monte Carlo error of the mean {self.mean_mc_stderr:.3f}); "
                f"longest series {int(self.series_lengths.max())}")


def sumo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles_min: int = 16,
    num_repeats: int = 10,
    alpha: int = 80,
    decay: float = 0.1,
    chunk_size: int | None = None,
    seed: int | None = None,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    **kwargs: Any,
) -> SUMOResult:
    """Unbiased per-datapoint estimates of ``log p(x)`` by SUMO (Luo et al. 2020), with their Monte Carlo error.

    :param model: a Pyro model keeping the site contract.
    :param guide: its guide, the proposal.
    :param args: the batch ``x`` of shape ``(N, ...)`` and any further model arguments.
    :param num_particles_min: ``m``, the particles of the IWAE bound the series starts from (a larger ``m``
        lowers the variance; the cost is ``m + E[K]`` particles per repeat).
    :param num_repeats: ``R`` independent SUMO draws per datapoint, averaged; their spread gives ``mc_stderr``.
    :param alpha: the series length from which the tail decays geometrically.
    :param decay: the geometric decay ``b`` of the tail beyond ``alpha``.
    :param chunk_size: particles per vectorized pass (default: :func:`~pyro_vae.infer.particles_per_chunk`'s
        budget).
    :param seed: seed Pyro's generators first (reproducible estimates).
    :returns: :class:`SUMOResult`: ``.values`` ``(N,)``, ``.mc_stderr`` ``(N,)``, ``.samples`` ``(R, N)``.
    :raises ValueError: for bad input (as :func:`~pyro_vae.infer.iwae_bound`) or bad options.

    The gradient flows through the estimate when gradients are enabled (Luo et al. train with it).
    """
    check_estimator_input(model, guide, args, num_particles_min)
    m, r = int(num_particles_min), int(num_repeats)
    if r < 1:
        raise ValueError(f"num_repeats must be >= 1, got {num_repeats!r}")
    if int(alpha) < 1 or not 0.0 < float(decay) < 1.0:
        raise ValueError(f"alpha must be >= 1 and decay in (0, 1), got alpha={alpha!r}, decay={decay!r}")
    if chunk_size is not None:
        chunk_size = whole_number(chunk_size, "chunk_size (particles per pass)")
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    produce = terms_producer(model, guide, *args, max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                             **kwargs)
    first = produce(m).log_weights  # also says N, the device and the dtype
    n = first.shape[1]
    lengths = sample_series_length((r, n), int(alpha), float(decay), device=first.device)
    longest = int(lengths.max())
    total = r * (m + longest)
    chunks, drawn = [first], m
    step = particles_per_chunk(total, args[0] if args else None, chunk_size)
    while drawn < total:
        chunks.append(produce(min(step, total - drawn)).log_weights)
        drawn += chunks[-1].shape[0]
    log_w = torch.cat(chunks).double().reshape(r, m + longest, n)
    counts = torch.arange(1, m + longest + 1, dtype=torch.float64, device=log_w.device).reshape(1, -1, 1)
    iwae = torch.logcumsumexp(log_w, dim=1) - counts.log()  # (R, m + longest, N): IWAE_1 .. IWAE_{m+longest}
    deltas = iwae[:, m:] - iwae[:, m - 1:-1]  # Delta_{m+j-1}, j = 1 .. longest
    j = torch.arange(1, longest + 1, device=log_w.device).reshape(1, -1, 1)
    kept = (j <= lengths.unsqueeze(1)).to(deltas.dtype) / sumo_tail(j, int(alpha), float(decay)).to(deltas.device)
    samples = iwae[:, m - 1] + (deltas * kept).sum(1)
    assert samples.shape == (r, n)
    spread = samples.std(0) / math.sqrt(r) if r > 1 else torch.full_like(samples[0], float("nan"))
    dtype = first.dtype
    return SUMOResult(values=samples.mean(0).to(dtype), mc_stderr=spread.to(dtype), samples=samples.to(dtype),
                      series_lengths=lengths, num_particles_min=m, alpha=int(alpha), decay=float(decay))

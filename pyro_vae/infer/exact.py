"""The exact ``log p(x)`` of a model with a low-dimensional latent, by quadrature.

For a model with one latent site ``z`` of dimension ``d <= 2``,

.. math::

    \\log p(x) = \\log \\int p(x \\mid z)\\, p(z)\\, dz
    \\approx \\log \\sum_{g} p(x, z_g)\\, \\Delta V,

a Riemann sum over a regular grid of ``num_points ** d`` points ``z_g`` covering ``bounds`` in every
dimension (cell volume :math:`\\Delta V`). The grid is scored in chunks with a running log-sum-exp, like the
IWAE bound, by conditioning the model on the grid values inside a vectorized plate. With a grid that covers
the posterior's mass and resolves its width, the error is far below Monte Carlo noise: this is the ground
truth against which estimators can be checked on a user's own model.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..rng import preserved_rng
from .chunking import particles_per_chunk
from .weights import PARTICLE_PLATE, _is_latent, _run, _sums

__all__ = ["exact_log_likelihood"]


def _latent_site(model: Callable, args: tuple, kwargs: dict) -> dict:
    """The model's one latent site (recorded by the engine's path, the generators restored afterwards), with the
    data plate's subsample under ``"subsample"``."""
    with poutine.block(), torch.no_grad(), preserved_rng():
        sites = _run(model, args, kwargs)
    latents = [s for s in sites if _is_latent(s)]
    if len(latents) != 1:
        raise ValueError(f"exact_log_likelihood needs a model with exactly one latent sample site, found "
                         f"{[s['name'] for s in latents]}")
    site = dict(latents[0])
    # a subsampled data plate: the same subsample for every chunk of the grid
    site["subsample"] = {s["name"]: s["value"] for s in sites if site_is_subsample(s)}
    return site


@torch.no_grad()
def exact_log_likelihood(
    model: Callable,
    *args: Any,
    bounds: tuple[float, float] = (-8.0, 8.0),
    num_points: int | None = None,
    chunk_size: int | None = None,
    max_plate_nesting: int = 1,
    data_plate: str = "data",
    **kwargs: Any,
) -> torch.Tensor:
    """``log p(x)`` per datapoint by quadrature over the latent, for latent dimension 1 or 2.

    :param model: a Pyro model keeping the site contract, with one latent site (event shape ``(d,)``, ``d <= 2``).
    :param args: the batch ``x`` of shape ``(N, ...)`` and any further model arguments.
    :param bounds: the interval each latent coordinate is integrated over.
    :param num_points: grid points per dimension (default 4001 for ``d = 1``, 401 for ``d = 2``).
    :param chunk_size: grid points scored per vectorized pass (None: as many as
        :func:`~pyro_vae.infer.particles_per_chunk` allows for the batch, as for particles).
    :param max_plate_nesting: the model's deepest plate nesting.
    :returns: shape ``(N,)``.
    """
    site = _latent_site(model, args, kwargs)
    event_shape = tuple(site["fn"].event_shape)
    d = math.prod(event_shape) if event_shape else 1
    if d > 2:
        raise ValueError(f"exact_log_likelihood integrates latents of dimension <= 2, site {site['name']!r} has {d}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not hi > lo:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    num_points = int(num_points or (4001 if d == 1 else 401))
    ref = site["value"]
    axis = torch.linspace(lo, hi, num_points, dtype=ref.dtype, device=ref.device)
    grid = torch.cartesian_prod(*[axis] * d).reshape(-1, d) if d > 1 else axis.reshape(-1, 1)
    log_cell = d * math.log((hi - lo) / (num_points - 1))
    chunk_size = particles_per_chunk(grid.shape[0], args[0] if args else None, chunk_size)
    acc = top = None
    for start in range(0, grid.shape[0], chunk_size):
        g = grid[start:start + chunk_size]
        value = g.reshape(g.shape[0], *([1] * max_plate_nesting), *event_shape)
        with pyro.plate(PARTICLE_PLATE, g.shape[0], dim=-(max_plate_nesting + 1)):
            sites = _run(model, args, kwargs, replay={**site["subsample"], site["name"]: value})
        observed, latent, _ = _sums(sites, data_plate)
        log_joint = observed + latent
        lse = torch.logsumexp(log_joint, 0)
        acc = lse if acc is None else torch.logaddexp(acc, lse)
        best = log_joint.max(0).values
        top = best if top is None else torch.maximum(top, best)
    assert acc is not None and acc.dim() == 1
    share = torch.exp(top - acc)  # the largest share of one grid cell in each datapoint's posterior
    if bool((share > 0.05).any()):
        warnings.warn(f"exact_log_likelihood: the grid is coarse for this posterior (one cell holds up to "
                      f"{100 * float(share.max()):.0f}% of a datapoint's posterior mass); the quadrature may be off by "
                      "a fraction of a nat: raise num_points or narrow bounds", RuntimeWarning, stacklevel=2)
    return acc + log_cell

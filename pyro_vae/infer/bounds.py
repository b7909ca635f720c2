"""Per-datapoint bounds on ``log p(x)``: the ELBO and the importance-weighted (IWAE) bound.

.. math::

    \\mathrm{ELBO}(x) = \\mathbb{E}_{q(z \\mid x)}\\left[\\log \\frac{p(x, z)}{q(z \\mid x)}\\right]
    \\;\\le\\;
    \\mathcal{L}_K(x) = \\mathbb{E}_{z_{1:K} \\sim q}\\left[\\log \\frac{1}{K} \\sum_{k=1}^K
        \\frac{p(x, z_k)}{q(z_k \\mid x)}\\right]
    \\;\\le\\; \\mathcal{L}_{K+1}(x) \\;\\le\\; \\log p(x)

(Burda, Grosse & Salakhutdinov 2016, Theorem 1). Both are computed from the log importance weights of
:func:`pyro_vae.infer.log_importance_weights`, chunked over particles so that ``K = 5000`` runs in bounded
memory (by default :func:`~pyro_vae.infer.chunking.particles_per_chunk`'s rule): the IWAE bound keeps a running
``logsumexp`` over chunks.

They are estimates: their outputs are detached, whether gradients are enabled or not (train with the objectives
of :mod:`pyro_vae.infer.objectives`, which are differentiable). A program that cannot broadcast over a leading
particle dimension runs with ``vectorize_particles=False`` (one pass per particle); a ``poutine.scale`` the program
wrote is left out of these estimates of ``log p(x)``, with one warning.

References: Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016;
Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterator

import torch

from .chunking import particles_per_chunk
from .weights import check_estimator_input, terms_producer

__all__ = ["elbo", "iwae_bound", "log_weight_chunks"]


def _warn_non_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """Warn (once per call) when some datapoints' estimate is NaN or infinite, instead of returning it silently."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        warnings.warn(f"{what}: {bad} of {values.numel()} datapoints gave a NaN or infinite value: a parameter of "
                      "the model or guide is NaN or infinite, or a scale reached 0 (check the parameters)",
                      RuntimeWarning, stacklevel=3)
    return values


def log_weight_chunks(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    chunk_size: int | None = None,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    vectorize_particles: bool = True,
    **kwargs: Any,
) -> Iterator[torch.Tensor]:
    """Yield the ``(K, N)`` log importance weights in chunks of particles, ``(C, N)`` each.

    :param chunk_size: ``C``, particles per vectorized pass; None: :func:`~pyro_vae.infer.particles_per_chunk`'s
        rule from the size of the batch (bounded memory, whatever ``K``).

    The input is checked once (:func:`~pyro_vae.infer.weights.check_estimator_input`), before the first chunk.
    """
    check_estimator_input(model, guide, args, num_particles)
    yield from _chunks(model, guide, *args, num_particles=num_particles, chunk_size=chunk_size,
                       max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                       vectorize_particles=vectorize_particles, **kwargs)


def _chunks(model: Callable, guide: Callable, *args: Any, num_particles: int, chunk_size: int | None = None,
            max_plate_nesting: int | None = None, data_plate: str = "data", elbo: bool = False,
            vectorize_particles: bool = True, **kwargs: Any) -> Iterator[torch.Tensor]:
    """:func:`log_weight_chunks` after its input check (the estimators here check their input themselves); with
    ``elbo`` the ELBO's integrand instead (it differs from the log weights only where guide sites are enumerated)."""
    num_particles = int(num_particles)
    chunk_size = particles_per_chunk(num_particles, args[0] if args else None, chunk_size)
    produce = terms_producer(model, guide, *args, max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                             vectorize_particles=vectorize_particles, **kwargs)
    for start in range(0, num_particles, chunk_size):
        with torch.no_grad():  # an estimate: detached
            t = produce(min(chunk_size, num_particles - start))
        yield t.elbo_integrand if elbo else t.log_weights


def iwae_bound(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    chunk_size: int | None = None,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    vectorize_particles: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    """The importance-weighted bound :math:`\\log \\frac{1}{K} \\sum_k w_k` for each datapoint.

    :param model: a Pyro model keeping the site contract.
    :param guide: its guide (the proposal).
    :param args: the batch ``x`` of shape ``(N, ...)`` and any further model arguments.
    :param num_particles: ``K``; ``K = 1`` gives a one-sample ELBO estimate.
    :param chunk_size: particles per vectorized pass; None (the default): as many as
        :func:`~pyro_vae.infer.particles_per_chunk` allows for the batch's size (bounded memory, whatever ``K``;
        the estimate does not depend on the chunks beyond floating-point reordering).
    :param vectorize_particles: False: one pass per particle, for a program that cannot broadcast over a leading
        particle dimension (boolean-mask indexing, as Pyro's CVAE).
    :returns: one unbiased sample of :math:`\\mathcal{L}_K(x_n)` per datapoint, shape ``(N,)``.
    :raises ValueError: for ``num_particles < 1``, empty or non-finite data, data whose shape is not the model's
        ``input_shape`` or values outside its likelihood's support (checked once, before any work).
    """
    check_estimator_input(model, guide, args, num_particles)
    acc = None
    for log_w in _chunks(model, guide, *args, num_particles=num_particles, chunk_size=chunk_size,
                         max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                         vectorize_particles=vectorize_particles, **kwargs):
        lse = torch.logsumexp(log_w, dim=0)
        acc = lse if acc is None else torch.logaddexp(acc, lse)
    assert acc is not None and acc.dim() == 1
    return _warn_non_finite(acc - math.log(int(num_particles)), "iwae_bound")


def elbo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    chunk_size: int | None = None,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    vectorize_particles: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    """The evidence lower bound :math:`\\frac{1}{K} \\sum_k \\log w_k` for each datapoint.

    :param num_particles: ``K``, the number of samples the expectation is averaged over.
    :param chunk_size: particles per vectorized pass (None: as :func:`iwae_bound`).
    :returns: shape ``(N,)``.

    Unlike ``Trace_ELBO``, whose loss is one number for the batch (scaled by any subsampling), this
    returns one ELBO per datapoint, unscaled.

    :raises ValueError: for bad input, as :func:`iwae_bound` (checked once, before any work).
    """
    check_estimator_input(model, guide, args, num_particles)
    total = None
    for log_w in _chunks(model, guide, *args, num_particles=num_particles, chunk_size=chunk_size,
                         max_plate_nesting=max_plate_nesting, data_plate=data_plate, elbo=True,
                         vectorize_particles=vectorize_particles, **kwargs):
        s = log_w.sum(0)
        total = s if total is None else total + s
    assert total is not None and total.dim() == 1
    return _warn_non_finite(total / int(num_particles), "elbo")

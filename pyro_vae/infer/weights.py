"""Per-datapoint log importance weights for any model/guide pair that keeps the site contract.

For ``K`` particles ``z_k ~ q(z | x)`` (drawn in one vectorized pass under an outer particle plate) the log
importance weight of datapoint ``x_n`` is

.. math::

    \\log w_{k,n} = \\log p(x_n, z_{k,n}) - \\log q(z_{k,n} \\mid x_n)
                 = \\underbrace{\\log p(x_n \\mid z_{k,n})}_{\\text{site "x"}}
                 + \\underbrace{\\log p(z_{k,n}) - \\log q(z_{k,n} \\mid x_n)}_{\\text{latent sites}}.

Each site's ``log_prob`` is summed over every dimension except the particle dimension and the data plate's
dimension. The plate's subsample scale and any ``poutine.scale`` are *not* applied: an importance weight
is a property of one datapoint, and scaling belongs outside the log-sum-exp (the mistake Pyro's
``RenyiELBO`` makes). Masks are applied.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

__all__ = ["ImportanceTerms", "check_estimator_input", "fast_path_owner", "importance_terms", "sum_sites",
           "log_importance_weights", "guess_max_plate_nesting"]

PARTICLE_PLATE = "_pyro_vae_particles"


class ImportanceTerms(NamedTuple):
    """The three parts of the log importance weights, each of shape ``(K, N)``."""

    #: ``log p(x | z)``: the observation site(s)
    log_likelihood: torch.Tensor
    #: ``log p(z)``: the model's latent sites
    log_prior: torch.Tensor
    #: ``log q(z | x)``: the guide's latent sites
    log_guide: torch.Tensor

    @property
    def log_weights(self) -> torch.Tensor:
        """``log p(x, z) - log q(z | x)``, shape ``(K, N)``."""
        return self.log_likelihood + self.log_prior - self.log_guide


def guess_max_plate_nesting(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> int:
    """Trace ``guide`` and ``model`` once and return the deepest plate nesting they use.

    The random number generators are restored afterwards, so guessing does not change later draws.
    """
    rng_state = pyro.util.get_rng_state()
    try:
        with poutine.block(), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    finally:
        pyro.util.set_rng_state(rng_state)
    depth = 0
    for tr in (guide_trace, model_trace):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized and frame.dim is not None:
                        depth = max(depth, -frame.dim)
    return depth


def _per_datapoint(site: dict, data_plate: str, num_particles: int) -> torch.Tensor:
    """``log_prob`` of one site summed to shape ``(K, N)``."""
    frames = {f.name: f for f in site["cond_indep_stack"]}
    if data_plate not in frames:
        raise ValueError(
            f"sample site {site['name']!r} is outside the data plate {data_plate!r}: per-datapoint log "
            "importance weights need every sample site inside pyro.plate(data_plate, N) (global latents "
            "do not factorise over datapoints)")
    log_p = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
    if not torch.is_tensor(log_p):
        log_p = torch.as_tensor(log_p)
    particle_dim = frames[PARTICLE_PLATE].dim
    data_dim = frames[data_plate].dim
    while log_p.dim() < max(-particle_dim, -data_dim):
        log_p = log_p.unsqueeze(0)
    log_p = log_p.movedim((particle_dim, data_dim), (0, 1))
    log_p = log_p.reshape(log_p.shape[0], log_p.shape[1], -1).sum(-1)
    return log_p  # (K or 1, N or 1): broadcast by the caller


def sum_sites(trace: Any, data_plate: str, num_particles: int, observed: bool) -> torch.Tensor | None:
    """The sum of ``log_prob`` over a trace's observed (or latent) sample sites; None if none.

    :returns: shape ``(K, N)``, or a broadcastable ``(1, N)`` / ``(K, 1)``.
    """
    total = None
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or bool(site["is_observed"]) != observed:
            continue
        term = _per_datapoint(site, data_plate, num_particles)
        total = term if total is None else total + term
    return total


def check_estimator_input(model: Callable, guide: Callable, args: tuple, num_particles: int,
                          support: bool = True) -> None:
    """Refuse bad input to an estimator before any work, with a message that says what to do.

    Checks ``num_particles >= 1`` and, when the first argument is the data tensor ``x``: a non-empty
    ``(N, *event_shape)`` shape, finite values and, for a model that is a method of an object with
    ``input_shape`` / ``likelihood`` (a :class:`pyro_vae.VAE`), a floating dtype, the event shape and
    (``support=True``) the likelihood's support. One pass over ``x``, once per call (never per chunk).
    """
    if isinstance(num_particles, bool) or int(num_particles) != num_particles or int(num_particles) < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
    if not args or not torch.is_tensor(args[0]):
        return
    x = args[0]
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"the data x must be a non-empty tensor of shape (N, *event_shape), got {tuple(x.shape)}")
    owner = getattr(model, "__self__", None)
    input_shape = getattr(owner, "input_shape", None)
    if input_shape is not None:  # the library's models take float data; a user's model may observe integers
        if not x.is_floating_point():
            raise TypeError(f"the data x must be a floating-point tensor, got dtype {x.dtype}; convert it with "
                            ".float()")
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise ValueError(f"the data x have datapoints of shape {tuple(x.shape[1:])} but the model's input_shape "
                             f"is {tuple(input_shape)}: reshape the data (x.reshape(-1, *{tuple(input_shape)}))")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("the data x hold NaN or inf values: clean them before evaluating")
    likelihood = getattr(owner, "likelihood", None)
    if support and likelihood is not None and hasattr(likelihood, "check_support"):
        likelihood.check_support(x)


def fast_path_owner(model: Callable, guide: Callable) -> Any:
    """The object whose direct computation may replace tracing ``model``/``guide``, or None.

    A class opts in by setting ``_fast_path_for = (model_function, guide_function)`` and providing
    ``importance_terms(x, num_particles)`` and ``loss(x, objective, num_particles, latent_scale)``; bound methods
    that are exactly those functions (not overridden in a subclass, not wrapped in a handler) take the fast path.
    """
    owner = getattr(model, "__self__", None)
    if owner is None or getattr(guide, "__self__", None) is not owner:
        return None
    fast = getattr(type(owner), "_fast_path_for", None)
    if fast is not None and (getattr(model, "__func__", None), getattr(guide, "__func__", None)) == fast:
        return owner
    return None


def importance_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    **kwargs: Any,
) -> ImportanceTerms:
    """Draw ``num_particles`` particles from the guide in one vectorized pass and score them.

    :param model: a Pyro model keeping the site contract (plate ``data_plate``, observation site ``"x"``).
    :param guide: its guide.
    :param args: passed to ``model`` and ``guide`` (usually the batch ``x`` of shape ``(N, ...)``).
    :param num_particles: ``K``, the number of particles per datapoint.
    :param max_plate_nesting: the deepest plate nesting of model and guide; guessed by one trace if None.
    :param data_plate: the name of the data plate.
    :returns: :class:`ImportanceTerms`, each of shape ``(K, N)``.
    """
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    owner = fast_path_owner(model, guide)
    if owner is not None and len(args) == 1 and not kwargs and data_plate == "data":
        return owner.importance_terms(args[0], int(num_particles))
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
    particles = pyro.plate(PARTICLE_PLATE, int(num_particles), dim=-(max_plate_nesting + 1))
    with particles:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    log_lik = sum_sites(model_trace, data_plate, num_particles, observed=True)
    log_prior = sum_sites(model_trace, data_plate, num_particles, observed=False)
    log_q = sum_sites(guide_trace, data_plate, num_particles, observed=False)
    if log_lik is None:
        raise ValueError("the model has no observed sample site: condition it on the data (site 'x')")
    zero = torch.zeros((), dtype=log_lik.dtype, device=log_lik.device)
    log_lik, log_prior, log_q = torch.broadcast_tensors(
        log_lik, zero if log_prior is None else log_prior, zero if log_q is None else log_q)
    assert log_lik.dim() == 2 and log_lik.shape[0] == num_particles, log_lik.shape
    return ImportanceTerms(log_lik, log_prior, log_q)


def log_importance_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    **kwargs: Any,
) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_n, z_k) - log q(z_k | x_n)``.

    :param num_particles: ``K``.
    :returns: a tensor of shape ``(K, N)``.

    Unlike :func:`pyro.infer.importance.vectorized_importance_weights`, which returns one joint weight
    per particle for the whole batch, this keeps one weight per datapoint.
    """
    check_estimator_input(model, guide, args, num_particles)
    return importance_terms(model, guide, *args, num_particles=num_particles,
                            max_plate_nesting=max_plate_nesting, data_plate=data_plate, **kwargs).log_weights

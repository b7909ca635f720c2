"""Training objectives, each a differentiable scalar loss for one batch: ``-(sum over datapoints of a bound)``.

===============  ===================================================================================
name             loss
===============  ===================================================================================
``elbo``         Pyro's ``Trace_ELBO`` (``num_particles`` vectorized samples averaged)
``mean_field``   Pyro's ``TraceMeanField_ELBO`` (the KL term analytic where Pyro knows it)
``iwae``         :math:`-\\sum_n \\mathcal{L}_K(x_n)`, the IWAE bound with the plate's scale kept *outside*
                 the log-sum-exp, so it stays correct with a subsampled data plate (unlike
                 ``RenyiELBO(alpha=0)``)
``iwae-dreg``    the same value, with the doubly reparameterized gradient for the guide (Tucker et al. 2019)
===============  ===================================================================================

The doubly reparameterized gradient (DReG) of the IWAE bound removes the score-function term that makes
the guide's IWAE gradient noisy as ``K`` grows. With normalised weights
:math:`\\tilde w_k = w_k / \\sum_j w_j`,

.. math::

    \\nabla_\\theta \\mathcal{L}_K = \\mathbb{E}\\Big[\\sum_k \\tilde w_k \\nabla_\\theta \\log w_k\\Big],
    \\qquad
    \\nabla_\\phi \\mathcal{L}_K = \\mathbb{E}\\Big[\\sum_k \\tilde w_k^2
        \\frac{\\partial \\log w_k}{\\partial z_k} \\frac{\\partial z_k}{\\partial \\phi}\\Big].

It is implemented as a surrogate whose gradient is exactly that, for any guide whose sites are
reparameterized (hierarchical guides included): the particles' values are replayed through the model and
the guide behind a gradient hook that multiplies the path gradient by :math:`\\tilde w_k`, and the direct
(score) dependence of :math:`\\log q_\\phi` on :math:`\\phi` is cancelled by adding
:math:`\\sum_k \\tilde w_k \\log q_\\phi(\\mathrm{stop\\_grad}(z_k))`.

References: Burda, Grosse, Salakhutdinov, ICLR 2016; Tucker, Lawson, Gu, Maddison, "Doubly Reparameterized
Gradient Estimators for Monte Carlo Objectives", ICLR 2019.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from .bounds import _iwae_bound
from .weights import PARTICLE_PLATE, importance_terms, sum_sites

__all__ = ["OBJECTIVES", "elbo_loss", "mean_field_loss", "iwae_loss", "dreg_loss", "get_objective"]


def elbo_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 1,
              max_plate_nesting: int = 1, **kwargs: Any) -> torch.Tensor:
    """``Trace_ELBO`` loss of the batch (a scalar), vectorized over particles."""
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=max_plate_nesting).differentiable_loss(model, guide, *args, **kwargs)


def mean_field_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 1,
                    max_plate_nesting: int = 1, **kwargs: Any) -> torch.Tensor:
    """``TraceMeanField_ELBO`` loss of the batch (a scalar): analytic KL for mean-field guides."""
    return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                               max_plate_nesting=max_plate_nesting).differentiable_loss(
        model, guide, *args, **kwargs)


def iwae_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 5,
              max_plate_nesting: int = 1, data_plate: str = "data", **kwargs: Any) -> torch.Tensor:
    """``-sum_n L_K(x_n)``: the IWAE loss of the batch, reparameterized gradients (Burda et al. 2016)."""
    return -_iwae_bound(model, guide, *args, num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                        data_plate=data_plate, **kwargs).sum()


def _weight_view(value: torch.Tensor, site: dict, weights: torch.Tensor, data_plate: str) -> torch.Tensor:
    """Reshape ``(K, N)`` weights to broadcast against a site's value."""
    frames = {f.name: f for f in site["cond_indep_stack"]}
    batch_dims = value.dim() - site["fn"].event_dim
    shape = [1] * value.dim()
    shape[batch_dims + frames[PARTICLE_PLATE].dim] = weights.shape[0]
    shape[batch_dims + frames[data_plate].dim] = weights.shape[1]
    return weights.reshape(shape)


def dreg_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 5,
              max_plate_nesting: int = 1, data_plate: str = "data", **kwargs: Any) -> torch.Tensor:
    """The IWAE loss with the doubly reparameterized gradient for the guide (Tucker et al. 2019).

    The returned value equals :func:`iwae_loss` for the same draws; only the gradient differs.
    Every latent site of the guide must be reparameterized.
    """
    particles = pyro.plate(PARTICLE_PLATE, int(num_particles), dim=-(max_plate_nesting + 1))
    with particles:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    holder: dict[str, torch.Tensor] = {}
    hooked = guide_trace.copy()
    detached = guide_trace.copy()
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if not site["fn"].has_rsample:
            raise ValueError(f"objective 'iwae-dreg' needs reparameterized guide sites; {name!r} is not")
        value = site["value"]
        hooked_value = value.view_as(value)
        if hooked_value.requires_grad:
            hooked_value.register_hook(
                lambda g, site=site: g * _weight_view(g, site, holder["w"], data_plate).to(g.dtype))
        hooked.nodes[name] = dict(site, value=hooked_value)
        detached.nodes[name] = dict(site, value=value.detach())

    terms = importance_terms(model, poutine.replay(guide, trace=hooked), *args, num_particles=num_particles,
                             max_plate_nesting=max_plate_nesting, data_plate=data_plate, **kwargs)
    with particles:
        fixed_trace = poutine.trace(poutine.replay(guide, trace=detached)).get_trace(*args, **kwargs)
    log_q_fixed = sum_sites(fixed_trace, data_plate, num_particles, observed=False)
    log_w = terms.log_weights
    w = torch.softmax(log_w.detach(), dim=0)
    holder["w"] = w
    surrogate = (w * (log_w + log_q_fixed)).sum()
    value = (torch.logsumexp(log_w, 0) - math.log(int(num_particles))).sum()
    # the loss has the IWAE value and the surrogate's gradient
    return -(value.detach() + surrogate - surrogate.detach())


#: name -> loss function ``(model, guide, *args, num_particles=, max_plate_nesting=, **kwargs) -> scalar``
OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "elbo": elbo_loss,
    "mean_field": mean_field_loss,
    "iwae": iwae_loss,
    "iwae-dreg": dreg_loss,
}


def get_objective(name: str) -> Callable[..., torch.Tensor]:
    """Look an objective up by name, with an error that lists the choices."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]

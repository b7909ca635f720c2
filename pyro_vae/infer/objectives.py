"""Training objectives, each written once on a batch's :class:`~pyro_vae.infer.weights.ImportanceTerms`.

An objective is a function ``loss(produce, *, num_particles, beta=1.0) -> scalar`` where
``produce(num_particles, *, analytic_kl=False, dreg=None) -> ImportanceTerms`` draws the particles (the traced
path for any pair, or a model class's own producer; see :func:`~pyro_vae.infer.weights.terms_producer`). The
loss is ``-(sum over the batch's datapoints of a per-datapoint bound)``: the data plate's subsample scale is
never applied (the library's one plate-scale convention, ``docs/contract.md``), so the loss per datapoint
means the same thing for every objective. Adding an objective is one entry in :data:`OBJECTIVES`; :func:`pyro_vae.fit`
then trains the library's models and a user's pair with it (the command line takes the names listed in
``pyro_vae.cli.OBJECTIVE_NAMES``).

===============  ===================================================================================
name             per-datapoint bound (``beta`` weighs the rate term where it applies)
===============  ===================================================================================
``elbo``         :math:`\\frac{1}{K}\\sum_k [\\log p(x|z_k) + \\beta(\\log p(z_k) - \\log q(z_k|x))]`
``mean-field``   :math:`\\frac{1}{K}\\sum_k \\log p(x|z_k) - \\beta\\,\\mathrm{KL}(q \\| p)`, the KL in closed
                 form where torch knows it (as Pyro's ``TraceMeanField_ELBO``)
``iwae``         :math:`\\mathcal{L}_K(x) = \\log \\frac{1}{K} \\sum_k w_k` (Burda et al. 2016)
``iwae-dreg``    the same value, with the doubly reparameterized gradient for the guide (Tucker et al. 2019)
===============  ===================================================================================

**A scale the user wrote** (``poutine.scale`` on latent or observed sites, e.g. a deep Markov model's KL
annealing) is honoured by ``elbo`` and ``mean-field`` as Pyro's ``Trace_ELBO`` / ``TraceMeanField_ELBO`` honour it:
each site's log density is multiplied by its scale before the sum (``beta`` then weighs the scaled rate). The
importance-weighted objectives refuse it, naming the site: a scaled term inside the log-sum-exp is no bound of
``log p(x)`` (the RenyiELBO pitfall). The data plate's subsample scale is never applied (above).

Guide sites without ``rsample`` (discrete latents) get a score-function term, per datapoint (each
datapoint's own bound is the cost of its own latents, as Pyro's ``Trace_ELBO`` does by plate):
:math:`\\nabla \\mathbb{E}_q[f] = \\mathbb{E}_q[\\nabla f + f\\,\\nabla \\log q]`. ``elbo`` and ``iwae`` support it;
``mean-field`` and ``iwae-dreg`` refuse such guides.

Guide sites marked ``infer={"enumerate": "parallel"}`` are summed exactly instead (no score term):
``elbo`` takes the exact expectation over them under ``q`` (the gradient of Pyro's ``TraceEnum_ELBO`` for the
same draws; ``beta`` then weighs the whole rate, the enumerated sites' ``log q(y|x) - log p(y)`` included), and
``iwae`` and ``iwae-dreg`` the weights with the enumerated sites summed out of them
(:attr:`~pyro_vae.infer.weights.ImportanceTerms.summed_log_weights`: ``q(y|x)`` leaves the weight, so the IWAE
bound gives ``q(y|x)`` no gradient; train it with an auxiliary loss, as the semi-supervised VAE does).

The doubly reparameterized gradient (DReG) of the IWAE bound removes the score-function term that makes
the guide's IWAE gradient noisy as ``K`` grows. With normalised weights
:math:`\\tilde w_k = w_k / \\sum_j w_j`,

.. math::

    \\nabla_\\theta \\mathcal{L}_K = \\mathbb{E}\\Big[\\sum_k \\tilde w_k \\nabla_\\theta \\log w_k\\Big],
    \\qquad
    \\nabla_\\phi \\mathcal{L}_K = \\mathbb{E}\\Big[\\sum_k \\tilde w_k^2
        \\frac{\\partial \\log w_k}{\\partial z_k} \\frac{\\partial z_k}{\\partial \\phi}\\Big].

It is a surrogate :math:`\\sum_k \\tilde w_k \\log w_k` whose producer (given a
:class:`~pyro_vae.infer.weights.DReG`) cancels the direct (score) dependence of :math:`\\log q_\\phi` on
:math:`\\phi` and multiplies the path gradient reaching each :math:`z_k` by :math:`\\tilde w_k`.

With enumerated guide sites the particles are the pairs :math:`(y, k)`, with
:math:`w_{y,k} = p(x, y, z_{k,y}) / q(z_{k,y} \\mid x, y)` normalised over all of them,
:math:`\\tilde w_{y,k} = w_{y,k} / \\sum_{y',j} w_{y',j}`. A latent drawn once for every value of ``y``
(:math:`z_{k,y} \\sim q(z \\mid x, y)`) takes :math:`\\tilde w_{y,k}^2`, as above. A latent that does not depend
on ``y`` (one :math:`z_k` shared by every :math:`y`) enters the weights of all of them; writing its score term as a
path term (the identity behind DReG, :math:`\\mathbb{E}[f(z)\\nabla_\\phi \\log q_\\phi(z)] =
\\mathbb{E}[\\nabla_z f \\, \\partial z / \\partial \\phi]` with :math:`f_k = \\sum_y \\tilde w_{y,k}`) gives

.. math::

    \\nabla_\\phi \\mathcal{L}_K = \\mathbb{E}\\Big[\\sum_k f_k \\sum_y \\tilde w_{y,k}
        \\frac{\\partial \\log w_{y,k}}{\\partial z_k} \\frac{\\partial z_k}{\\partial \\phi}\\Big]:

the path gradient reaching a latent value is multiplied by the weights summed over the enumerated values it
does not depend on (:func:`~pyro_vae.infer.weights._enum_weight_view`). ``q(y | x)`` leaves the weights, so it
gets no gradient from this objective either.

References: Burda, Grosse, Salakhutdinov, ICLR 2016; Tucker, Lawson, Gu, Maddison, "Doubly Reparameterized
Gradient Estimators for Monte Carlo Objectives", ICLR 2019; Williams 1992 (score function).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .weights import DReG, ImportanceTerms, refuse_scales, terms_producer

__all__ = ["OBJECTIVES", "elbo", "mean_field", "iwae", "iwae_dreg", "elbo_loss", "mean_field_loss", "iwae_loss",
           "dreg_loss", "get_objective", "objective_loss"]

Producer = Callable[..., ImportanceTerms]


def _score_surrogate(terms: ImportanceTerms, cost: torch.Tensor, direct: float = 0.0) -> torch.Tensor | float:
    """Zero in value; its gradient is the score-function term ``cost * grad log q`` of non-reparameterized sites.

    :param cost: ``(K, N)`` or ``(N,)``: each datapoint's (and particle's) cost, detached here.
    :param direct: adds ``direct * grad log q`` too: the ELBO passes its weight of ``log q`` (``beta``) to cancel
        the direct gradient of ``-beta log q``, which is zero in expectation and only adds variance (as Pyro's
        ``Trace_ELBO`` does).
    """
    if terms.log_guide_score is None:
        return 0.0
    extra = (terms.log_guide_score * (cost.detach() + direct)).sum()
    return extra - extra.detach()


def _reparameterized_only(terms: ImportanceTerms, name: str) -> None:
    if terms.log_guide_score is not None:
        raise ValueError(f"objective {name!r} needs a guide whose sites are all reparameterized (have rsample); "
                         "use 'elbo' or 'iwae' for discrete latents (score-function gradients)")


def elbo(produce: Producer, *, num_particles: int = 1, beta: float = 1.0) -> torch.Tensor:
    """The ELBO loss (``beta`` weighs the rate), averaged over ``K`` particles, summed over the batch."""
    t = produce(num_particles, scales="honour")
    # a tensor beta (the compiled step's KL warm-up) always takes the weighted sum: no branch on its value
    unweighted = not torch.is_tensor(beta) and beta == 1.0
    bound = t.elbo_integrand if unweighted else t.log_likelihood + beta * (t.log_prior - t.log_guide)
    return -(bound.sum() + _score_surrogate(t, bound, beta)) / int(num_particles)


def mean_field(produce: Producer, *, num_particles: int = 1, beta: float = 1.0) -> torch.Tensor:
    """The ELBO loss with the rate's KL in closed form where torch has it."""
    t = produce(num_particles, analytic_kl=True, scales="honour")
    _reparameterized_only(t, "mean-field")
    return -(t.log_likelihood - beta * t.kl).sum() / int(num_particles)


def _no_beta(name: str, beta: float) -> None:
    if beta != 1.0:
        raise ValueError(f"beta weighs the rate term of the ELBO; it does not apply to the {name!r} objective "
                         "(use objective='elbo' or 'mean-field')")


def iwae(produce: Producer, *, num_particles: int = 5, beta: float = 1.0) -> torch.Tensor:
    """``-sum_n L_K(x_n)``, reparameterized gradients (Burda et al. 2016)."""
    _no_beta("iwae", beta)
    t = produce(num_particles, scales="record")
    refuse_scales(t, "iwae")
    bound = torch.logsumexp(t.log_weights, 0) - math.log(int(num_particles))
    return -(bound.sum() + _score_surrogate(t, bound))


def iwae_dreg(produce: Producer, *, num_particles: int = 5, beta: float = 1.0) -> torch.Tensor:
    """The IWAE loss with the doubly reparameterized gradient for the guide (Tucker et al. 2019): the value of
    :func:`iwae` for the same draws, another gradient."""
    _no_beta("iwae-dreg", beta)
    weights = DReG()
    t = produce(num_particles, dreg=weights, scales="record")
    refuse_scales(t, "iwae-dreg")
    _reparameterized_only(t, "iwae-dreg")
    # with enumerated sites the particles are the (value, k) pairs: (E, K, N), normalised over (E, K) together
    log_w = t.log_weights if t.joint_log_weights is None else t.joint_log_weights
    flat = log_w.detach().reshape(-1, log_w.shape[-1])
    weights.weights = w = torch.softmax(flat, dim=0).reshape(log_w.shape)
    surrogate = (w * log_w).sum()
    value = (torch.logsumexp(flat, 0) - math.log(int(num_particles))).sum()
    return -(value + surrogate - surrogate.detach())


#: name -> ``loss(produce, *, num_particles, beta=1.0) -> scalar``; an entry here is an objective of ``fit`` and
#: ``objective_loss`` (the command line lists its names in ``pyro_vae.cli.OBJECTIVE_NAMES``, a test keeps the two
#: equal)
OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "elbo": elbo,
    "mean-field": mean_field,
    "iwae": iwae,
    "iwae-dreg": iwae_dreg,
}


def get_objective(name: str) -> Callable[..., torch.Tensor]:
    """Look an objective up by name, with an error that lists the choices. The names are spelled with ``-``;
    ``_`` is accepted for it (``mean_field`` and ``iwae_dreg``, the older spellings, still work)."""
    for spelling in (name, str(name).replace("-", "_"), str(name).replace("_", "-")):
        if spelling in OBJECTIVES:
            return OBJECTIVES[spelling]
    raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")


def objective_loss(objective: str | Callable[..., torch.Tensor], model: Callable, guide: Callable, *args: Any,
                   num_particles: int = 1, beta: float = 1.0, max_plate_nesting: int | None = None,
                   data_plate: str = "data", vectorize_particles: bool = True, **kwargs: Any) -> torch.Tensor:
    """An objective's loss of one batch for a ``(model, guide)`` pair: ``-(sum over the batch of the bound)``.

    :param objective: a name of :data:`OBJECTIVES` or an objective function.
    :param vectorize_particles: False: one pass per particle (programs that cannot broadcast over particles).
    """
    fn = get_objective(objective) if isinstance(objective, str) else objective
    produce = terms_producer(model, guide, *args, max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                             vectorize_particles=vectorize_particles, **kwargs)
    return fn(produce, num_particles=int(num_particles), beta=beta)


def elbo_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 1, **kwargs: Any) -> torch.Tensor:
    """:func:`objective_loss` of ``"elbo"``."""
    return objective_loss("elbo", model, guide, *args, num_particles=num_particles, **kwargs)


def mean_field_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 1,
                    **kwargs: Any) -> torch.Tensor:
    """:func:`objective_loss` of ``"mean-field"``."""
    return objective_loss("mean-field", model, guide, *args, num_particles=num_particles, **kwargs)


def iwae_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 5, **kwargs: Any) -> torch.Tensor:
    """:func:`objective_loss` of ``"iwae"``: ``-sum_n L_K(x_n)``."""
    return objective_loss("iwae", model, guide, *args, num_particles=num_particles, **kwargs)


def dreg_loss(model: Callable, guide: Callable, *args: Any, num_particles: int = 5, **kwargs: Any) -> torch.Tensor:
    """:func:`objective_loss` of ``"iwae-dreg"``."""
    return objective_loss("iwae-dreg", model, guide, *args, num_particles=num_particles, **kwargs)

"""The engine's one representation of a batch: the per-datapoint terms of the log importance weights.

For ``K`` particles ``z_k ~ q(z | x)`` (drawn in one vectorized pass under an outer particle plate) the log
importance weight of datapoint ``x_n`` is

.. math::

    \\log w_{k,n} = \\log p(x_n, z_{k,n}) - \\log q(z_{k,n} \\mid x_n)
                 = \\underbrace{\\log p(x_n \\mid z_{k,n})}_{\\text{observed sites}}
                 + \\underbrace{\\log p(z_{k,n}) - \\log q(z_{k,n} \\mid x_n)}_{\\text{latent sites}}.

:class:`ImportanceTerms` holds those three parts, each ``(K, N)``, and whatever an objective may also need
(the score-function part of ``log q`` for non-reparameterized sites, the analytic KL, the latent values).
Every objective (:mod:`~pyro_vae.infer.objectives`) and every estimator (:mod:`~pyro_vae.infer.bounds`,
:mod:`~pyro_vae.infer.evaluate`, ...) is written once on these terms.

Two producers make them:

- **the traced path**, for any pair that keeps the site contract: the guide runs once under a minimal
  recording handler (:class:`_Recorder`: each sample site's distribution, value and plates, no Pyro ``Trace``
  graph), then the model runs with the guide's values replayed; each site's ``log_prob`` is summed over
  every dimension except the particle dimension and the data plate's;
- **a model class's direct terms**: a class that sets ``_direct_terms_for = (cls.model, cls.guide)`` and defines
  ``importance_terms(*args, num_particles, analytic_kl=False, dreg=None)`` computes the same terms with its own
  density code (the tests prove them equal, value and gradient, for the same seed). It never has objectives.

**Enumerated guide sites** (``infer={"enumerate": "parallel"}``, or :func:`pyro.infer.config_enumerate`): the
traced path sums a discrete latent ``y`` exactly instead of sampling it. The guide runs once with every value of
``y`` in its own dimension left of the particle dimension (``-(max_plate_nesting + 2)``, the next one for a
second enumerated site), so that each particle ``k`` holds one draw ``z_{k,y} ~ q(z | x, y)`` per value, and

.. math::

    \\log w_{k,n} = \\log \\sum_y \\frac{p(x_n, y, z_{k,y})}{q(z_{k,y} \\mid x_n, y)}, \\qquad
    \\mathbb{E}[w_{k,n}] = \\sum_y p(x_n, y) = p(x_n):

the sum over ``y`` replaces the expectation under ``q(y | x)``, which leaves the weight
(:attr:`ImportanceTerms.summed_log_weights`); every importance-weighted estimator takes these weights. The ELBO
keeps ``q(y | x)``: its integrand is :math:`\\sum_y q(y \\mid x) [\\log p(x, y, z_{k,y}) - \\log q(y \\mid x) -
\\log q(z_{k,y} \\mid x, y)]`, exact in ``y`` and differentiable through ``q(y | x)`` (what Pyro's
``TraceEnum_ELBO`` computes for the same draws), and the three parts below are its ``q(y | x)``-weighted
parts; :attr:`ImportanceTerms.elbo_integrand` is their sum. By Jensen the ELBO is at most ``log w``, and
``log w`` is exact for every ``K`` when ``q(z | x, y)`` is the exact ``p(z | x, y)``, whatever ``q(y | x)``.
Guide sites sampled without ``rsample`` beside enumerated ones and the closed-form KL are refused; DReG
normalises the weights over the particles and the enumerated values together
(:attr:`ImportanceTerms.joint_log_weights`).

**Plate-scale convention** (one for the whole library): the data plate's subsample scale is *not* applied. An
importance weight is a property of one datapoint; every estimator returns per-datapoint values and every
objective's loss is ``-(sum over the batch of a per-datapoint bound)``. (Pyro's ``RenyiELBO`` puts the scale inside
the log-sum-exp, which is wrong.) Masks are applied.

**A scale the user wrote** (``poutine.scale`` on latent or observed sites, e.g. a deep Markov model's KL
annealing; every factor of a site's scale except the data plate's subsample scale) is recorded by name in
:attr:`ImportanceTerms.scaled_sites`. A producer called with ``scales="honour"`` multiplies each site's
``log_prob`` by it, element by element, before the per-datapoint sum: what Pyro's ``Trace_ELBO`` does, so the
ELBO objectives (``elbo``, ``mean-field``) train the annealing the user wrote. Estimators of ``log p(x)`` leave
it out (a scaled term is no density) and warn once (``scales="warn"``, the default); the importance-weighted
objectives refuse it (``scales="record"``, then :func:`refuse_scales`): a scaled term inside the log-sum-exp is
no bound of anything (the RenyiELBO pitfall).

**Particles one pass at a time** (``vectorize_particles=False``, as Pyro's ``vectorize_particles`` flag): a
program that cannot broadcast over a leading particle dimension (boolean-mask indexing ``x[mask]``, as Pyro's
CVAE) runs ``K`` passes of one particle each, and the terms are concatenated; the same estimate (other draws),
``K`` times the passes. A shape error of any type raised with ``K > 1`` vectorized particles names the option.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..rng import preserved_rng

__all__ = ["ImportanceTerms", "DReG", "check_estimator_input", "direct_terms_owner", "fast_path_owner",
           "importance_terms", "sum_sites", "is_enumerated", "plate_layout", "check_data_plate", "refuse_scales",
           "log_importance_weights", "guess_max_plate_nesting", "terms_producer", "direct_producer", "PARTICLE_PLATE"]

PARTICLE_PLATE = "_pyro_vae_particles"


class ImportanceTerms(NamedTuple):
    """The parts of the log importance weights of a batch, each of shape ``(K, N)``."""

    #: ``log p(x | z)``: the observation site(s)
    log_likelihood: torch.Tensor
    #: ``log p(z)``: the model's latent sites
    log_prior: torch.Tensor
    #: ``log q(z | x)``: the guide's latent sites
    log_guide: torch.Tensor
    #: the part of ``log q`` from sites without ``rsample`` (discrete latents): their score-function term;
    #: None when every guide site is reparameterized
    log_guide_score: torch.Tensor | None = None
    #: ``KL(q || p)`` of the latent sites given the sampled parents, in closed form where torch knows it
    #: (``log q - log p`` otherwise); only when asked for (``analytic_kl=True``)
    kl: torch.Tensor | None = None
    #: ``{site: (K, N, *event_shape)}``, the guide's latent values; only when asked for (``latents=True``)
    latents: dict[str, torch.Tensor] | None = None
    #: with enumerated guide sites: ``log sum_y p(x, y, z_{k,y}) / q(z_{k,y} | x, y)``, the log weights with the
    #: enumerated latents summed exactly (``q(y | x)`` left out); the three parts above are then the
    #: ``q(y | x)``-weighted parts of the ELBO. None when nothing is enumerated.
    summed_log_weights: torch.Tensor | None = None
    #: with enumerated guide sites and ``dreg``: ``log p(x, y, z_{k,y}) - log q(z_{k,y} | x, y)`` for every joint
    #: value of the enumerated sites, ``(E, K, N)`` (their log-sum-exp over ``E`` is :attr:`summed_log_weights`);
    #: the weights DReG normalises over ``(E, K)``. None otherwise.
    joint_log_weights: torch.Tensor | None = None
    #: the names of the sites whose log density carries a scale the user wrote (``poutine.scale``; the data
    #: plate's subsample scale is not counted): honoured in the parts above with ``scales="honour"``, left out
    #: otherwise
    scaled_sites: tuple[str, ...] = ()
    #: the names of the model's observed sites (empty where a model class produced the terms directly)
    observed_sites: tuple[str, ...] = ()

    @property
    def log_weights(self) -> torch.Tensor:
        """The log importance weights, shape ``(K, N)``: ``log p(x, z) - log q(z | x)``, or with enumerated sites
        :attr:`summed_log_weights`."""
        if self.summed_log_weights is not None:
            return self.summed_log_weights
        return self.log_likelihood + self.log_prior - self.log_guide

    @property
    def elbo_integrand(self) -> torch.Tensor:
        """``log p(x | z) + log p(z) - log q(z | x)`` per particle, shape ``(K, N)``: the ELBO's integrand (with
        enumerated sites, its exact expectation over them under ``q``); equal to :attr:`log_weights` when nothing
        is enumerated."""
        return self.log_likelihood + self.log_prior - self.log_guide


class DReG:
    """What a producer needs for the doubly reparameterized gradient (Tucker et al. 2019).

    A producer given ``dreg=DReG()`` (1) multiplies the path gradient reaching each latent value by the
    normalised weight of its particle, ``self.weights`` ``(K, N)`` (set by the objective after the terms are
    computed, before backward), through a gradient hook on the value, and (2) returns a ``log_guide`` whose
    gradient with respect to the guide's parameters is the path gradient only (the score term cancelled).
    """

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None

    def hook(self, value: torch.Tensor, view: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A view of ``value`` whose gradient is multiplied by ``view(self.weights)``."""
        hooked = value.view_as(value)
        if hooked.requires_grad:
            hooked.register_hook(lambda g: g * view(self.weights).to(g.dtype))
        return hooked


def plate_layout(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[int, tuple[str, ...]]:
    """Trace ``guide`` and ``model`` once: the deepest plate nesting they use, and the names of their vectorized
    plates (in the order met). The random number generators are restored afterwards."""
    with poutine.block(), torch.no_grad(), preserved_rng():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    depth, names = 0, {}
    for tr in (guide_trace, model_trace):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized and frame.dim is not None:
                        depth = max(depth, -frame.dim)
                        names[frame.name] = None
    return depth, tuple(names)


def guess_max_plate_nesting(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> int:
    """Trace ``guide`` and ``model`` once and return the deepest plate nesting they use.

    The random number generators are restored afterwards, so guessing does not change later draws.
    """
    return plate_layout(model, guide, *args, **kwargs)[0]


def check_data_plate(data_plate: str, plates: tuple[str, ...]) -> None:
    """Refuse a ``data_plate`` that names none of the pair's plates (``plates``, from :func:`plate_layout`), before
    any work, naming the plates there are."""
    if data_plate in plates:
        return
    there = (f"its plates are {', '.join(repr(p) for p in plates)}: pass data_plate={plates[0]!r} if that is the "
             "plate of the datapoints" if plates else "it has no vectorized plate: open pyro.plate(name, N) around "
             "the per-datapoint sites of the model and the guide")
    raise ValueError(f"data_plate={data_plate!r} names no plate of the model or guide; {there}")


def _user_scale(site: dict, data_plate: str) -> Any:
    """The scale the user wrote on a site: its scale without the data plate's subsample factor; None for 1."""
    scale = site.get("scale", 1.0)
    if isinstance(scale, (int, float)) and scale == 1.0:
        return None
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate and frame.full_size is not None and frame.full_size != frame.size:
            scale = scale * (frame.size / frame.full_size)
    if torch.is_tensor(scale):
        if scale.dim() == 0 or scale.numel() == 1:
            return None if float(scale) == 1.0 else scale
        return None if bool((scale == 1).all()) else scale
    return None if abs(scale - 1.0) < 1e-12 else scale


def refuse_scales(terms: ImportanceTerms, objective: str) -> None:
    """Refuse terms that carry a scale the user wrote, for an importance-weighted objective."""
    if terms.scaled_sites:
        raise ValueError(
            f"site {terms.scaled_sites[0]!r} carries a poutine.scale the user wrote, and objective {objective!r} "
            "cannot honour it: a scaled term inside the log-sum-exp of the importance weights is no bound of "
            "log p(x) (the pitfall of Pyro's RenyiELBO). Train with objective='elbo' or 'mean-field' (they honour "
            "it as Pyro's Trace_ELBO does), or remove the scale and anneal the KL with beta= / kl_warmup_epochs=")


def _frames(site: dict, data_plate: str) -> tuple[int | None, int]:
    """The particle and data plate dimensions of a site, counted from the right of its batch shape (the particle
    dimension is None when one particle was drawn without a particle plate)."""
    particle_dim = data_dim = None
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            data_dim = frame.dim
        elif frame.name == PARTICLE_PLATE:
            particle_dim = frame.dim
    if data_dim is None:
        others = [f.name for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE and f.vectorized]
        hint = (f"; it is inside pyro.plate({others[0]!r}): if that is the plate of the datapoints, pass "
                f"data_plate={others[0]!r}" if others else "")
        raise ValueError(
            f"sample site {site['name']!r} is outside the data plate {data_plate!r}: per-datapoint log "
            "importance weights need every sample site inside pyro.plate(data_plate, N) (global latents "
            f"do not factorise over datapoints){hint}")
    return particle_dim, data_dim


def _masked(log_p: torch.Tensor, site: dict, scale: Any = None) -> torch.Tensor:
    """A site's ``log_prob`` with its mask applied (the sampled and the enumerated paths both) and multiplied by
    ``scale`` when given, as a tensor."""
    if site["mask"] is not None or scale is not None:
        log_p = scale_and_mask(log_p, 1.0 if scale is None else scale, site["mask"])
    return torch.as_tensor(log_p)


def _per_datapoint(log_p: torch.Tensor, site: dict, data_plate: str, scale: Any = None) -> torch.Tensor:
    """A site's ``log_prob``-shaped tensor (masked, and multiplied by ``scale`` when given) summed to shape
    ``(K or 1, N or 1)``."""
    particle_dim, data_dim = _frames(site, data_plate)
    log_p = _masked(log_p, site, scale)
    if particle_dim is None:  # one particle, no particle plate
        while log_p.dim() < -data_dim:
            log_p = log_p.unsqueeze(0)
        if log_p.dim() > 1 or data_dim != -1:
            log_p = log_p.movedim(data_dim, 0)
            log_p = log_p.reshape(log_p.shape[0], -1).sum(-1)
        return log_p.unsqueeze(0)
    while log_p.dim() < max(-particle_dim, -data_dim):
        log_p = log_p.unsqueeze(0)
    if log_p.dim() == 2 and (particle_dim, data_dim) == (-2, -1):  # the usual case: nothing to move
        return log_p
    log_p = log_p.movedim((particle_dim, data_dim), (0, 1))
    return log_p.reshape(log_p.shape[0], log_p.shape[1], -1).sum(-1)


def _latent_value(site: dict, data_plate: str, num_particles: int) -> torch.Tensor:
    """A latent site's value as ``(K, N, *event_shape)``."""
    particle_dim, data_dim = _frames(site, data_plate)
    value = site["value"]
    batch_ndim = value.dim() - site["fn"].event_dim
    if particle_dim is None:
        while batch_ndim < -data_dim:
            value = value.unsqueeze(0)
            batch_ndim += 1
        return value.movedim(batch_ndim + data_dim, 0).unsqueeze(0)
    while batch_ndim < max(-particle_dim, -data_dim):
        value = value.unsqueeze(0)
        batch_ndim += 1
    value = value.movedim((batch_ndim + particle_dim, batch_ndim + data_dim), (0, 1))
    return value.expand(num_particles, *value.shape[1:])


def _weight_view(weights: torch.Tensor, site: dict, data_plate: str, shape: torch.Size) -> torch.Tensor:
    """Reshape ``(K, N)`` weights to broadcast against a site's value of shape ``shape``."""
    particle_dim, data_dim = _frames(site, data_plate)
    batch_dims = len(shape) - site["fn"].event_dim
    view = [1] * len(shape)
    if particle_dim is not None:
        view[batch_dims + particle_dim] = weights.shape[0]
    view[batch_dims + data_dim] = weights.shape[1]
    return weights.reshape(view)


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def sum_sites(trace: Any, data_plate: str, num_particles: int, observed: bool) -> torch.Tensor | None:
    """The sum of ``log_prob`` over a Pyro trace's observed (or latent) sample sites; None if none.

    :returns: shape ``(K, N)``, or a broadcastable ``(1, N)`` / ``(K, 1)``.
    """
    total = None
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or bool(site["is_observed"]) != observed:
            continue
        term = _per_datapoint(site["fn"].log_prob(site["value"]), site, data_plate)
        total = term if total is None else total + term
    return total


class _Recorder(Messenger):
    """Record every sample site's message (distribution, value, plates, mask): what :func:`importance_terms`
    needs, without building a Pyro ``Trace``. With ``replay`` (name -> value) the latent and subsample sites
    named there take those values instead of being drawn; ``on_latent(msg)`` may replace a drawn latent value
    (before the program sees it); with ``enum_dim`` a site marked for parallel enumeration takes all its values,
    in dimension ``enum_dim`` (the next one further left for the next such site)."""

    def __init__(self, replay: dict[str, torch.Tensor] | None = None,
                 on_latent: Callable[[dict], torch.Tensor] | None = None, enum_dim: int | None = None) -> None:
        super().__init__()
        self.sites: list[dict] = []
        self.replay = replay
        self.on_latent = on_latent
        self.enum_dim = enum_dim  # the next free dimension for an enumerated site; None: sample every site

    def _pyro_sample(self, msg: dict) -> None:
        if self.replay is not None and not msg["is_observed"]:
            value = self.replay.get(msg["name"])
            if value is not None:
                msg["value"] = value
                msg["done"] = True
                return
        if self.enum_dim is not None and is_enumerated(msg) and not msg["done"]:
            fn = msg["fn"]
            support = fn.enumerate_support(expand=False)  # (C, 1, ..., 1, *event_shape)
            if len(fn.batch_shape) >= -self.enum_dim:
                raise ValueError(f"the enumerated site {msg['name']!r} has batch shape {tuple(fn.batch_shape)}, "
                                 f"deeper than max_plate_nesting allows: pass a larger max_plate_nesting")
            shape = (support.shape[0],) + (1,) * (-self.enum_dim - 1) + tuple(fn.event_shape)
            msg["value"] = support.reshape(shape)
            msg["done"] = True
            msg["infer"]["_pyro_vae_enum_dim"] = self.enum_dim
            self.enum_dim -= 1

    def _pyro_post_sample(self, msg: dict) -> None:
        if self.on_latent is not None and _is_latent(msg):
            msg["value"] = self.on_latent(msg)
        self.sites.append(msg)


def is_enumerated(site: dict) -> bool:
    """Whether a guide site is to be summed, not sampled: an unobserved site marked
    ``infer={"enumerate": "parallel"}``."""
    return site["type"] == "sample" and not site["is_observed"] and (site.get("infer") or {}).get(
        "enumerate") == "parallel"


def _run(program: Callable, args: tuple, kwargs: dict, replay: dict[str, torch.Tensor] | None = None,
         on_latent: Callable[[dict], torch.Tensor] | None = None, enum_dim: int | None = None) -> list[dict]:
    recorder = _Recorder(replay, on_latent, enum_dim)
    with recorder:
        program(*args, **kwargs)
    return recorder.sites


def _add(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return term if total is None else total + term


def _scaled_sites(sites: list[dict], data_plate: str) -> tuple[str, ...]:
    """The names of a run's sample sites that carry a scale the user wrote."""
    return tuple(s["name"] for s in sites if s["type"] == "sample" and not site_is_subsample(s)
                 and _user_scale(s, data_plate) is not None)


def _sums(sites: list[dict], data_plate: str, scales: bool = False,
          ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(observed, latent, latent without rsample)`` sums of ``log_prob`` over a run's sites, each ``(K, N)`` or
    broadcastable, or None where there is no such site; with ``scales`` each site's term multiplied by the scale
    the user wrote on it."""
    observed = latent = score = None
    for site in sites:
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        scale = _user_scale(site, data_plate) if scales else None
        term = _per_datapoint(site["fn"].log_prob(site["value"]), site, data_plate, scale)
        if site["is_observed"]:
            observed = _add(observed, term)
        else:
            latent = _add(latent, term)
            if not site["fn"].has_rsample:
                score = _add(score, term)
    return observed, latent, score


def traced_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str = "data",
    analytic_kl: bool = False,
    dreg: DReG | None = None,
    latents: bool = False,
    subsample: dict[str, torch.Tensor] | None = None,
    scales: bool = False,
    **kwargs: Any,
) -> ImportanceTerms:
    """The terms of any pair, by running the guide and then the model (the guide's values replayed) once each.

    :param subsample: a dict shared by the chunks of one batch: the first call stores the data plate's
        subsample indices in it and later calls replay them, so that every chunk scores the same datapoints.
    :param scales: multiply each site's term by the scale the user wrote on it (``poutine.scale``), as Pyro's
        ``Trace_ELBO`` does; otherwise such scales are left out (and named in ``scaled_sites``).
    :returns: :class:`ImportanceTerms`, each ``(K, N)``.
    """
    k = int(num_particles)
    # one particle needs no particle plate (the same draws, fewer broadcasts): the common training step
    with pyro.plate(PARTICLE_PLATE, k, dim=-(max_plate_nesting + 1)) if k > 1 else contextlib.nullcontext(), \
            _particle_dimension_rule(k):
        guide_sites = _run(guide, args, kwargs, replay=subsample, enum_dim=-(max_plate_nesting + 2))
        values = {s["name"]: s["value"] for s in guide_sites if s["type"] == "sample" and not s["is_observed"]}
        if subsample is not None:  # the first chunk's subsample, kept for every later chunk of the same batch
            subsample.update({s["name"]: s["value"] for s in guide_sites if site_is_subsample(s)})
        enum_sizes = _enum_sizes(guide_sites)
        if dreg is not None:
            guide_sites, values, fixed = _dreg_replays(guide, args, kwargs, guide_sites, values, dreg, data_plate,
                                                       enum_sizes, max_plate_nesting)
        model_sites = _run(model, args, kwargs, replay=values)
    _warn_unguided(model_sites, values)
    scaled = tuple(dict.fromkeys(_scaled_sites(guide_sites, data_plate) + _scaled_sites(model_sites, data_plate)))
    observed = tuple(s["name"] for s in model_sites if s["type"] == "sample" and s["is_observed"]
                     and not site_is_subsample(s))
    scales = bool(scales and scaled)
    if enum_sizes:
        if analytic_kl or latents:
            raise ValueError("the closed-form KL ('mean-field') and the latent draws are not available for a guide "
                             "with enumerated sites; use 'elbo', 'iwae' or 'iwae-dreg'")
        if scales:
            raise ValueError(f"site {scaled[0]!r} carries a poutine.scale beside enumerated guide sites: the library "
                             "does not honour a user's scale there; remove it and weigh the rate with beta= / "
                             "kl_warmup_epochs=")
        return _enumerated_terms(guide_sites, model_sites, k, max_plate_nesting, data_plate, enum_sizes,
                                 fixed if dreg is not None else None)._replace(scaled_sites=scaled,
                                                                               observed_sites=observed)
    log_lik, log_prior, _ = _sums(model_sites, data_plate, scales)
    if log_lik is None:
        raise ValueError("the model has no observed sample site: condition it on the data "
                         "(pyro.sample('x', ..., obs=x))")
    _, log_q, score = _sums(guide_sites, data_plate, scales)
    if dreg is not None:
        log_q_fixed = _sums(fixed, data_plate, scales)[1]
        if log_q_fixed is not None:
            log_q = log_q - log_q_fixed + log_q_fixed.detach()
    kl = None
    if analytic_kl:
        kl = _analytic_kl(guide_sites, {s["name"]: s for s in model_sites if _is_latent(s)}, data_plate, scales)
    zero = log_lik.new_zeros(())
    parts = [log_lik, zero if log_prior is None else log_prior, zero if log_q is None else log_q]
    if kl is not None:
        parts.append(kl)
    shape = (k, max(p.shape[-1] if p.dim() else 1 for p in parts))
    if any(p.shape != shape for p in parts):
        parts = [p.expand(shape) for p in parts]
    if score is not None:
        score = score.expand(shape)
    draws = None
    if latents:
        draws = {s["name"]: _latent_value(s, data_plate, k) for s in guide_sites if _is_latent(s)}
    return ImportanceTerms(parts[0], parts[1], parts[2], score, parts[3] if kl is not None else None, draws,
                           scaled_sites=scaled, observed_sites=observed)


def _per_datapoint_enum(log_p: torch.Tensor, site: dict, data_plate: str, enum_sizes: list[int],
                        max_plate_nesting: int) -> torch.Tensor:
    """A site's ``log_prob``-shaped tensor (masked) summed to shape ``(E, K or 1, N or 1)``, ``E`` the number of
    joint values of the enumerated sites (their dimensions flattened, the leftmost first)."""
    _, data_dim = _frames(site, data_plate)
    log_p = _masked(log_p, site)
    depth = len(enum_sizes) + max_plate_nesting + 1
    if log_p.dim() > depth:
        raise ValueError(f"site {site['name']!r} has a log_prob of shape {tuple(log_p.shape)}: more batch "
                         f"dimensions than max_plate_nesting={max_plate_nesting} and the enumerated sites allow")
    log_p = log_p.reshape((1,) * (depth - log_p.dim()) + tuple(log_p.shape))
    sizes = tuple(reversed(enum_sizes))  # the last enumerated site has the leftmost dimension
    rest = tuple(log_p.shape[len(sizes):])
    log_p = log_p.expand(sizes + rest).reshape((-1,) + rest)  # (E, particle slot, ..., data, ...)
    log_p = log_p.movedim(data_dim, 2)
    return log_p.reshape(log_p.shape[0], log_p.shape[1], log_p.shape[2], -1).sum(-1)


def _enum_sizes(guide_sites: list[dict]) -> list[int]:
    """The number of values of each enumerated site of a guide run, in the order they were enumerated (the first
    one in dimension ``-(max_plate_nesting + 2)``, the next one left of it); empty when none is."""
    enumerated = [s for s in guide_sites if is_enumerated(s) and "_pyro_vae_enum_dim" in s["infer"]]
    return [s["value"].shape[0] for s in sorted(enumerated, key=lambda s: -s["infer"]["_pyro_vae_enum_dim"])]


def _enumerated_terms(guide_sites: list[dict], model_sites: list[dict], num_particles: int, max_plate_nesting: int,
                      data_plate: str, sizes: list[int], fixed: list[dict] | None = None) -> ImportanceTerms:
    """The terms of a run whose guide enumerated some sites: the summed log weights and the ``q(y | x)``-weighted
    parts of the ELBO (see the module's docstring). With ``fixed`` (DReG: the guide replayed on detached values)
    the reparameterized sites' ``log q`` keeps only its path gradient, and the joint log weights are returned."""
    parts: dict[str, torch.Tensor] = {}
    runs = [("model", model_sites), ("guide", guide_sites)] + ([("fixed", fixed)] if fixed is not None else [])
    for role, sites in runs:
        for site in sites:
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if role != "model" and (site["is_observed"] or (role == "fixed" and is_enumerated(site))):
                continue
            if role == "guide" and not is_enumerated(site) and not site["fn"].has_rsample:
                raise ValueError(f"the guide site {site['name']!r} is sampled without rsample beside enumerated "
                                 "sites; enumerate it too (infer={'enumerate': 'parallel'}) or reparameterize it")
            name = ("obs" if site["is_observed"] else "prior") if role == "model" else "q_fixed" \
                if role == "fixed" else ("q_enum" if is_enumerated(site) else "q_rest")
            term = _per_datapoint_enum(site["fn"].log_prob(site["value"]), site, data_plate, sizes,
                                       max_plate_nesting)
            parts[name] = _add(parts.get(name), term)
    if "obs" not in parts:
        raise ValueError("the model has no observed sample site: condition it on the data (site 'x')")
    obs = parts["obs"]
    zero = obs.new_zeros(())
    prior, q_rest, q_enum = (parts.get(n, zero) for n in ("prior", "q_rest", "q_enum"))
    if "q_fixed" in parts:  # DReG: the value of log q, the path gradient alone
        q_rest = q_rest - parts["q_fixed"] + parts["q_fixed"].detach()
    shape = torch.broadcast_shapes(obs.shape, prior.shape, q_rest.shape, q_enum.shape)
    shape = (shape[0], int(num_particles), shape[2])
    log_w = (obs + prior - q_rest).expand(shape)
    q = q_enum.exp().expand(shape)  # q(y | x) of each joint value: sums to 1 over E

    def expect(v: torch.Tensor) -> torch.Tensor:  # sum_y q(y | x) v_y, with 0 * (-inf) = 0
        v = v.expand(shape)
        return torch.where(q > 0, q * v, v.new_zeros(())).sum(0)

    return ImportanceTerms(expect(obs), expect(prior), expect(q_enum + q_rest),
                           summed_log_weights=torch.logsumexp(log_w, 0),
                           joint_log_weights=log_w if fixed is not None else None)


#: torch's and Pyro's messages for tensors whose shapes do not fit (not support or memory errors), whatever the
#: exception's type (a boolean mask's IndexError, a broadcast's RuntimeError or ValueError, ...)
_SHAPE_ERROR = re.compile(r"shapes cannot be multiplied|is invalid for input of size|must match the size of tensor|"
                          r"[Ss]hape mismatch|size mismatch|view size is not compatible|expanded size of the tensor|"
                          r"cannot be broadcast|does not match the shape of the indexed tensor|[Ss]hape of the mask|"
                          r"too many indices for tensor|[Dd]imension out of range|shape '\[|[Ss]izes? of tensors? must "
                          r"match|[Ii]ncompatible shapes|[Ss]hape .* does not match|inconsistent tensor size")

#: what a shape error met with vectorized particles says
VECTORIZE_HINT = ("The particles come as one extra leading particle dimension of every latent value, (K, N, ...) "
                  "instead of (N, ...): the programs must broadcast over leading dimensions, e.g. "
                  "z.reshape(*z.shape[:-1], ...), z.flatten(-k) or z.unflatten(-1, shape) instead of z.view(N, -1), "
                  "and x.new_zeros(d) instead of torch.zeros(N, d). A program that cannot (boolean-mask indexing such "
                  "as x[mask], as Pyro's CVAE) runs with vectorize_particles=False: one pass per particle, the same "
                  "estimate, K times the passes (docs/contract.md, docs/bringing_a_pyro_program.md)")


@contextlib.contextmanager
def _particle_dimension_rule(num_particles: int) -> Any:
    """Re-raise a shape error of the model or guide run with ``num_particles > 1`` vectorized particles (a leading
    particle dimension on every latent value), of any exception type, with the rule it broke and the option that
    avoids it (``vectorize_particles=False``); the original stays the cause. Training with one particle runs
    without that dimension, so such a pair trains and fails only when evaluated."""
    try:
        yield
    except Exception as e:
        if num_particles == 1 or isinstance(e, torch.OutOfMemoryError) or not _SHAPE_ERROR.search(str(e)):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        message = f"the model or guide failed with {num_particles} particles ({first}). {VECTORIZE_HINT}"
        try:
            again = type(e)(message)
        except Exception:  # an exception type that does not take one message
            again = RuntimeError(message)
        raise again from e


def _enum_weight_view(weights: torch.Tensor, site: dict, data_plate: str, shape: torch.Size, sizes: list[int],
                      max_plate_nesting: int) -> torch.Tensor:
    """Reshape ``(E, K, N)`` normalised joint weights to broadcast against a site's value of shape ``shape``,
    summed over the enumerated dimensions the value does not have (a latent drawn once for every value of an
    enumerated site takes the weight of its particle summed over those values; see
    :mod:`~pyro_vae.infer.objectives`)."""
    _, data_dim = _frames(site, data_plate)
    batch = len(shape) - site["fn"].event_dim
    w = weights.reshape(tuple(reversed(sizes)) + tuple(weights.shape[1:]))  # the last enumerated site leftmost
    view = [1] * len(shape)
    for j, size in enumerate(sizes):  # the j-th enumerated site's dimension, -(max_plate_nesting + 2 + j)
        pos = batch - (max_plate_nesting + 2 + j)
        if pos >= 0 and shape[pos] == size:
            view[pos] = size
        else:
            w = w.sum(len(sizes) - 1 - j, keepdim=True)
    if batch - (max_plate_nesting + 1) >= 0:
        view[batch - (max_plate_nesting + 1)] = weights.shape[1]
    view[batch + data_dim] = weights.shape[2]
    return w.reshape(view)


def _dreg_replays(guide: Callable, args: tuple, kwargs: dict, sites: list[dict], values: dict[str, torch.Tensor],
                  dreg: DReG, data_plate: str, enum_sizes: list[int], max_plate_nesting: int,
                  ) -> tuple[list[dict], dict[str, torch.Tensor], list[dict]]:
    """Replay the guide twice for DReG: on hooked views of its values (their log densities take the weighted path
    gradient; a value's own graph still runs through the unhooked values, so no weight is applied twice down a
    hierarchy) and on detached values (``log q`` whose gradient is the score term alone). Enumerated sites are
    replayed with all their values (they take no hook: they are summed, not drawn).

    :returns: the hooked guide's sites, the hooked values (for the model) and the detached guide's sites.
    """
    hooked = dict(values)
    for site in sites:
        if not _is_latent(site) or is_enumerated(site):
            continue
        if not site["fn"].has_rsample:
            raise ValueError(f"objective 'iwae-dreg' needs reparameterized guide sites; {site['name']!r} is not")
        value = site["value"]

        def view(w: torch.Tensor, s: dict = site, shape: torch.Size = value.shape) -> torch.Tensor:
            if enum_sizes:
                return _enum_weight_view(w, s, data_plate, shape, enum_sizes, max_plate_nesting)
            return _weight_view(w, s, data_plate, shape)
        hooked[site["name"]] = dreg.hook(value, view)
    enum_dims = {s["name"]: s["infer"]["_pyro_vae_enum_dim"] for s in sites
                 if is_enumerated(s) and "_pyro_vae_enum_dim" in s["infer"]}
    replays = []
    for replay in (hooked, {n: v.detach() for n, v in values.items()}):
        run = _run(guide, args, kwargs, replay=replay)
        for s in run:  # a replayed enumerated site keeps the dimension its values were put in
            if s["name"] in enum_dims:
                s["infer"] = {**(s.get("infer") or {}), "_pyro_vae_enum_dim": enum_dims[s["name"]]}
        replays.append(run)
    return replays[0], hooked, replays[1]


def _warn_unguided(model_sites: list[dict], guide_values: dict[str, torch.Tensor]) -> None:
    """Warn about a latent site of the model that the guide does not sample: it is drawn from
    the prior and scored in ``log p(z)`` with nothing in ``log q``, which is not the bound the user meant (Pyro's
    ``Trace_ELBO`` warns too)."""
    for s in model_sites:
        if _is_latent(s) and s["name"] not in guide_values:  # Python's warning filter shows it once per site
            warnings.warn(f"the model's latent site {s['name']!r} is not in the guide: it is drawn from the model and "
                          "its log density counts in log p(z) alone; add it to the guide", RuntimeWarning,
                          stacklevel=4)


def _analytic_kl(guide_sites: list[dict], model_latents: dict[str, dict], data_plate: str,
                 scales: bool = False) -> torch.Tensor | None:
    """``KL(q || p)`` per datapoint, site by site: closed form where torch has it, ``log q - log p`` otherwise
    (what Pyro's ``TraceMeanField_ELBO`` computes); with ``scales`` each site's KL multiplied by the scale the user
    wrote on the guide's site."""
    total = None
    for site in guide_sites:
        if not _is_latent(site):
            continue
        model_site = model_latents.get(site["name"])
        try:
            kl = torch.distributions.kl_divergence(site["fn"], model_site["fn"])
        except (NotImplementedError, TypeError, AttributeError):
            kl = site["fn"].log_prob(site["value"])
            if model_site is not None:
                kl = kl - model_site["fn"].log_prob(site["value"])
        term = _per_datapoint(kl, site, data_plate, _user_scale(site, data_plate) if scales else None)
        total = term if total is None else total + term
    if total is not None:  # latent sites of the model that the guide does not sample
        for name, site in model_latents.items():
            if not any(g["name"] == name for g in guide_sites):
                total = total - _per_datapoint(site["fn"].log_prob(site["value"]), site, data_plate,
                                               _user_scale(site, data_plate) if scales else None)
    return total


def check_estimator_input(model: Callable, guide: Callable, args: tuple, num_particles: int,
                          support: bool = True, placement: bool = True) -> None:
    """Refuse bad input to an estimator before any work, with a message that says what to do.

    Checks ``num_particles >= 1`` and, when the first argument is the data tensor ``x``: a non-empty
    ``(N, *event_shape)`` shape, finite values and, for a model that is a method of an object with
    ``input_shape`` / ``likelihood`` (a :class:`pyro_vae.VAE`), a floating dtype, the event shape and
    (``support=True``) the likelihood's support; with ``placement``, that ``x`` is on the model's device and in
    its dtype. One pass over ``x``, once per call (never per chunk).
    """
    from ..checks import whole_number

    whole_number(num_particles, "num_particles")
    if args and not torch.is_tensor(args[0]) and hasattr(args[0], "__array__"):
        raise TypeError(f"the data x must be a torch.Tensor, got {type(args[0]).__module__}.{type(args[0]).__name__}: "
                        "convert it with torch.as_tensor(x, dtype=torch.float32)")
    if not args or not torch.is_tensor(args[0]):
        return
    x = args[0]
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"the data x must be a non-empty tensor of shape (N, *event_shape), got {tuple(x.shape)}")
    owner = getattr(model, "__self__", None)
    param = next(owner.parameters(), None) if placement and isinstance(owner, torch.nn.Module) else None
    if param is not None and x.device != param.device:
        raise ValueError(f"the data x are on {x.device} but the model is on {param.device}: move one of them "
                         f"(x.to({str(param.device)!r}) or model.to({str(x.device)!r}))")
    if param is not None and x.is_floating_point() and x.dtype != param.dtype:
        raise TypeError(f"the data x are {x.dtype} but the model's parameters are {param.dtype}: convert one of them "
                        f"(x.to({param.dtype}) or model.to({x.dtype}))")
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


def direct_terms_owner(model: Callable, guide: Callable) -> Any:
    """The object whose direct terms may replace tracing ``model``/``guide``, or None.

    A class opts in by setting ``_direct_terms_for = (model_function, guide_function)`` and providing
    ``importance_terms(*args, num_particles, analytic_kl=False, dreg=None)``; bound methods that are exactly
    those functions (not overridden in a subclass, not wrapped in a handler) take its direct terms. (The older
    spelling ``_fast_path_for`` is read too.)
    """
    owner = getattr(model, "__self__", None)
    if owner is None or getattr(guide, "__self__", None) is not owner:
        return None
    cls = type(owner)
    pair = getattr(cls, "_direct_terms_for", None) or getattr(cls, "_fast_path_for", None)
    if pair is not None and (getattr(model, "__func__", None), getattr(guide, "__func__", None)) == pair \
            and getattr(owner, "direct_terms", True):
        return owner
    return None


#: the older name of :func:`direct_terms_owner`
fast_path_owner = direct_terms_owner


def _cat_terms(parts: list[ImportanceTerms]) -> ImportanceTerms:
    """The terms of one-particle passes, concatenated along the particle dimension."""
    first = parts[0]
    fields = {}
    for name in ImportanceTerms._fields:
        value = getattr(first, name)
        if torch.is_tensor(value):
            fields[name] = torch.cat([getattr(p, name) for p in parts], 1 if name == "joint_log_weights" else 0)
        elif isinstance(value, dict):
            fields[name] = {k: torch.cat([p.latents[k] for p in parts]) for k in value}
        else:
            fields[name] = value
    return ImportanceTerms(**fields)


def direct_producer(owner: Any, args: tuple) -> Callable[..., ImportanceTerms]:
    """The producer of a model class's direct terms on ``args`` (``owner`` as :func:`direct_terms_owner` returns
    it): ``produce`` as :func:`terms_producer` returns it, ``latents=True`` by the traced path. Plain torch, so
    ``torch.compile`` traces it (the compiled training step, :mod:`pyro_vae.train.compiled`)."""

    def produce(num_particles: int, *, analytic_kl: bool = False, dreg: DReG | None = None,
                latents: bool = False, scales: str = "warn") -> ImportanceTerms:
        if not latents:
            return owner.importance_terms(*args, num_particles=int(num_particles), analytic_kl=analytic_kl,
                                          dreg=dreg)
        return traced_terms(owner.model, owner.guide, *args, num_particles=num_particles, max_plate_nesting=1,
                            analytic_kl=analytic_kl, dreg=dreg, latents=True)
    return produce


def terms_producer(model: Callable, guide: Callable, *args: Any, max_plate_nesting: int | None = None,
                   data_plate: str = "data", vectorize_particles: bool = True,
                   **kwargs: Any) -> Callable[..., ImportanceTerms]:
    """Choose the producer of a pair's terms once (the model class's direct terms, else the traced path; the plate
    nesting guessed once), for many calls on the same arguments.

    A subsampled data plate draws its subsample on the first call; later calls (the chunks of particles of one
    batch) replay it, so that every chunk scores the same datapoints.

    :param vectorize_particles: draw the particles in one vectorized pass (True), or one pass per particle (False:
        for programs that do not broadcast over a leading particle dimension; not with DReG).
    :returns: ``produce(num_particles, *, analytic_kl=False, dreg=None, latents=False, scales="warn") ->
        ImportanceTerms``; ``scales`` says what becomes of a scale the user wrote (``poutine.scale``):
        ``"honour"`` it (the ELBO objectives), ``"warn"`` once that it was left out (estimators of ``log p(x)``) or
        ``"record"`` it in ``scaled_sites`` only (the caller refuses it).
    """
    owner = direct_terms_owner(model, guide)
    if owner is not None and not kwargs and data_plate == "data":
        return direct_producer(owner, args)
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
    nesting = int(max_plate_nesting)
    subsample: dict[str, torch.Tensor] = {}  # one subsample of the data plate for every call (every chunk)
    warned: list[bool] = []

    def produce(num_particles: int, *, analytic_kl: bool = False, dreg: DReG | None = None,
                latents: bool = False, scales: str = "warn") -> ImportanceTerms:
        if scales not in ("honour", "warn", "record"):
            raise ValueError(f"scales must be 'honour', 'warn' or 'record', got {scales!r}")
        k = int(num_particles)
        options = dict(max_plate_nesting=nesting, data_plate=data_plate, analytic_kl=analytic_kl, dreg=dreg,
                       latents=latents, subsample=subsample, scales=scales == "honour")
        if vectorize_particles or k == 1:
            t = traced_terms(model, guide, *args, num_particles=k, **options, **kwargs)
        elif dreg is not None:
            raise ValueError("objective 'iwae-dreg' needs the particles in one vectorized pass (its weights are "
                             "normalised over them): with vectorize_particles=False train with 'iwae' or 'elbo'")
        else:
            t = _cat_terms([traced_terms(model, guide, *args, num_particles=1, **options, **kwargs)
                            for _ in range(k)])
        if t.scaled_sites and scales == "warn" and not warned:
            warned.append(True)
            warnings.warn(f"estimators of log p(x) leave out the poutine.scale the program wrote on site "
                          f"{t.scaled_sites[0]!r}{' and others' if len(t.scaled_sites) > 1 else ''}: a scaled log "
                          "density is no density, so the estimate is of the unscaled model (the ELBO objectives of "
                          "fit honour the scale, as Pyro's Trace_ELBO)", UserWarning, stacklevel=3)
        return t
    return produce


def importance_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    vectorize_particles: bool = True,
    **kwargs: Any,
) -> ImportanceTerms:
    """Draw ``num_particles`` particles from the guide in one vectorized pass and score them.

    :param model: a Pyro model keeping the site contract (plate ``data_plate``, observed sites of any names).
    :param guide: its guide.
    :param args: passed to ``model`` and ``guide`` (usually the batch ``x`` of shape ``(N, ...)``).
    :param num_particles: ``K``, the number of particles per datapoint.
    :param max_plate_nesting: the deepest plate nesting of model and guide; guessed by one trace if None.
    :param data_plate: the name of the data plate.
    :param vectorize_particles: False: one pass per particle (for programs that cannot broadcast over particles).
    :returns: :class:`ImportanceTerms`, each of shape ``(K, N)``.
    """
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    return terms_producer(model, guide, *args, max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                          vectorize_particles=vectorize_particles, **kwargs)(int(num_particles))


def log_importance_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    vectorize_particles: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_n, z_k) - log q(z_k | x_n)``.

    :param num_particles: ``K``.
    :param vectorize_particles: False: one pass per particle (for programs that cannot broadcast over particles).
    :returns: a tensor of shape ``(K, N)``, detached (an estimate; the objectives of
        :mod:`~pyro_vae.infer.objectives` are the differentiable losses).

    Unlike :func:`pyro.infer.importance.vectorized_importance_weights`, which returns one joint weight
    per particle for the whole batch, this keeps one weight per datapoint.
    """
    check_estimator_input(model, guide, args, num_particles)
    with torch.no_grad():
        return importance_terms(model, guide, *args, num_particles=num_particles,
                                max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                                vectorize_particles=vectorize_particles, **kwargs).log_weights

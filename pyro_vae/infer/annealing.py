"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for any model/guide pair.

AIS (Neal 2001) estimates :math:`\\log p(x)` by moving ``C`` chains per datapoint from the proposal
:math:`f_0 = q(z \\mid x)` (the guide, or the prior with ``proposal="prior"``) to the unnormalised posterior
:math:`f_1 = p(x, z)` through the geometric path

.. math::

    f_\\beta(z) = q(z \\mid x)^{1 - \\beta} \\, p(x, z)^{\\beta}, \\qquad 0 = \\beta_0 < \\beta_1 < \\dots
    < \\beta_T = 1,

with one Hamiltonian Monte Carlo transition (``num_leapfrog`` leapfrog steps) leaving each :math:`f_{\\beta_t}`
invariant. The log weight of a chain is

.. math::

    \\log w = \\sum_{t=1}^{T} (\\beta_t - \\beta_{t-1}) \\big[\\log p(x, z_{t-1}) - \\log q(z_{t-1} \\mid x)\\big],

and :math:`\\log \\frac{1}{C}\\sum_c w_c` is a stochastic lower bound on :math:`\\log p(x)` (Jensen), unbiased
in :math:`p(x)` itself. The same code run backwards (BDMC, Grosse, Ghahramani & Adams 2015) from an exact
posterior sample, the latent that generated simulated data, gives a stochastic *upper* bound; the two sandwich
the true value and their gap bounds the error of both (Wu, Burda, Salakhutdinov & Grosse 2017).

Everything is per datapoint, on the engine's terms (:mod:`pyro_vae.infer.weights`): the data plate's subsample
scale is never applied, inner plates and several latent sites work, constrained latents move in the
unconstrained space of ``biject_to(support)`` (the log-Jacobian added), discrete latents are refused. Each
datapoint has its own step size, adapted during the run towards ``target_accept``. The Monte Carlo error of each
datapoint's estimate (``mc_stderr``) comes from independent replicates: the chains are split into groups and
the spread of the groups' estimates is measured, not derived from an effective sample size (which understates
it for heavy-tailed weights).

References: Neal, "Annealed importance sampling", Statistics and Computing 2001; Grosse, Ghahramani & Adams,
"Sandwiching the marginal likelihood using bidirectional Monte Carlo", 2015; Wu, Burda, Salakhutdinov &
Grosse, "On the quantitative analysis of decoder-based generative models", ICLR 2017.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from torch.distributions import biject_to

from .. import distributed as dist
from ..checks import whole_number
from .batches import _batch, _check_data, _placement
from .replicates import replicate_stderr
from .results import PerDatapointSummary
from .weights import (
    PARTICLE_PLATE,
    _is_latent,
    _per_datapoint,
    _run,
    _sums,
    _weight_view,
    check_estimator_input,
    guess_max_plate_nesting,
)

__all__ = ["AISOptions", "AISResult", "BDMCResult", "ais", "ais_log_likelihood", "bdmc", "annealing_schedule",
           "SCHEDULES", "PROPOSALS"]

SCHEDULES = ("sigmoid", "linear", "geometric")
PROPOSALS = ("guide", "prior")


def annealing_schedule(num_steps: int, schedule: str = "sigmoid", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The inverse temperatures :math:`0 = \\beta_0 < \\dots < \\beta_T = 1`, shape ``(num_steps + 1,)``.

    ``"sigmoid"``: :math:`\\sigma(\\delta(2t/T - 1))` rescaled to [0, 1] with :math:`\\delta = 4` (Grosse et al.
    2015; Wu et al. 2017), dense at both ends; ``"linear"``; ``"geometric"``: :math:`10^{-4(1 - t/T)}` from
    :math:`10^{-4}`, dense near 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    t = torch.linspace(0.0, 1.0, int(num_steps) + 1, dtype=torch.float64)
    if schedule == "linear":
        betas = t
    elif schedule == "sigmoid":
        s = torch.sigmoid(4.0 * (2.0 * t - 1.0))
        betas = (s - s[0]) / (s[-1] - s[0])
    else:
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-4.0, 0.0, int(num_steps),
                                                                                dtype=torch.float64)])
    betas[0], betas[-1] = 0.0, 1.0
    return betas.to(dtype)


@dataclass(frozen=True)
class AISOptions:
    """The settings of an AIS run (of :func:`ais`, :func:`bdmc` and :func:`ais_log_likelihood`), checked on
    creation. Each function also takes them one by one as keywords (``ais(..., num_chains=4)``), which override
    the fields of an ``options`` object.

    :raises ValueError: for a count that is not a whole number >= 1, an unknown proposal or schedule, or a
        target acceptance rate outside (0, 1).
    """

    #: ``C``, independent chains per datapoint
    num_chains: int = 16
    #: ``T``, intermediate distributions
    num_steps: int = 500
    #: leapfrog steps of each HMC transition
    num_leapfrog: int = 5
    #: the initial leapfrog step size (a number or ``(N,)``; None: 0.1), adapted per datapoint towards
    #: :attr:`target_accept`
    step_size: float | torch.Tensor | None = None
    #: ``"guide"`` (:math:`f_0 = q(z|x)`) or ``"prior"`` (:math:`f_0 = p(z)`)
    proposal: str = "guide"
    #: ``"sigmoid"``, ``"linear"`` or ``"geometric"`` (see :func:`annealing_schedule`)
    schedule: str = "sigmoid"
    #: the acceptance rate the step sizes adapt towards
    target_accept: float = 0.65
    #: groups of chains the Monte Carlo error comes from (None: ``min(C, 4)``)
    num_groups: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_chains", "num_steps", "num_leapfrog") + (("num_groups",) if self.num_groups is not None
                                                                   else ()):
            object.__setattr__(self, name, whole_number(getattr(self, name), name))
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r}; choose one of {list(PROPOSALS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {list(SCHEDULES)}")
        if not 0.0 < float(self.target_accept) < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")

    @property
    def groups(self) -> int:
        """The groups of chains of the Monte Carlo error."""
        return min(self.num_chains, 4) if self.num_groups is None else self.num_groups

    @classmethod
    def split(cls, options: AISOptions | None, kwargs: dict[str, Any]) -> tuple[AISOptions, dict[str, Any]]:
        """``options`` (or the defaults) with the fields named in ``kwargs`` replaced, and the other keywords
        (the model's own arguments)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in kwargs.items() if k in names}
        base = cls() if options is None else options
        if not isinstance(base, cls):
            raise TypeError(f"options must be an AISOptions, got {type(options).__name__}")
        return (dataclasses.replace(base, **given) if given else base), {k: v for k, v in kwargs.items()
                                                                          if k not in names}


@dataclass
class AISResult(PerDatapointSummary):
    """Per-datapoint AIS estimates of ``log p(x)`` (or BDMC's reverse bound) and their diagnostics."""

    #: ``(C, N)``: each chain's log weight
    log_weights: torch.Tensor
    #: ``(N,)``: the Monte Carlo error of each datapoint's estimate, from groups of chains
    mc_stderr: torch.Tensor
    #: ``(N,)``: the HMC acceptance rate of each datapoint, over chains and transitions
    acceptance_rate: torch.Tensor
    #: ``(N,)``: the final step size of each datapoint
    step_size: torch.Tensor
    num_steps: int = 0
    num_leapfrog: int = 0
    #: the number of groups of chains ``mc_stderr`` comes from
    num_groups: int = 1
    #: ``-1`` for a reverse chain (an upper bound): ``values`` is then ``-log mean exp(log_weights)``
    direction: int = 1

    @property
    def num_chains(self) -> int:
        return int(self.log_weights.shape[0])

    @property
    def values(self) -> torch.Tensor:
        """``(N,)``: ``log (1/C) sum_c w_c`` (forward), or ``-log (1/C) sum_c w_c`` (reverse: an upper bound)."""
        v = torch.logsumexp(self.log_weights, 0) - math.log(self.num_chains)
        return v if self.direction > 0 else -v

    def summary(self) -> str:
        kind = "AIS" if self.direction > 0 else "reverse AIS (upper bound)"
        return (f"log p(x) ({kind}, {self.num_chains} chains, {self.num_steps} steps): {self.mean:.3f} "
                f"± {self.stderr:.3f} (over datapoints) ± {self.mean_mc_stderr:.3f} (Monte Carlo); acceptance "
                f"{float(self.acceptance_rate.mean()):.2f}")


@dataclass
class BDMCResult:
    """A sandwich of ``log p(x)`` on data simulated from the model: ``lower <= log p(x) <= upper`` (in
    expectation)."""

    #: ``(N, *event_shape)``: the simulated data
    x: torch.Tensor
    forward: AISResult
    reverse: AISResult
    #: ``{site: value}``: the latents that generated ``x``
    latents: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def lower(self) -> torch.Tensor:
        """``(N,)``: forward AIS, a stochastic lower bound."""
        return self.forward.values

    @property
    def upper(self) -> torch.Tensor:
        """``(N,)``: reverse AIS from the exact latent, a stochastic upper bound."""
        return self.reverse.values

    @property
    def gap(self) -> torch.Tensor:
        """``(N,)``: ``upper - lower``, which bounds the error of either estimate (up to Monte Carlo noise)."""
        return self.upper - self.lower

    @property
    def gap_mc_stderr(self) -> torch.Tensor:
        """``(N,)``: the Monte Carlo error of :attr:`gap`."""
        return (self.forward.mc_stderr.pow(2) + self.reverse.mc_stderr.pow(2)).sqrt()

    def summary(self) -> str:
        g = self.gap.double()
        return (f"BDMC on {g.numel()} simulated datapoints: lower {float(self.lower.mean()):.3f}, upper "
                f"{float(self.upper.mean()):.3f}, gap {float(g.mean()):.3f} ± "
                f"{float(self.gap_mc_stderr.pow(2).sum().sqrt() / g.numel()):.3f} nats")


class _Target:
    """The annealing path of one batch: latent sites, their unconstrained coordinates and the log densities.

    The state is a list of unconstrained tensors, one per latent site, in the program's own layout (``C`` chains
    in the particle plate); every density is reduced to ``(C, N)`` with the engine's per-datapoint sums.
    """

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num_chains: int,
                 max_plate_nesting: int, data_plate: str, proposal: str) -> None:
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.num_chains, self.data_plate, self.proposal = int(num_chains), data_plate, proposal
        self.plate = lambda: pyro.plate(PARTICLE_PLATE, self.num_chains, dim=-(max_plate_nesting + 1))

    def initial(self) -> dict[str, torch.Tensor]:
        """Draw the chains' starting values from the proposal: ``{site: value}`` (subsample sites included)."""
        program = self.guide if self.proposal == "guide" else self.model
        with torch.no_grad(), self.plate():
            sites = _run(program, self.args, self.kwargs)
        self._setup([s for s in sites if _is_latent(s)])
        return {s["name"]: s["value"] for s in sites if s["type"] == "sample" and not s["is_observed"]}

    def _setup(self, latents: list[dict]) -> None:
        if not latents:
            raise ValueError("the guide has no latent sample site: there is nothing to anneal")
        self.sites = []
        for s in latents:
            fn = s["fn"]
            if (s.get("infer") or {}).get("enumerate") == "parallel":
                raise ValueError(f"AIS does not sum enumerated guide sites: {s['name']!r} is marked "
                                 "infer={'enumerate': 'parallel'}; estimate log p(x) with it summed by "
                                 "log_likelihood(method='iwae'), iwae_bound or sumo")
            if fn.support.is_discrete or not fn.has_rsample:
                raise ValueError(f"AIS needs continuous latents; the site {s['name']!r} is discrete (its support is "
                                 f"{fn.support}): sum it out in the model, or estimate with log_likelihood")
            transform = biject_to(fn.support)
            self.sites.append({"name": s["name"], "cond_indep_stack": s["cond_indep_stack"], "mask": None,
                               "event_dim": fn.event_dim, "transform": transform,
                               "fn": fn})  # the fn only serves the value's layout (event_dim)

    def to_unconstrained(self, values: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [s["transform"].inv(values[s["name"]]).detach() for s in self.sites]

    def reduce(self, t: torch.Tensor, site: dict) -> torch.Tensor:
        """A tensor of a site's value shape summed to ``(C, N)``."""
        return _per_datapoint(sum_rightmost(t, site["event_dim"]), site, self.data_plate)

    def view(self, per_point: torch.Tensor, site: dict, shape: torch.Size) -> torch.Tensor:
        """A ``(C, N)`` tensor reshaped to broadcast against a site's value."""
        return _weight_view(per_point, site, self.data_plate, shape)

    def evaluate(self, us: list[torch.Tensor], fixed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The log densities at the unconstrained state ``us``: ``log_lik``, ``log_prior``, ``log_q`` (guide
        proposal only) and the log-Jacobian ``log_jac``, each ``(C, N)``."""
        values = dict(fixed)
        log_jac = 0.0
        for s, u in zip(self.sites, us):
            z = s["transform"](u)
            values[s["name"]] = z
            ldj = s["transform"].log_abs_det_jacobian(u, z)  # zeros for a real support
            extra = s["event_dim"] - s["transform"].codomain.event_dim
            log_jac = log_jac + _per_datapoint(sum_rightmost(ldj, extra), s, self.data_plate)
        with self.plate():
            model_sites = _run(self.model, self.args, self.kwargs, replay=values)
            log_lik, log_prior, _ = _sums(model_sites, self.data_plate)
            out = {"log_lik": log_lik, "log_prior": log_prior if log_prior is not None else 0.0 * log_lik,
                   "log_jac": log_jac if torch.is_tensor(log_jac) else 0.0 * log_lik}
            if self.proposal == "guide":
                guide_sites = _run(self.guide, self.args, self.kwargs, replay=values)
                log_q = _sums(guide_sites, self.data_plate)[1]
                out["log_q"] = log_q if log_q is not None else 0.0 * log_lik
        shape = (self.num_chains, log_lik.shape[-1])
        return {k: v.expand(shape) for k, v in out.items()}

    def increment(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        """``d log f_beta / d beta``: ``log p(x, z) - log q(z | x)``, or ``log p(x | z)`` from the prior."""
        if self.proposal == "guide":
            return d["log_lik"] + d["log_prior"] - d["log_q"]
        return d["log_lik"]

    def log_density(self, d: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
        """``log f_beta`` in the unconstrained coordinates (the log-Jacobian included), ``(C, N)``."""
        base = d["log_q"] if self.proposal == "guide" else d["log_prior"]
        return base + beta * self.increment(d) + d["log_jac"]


def _anneal(target: _Target, us: list[torch.Tensor], fixed: dict[str, torch.Tensor], betas: torch.Tensor,
            num_leapfrog: int, step_size: torch.Tensor, target_accept: float, adapt: bool,
            num_groups: int) -> AISResult:
    """Run the chains along ``betas`` (increasing: forward AIS; decreasing: reverse AIS, an upper bound).

    :param step_size: one step size for every datapoint (0-dim) or one each ``(N,)``.
    :returns: the :class:`AISResult` of the run.
    """
    def density(us: list[torch.Tensor], beta: float, grad: bool) -> tuple[torch.Tensor, dict, list]:
        with torch.enable_grad():
            us = [u.detach().requires_grad_(grad) for u in us]
            d = target.evaluate(us, fixed)
            log_f = target.log_density(d, beta)
            grads = list(torch.autograd.grad(log_f.sum(), us)) if grad else []
        return log_f.detach(), {k: v.detach() for k, v in d.items()}, grads

    _, d, _ = density(us, float(betas[0]), grad=False)
    n = d["log_lik"].shape[-1]  # the datapoints the pair scores (a subsampled plate's subsample)
    if step_size.dim() == 0:
        step_size = step_size.expand(n).clone()
    elif step_size.shape != (n,):
        raise ValueError(f"step_size must be a number or one per datapoint ({n}), got shape {tuple(step_size.shape)}")
    log_w = torch.zeros(target.num_chains, n, dtype=step_size.dtype, device=step_size.device)
    accepted = torch.zeros(n, dtype=step_size.dtype, device=step_size.device)
    transitions = 0
    for a, b in zip(betas[:-1].tolist(), betas[1:].tolist()):
        log_w = log_w + (b - a) * target.increment(d).to(log_w.dtype)
        if (a < b and b == 1.0) or (a > b and b == 0.0):
            break  # the last transition would not change the weights
        # one HMC transition leaving f_b invariant, every (chain, datapoint) its own chain
        eps = step_size.expand(target.num_chains, n)
        log_f0, _, g = density(us, b, grad=True)
        ps = [torch.randn_like(u) for u in us]
        kinetic0 = sum(target.reduce(p.pow(2), s) for p, s in zip(ps, target.sites)) / 2
        views = [target.view(eps, s, u.shape).to(u.dtype) for s, u in zip(target.sites, us)]
        new = [u.clone() for u in us]
        ps = [p + 0.5 * e * gr for p, e, gr in zip(ps, views, g)]
        for step in range(int(num_leapfrog)):
            new = [u + e * p for u, e, p in zip(new, views, ps)]
            log_f1, d1, g = density(new, b, grad=True)
            scale = 1.0 if step + 1 < int(num_leapfrog) else 0.5
            ps = [p + scale * e * gr for p, e, gr in zip(ps, views, g)]
        kinetic1 = sum(target.reduce(p.pow(2), s) for p, s in zip(ps, target.sites)) / 2
        log_accept = (log_f1 - kinetic1) - (log_f0 - kinetic0)
        log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
        accept = torch.rand_like(log_accept).log() < log_accept  # (C, N)
        us = [torch.where(target.view(accept, s, u.shape), u1, u).detach()
              for s, u, u1 in zip(target.sites, us, new)]
        d = {k: torch.where(accept, d1[k], v) for k, v in d.items()}
        rate = accept.to(step_size.dtype).mean(0)
        accepted += rate
        transitions += 1
        if adapt:  # towards the target acceptance rate, per datapoint (multiplicatively, as Wu et al. 2017)
            step_size = step_size * torch.exp(0.5 * (rate - target_accept)).to(step_size.dtype)
    return AISResult(log_weights=log_w, mc_stderr=replicate_stderr(log_w, num_groups),
                     acceptance_rate=accepted / max(transitions, 1), step_size=step_size,
                     num_steps=len(betas) - 1, num_leapfrog=int(num_leapfrog), num_groups=int(num_groups),
                     direction=1 if float(betas[-1]) > float(betas[0]) else -1)


def _initial_step(x_like: torch.Tensor, step_size: float | torch.Tensor | None) -> torch.Tensor:
    """The initial step size as a tensor: 0-dim for one number, ``(N,)`` for one per datapoint."""
    dtype = x_like.dtype if x_like.is_floating_point() else torch.get_default_dtype()
    step = torch.as_tensor(0.1 if step_size is None else step_size, dtype=dtype, device=x_like.device)
    if not bool((step > 0).all()) or not bool(torch.isfinite(step).all()):
        raise ValueError(f"step_size must be positive and finite, got {step_size!r}")
    return step


def ais(
    model: Callable,
    guide: Callable,
    *args: Any,
    options: AISOptions | None = None,
    data_plate: str = "data",
    max_plate_nesting: int | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> AISResult:
    """Annealed importance sampling estimate of ``log p(x)`` for each datapoint of the batch.

    :param model: a Pyro model keeping the site contract.
    :param guide: its guide (the proposal, with ``proposal="guide"``).
    :param args: the batch ``x`` of shape ``(N, ...)`` and any further model arguments.
    :param options: the run's :class:`AISOptions` (default: its defaults).
    :param seed: seed Pyro's generators first (reproducible estimates).
    :param kwargs: fields of :class:`AISOptions` one by one (``num_chains=16``, ``num_steps=500``,
        ``num_leapfrog=5``, ``step_size=None``, ``proposal="guide"``, ``schedule="sigmoid"``,
        ``target_accept=0.65``, ``num_groups=None``), which override ``options``; any other keyword is passed to
        ``model`` and ``guide``.
    :returns: :class:`AISResult`: ``.values`` ``(N,)``, ``.log_weights`` ``(C, N)``, ``.mean``, ``.stderr``,
        ``.mc_stderr`` ``(N,)``, ``.acceptance_rate`` and ``.step_size`` ``(N,)``.
    :raises ValueError: on bad options or data, or a discrete latent (before any work).

    Example::

        >>> import torch, pyro_vae
        >>> vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,), likelihood="normal")
        >>> r = pyro_vae.infer.ais(vae.model, vae.guide, torch.randn(3, 4), num_chains=4, num_steps=10)
        >>> r.values.shape, r.log_weights.shape
        (torch.Size([3]), torch.Size([4, 3]))
    """
    opts, kwargs = AISOptions.split(options, kwargs)
    check_estimator_input(model, guide, args, opts.num_chains)
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
    target = _Target(model, guide, args, kwargs, opts.num_chains, max_plate_nesting, data_plate, opts.proposal)
    fixed = target.initial()
    us = target.to_unconstrained(fixed)
    return _anneal(target, us, _non_latent(fixed, target), annealing_schedule(opts.num_steps, opts.schedule),
                   opts.num_leapfrog, _initial_step(us[0], opts.step_size), opts.target_accept, adapt=True,
                   num_groups=opts.groups)


def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    batch_size: int = 100,
    options: AISOptions | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    distributed: bool | None = None,
    condition: torch.Tensor | None = None,
    **ais_options: Any,
) -> AISResult:
    """:func:`ais` over a data set, batch by batch: the AIS counterpart of
    :func:`~pyro_vae.infer.log_likelihood` (which calls it for ``method="ais"``).

    :param data: ``(N, *event_shape)``.
    :param batch_size: datapoints per run of :func:`ais`.
    :param options: the :class:`AISOptions` of every batch; ``ais_options`` (its fields one by one) override it.
    :param transform: applied to each batch before scoring (e.g. a fixed binarization).
    :param device: moves each batch there (default: the model's device, for a model that is a method of a module).
    :param dtype: casts each batch (default: the model's dtype, likewise).
    :param seed: batch ``b`` is seeded with :func:`~pyro_vae.distributed.derive_seed` of ``(seed, b)``.
    :param distributed: AIS runs in one process: ``True``, or None under ``torchrun`` with several processes,
        is refused (call it on one rank with ``distributed=False``).
    :param condition: a conditional model's ``y`` ``(N, *condition_shape)``, batched with ``data`` and passed after
        ``x``: the estimates are then of ``log p(x | y)``.
    :returns: one :class:`AISResult` over all of ``data`` (tensors on the CPU): ``.values`` ``(N,)``,
        ``.log_weights`` ``(C, N)``.
    :raises TypeError: for a keyword that is not a field of :class:`AISOptions`.
    """
    opts, unknown = AISOptions.split(options, ais_options)
    if unknown:
        raise TypeError(f"unexpected options for AIS: {sorted(unknown)} (the AIS options are "
                        f"{[f.name for f in dataclasses.fields(AISOptions)]})")
    if distributed or (distributed is None and dist.launched() and dist.world_size() > 1):
        raise ValueError("AIS over a data set runs in one process: call it with distributed=False (on rank 0, say)")
    size = whole_number(batch_size, "batch_size")
    _check_data(model, guide, data, opts.num_chains, transform)
    device, dtype = _placement(model, data, device, dtype)
    parts = []
    for b, start in enumerate(range(0, data.shape[0], size)):
        x = _batch(data, start, size, device, dtype, transform)
        extra = () if condition is None else (_batch(condition, start, size, device, dtype, None),)
        parts.append(ais(model, guide, x, *extra, options=opts, data_plate=data_plate,
                         max_plate_nesting=max_plate_nesting, seed=None if seed is None else dist.derive_seed(seed, b)))
    first = parts[0]
    return AISResult(log_weights=torch.cat([p.log_weights for p in parts], 1).cpu(),
                     mc_stderr=torch.cat([p.mc_stderr for p in parts]).cpu(),
                     acceptance_rate=torch.cat([p.acceptance_rate for p in parts]).cpu(),
                     step_size=torch.cat([p.step_size for p in parts]).cpu(), num_steps=first.num_steps,
                     num_leapfrog=first.num_leapfrog, num_groups=first.num_groups)


def _non_latent(values: dict[str, torch.Tensor], target: _Target) -> dict[str, torch.Tensor]:
    """The replayed values that are not HMC coordinates (the data plate's subsample indices)."""
    latent = {s["name"] for s in target.sites}
    return {k: v for k, v in values.items() if k not in latent}


def bdmc(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args: Any,
    options: AISOptions | None = None,
    data_plate: str = "data",
    max_plate_nesting: int | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> BDMCResult:
    """Bidirectional Monte Carlo: simulate data from the model, then sandwich its ``log p(x)``.

    Data of ``x``'s shape are drawn from the model (the observation site unconditioned), keeping the latents that
    generated them: an exact posterior sample. Forward AIS from the proposal gives a stochastic lower bound;
    reverse AIS started from the exact latents (every chain) gives a stochastic upper bound; the gap bounds the
    error of AIS with this schedule on data like these (Grosse et al. 2015, Wu et al. 2017).

    :param x: a batch whose shape (and device, dtype) the simulated data take; its values are not used.
    :param options: the :class:`AISOptions` of both directions; keywords that are its fields override it, and
        any other keyword is passed to ``model`` and ``guide`` (as :func:`ais`).
    :returns: :class:`BDMCResult` with ``.lower``, ``.upper`` ``(N,)``, ``.x``, ``.gap`` and
        ``.gap_mc_stderr``.
    """
    opts, kwargs = AISOptions.split(options, kwargs)
    num_chains = opts.num_chains
    check_estimator_input(model, guide, (x, *args), num_chains, support=False)
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x, *args, **kwargs)
    # simulate: one draw of (z, x) per datapoint, the observation site unconditioned
    with torch.no_grad(), pyro.plate(PARTICLE_PLATE, 1, dim=-(max_plate_nesting + 1)):
        sites = _run(poutine.uncondition(model), (x, *args), kwargs)
    observed = [s for s in sites if s["type"] == "sample" and s["name"] == "x"]
    if not observed:
        raise ValueError("the model has no sample site named 'x' to simulate")
    obs = observed[0]
    x_sim = _squeeze_particles(obs["value"], obs).reshape(x.shape).to(x.dtype)
    latents = {s["name"]: s["value"] for s in sites if _is_latent(s)}
    forward = ais(model, guide, x_sim, *args, options=opts, data_plate=data_plate,
                  max_plate_nesting=max_plate_nesting, **kwargs)
    # reverse: every chain starts at the latents that generated x_sim
    target = _Target(model, guide, (x_sim, *args), kwargs, num_chains, max_plate_nesting, data_plate, opts.proposal)
    init = target.initial()  # the sites' layout (and the guide's subsample draws)
    start = {name: _expand_particles(latents[s["name"]], s, num_chains) for s in target.sites
             for name in [s["name"]] if name in latents}
    missing = [s["name"] for s in target.sites if s["name"] not in latents]
    if missing:
        raise ValueError(f"the model does not sample the guide's latent site(s) {missing}")
    us = target.to_unconstrained({**init, **start})
    # the forward run's adapted step sizes, kept fixed going back
    schedule = annealing_schedule(opts.num_steps, opts.schedule).flip(0)
    reverse = _anneal(target, us, _non_latent(init, target), schedule, opts.num_leapfrog, forward.step_size.clone(),
                      opts.target_accept, adapt=False,
                      num_groups=forward.num_groups)
    return BDMCResult(x=x_sim, forward=forward, reverse=reverse,
                      latents={k: _squeeze_particles(v, s) for s in sites if _is_latent(s) for k, v in
                               [(s["name"], s["value"])]})


def _particle_axis(value: torch.Tensor, site: dict) -> int:
    frames = {f.name: f for f in site["cond_indep_stack"]}
    batch_ndim = value.dim() - site["fn"].event_dim
    return batch_ndim + frames[PARTICLE_PLATE].dim


def _squeeze_particles(value: torch.Tensor, site: dict) -> torch.Tensor:
    """A value drawn under a particle plate of size 1, without that dimension."""
    axis = _particle_axis(value, site)
    return value.squeeze(axis) if 0 <= axis < value.dim() else value


def _expand_particles(value: torch.Tensor, site: dict, num_chains: int) -> torch.Tensor:
    """A value drawn under a particle plate of size 1, repeated for ``num_chains`` chains."""
    axis = _particle_axis(value, site)
    if not 0 <= axis < value.dim():
        return value
    shape = list(value.shape)
    shape[axis] = int(num_chains)
    return value.expand(shape).clone()

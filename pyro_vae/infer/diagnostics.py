"""Latent usage: active units, KL per latent dimension and the mutual information ``I_q(x; z)``.

- **Active units** (Burda et al. 2016, section 5.2): dimension ``u`` is active when
  :math:`A_u = \\mathrm{Cov}_x\\big(\\mathbb{E}_{q(z|x)}[z_u]\\big) > 0.01`.
- **KL per dimension**: :math:`\\mathbb{E}_x \\mathrm{KL}(q(z_u \\mid x) \\,\\|\\, p(z_u))`, analytic when both
  factorise over dimensions (diagonal Normal guide and prior); the sum over ``u`` is the rate.
- **Mutual information** under the encoder's joint :math:`q(x, z) = p_{data}(x) q(z|x)`:
  :math:`I_q(x; z) = \\mathbb{E}_x \\mathbb{E}_{q(z|x)}[\\log q(z|x) - \\log q(z)]` with the aggregate
  posterior :math:`q(z) = \\frac{1}{M}\\sum_m q(z \\mid x_m)` over ``M`` datapoints (Hoffman & Johnson 2016).
  It is bounded by ``log M``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["latent_usage", "ACTIVE_UNIT_THRESHOLD"]

ACTIVE_UNIT_THRESHOLD = 0.01


def _latent_sites(trace: Any) -> dict[str, dict]:
    return {name: s for name, s in trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}


def _base_normal(fn: Any) -> torch.distributions.Normal | None:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


def _has_mean(fn: Any) -> bool:
    try:
        fn.mean
    except NotImplementedError:
        return False
    return True


def _posterior_mean(fn: Any, num_samples: int = 64) -> torch.Tensor:
    """``E_q[z]``: the distribution's mean, or a Monte Carlo estimate where it has none (a flow guide)."""
    return fn.mean if _has_mean(fn) else fn.sample((num_samples,)).mean(0)


@torch.no_grad()
def latent_usage(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    batch_size: int = 1000,
    num_mi_datapoints: int = 1000,
    threshold: float = ACTIVE_UNIT_THRESHOLD,
    seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Active units, KL per dimension and mutual information for each latent site of the guide.

    :param data: ``(N, *event_shape)``.
    :param num_mi_datapoints: ``M``, the datapoints used for the aggregate posterior in the MI estimate.
    :returns: ``{site: {"active_units": int, "dimensions": int, "mean_variance": (d,) list,
        "kl_per_dim": (d,) list or None, "mutual_information": float or None}}``.
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    means: dict[str, list[torch.Tensor]] = {}
    kls: dict[str, list[torch.Tensor]] = {}
    for start in range(0, data.shape[0], batch_size):
        x = data[start:start + batch_size]
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        for name, site in _latent_sites(guide_trace).items():
            fn = site["fn"]
            means.setdefault(name, []).append(_posterior_mean(fn).reshape(x.shape[0], -1))
            q, p = _base_normal(fn), _base_normal(model_trace.nodes[name]["fn"])
            if q is not None and p is not None:
                kl = torch.distributions.kl_divergence(q, p)
                kls.setdefault(name, []).append(kl.reshape(x.shape[0], -1))
    x = data[:num_mi_datapoints]
    m = x.shape[0]
    mi_trace = poutine.trace(guide).get_trace(x)
    out: dict[str, dict[str, Any]] = {}
    for name, chunks in means.items():
        mu = torch.cat(chunks)
        var = mu.double().var(0, unbiased=True) if mu.shape[0] > 1 else torch.zeros(mu.shape[1])
        fn = mi_trace.nodes[name]["fn"]
        z = mi_trace.nodes[name]["value"]  # (M, ...) one draw per datapoint
        mi = None
        if fn.batch_shape == (m,) and _has_mean(fn):  # a flow guide has no cheap cross-density: no MI
            log_q_cross = fn.log_prob(z.unsqueeze(1))  # (M, M): z_i scored under q(. | x_j)
            log_q_own = log_q_cross.diagonal()
            log_agg = torch.logsumexp(log_q_cross, 1) - math.log(m)
            mi = float((log_q_own - log_agg).double().mean())
        out[name] = {
            "dimensions": int(mu.shape[1]),
            "active_units": int((var > threshold).sum()),
            "mean_variance": var.tolist(),
            "kl_per_dim": torch.cat(kls[name]).double().mean(0).tolist() if name in kls else None,
            "mutual_information": mi,
            "mutual_information_max": math.log(m),
        }
    return out

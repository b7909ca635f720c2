"""Latent usage: active units, KL per latent dimension and the mutual information ``I_q(x; z)``.

- **Active units** (Burda et al. 2016, section 5.2): dimension ``u`` is active when
  :math:`A_u = \\mathrm{Cov}_x\\big(\\mathbb{E}_{q(z|x)}[z_u]\\big) > 0.01`.
- **KL per dimension**: :math:`\\mathbb{E}_x \\mathrm{KL}(q(z_u \\mid x) \\,\\|\\, p(z_u))`, analytic when both
  factorise over dimensions (diagonal Normal guide and prior); the sum over ``u`` is the rate.
- **Mutual information** under the encoder's joint :math:`q(x, z) = p_{data}(x) q(z|x)`:
  :math:`I_q(x; z) = \\mathbb{E}_x \\mathbb{E}_{q(z|x)}[\\log q(z|x) - \\log q(z)]` with the aggregate
  posterior :math:`q(z) = \\frac{1}{M}\\sum_m q(z \\mid x_m)` over ``M`` datapoints (Hoffman & Johnson 2016).
  It is bounded by ``log M``.

The guide and the model run through the engine's one recording path (:mod:`pyro_vae.infer.weights`), as in
every estimator; a conditional model's further arguments (``y``) are batched with the data.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch

from ..checks import whole_number
from .weights import (
    _frames,
    _is_latent,
    _run,
    check_data_plate,
    check_estimator_input,
    direct_terms_owner,
    plate_layout,
)

__all__ = ["latent_usage", "ACTIVE_UNIT_THRESHOLD"]

ACTIVE_UNIT_THRESHOLD = 0.01


def _latent_sites(sites: list[dict]) -> dict[str, dict]:
    return {s["name"]: s for s in sites if _is_latent(s)}


def _rows(args: tuple, n: int, start: int, stop: int) -> tuple:
    """The datapoints ``start .. stop`` of every tensor argument with ``n`` rows (a conditional model's ``y``);
    other arguments as they are."""
    return tuple(a[start:stop] if torch.is_tensor(a) and a.dim() >= 1 and a.shape[0] == n else a for a in args)


def _by_datapoint(value: torch.Tensor, site: dict, data_plate: str, event_dim: int) -> torch.Tensor:
    """A site's per-datapoint tensor ``(*batch_shape, *event_shape)`` as ``(N, values)``, the data plate's
    dimension first."""
    _, data_dim = _frames(site, data_plate)
    batch = value.dim() - event_dim
    if batch + data_dim < 0:
        value = value.reshape((1,) * (-data_dim - batch) + tuple(value.shape))
        batch = -data_dim
    value = value.movedim(batch + data_dim, 0)
    return value.reshape(value.shape[0], -1)


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
    *args: Any,
    batch_size: int = 1000,
    num_mi_datapoints: int = 1000,
    threshold: float = ACTIVE_UNIT_THRESHOLD,
    seed: int | None = None,
    data_plate: str = "data",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Active units, KL per dimension and mutual information for each latent site of the guide.

    :param data: ``(N, *event_shape)``.
    :param args: further arguments of ``model`` and ``guide``, as for every estimator; a tensor with ``N`` rows
        (a conditional VAE's ``y`` ``(N, *condition_shape)``) is batched with ``data``, anything else is passed
        whole.
    :param batch_size: datapoints per pass.
    :param num_mi_datapoints: ``M``, the datapoints used for the aggregate posterior in the MI estimate.
    :param data_plate: the name of the pair's plate of datapoints (as every estimator): each latent site's values
        are read with that plate's dimension as the datapoints'; a name that is no plate of the pair is refused
        before any work.
    :param kwargs: keyword arguments of ``model`` and ``guide``.
    :returns: ``{site: {"active_units": int, "dimensions": int, "mean_variance": (d,) list,
        "kl_per_dim": (d,) list or None, "mutual_information": float or None}}``.
    """
    check_estimator_input(model, guide, (data, *args), 1, support=False)
    if data_plate != "data" or not direct_terms_owner(model, guide):
        check_data_plate(data_plate, plate_layout(model, guide, data[:2], *_rows(args, data.shape[0], 0, 2),
                                                  **kwargs)[1])
    batch_size = whole_number(batch_size, "batch_size")
    num_mi_datapoints = whole_number(num_mi_datapoints, "num_mi_datapoints")
    if seed is not None:
        pyro.set_rng_seed(seed)
    n = data.shape[0]
    means: dict[str, list[torch.Tensor]] = {}
    kls: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, batch_size):
        x = data[start:start + batch_size]
        batch_args = (x, *_rows(args, n, start, start + batch_size))
        guide_sites = _latent_sites(_run(guide, batch_args, kwargs))
        model_sites = _latent_sites(_run(model, batch_args, kwargs,
                                         replay={k: s["value"] for k, s in guide_sites.items()}))
        for name, site in guide_sites.items():
            fn = site["fn"]
            means.setdefault(name, []).append(_by_datapoint(_posterior_mean(fn), site, data_plate, fn.event_dim))
            q = _base_normal(fn)
            p = _base_normal(model_sites[name]["fn"]) if name in model_sites else None
            if q is not None and p is not None:
                kl = torch.distributions.kl_divergence(q, p)
                kls.setdefault(name, []).append(_by_datapoint(kl, site, data_plate, fn.event_dim))
    x = data[:num_mi_datapoints]
    m = x.shape[0]
    mi_sites = _latent_sites(_run(guide, (x, *_rows(args, n, 0, num_mi_datapoints)), kwargs))
    out: dict[str, dict[str, Any]] = {}
    for name, chunks in means.items():
        mu = torch.cat(chunks)
        var = mu.double().var(0, unbiased=True) if mu.shape[0] > 1 else mu.new_zeros(mu.shape[1], dtype=torch.float64)
        fn = mi_sites[name]["fn"]
        z = mi_sites[name]["value"]  # (M, ...) one draw per datapoint
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

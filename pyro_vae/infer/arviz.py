"""Importance-sampling draws and diagnostics as ArviZ / xarray objects.

:func:`to_inference_data` draws ``K`` particles per datapoint from the guide, scores them under the model and
returns an :class:`arviz.InferenceData` whose arrays carry named dimensions, so that ArviZ's own summaries and
plots (``az.summary``, ``az.plot_posterior``, ``az.psislw``, ``az.plot_khat``) work on them directly:

=====================  ============================================  ================================================
group / variable       dims                                          content
=====================  ============================================  ================================================
``posterior.<site>``   ``(chain, draw, datapoint, <site>_dim_0..)``  one array per latent site; ``chain`` has size 1,
                                                                     ``draw`` has size ``K``
``sample_stats``       ``(chain, draw, datapoint)``                  ``log_weight``:
                                                                     :math:`\\log w_{k,n} = \\log p(x_n, z_{k,n}) -
                                                                     \\log q(z_{k,n} \\mid x_n)`
``log_likelihood.x``   ``(chain, draw, datapoint)``                  :math:`\\log p(x_n \\mid z_{k,n})`
``observed_data.x``    ``(datapoint, x_dim_0, ..)``                  the data (with ``include_data=True``)
=====================  ============================================  ================================================

By default the ``posterior`` group holds the raw draws from the guide :math:`q(z \\mid x)` (the *proposal*; its
weights are ``sample_stats.log_weight``). With ``resample=True`` it holds draws resampled in proportion to the
weights (sampling importance resampling), which approximate the true posterior :math:`p(z \\mid x)` when the
weights are well behaved (Pareto :math:`\\hat k < 0.5`, or below the sample-size threshold
``min(1 - 1/log10 K, 0.7)`` with care).

:func:`psis_khat` computes the Pareto :math:`\\hat k` per datapoint from such an object (or from a ``(K, N)``
tensor of log weights) as an :class:`xarray.DataArray` with dims ``(datapoint,)``; :func:`result_to_dataset`
turns a :class:`~pyro_vae.infer.LogLikelihoodResult` into an :class:`xarray.Dataset` over ``datapoint``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyro
import torch

from .chunking import particles_per_chunk
from .weights import terms_producer

if TYPE_CHECKING:  # pragma: no cover
    import arviz
    import xarray

__all__ = ["importance_draws", "psis_khat", "result_to_dataset", "to_inference_data"]


@torch.no_grad()
def importance_draws(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    *,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Draw ``K`` particles per datapoint from the guide (vectorized passes of ``chunk_size``) and score them.

    :param model: a Pyro model keeping the site contract.
    :param guide: its guide.
    :param x: a batch ``(N, *event_shape)``.
    :param num_particles: ``K``.
    :param chunk_size: particles per pass (None: :func:`~pyro_vae.infer.particles_per_chunk`'s rule).
    :returns: ``(log_w, log_lik, draws)``: the log weights ``(K, N)``, ``log p(x | z)`` ``(K, N)`` and
        ``{site name: (K, N, *event_shape)}`` for every latent site of the guide.
    """
    k = int(num_particles)
    if k < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    produce = terms_producer(model, guide, x, max_plate_nesting=max_plate_nesting, data_plate=data_plate)
    chunk = particles_per_chunk(k, x, chunk_size)
    parts = [produce(min(chunk, k - start), latents=True) for start in range(0, k, chunk)]
    log_w = torch.cat([t.log_weights for t in parts])
    assert log_w.shape == (k, x.shape[0]), log_w.shape
    draws = {name: torch.cat([t.latents[name] for t in parts]) for name in parts[0].latents}
    return log_w, torch.cat([t.log_likelihood for t in parts]), draws


def to_inference_data(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int = 1000,
    *,
    resample: bool = False,
    batch_size: int = 100,
    include_data: bool = False,
    seed: int | None = None,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
) -> arviz.InferenceData:
    """Per-datapoint importance-sampling draws as an :class:`arviz.InferenceData` (see the module docstring).

    :param model: a Pyro model keeping the site contract (a :class:`pyro_vae.VAE`'s ``.model``, or your own).
    :param guide: its guide, the proposal.
    :param x: data ``(N, *event_shape)``, on the model's device.
    :param num_particles: ``K``, the draws per datapoint (ArviZ's ``draw`` dimension).
    :param resample: replace the draws by ``K`` draws resampled with replacement in proportion to the
        importance weights (approximate draws from ``p(z | x)``); the log weights stay those of the proposal.
    :param batch_size: datapoints per vectorized pass.
    :param include_data: also store ``x`` as ``observed_data``.
    :param seed: seeds Pyro's generators first.
    :returns: an :class:`arviz.InferenceData` with groups ``posterior``, ``sample_stats``, ``log_likelihood``
        (and ``observed_data``).

    Example::

        >>> import arviz as az, torch, pyro_vae
        >>> from pyro_vae.infer import to_inference_data
        >>> vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
        >>> idata = to_inference_data(vae.model, vae.guide, torch.rand(5, 1, 8, 8).round(), num_particles=100)
        >>> idata.posterior["z"].dims
        ('chain', 'draw', 'datapoint', 'z_dim_0')
        >>> idata.sample_stats["log_weight"].shape
        (1, 100, 5)
    """
    import arviz as az

    if not torch.is_tensor(x) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty tensor of shape (N, *event_shape)")
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    k = int(num_particles)
    log_ws, log_liks, draws = [], [], {}
    for start in range(0, x.shape[0], int(batch_size)):
        batch = x[start:start + int(batch_size)]
        log_w, log_lik, values = importance_draws(model, guide, batch, k, max_plate_nesting=max_plate_nesting,
                                                  data_plate=data_plate)
        if resample:
            # k draws per datapoint, with replacement, in proportion to the normalised weights
            idx = torch.multinomial(torch.softmax(log_w.T.double(), -1), k, replacement=True).T  # (K, N)
            values = {name: v.gather(0, idx.view(k, -1, *([1] * (v.dim() - 2))).expand_as(v))
                      for name, v in values.items()}
        log_ws.append(log_w.cpu())
        log_liks.append(log_lik.cpu())
        for name, v in values.items():
            draws.setdefault(name, []).append(v.detach().cpu())
    posterior = {name: torch.cat(v, 1).unsqueeze(0).numpy() for name, v in draws.items()}
    dims: dict[str, list[str]] = {name: ["datapoint", *(f"{name}_dim_{i}" for i in range(v.ndim - 3))]
                                  for name, v in posterior.items()}
    dims.update({"log_weight": ["datapoint"], "x": ["datapoint"]})
    groups: dict[str, Any] = {
        "posterior": posterior,
        "sample_stats": {"log_weight": torch.cat(log_ws, 1).unsqueeze(0).numpy()},
        "log_likelihood": {"x": torch.cat(log_liks, 1).unsqueeze(0).numpy()},
    }
    attrs = {"inference_library": "pyro_vae", "num_particles": k,
             "proposal": "guide q(z | x)", "resampled": int(bool(resample))}
    idata = az.from_dict(**groups, dims=dims, attrs=attrs)
    if include_data:
        data = x.detach().cpu().numpy()
        obs = az.from_dict(observed_data={"x": data},
                           dims={"x": ["datapoint", *(f"x_dim_{i}" for i in range(data.ndim - 1))]})
        idata.extend(obs)
    return idata


def psis_khat(log_weights: Any) -> xarray.DataArray:
    """Pareto :math:`\\hat k` per datapoint (PSIS, through :func:`arviz.psislw`).

    :param log_weights: an :class:`arviz.InferenceData` from :func:`to_inference_data`, an
        :class:`xarray.DataArray` with dims ``(chain, draw, datapoint)``, or a tensor/array ``(K, N)``.
    :returns: an :class:`xarray.DataArray` with dims ``(datapoint,)``: below 0.5 the weights have a finite
        variance; above ``min(1 - 1/log10 K, 0.7)`` the importance-sampling estimate of that datapoint is
        unreliable.
    """
    import arviz as az
    import xarray as xr

    if hasattr(log_weights, "sample_stats"):
        log_weights = log_weights.sample_stats["log_weight"]
    if not isinstance(log_weights, xr.DataArray):
        arr = np.asarray(torch.as_tensor(log_weights).detach().double().cpu())
        if arr.ndim != 2:
            raise ValueError(f"log weights must have shape (K, N), got {arr.shape}")
        log_weights = xr.DataArray(arr[None], dims=("chain", "draw", "datapoint"))
    stacked = log_weights.stack(__sample__=("chain", "draw"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about k-hat > 0.7; the values say it
        _, khat = az.psislw(stacked)
    return khat.rename("khat")


def result_to_dataset(result: Any) -> xarray.Dataset:
    """A :class:`~pyro_vae.infer.LogLikelihoodResult` as an :class:`xarray.Dataset` over ``datapoint``.

    :returns: variables ``log_likelihood`` (the IWAE estimate), ``elbo``, ``rate``, ``distortion``, ``gap``,
        ``ess`` and ``khat`` with dims ``(datapoint,)``, and ``curve`` with dims ``(K, datapoint)``; the
        attributes hold ``num_particles``.
    """
    import xarray as xr

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().cpu().numpy()

    data = {name: ("datapoint", arr(getattr(result, attr))) for name, attr in
            (("log_likelihood", "values"), ("elbo", "elbo"), ("rate", "rate"), ("distortion", "distortion"),
             ("ess", "ess"))}
    data["gap"] = ("datapoint", arr(result.values - result.elbo))
    n = result.values.numel()
    data["khat"] = ("datapoint", arr(result.khat) if result.khat is not None else np.full(n, math.nan))
    coords: dict[str, Any] = {"datapoint": np.arange(n)}
    if result.curve:
        ks = sorted(result.curve)
        data["curve"] = (("K", "datapoint"), np.stack([arr(result.curve[k]) for k in ks]))
        coords["K"] = np.asarray(ks)
    return xr.Dataset(data, coords=coords, attrs={"num_particles": int(result.num_particles)})

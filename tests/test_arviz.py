"""ArviZ / xarray export: dims, agreement with the library's estimators, and ArviZ's own functions on it."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.infer import (
    importance_draws,
    log_importance_weights,
    log_likelihood,
    pareto_khat,
    psis_khat,
    to_inference_data,
)


@pytest.fixture
def vae() -> VAE:
    return VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1)).round()


def test_inference_data_dims_and_values(vae: VAE, x: torch.Tensor) -> None:
    idata = to_inference_data(vae.model, vae.guide, x, num_particles=40, batch_size=3, include_data=True, seed=0)
    assert set(idata.groups()) >= {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "datapoint", "z_dim_0") and z.shape == (1, 40, 7, 3)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "datapoint")
    assert idata.log_likelihood["x"].shape == (1, 40, 7)
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
    # the stored log weights are log p(x, z) - log q(z | x) of the stored draws
    z_t = torch.as_tensor(z.values[0])  # (K, N, d)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z_t).sum(-1)
    z_loc, z_scale = vae.encode(x)
    log_q = torch.distributions.Normal(z_loc, z_scale).log_prob(z_t).sum(-1)
    log_lik = torch.as_tensor(idata.log_likelihood["x"].values[0])
    torch.testing.assert_close(torch.as_tensor(idata.sample_stats["log_weight"].values[0]),
                               (log_lik + prior - log_q).float(), rtol=1e-4, atol=1e-3)


def test_same_weights_as_the_library(vae: VAE, x: torch.Tensor) -> None:
    def model(x: torch.Tensor) -> None:  # not the fast path: Pyro's tracing, as for a user's pair
        vae.model(x)

    def guide(x: torch.Tensor) -> None:
        vae.guide(x)

    pyro.set_rng_seed(3)
    log_w, _, draws = importance_draws(model, guide, x, 25)
    pyro.set_rng_seed(3)
    expected = log_importance_weights(model, guide, x, num_particles=25)
    torch.testing.assert_close(log_w, expected)
    assert draws["z"].shape == (25, 7, 3)


def test_arviz_functions_work_on_it(vae: VAE, x: torch.Tensor) -> None:
    idata = to_inference_data(vae.model, vae.guide, x, num_particles=200, seed=0)
    summary = az.summary(idata, var_names=["z"], kind="stats")
    assert len(summary) == 7 * 3 and np.isfinite(summary["mean"]).all()
    khat = psis_khat(idata)
    assert khat.dims == ("datapoint",) and khat.shape == (7,)
    log_w = torch.as_tensor(idata.sample_stats["log_weight"].values[0])
    torch.testing.assert_close(torch.as_tensor(khat.values), pareto_khat(log_w), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ prefers ELPDData; a DataArray of k-hat works
        ax = az.plot_khat(khat, show=False)
    assert len(ax.collections) >= 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_resampled_draws_follow_the_weights(vae: VAE, x: torch.Tensor) -> None:
    raw = to_inference_data(vae.model, vae.guide, x, num_particles=300, seed=5)
    res = to_inference_data(vae.model, vae.guide, x, num_particles=300, seed=5, resample=True)
    z_raw, z_res = raw.posterior["z"].values[0], res.posterior["z"].values[0]  # (K, N, d)
    lw = raw.sample_stats["log_weight"].values[0]
    for n in range(x.shape[0]):
        # every resampled draw is one of the proposal's draws
        assert all((np.abs(z_raw[:, n] - row).sum(-1) < 1e-6).any() for row in z_res[:, n])
        w = np.exp(lw[:, n] - lw[:, n].max())
        w /= w.sum()
        weighted_mean = (w[:, None] * z_raw[:, n]).sum(0)
        stderr = z_raw[:, n].std(0) / np.sqrt(1 / (w**2).sum()) + 1e-3
        assert (np.abs(z_res[:, n].mean(0) - weighted_mean) < 6 * stderr).all()


def test_result_to_xarray(vae: VAE, x: torch.Tensor) -> None:
    result = log_likelihood(vae.model, vae.guide, x, num_particles=50, k_values=(1, 5, 50), seed=0, progress=False)
    ds = result.to_xarray()
    assert ds["log_likelihood"].dims == ("datapoint",) and ds.sizes["datapoint"] == 7
    np.testing.assert_allclose(ds["log_likelihood"].values, result.values.double().numpy())
    np.testing.assert_allclose(ds["gap"].values, (result.values - result.elbo).double().numpy())
    assert list(ds["K"].values) == [1, 5, 50] and ds["curve"].dims == ("K", "datapoint")
    assert ds.attrs["num_particles"] == 50
    np.testing.assert_allclose(ds["khat"].values, result.khat.double().numpy())


def test_bad_input(vae: VAE) -> None:
    with pytest.raises(ValueError):
        to_inference_data(vae.model, vae.guide, torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError):
        psis_khat(np.zeros(5))

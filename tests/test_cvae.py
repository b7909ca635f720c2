"""The conditional VAE: ``model(x, y)``, ``guide(x, y)``, ``sample(n, y=...)``; every estimator takes ``y`` and
gives ``log p(x | y)``, checked by hand on a linear-Gaussian conditional model; fit(condition=...) trains it."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer


class LinearGaussianConditional:
    """``z ~ N(0, I_2)``, ``x | z, y ~ N(W z + V y + b, sigma^2 I_4)``: ``p(x | y) = N(V y + b, W W^T +
    sigma^2 I)`` in closed form, and the exact posterior as the guide."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(4, 2, generator=g, dtype=torch.float64)
        self.V = torch.randn(4, 3, generator=g, dtype=torch.float64)
        self.b = torch.randn(4, generator=g, dtype=torch.float64)
        self.sigma = 0.5
        self.post_cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + self.W.T @ self.W / self.sigma**2)

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + y @ self.V.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x, y, shift=0.0, widen=1.0):
        loc = (x - y @ self.V.T - self.b) @ self.W / self.sigma**2 @ self.post_cov + shift
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, widen * self.post_cov))

    def exact(self, x, y):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(4, dtype=torch.float64)
        return dist.MultivariateNormal(y @ self.V.T + self.b, cov).log_prob(x)


def test_every_estimator_gives_log_p_x_given_y_by_hand():
    lg = LinearGaussianConditional()
    g = torch.Generator().manual_seed(1)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64)
    x = y @ lg.V.T + lg.b + torch.randn(7, 4, generator=g, dtype=torch.float64)
    exact = lg.exact(x, y)
    # the exact posterior as the guide: every estimator equals log p(x | y), for any K
    assert_close(infer.elbo(lg.model, lg.guide, x, y), exact)
    assert_close(infer.iwae_bound(lg.model, lg.guide, x, y, num_particles=5), exact)
    assert_close(infer.log_likelihood(lg.model, lg.guide, x, condition=y, num_particles=6, progress=False).values,
                 exact)
    assert_close(infer.ais(lg.model, lg.guide, x, y, num_chains=2, num_steps=4, seed=0).values, exact)
    # an approximate guide: ELBO <= IWAE <= log p(x | y), and IWAE_K approaches it
    def shifted(x, y):
        return lg.guide(x, y, shift=0.05, widen=1.5)

    elbo = infer.elbo(lg.model, shifted, x, y, num_particles=2000)
    lw = infer.log_importance_weights(lg.model, shifted, x, y, num_particles=5000)
    iw = torch.logsumexp(lw, 0) - math.log(5000)
    se = infer.replicate_stderr(lw, 10)
    assert bool((elbo < exact).all()) and bool(((iw - exact).abs() < 4 * se + 0.01).all()), (iw - exact, se)
    assert float((exact - elbo).mean()) > 0.02


def _quadrants():
    data = pyro_vae.datasets.load("digits")[:400]
    y = data[:, :, :4, :4].flatten(1)  # the top-left quadrant
    x = data.clone()
    x[:, :, :4, :4] = 0.0  # the rest of the image (the quadrant itself is known)
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0)), y


def test_conditional_vae_keeps_the_site_contract_and_trains():
    x, y = _quadrants()
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(64,), condition_shape=(16,))
    trace = pyro.poutine.trace(vae.guide).get_trace(x[:5], y[:5])
    model_trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=trace)).get_trace(x[:5], y[:5])
    assert model_trace.nodes["x"]["is_observed"] and model_trace.nodes["z"]["value"].shape == (5, 4)
    before = infer.elbo(vae.model, vae.guide, x[:200], y[:200], num_particles=5).mean().item()
    history = pyro_vae.fit(vae, x[:300], condition=y[:300], val_data=x[300:], val_condition=y[300:], epochs=8,
                           batch_size=50, lr=3e-3, seed=0, progress=False)
    after = infer.elbo(vae.model, vae.guide, x[:200], y[:200], num_particles=5).mean().item()
    assert after > before + 5 and math.isfinite(history[-1]["val_elbo"])
    assert vae.sample(6, y=y[0]).shape == (6, 1, 8, 8) and vae.sample(3, y=y[:3]).shape == (3, 1, 8, 8)
    assert vae.reconstruct(x[:4], y[:4]).shape == (4, 1, 8, 8)
    # conditioning matters: the same z decoded under different y differs
    z = torch.zeros(2, 4)
    assert not torch.allclose(vae.decode(z, y[:2]), vae.decode(z, y[2:4]))
    result = infer.log_likelihood(vae.model, vae.guide, x[300:], condition=y[300:], num_particles=20,
                                  progress=False, diagnostics=False)
    assert result.values.shape == (100,) and result.mean < 0


def test_conditional_vae_refuses_what_it_cannot_do():
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,), condition_shape=4)
    x = torch.bernoulli(torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="needs y"):
        vae.model(x)
    with pytest.raises(ValueError, match="shape"):
        vae.guide(x, torch.rand(3, 5))
    with pytest.raises(ValueError, match="not conditional"):
        pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,)).model(x, torch.rand(3, 4))
    with pytest.raises(ValueError, match="mlp"):
        pyro_vae.VAE((1, 8, 8), latent_dim=2, encoder="conv", condition_shape=4)
    with pytest.raises(ValueError, match="VampPrior"):
        pyro_vae.VAE((1, 8, 8), latent_dim=2, prior="vamp", condition_shape=4)
    with pytest.raises(ValueError, match="one row per datapoint"):
        pyro_vae.fit(vae, x, condition=torch.rand(2, 4), epochs=1, batch_size=3, progress=False)


def test_conditional_vae_save_load_round_trip(tmp_path):
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,), condition_shape=(4,))
    again = pyro_vae.load(vae.save(tmp_path / "cvae"))
    assert again.condition_shape == (4,)
    y = torch.rand(3, 4)
    z = torch.randn(3, 2)
    assert_close(vae.decode(z, y), again.decode(z, y))

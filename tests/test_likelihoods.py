"""Likelihoods (``pyro_vae.likelihoods``) at extreme parameters against torch's own distributions, a learned scale
with a floor, and a decoder variance falling towards zero that stays finite (Dai & Wipf)."""

import math

import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae.infer.objectives import objective_loss
from pyro_vae.likelihoods import make_likelihood


@pytest.mark.parametrize("name", ["bernoulli", "continuous_bernoulli"])
def test_binary_likelihoods_at_extreme_logits_equal_torch(name):
    lik = make_likelihood(name, (5,)).double()
    logits = torch.tensor([[-30.0, -10.0, 0.0, 10.0, 30.0]], dtype=torch.float64)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    torch_dist = (torch.distributions.Bernoulli(logits=logits) if name == "bernoulli"
                  else torch.distributions.ContinuousBernoulli(logits=logits))
    assert_close(lik.log_prob(logits, x), torch_dist.log_prob(x).sum(-1))  # no clamping: -30 means -30 nats
    assert_close(lik(logits).log_prob(x), torch_dist.log_prob(x).sum(-1))


def test_gaussian_likelihoods_at_a_tiny_variance_equal_torch():
    lik = make_likelihood("normal-gamma", (3,), gamma=1e-8).double()
    mean = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    x = mean + 1e-4
    expected = torch.distributions.Normal(mean, math.sqrt(lik.gamma.item())).log_prob(x).sum(-1)
    assert_close(lik.log_prob(mean, x), expected)
    learned = make_likelihood("normal-learned", (3,)).double()
    with torch.no_grad():
        learned.log_scale.fill_(-500.0)  # far below the floor: finite, not NaN
    value = learned.log_prob(mean, mean)
    assert torch.isfinite(value).all()
    assert_close(value, torch.distributions.Normal(mean, 1e-9).log_prob(mean).sum(-1), rtol=1e-6, atol=1e-4)


def test_decoder_variance_falling_towards_zero_stays_finite():
    """Dai & Wipf: on data on a low-dimensional manifold, the learned gamma of 'normal-gamma' goes towards 0."""
    ring = pyro_vae.datasets.load("ring", num_samples=600)
    embed = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    x = ring @ embed  # a 1-dimensional curve in R^6
    vae = pyro_vae.VAE((6,), latent_dim=2, hidden_dims=(32,), likelihood="normal-gamma")
    log_gammas = []
    hist = pyro_vae.fit(vae, x, epochs=8, batch_size=30, lr=1e-2, seed=0, progress=False,
                        on_epoch_end=lambda r: log_gammas.append(vae.likelihood.log_gamma.item()))
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert all(b < a for a, b in zip(log_gammas, log_gammas[1:])) and log_gammas[-1] < -1.0, log_gammas
    # far past where float32 would underflow: exp(-200) = 0, so Normal(mu, sqrt(gamma)) would give inf/NaN
    with torch.no_grad():
        vae.likelihood.log_gamma.fill_(-200.0)
    assert torch.distributions.Normal(0.0, math.exp(0.5 * -200.0)).log_prob(torch.tensor(0.1)).isinf()
    assert 0 < vae.likelihood.gamma.item() and math.isclose(vae.likelihood.gamma.item(), 1e-12, rel_tol=1e-3)
    loss = objective_loss("elbo", vae.model, vae.guide, x[:60])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
    hist = pyro_vae.fit(vae, x, epochs=1, batch_size=60, seed=0, progress=False)
    assert math.isfinite(hist[0]["loss"])
    with torch.no_grad():  # above the floor's soft region the parameter is used as it is, bit for bit
        vae.likelihood.log_gamma.fill_(-3.0)
    assert vae.likelihood.gamma.item() == torch.tensor(-3.0).exp().item()

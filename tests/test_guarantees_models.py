"""Behaviours of the models, priors, likelihoods and data helpers that users rely on (issue 24): the flow prior
couples every dimension and is a density, the continuous Bernoulli's mean, hierarchical sampling draws every
layer, dynamic binarization draws afresh."""

import math

import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae.datasets import binarize
from pyro_vae.priors import FlowPrior


# ------------------------------------------------------------------------ 8. FlowPrior
def _flow(prior, z):
    for t in prior.transforms():
        z = t(z)
    return z


@pytest.mark.parametrize("latent_dim", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("num_flows", [2, 3])
def test_flow_prior_couples_every_latent_dimension(latent_dim, num_flows):
    """Between coupling layers a permutation moves the dimensions a layer leaves to its elementwise spline into the
    part the next layer conditions on: every output coordinate then depends on another input coordinate (an
    off-diagonal entry of the flow's Jacobian is non-zero in every row)."""
    torch.manual_seed(0)
    prior = FlowPrior(latent_dim, num_flows=num_flows).double()
    for z in torch.randn(3, latent_dim, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: _flow(prior, v), z)
        off = (jac - torch.diag(jac.diagonal())).abs().sum(1)
        assert bool((off > 1e-6).all()), f"output dimensions {(off <= 1e-6).nonzero().flatten().tolist()} see only " \
                                         "their own input: the coupling never reaches them"
        assert bool((jac.diagonal().abs() > 0).all())


def test_flow_prior_density_integrates_to_one_on_a_grid():
    torch.manual_seed(0)
    prior = FlowPrior(2, num_flows=3).double()
    with torch.no_grad():  # halved weights: smooth enough for a grid of spacing 0.06 (at random init the
        for p in prior.parameters():  # splines have spikes that only a much finer grid resolves)
            p.mul_(0.5)
    axis = torch.linspace(-7.0, 7.0, 241, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_p = prior.log_prob(grid)
    cell = (axis[1] - axis[0]) ** 2
    total = float(torch.logsumexp(log_p, 0).exp() * cell)
    assert total == pytest.approx(1.0, abs=2e-3)
    # and it is not the base density: the flow moved the mass
    base = torch.distributions.Normal(0.0, 1.0).log_prob(grid).sum(-1)
    assert float((log_p - base).abs().max()) > 0.1


# ------------------------------------------------------------------------ 9. the continuous Bernoulli's mean
def _cb_mean(logits):
    """The continuous Bernoulli's mean (Loaiza-Ganem & Cunningham 2019, eq. 6): ``p / (2p - 1) + 1 / (2
    artanh(1 - 2p))``, and 1/2 at ``p = 1/2``."""
    p = torch.sigmoid(logits)
    return p / (2 * p - 1) + 1 / (2 * torch.atanh(1 - 2 * p))


def test_continuous_bernoulli_mean_is_its_own_not_sigmoid():
    vae = pyro_vae.VAE((5,), latent_dim=2, hidden_dims=(8,), likelihood="continuous_bernoulli").double()
    torch.nn.init.normal_(vae.decoder.net[-1].bias, 0.0, 2.0)  # logits far from 0, where the two means differ
    x = torch.rand(6, 5, dtype=torch.float64)
    z_loc, _ = vae.encode(x)
    logits = vae.decoder(z_loc)
    assert_close(vae.reconstruct(x), _cb_mean(logits))
    z = torch.randn(4, 2, dtype=torch.float64)
    assert_close(vae.decode(z), _cb_mean(vae.decoder(z)))
    torch.manual_seed(2)
    drawn = vae.sample(4)
    torch.manual_seed(2)
    assert_close(drawn, _cb_mean(vae.decoder(vae.prior.sample(4))))
    assert float((_cb_mean(logits) - torch.sigmoid(logits)).abs().max().detach()) > 0.05
    # the mean by numerical integration of the density at one logit
    u = torch.linspace(0, 1, 20001, dtype=torch.float64)
    density = torch.distributions.ContinuousBernoulli(logits=torch.tensor(1.7, dtype=torch.float64)).log_prob(u).exp()
    assert float(torch.trapezoid(u * density, u)) == pytest.approx(float(_cb_mean(torch.tensor(1.7))), abs=1e-6)


# ------------------------------------------------------------------------ 10. HierarchicalVAE.sample
def test_hierarchical_sample_draws_every_layer():
    """``h2 ~ N(0, I)``, ``h1 | h2 ~ N(h2, s^2 I)`` and ``x`` the identity of ``h1`` (a Normal likelihood, so the
    sample's mean is ``h1``): the samples' variance is ``1 + s^2`` per dimension (1 if ``h1`` were its mean,
    ``s^2`` if ``h2`` were)."""
    s = 0.5
    vae = pyro_vae.HierarchicalVAE((2,), layers=((2,), (2,)), likelihood="normal").double()
    with torch.no_grad():
        prior_net = vae.priors[0].net[-1]  # h2 -> (loc, log scale) of h1
        prior_net.weight.zero_()
        prior_net.weight[:2, :2] = torch.eye(2)
        prior_net.bias.zero_()
        prior_net.bias[2:] = math.log(s)
        decoder = vae.decoder.net[-1]
        decoder.weight.copy_(torch.eye(2))
        decoder.bias.zero_()
    n = 20000
    samples = vae.sample(n)
    var = samples.var(0)
    expected = 1 + s**2
    stderr = expected * math.sqrt(2 / (n - 1))  # of a normal sample variance
    assert bool(((var - expected).abs() < 5 * stderr).all()), (var, expected, stderr)
    assert float(samples.mean(0).abs().max()) < 5 * math.sqrt(expected / n)


# ------------------------------------------------------------------------ 17. dynamic binarization
def test_binarize_draws_afresh_and_a_generator_makes_it_reproducible():
    p = torch.rand(200, 30)
    a, b = binarize(p), binarize(p)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and a.shape == p.shape and a.dtype == p.dtype
    assert not torch.equal(a, b)  # a fresh draw every call
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(binarize(p, g1), binarize(p, g2))
    assert not torch.equal(binarize(p, g1), binarize(p, torch.Generator().manual_seed(5)))
    # each pixel is Bernoulli(p): over 400 draws the mean is within 5 standard errors of p
    draws = torch.stack([binarize(p[:10]) for _ in range(400)])
    stderr = (p[:10] * (1 - p[:10]) / 400).sqrt()
    assert bool(((draws.mean(0) - p[:10]).abs() <= 5 * stderr + 1e-6).all())

"""Tests aimed at faults the suite used to miss: likelihoods at extreme parameters against torch's own
distributions, the direct terms against the traced ones on a VAE initialised on MNIST, a masked site scored by
hand, a latent dimension between the active-unit threshold and 0.1, and a learned scale with a floor."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from lingauss import assert_direct_equals_traced
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer
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


def test_direct_terms_equal_traced_terms_on_a_vae_initialised_on_mnist(data_root):
    x = pyro_vae.datasets.load("mnist", "train", root=data_root)[:64]
    vae = pyro_vae.VAE((1, 28, 28), latent_dim=10, hidden_dims=(64,)).double().init_output_bias(x)
    xb = torch.bernoulli(x.double(), generator=torch.Generator().manual_seed(0))
    assert_direct_equals_traced(vae, xb, "iwae")
    assert_direct_equals_traced(vae, xb, "elbo", num_particles=1)


def test_a_masked_site_is_scored_as_a_hand_computation():
    """Site "x" masked to its first two features: the weight counts only those, as computed by hand."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            mask = torch.tensor([True, True, False])
            pyro.sample("x", dist.Normal(z.unsqueeze(-1).expand(*z.shape, 3), 1.0).mask(mask).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x[..., 0], 0.7))

    x = torch.randn(4, 3, dtype=torch.float64)
    pyro.set_rng_seed(0)
    t = infer.importance_terms(model, guide, x, num_particles=5, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    z = dist.Normal(0.5 * x[..., 0], 0.7).sample((5,))  # the same draws
    by_hand = (torch.distributions.Normal(z.unsqueeze(-1), 1.0).log_prob(x)[..., :2].sum(-1)
               + torch.distributions.Normal(0.0, 1.0).log_prob(z)
               - torch.distributions.Normal(0.5 * x[..., 0], 0.7).log_prob(z))
    assert_close(t.log_weights, by_hand)


def test_latent_usage_counts_a_dimension_between_the_threshold_and_a_tenth():
    """Posterior means with variances 0.5, 0.05 and 0.001 over the data: two active units of three."""
    scales = torch.tensor([0.5, 0.05, 0.001]).sqrt()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * scales, 0.1).to_event(1))

    x = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0))
    usage = infer.latent_usage(model, guide, x, seed=0)["z"]
    assert usage["active_units"] == 2
    assert usage["mean_variance"][1] == pytest.approx(0.05, rel=0.05)

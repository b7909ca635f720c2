"""The Parzen-window (Gaussian KDE) baseline."""

import math

import pytest
import torch
from scipy import stats

from pyro_vae import infer
from pyro_vae.infer.kde import kde_log_density


def test_matches_a_gaussian_mixture_computed_by_scipy():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(30, 2, generator=g, dtype=torch.float64)
    test = torch.randn(7, 2, generator=g, dtype=torch.float64)
    sigma = 0.7
    ours = kde_log_density(train, test, sigma, batch_size=3)
    dens = sum(stats.multivariate_normal(mean=c.numpy(), cov=sigma**2).pdf(test.numpy()) for c in train) / 30
    torch.testing.assert_close(ours, torch.as_tensor(dens).log())


def test_bandwidth_chosen_on_validation_data():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(400, 3, generator=g)
    val = torch.randn(200, 3, generator=g)
    test = torch.randn(100, 4, 3, generator=g)[:, 0]
    r = infer.kde_log_likelihood(train, test, val_data=val, bandwidths=[0.05, 0.5, 5.0])
    assert r.bandwidth == 0.5
    assert set(r.validation) == {0.05, 0.5, 5.0}
    assert r.values.shape == (100,)
    # the true density N(0, I) is better than the KDE, but not by an order of magnitude at this size
    true = stats.multivariate_normal(mean=[0, 0, 0]).logpdf(test.numpy()).mean()
    assert true - 1.5 < r.mean < true + 0.3
    assert r.stderr > 0
    # without validation data, part of train is held out for the choice
    r2 = infer.kde_log_likelihood(train, test, num_validation=100)
    assert 0.05 < r2.bandwidth < 2 and r2.validation
    # a given bandwidth is used as is
    r3 = infer.kde_log_likelihood(train, test, bandwidth=0.3)
    assert r3.bandwidth == 0.3 and not r3.validation


def test_images_and_errors():
    train = torch.rand(50, 1, 4, 4)
    r = infer.kde_log_likelihood(train, torch.rand(5, 1, 4, 4), bandwidth=0.2)
    assert r.values.shape == (5,) and torch.isfinite(r.values).all()
    # d/2 log(2 pi sigma^2) dominates in 16 dimensions: a single kernel at the point itself
    one = kde_log_density(train[:1], train[:1], 0.2)
    assert one.item() == pytest.approx(-8 * math.log(2 * math.pi * 0.04))
    with pytest.raises(ValueError, match="bandwidth"):
        kde_log_density(train, train, 0.0)
    with pytest.raises(ValueError, match="differ"):
        kde_log_density(train, torch.rand(2, 3), 0.1)

"""The Parzen-window (Gaussian KDE) baseline."""

import math

import pytest
import torch
from scipy import stats
from torch.testing import assert_close

from pyro_vae import infer
from pyro_vae.infer.kde import kde_log_density, kde_log_likelihood


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


def test_the_bandwidth_is_chosen_on_held_out_points_of_a_documented_grid():
    """Without validation data the last ``min(num_validation, n // 2)`` training points are held out, scored under
    the density of the others for each of 25 bandwidths log-spaced from 0.01 to 1; the final estimate uses every
    training point."""
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(3000, 2, generator=g, dtype=torch.float64), torch.randn(7, 2, generator=g)
    result = kde_log_likelihood(train, test)  # num_validation 1000 of 3000 points
    grid = torch.logspace(-2, 0, 25).tolist()
    assert list(result.validation) == [float(s) for s in grid]
    for s in (grid[0], grid[12], grid[-1]):
        assert result.validation[float(s)] == pytest.approx(float(kde_log_density(train[:-1000], train[-1000:], s)
                                                                  .mean()), rel=1e-12)
    assert result.bandwidth == max(result.validation, key=result.validation.get)
    assert_close(result.values, kde_log_density(train, test, result.bandwidth))
    small = kde_log_likelihood(train[:10], test, bandwidths=[0.3, 0.5], num_validation=1000)  # holds out 10 // 2
    assert small.validation[0.3] == pytest.approx(float(kde_log_density(train[:5], train[5:10], 0.3).mean()))
    given = kde_log_likelihood(train[:10], test, val_data=train[10:20], bandwidths=[0.3], num_validation=4)
    assert given.validation[0.3] == pytest.approx(float(kde_log_density(train[:10], train[10:14], 0.3).mean()))


def test_one_training_point_needs_a_bandwidth_or_validation_data():
    one, test = torch.zeros(1, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="choosing the bandwidth needs validation data or at least 2 training points"):
        kde_log_likelihood(one, test)
    assert_close(kde_log_likelihood(one, test, 0.5).values, kde_log_density(one, test, 0.5))
    assert kde_log_likelihood(one, test, val_data=torch.zeros(2, 3), bandwidths=[0.5]).bandwidth == 0.5
    assert kde_log_likelihood(torch.zeros(2, 1), torch.ones(2, 1), bandwidths=[0.5]).bandwidth == 0.5

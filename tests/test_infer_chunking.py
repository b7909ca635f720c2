"""The one chunking rule: its numbers, and that the default chunks change how particles are grouped, never the
estimate (each estimator's output equals the one-pass formula on the very draws the chunks made)."""

import math

import numpy as np
import pytest
import torch
from lingauss import LinearGaussian
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer
from pyro_vae.infer import chunking


def test_the_rule_bounds_particles_times_values_per_pass():
    budget = chunking.PARTICLE_VALUES_BUDGET
    mnist = torch.zeros(100, 1, 28, 28)
    assert infer.particles_per_chunk(5000, mnist) == budget // (100 * 784) == 427
    assert infer.particles_per_chunk(5000, mnist.reshape(100, 784)) == 427  # the event shape's size, not its form
    assert infer.particles_per_chunk(50, mnist) == 50  # never more than K
    assert infer.particles_per_chunk(5000, torch.zeros(1, 784).expand(10 ** 6, 784)) == 1  # at least one
    # a datapoint of few values counts as MIN_VALUES_PER_DATAPOINT (the hidden layers are wider than the data)
    assert infer.particles_per_chunk(5000, torch.zeros(100, 4)) == budget // (100 * chunking.MIN_VALUES_PER_DATAPOINT)
    assert infer.particles_per_chunk(5000, None) == 5000
    assert infer.particles_per_chunk(5000, mnist, chunk_size=7) == 7  # the caller's choice wins
    assert infer.particles_per_chunk(5000, mnist, chunk_size=np.int64(7)) == 7
    for bad in (0, -3, 2.5, True, "7"):
        with pytest.raises(ValueError, match="chunk_size"):
            infer.particles_per_chunk(5000, mnist, chunk_size=bad)


class _Spy:
    """Wraps ``terms_producer`` in a module and records every pass's log weights."""

    def __init__(self, module, monkeypatch):
        self.passes: list[torch.Tensor] = []
        real = module.terms_producer

        def producer(*args, **kwargs):
            produce = real(*args, **kwargs)

            def recorded(k, **options):
                t = produce(k, **options)
                self.passes.append(t.log_weights.detach().clone())
                return t
            return recorded
        monkeypatch.setattr(module, "terms_producer", producer)

    @property
    def sizes(self) -> list[int]:
        return [p.shape[0] for p in self.passes]


@pytest.fixture
def small_budget(monkeypatch):
    """A budget of 7 particles for 10 datapoints of at most 512 values: the default makes several passes."""
    monkeypatch.setattr(chunking, "PARTICLE_VALUES_BUDGET", 7 * 10 * chunking.MIN_VALUES_PER_DATAPOINT)


@pytest.fixture
def vae_and_x():
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,))
    x = pyro_vae.datasets.load("digits", "test", num_samples=10).round()
    return vae, x


def test_default_iwae_bound_and_elbo_chunk_and_equal_the_one_pass_formula(small_budget, vae_and_x, monkeypatch):
    vae, x = vae_and_x
    spy = _Spy(infer.bounds, monkeypatch)
    iw = infer.iwae_bound(vae.model, vae.guide, x, num_particles=30)
    assert spy.sizes == [7, 7, 7, 7, 2]
    lw = torch.cat(spy.passes)
    assert_close(iw, torch.logsumexp(lw, 0) - math.log(30), rtol=1e-6, atol=1e-5)
    spy.passes.clear()
    el = infer.elbo(vae.model, vae.guide, x, num_particles=30)
    assert spy.sizes == [7, 7, 7, 7, 2]
    assert_close(el, torch.cat(spy.passes).mean(0), rtol=1e-6, atol=1e-5)


def test_default_log_likelihood_chunks_each_batch(small_budget, vae_and_x, monkeypatch):
    vae, x = vae_and_x
    spy = _Spy(infer.evaluate, monkeypatch)
    res = infer.log_likelihood(vae.model, vae.guide, x, num_particles=16, batch_size=5, progress=False,
                               diagnostics=False)
    # batches of 5 datapoints: 14 particles a pass
    assert spy.sizes == [14, 2, 14, 2]
    per_batch = [torch.cat(spy.passes[:2]), torch.cat(spy.passes[2:])]
    expected = torch.cat([torch.logsumexp(lw, 0) - math.log(16) for lw in per_batch])
    assert_close(res.values, expected, rtol=1e-6, atol=1e-5)
    assert_close(res.elbo, torch.cat([lw.mean(0) for lw in per_batch]), rtol=1e-6, atol=1e-5)


def test_default_importance_draws_chunk(small_budget, vae_and_x, monkeypatch):
    vae, x = vae_and_x
    spy = _Spy(infer.arviz, monkeypatch)
    log_w, log_lik, draws = infer.importance_draws(vae.model, vae.guide, x, 20)
    assert spy.sizes == [7, 7, 6]
    assert log_w.shape == log_lik.shape == (20, 10) and draws["z"].shape == (20, 10, 3)
    assert_close(log_w, torch.cat(spy.passes))


def test_exact_guide_is_exact_under_the_default_chunks(small_budget):
    """Every weight of the exact-posterior guide is log p(x): chunked or not, every estimator returns it."""
    lg = LinearGaussian()
    x = lg.data(10)
    exact = lg.exact(x)
    assert_close(infer.iwae_bound(lg.model, lg.guide, x, num_particles=50), exact, rtol=1e-6, atol=0)
    assert_close(infer.elbo(lg.model, lg.guide, x, num_particles=50), exact, rtol=1e-6, atol=0)
    res = infer.log_likelihood(lg.model, lg.guide, x, num_particles=50, batch_size=10, progress=False)
    assert_close(res.values.double(), exact, rtol=1e-6, atol=0)

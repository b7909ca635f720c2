"""SUMO (Luo et al. 2020): unbiased in log p(x), tested as TFP tests AIS, against the linear-Gaussian closed form."""

import math

import pyro
import pytest
import torch
from lingauss import LinearGaussian
from torch.testing import assert_close

from pyro_vae.infer import iwae_bound, sumo
from pyro_vae.infer.sumo import expected_series_length, sample_series_length, sumo_tail


def test_series_length_has_the_papers_tail():
    """The drawn lengths' empirical tail is P(K >= j) (1/j below alpha, geometric from alpha on), within four
    standard errors at every checked j, and their mean is H_{alpha-1} + 1/(alpha b)."""
    pyro.set_rng_seed(0)
    n = 200_000
    k = sample_series_length((n,))
    assert k.dtype == torch.int64 and int(k.min()) == 1
    for j in (1, 2, 3, 10, 50, 79, 80, 81, 100, 120):
        p = float(sumo_tail(torch.tensor(j)))
        freq = float((k >= j).double().mean())
        assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (j, freq, p)
    assert float(sumo_tail(torch.tensor(80))) == pytest.approx(1 / 80)
    assert float(sumo_tail(torch.tensor(90))) == pytest.approx(0.9 ** 10 / 80)
    assert expected_series_length() == pytest.approx(sum(1 / j for j in range(1, 80)) + 1 / 8)
    assert float(k.double().mean()) == pytest.approx(expected_series_length(), abs=4 * float(k.double().std())
                                                     / math.sqrt(n))


def test_exact_guide_gives_log_px_in_every_draw():
    """With the exact posterior every weight is p(x): IWAE_k = log p(x) for every k, every Delta is 0, and every
    SUMO draw equals log p(x) (its Monte Carlo error is 0)."""
    lg = LinearGaussian(dim=4, latent_dim=2)
    x = lg.data(6, seed=3)
    res = sumo(lg.model, lg.guide, x, num_particles_min=3, num_repeats=7, seed=1)
    assert res.samples.shape == (7, 6) and res.values.shape == (6,) and res.series_lengths.shape == (7, 6)
    assert_close(res.samples, lg.exact(x).expand(7, 6), rtol=0, atol=1e-9)
    assert float(res.mc_stderr.abs().max()) < 1e-9


@pytest.mark.slow
def test_unbiased_where_iwae_at_the_same_cost_is_not():
    """An approximate (shifted, widened mean-field) guide: the mean of 5000 SUMO draws per datapoint is within
    four Monte Carlo standard errors of the closed-form log p(x), per datapoint and pooled; IWAE_k with k the
    same expected number of particles, repeated as often, is biased by far more than four of its standard
    errors (so the test can tell an unbiased estimator from a biased one)."""
    lg = LinearGaussian(dim=4, latent_dim=2, shift=0.4, mean_field=True, scale_factor=1.5)
    x = lg.data(10, seed=1)
    truth = lg.exact(x)
    repeats, m = 5000, 4
    res = sumo(lg.model, lg.guide, x, num_particles_min=m, num_repeats=repeats, seed=0)
    z = (res.values - truth) / res.mc_stderr
    assert float(z.abs().max()) < 4.0, z
    assert abs(float(res.values.mean() - truth.mean())) < 4 * res.mean_mc_stderr
    k = round(res.expected_cost)
    assert k == round(m + expected_series_length())
    pyro.set_rng_seed(0)
    iw = iwae_bound(lg.model, lg.guide, x.repeat(repeats, 1), num_particles=k).reshape(repeats, -1)
    bias = float(truth.mean() - iw.mean())
    assert bias > 4 * float(iw.mean(1).std()) / math.sqrt(repeats)
    assert bias > 4 * res.mean_mc_stderr  # larger than SUMO's own error bar: SUMO's agreement means something


def test_seed_reproduces_and_result_reports():
    lg = LinearGaussian(dim=4, latent_dim=2, shift=0.3, mean_field=True)
    x = lg.data(5, seed=2)
    a = sumo(lg.model, lg.guide, x, num_particles_min=2, num_repeats=3, seed=5)
    b = sumo(lg.model, lg.guide, x, num_particles_min=2, num_repeats=3, seed=5)
    assert_close(a.samples, b.samples)
    c = sumo(lg.model, lg.guide, x, num_particles_min=2, num_repeats=3, seed=5, chunk_size=7)
    d = sumo(lg.model, lg.guide, x, num_particles_min=2, num_repeats=3, seed=5, chunk_size=7)
    assert_close(c.samples, d.samples)
    assert_close(c.series_lengths, a.series_lengths)  # drawn after the first m particles, in any chunking
    assert_close(a.values, a.samples.mean(0))
    assert_close(a.mc_stderr, a.samples.std(0) / math.sqrt(3))
    assert "SUMO" in a.summary() and a.num_repeats == 3
    assert a.expected_cost == pytest.approx(2 + expected_series_length())


def test_refuses_bad_options():
    lg = LinearGaussian(dim=4, latent_dim=2)
    x = lg.data(3)
    with pytest.raises(ValueError, match="num_particles"):
        sumo(lg.model, lg.guide, x, num_particles_min=0)
    with pytest.raises(ValueError, match="num_repeats"):
        sumo(lg.model, lg.guide, x, num_repeats=0)
    with pytest.raises(ValueError, match="decay"):
        sumo(lg.model, lg.guide, x, decay=1.0)


def test_runs_on_a_vae_with_gradients():
    """On a library VAE (its own producer of terms) the estimate is finite, and differentiable (Luo et al. train
    with it)."""
    from pyro_vae import VAE

    vae = VAE((6,), latent_dim=2, hidden_dims=(8,))
    x = torch.rand(4, 6).round()
    res = sumo(vae.model, vae.guide, x, num_particles_min=2, num_repeats=2, seed=0)
    assert bool(torch.isfinite(res.values).all())
    res.values.sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in vae.parameters())


def test_series_length_is_the_inverse_of_its_tail(monkeypatch):
    """``K = max{j : u < P(K >= j)}`` for fixed uniforms on each side of ``1/alpha`` (found by search over j)."""
    us = torch.tensor([0.9, 0.5, 0.3, 0.1, 1 / 79.5, 1 / 80.5, 0.5 / 80, 1e-6], dtype=torch.float64)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: us.reshape(shape))
    k = sample_series_length(tuple(us.shape))
    tails = sumo_tail(torch.arange(1, 2000))
    assert k.tolist() == [int((u < tails).nonzero().max()) + 1 for u in us]
    assert k.tolist()[:6] == [1, 1, 3, 9, 79, 80]


class _FixedWeights:
    """Stands for the engine's terms: ``produce(k)`` serves the next ``k`` rows of fixed float32 log weights."""

    def __init__(self, n):
        self.log_w = torch.randn(4000, n, generator=torch.Generator().manual_seed(0))
        self.asked = []

    def __call__(self, *args, **kwargs):
        def produce(k):
            start = sum(self.asked)
            self.asked.append(k)
            return type("Terms", (), {"log_weights": self.log_w[start:start + k]})

        return produce


def _sumo_module():
    import importlib

    return importlib.import_module("pyro_vae.infer.sumo")


def test_sumo_options_defaults_chunks_and_dtype(monkeypatch):
    module = _sumo_module()
    fixed = _FixedWeights(3)
    monkeypatch.setattr(module, "terms_producer", fixed)
    x = torch.zeros(3, 2)
    result = sumo(None, None, x, seed=0)
    assert (result.num_particles_min, result.num_repeats, result.alpha, result.decay) == (16, 10, 80, 0.1)
    assert result.values.dtype == result.mc_stderr.dtype == result.samples.dtype == torch.float32
    assert torch.isfinite(result.mc_stderr).all()
    fixed.asked.clear()
    result = sumo(None, None, x, num_particles_min=2, num_repeats=1, alpha=1, decay=0.5, chunk_size=3, seed=0)
    total = 2 + int(result.series_lengths.max())
    assert fixed.asked == [2] + [3] * ((total - 2) // 3) + ([(total - 2) % 3] if (total - 2) % 3 else [])
    assert result.num_repeats == 1 and torch.isnan(result.mc_stderr).all()  # one repeat: no spread to measure
    for bad in (dict(num_repeats=0), dict(alpha=0), dict(decay=0.0), dict(decay=1.0), dict(chunk_size=0)):
        with pytest.raises(ValueError):
            sumo(None, None, x, **bad)

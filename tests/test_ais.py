"""AIS and BDMC against exact answers: the exact-posterior guide, closed-form log p(x) (linear-Gaussian, a
constrained latent, two latent sites, an inner plate), the sandwich on simulated data, honest Monte Carlo errors,
and the paired comparison."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from lingauss import LinearGaussian, inner_plate_pair
from torch.testing import assert_close

from pyro_vae import infer


def _within(values, exact, mc_stderr, slack=0.05):
    """The mean error is within four combined Monte Carlo standard errors (plus a small slack for AIS bias)."""
    err = float((values - exact).double().mean())
    tol = 4 * float(mc_stderr.double().pow(2).sum().sqrt() / mc_stderr.numel()) + slack
    assert abs(err) < tol, (err, tol)


@pytest.mark.parametrize("schedule", ["sigmoid", "linear", "geometric"])
def test_exact_posterior_guide_gives_log_px_exactly(schedule):
    lg = LinearGaussian()
    x = lg.data(7)
    r = infer.ais(lg.model, lg.guide, x, num_chains=3, num_steps=6, num_leapfrog=2, schedule=schedule, seed=0)
    assert r.values.shape == (7,) and r.log_weights.shape == (3, 7) and r.mc_stderr.shape == (7,)
    assert_close(r.values, lg.exact(x))  # each increment is (b_t - b_{t-1}) log p(x): exact for any chain
    assert r.acceptance_rate.shape == (7,) and r.step_size.shape == (7,)


@pytest.mark.parametrize("proposal", ["guide", "prior"])
def test_ais_converges_to_the_closed_form(proposal):
    lg = LinearGaussian(shift=0.4, mean_field=True, scale_factor=0.8)
    x = lg.data(12, seed=1)
    r = infer.ais(lg.model, lg.guide, x, num_chains=16, num_steps=150, num_leapfrog=4, proposal=proposal, seed=0)
    _within(r.values, lg.exact(x), r.mc_stderr)
    assert 0.3 < float(r.acceptance_rate.mean()) < 0.95
    iw = infer.iwae_bound(lg.model, lg.guide, x, num_particles=16)
    assert float((r.values - lg.exact(x)).abs().mean()) < float((iw - lg.exact(x)).abs().mean()) + 0.05


def test_subsampled_plate_stays_per_datapoint():
    lg = LinearGaussian(shift=0.3, mean_field=True)
    x = lg.data(6)
    a = infer.ais(lg.model, lg.guide, x, num_chains=4, num_steps=20, seed=3)
    b = infer.ais(lg.model, lg.guide, x, full_size=600, num_chains=4, num_steps=20, seed=3)
    assert_close(a.values, b.values)  # the plate's scale 100 changes nothing


def test_constrained_latent_moves_in_the_unconstrained_space():
    """z ~ LogNormal(0, 0.5), x | z ~ Normal(log z, 0.3): log z ~ N(0, 0.25), so x ~ N(0, 0.25 + 0.09)."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(x.new_zeros(()), 0.5))
            pyro.sample("x", dist.Normal(z.log(), 0.3), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(0.5 * x, 0.4))

    x = torch.randn(15, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.6
    exact = dist.Normal(0.0, math.sqrt(0.34)).log_prob(x)
    r = infer.ais(model, guide, x, num_chains=16, num_steps=100, num_leapfrog=4, seed=0)
    _within(r.values, exact, r.mc_stderr)


def test_two_latent_sites_and_an_inner_plate():
    model, guide, exact_log_prob = inner_plate_pair()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    r = infer.ais(model, guide, x, num_chains=16, num_steps=100, num_leapfrog=4, seed=0)
    assert r.values.shape == (10,)
    _within(r.values, exact_log_prob(x), r.mc_stderr)


def test_discrete_latents_and_bad_options_are_refused_before_any_work():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(x.new_full((), 0.5)))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(x.new_full((), 0.5)))

    with pytest.raises(ValueError, match="discrete"):
        infer.ais(model, guide, torch.randn(4), num_chains=2, num_steps=3)
    lg = LinearGaussian()
    for kwargs, match in (({"num_chains": 0}, "num_chains"), ({"num_steps": 2.5}, "num_steps"),
                          ({"proposal": "posterior"}, "proposal"), ({"schedule": "cubic"}, "schedule"),
                          ({"step_size": -1.0}, "step_size"), ({"target_accept": 1.5}, "target_accept")):
        with pytest.raises(ValueError, match=match):
            infer.ais(lg.model, lg.guide, lg.data(3), **kwargs)


def test_bdmc_sandwiches_log_px_and_the_gap_closes_with_more_steps():
    lg = LinearGaussian(shift=0.4, mean_field=True, scale_factor=0.8)
    template = lg.data(12)
    gaps = []
    for steps in (5, 100):
        b = infer.bdmc(lg.model, lg.guide, template, num_chains=8, num_steps=steps, num_leapfrog=4, seed=1)
        exact = lg.exact(b.x)
        assert b.x.shape == template.shape and not torch.equal(b.x, template)
        mc = float(b.gap_mc_stderr.pow(2).sum().sqrt() / 12)
        assert float((b.lower - exact).mean()) < 4 * mc + 0.05  # forward: below log p(x)
        assert float((b.upper - exact).mean()) > -4 * mc - 0.05  # reverse: above it
        gaps.append(float(b.gap.mean()))
    assert gaps[1] < gaps[0] and gaps[1] < 0.5, gaps
    assert "BDMC" in b.summary()


@pytest.mark.slow
def test_reported_monte_carlo_error_matches_the_spread_of_repeated_runs():
    """Where the weights have finite variance (a guide wider than the posterior), the error measured from groups
    of chains (or particles) matches the spread of independent repeated estimates."""
    lg = LinearGaussian(shift=0.3, mean_field=True, scale_factor=1.5)
    x = lg.data(30, seed=2)
    runs = [infer.ais(lg.model, lg.guide, x, num_chains=16, num_steps=5, num_leapfrog=2, seed=s) for s in range(10)]
    values = torch.stack([r.values for r in runs])  # (runs, N)
    empirical = values.var(0).mean()
    reported = torch.stack([r.mc_stderr.pow(2) for r in runs]).mean()
    assert 0.4 < float(reported / empirical) < 2.5, (float(reported), float(empirical))
    # the same for IWAE's replicate-based error in log_likelihood
    res = [infer.log_likelihood(lg.model, lg.guide, x, num_particles=40, seed=s, diagnostics=False,
                                progress=False) for s in range(10)]
    empirical = torch.stack([r.values for r in res]).var(0).mean()
    reported = torch.stack([r.mc_stderr.pow(2) for r in res]).mean()
    assert 0.4 < float(reported / empirical) < 2.5, (float(reported), float(empirical))


def test_log_likelihood_method_ais_and_paired_comparison():
    lg = LinearGaussian(shift=0.4, mean_field=True, scale_factor=0.8)
    x = lg.data(9)
    r = infer.log_likelihood(lg.model, lg.guide, x, method="ais", batch_size=4, num_chains=4, num_steps=10,
                             seed=5)
    assert isinstance(r, infer.AISResult) and r.values.shape == (9,)
    again = infer.ais(lg.model, lg.guide, x[:4], num_chains=4, num_steps=10,
                      seed=pyro_vae_derive(5, 0))
    assert_close(r.values[:4], again.values)
    iw = infer.log_likelihood(lg.model, lg.guide, x, num_particles=100, seed=5, progress=False)
    assert iw.mc_stderr is not None and iw.mc_stderr.shape == (9,) and "Monte Carlo" in iw.summary()
    c = infer.compare(r, iw)
    assert_close(c.difference, (r.values - iw.values).double())
    assert c.ci_low < c.mean < c.ci_high and math.isfinite(c.mc_stderr)
    zero = infer.compare(iw, iw)
    assert zero.mean == 0.0 and zero.stderr == 0.0
    # two models whose exact difference is known: the interval covers it
    other = LinearGaussian(shift=0.4, mean_field=True, scale_factor=0.8)
    other.params = (other.params[0] * 1.3, other.params[1], other.params[2])
    ra = infer.log_likelihood(lg.model, lg.guide, x, num_particles=2000, seed=1, progress=False)
    exact_other = infer.log_likelihood(other.model, other.model_guide if hasattr(other, "model_guide") else
                                       other.guide, x, num_particles=2000, seed=1, progress=False)
    c = infer.compare(ra, exact_other)
    truth = float((lg.exact(x) - dist.MultivariateNormal(
        other.params[1], other.params[0] @ other.params[0].T
        + other.params[2] ** 2 * torch.eye(x.shape[1], dtype=x.dtype)).log_prob(x)).mean())
    assert c.ci_low - 0.1 < truth < c.ci_high + 0.1, (c.summary(), truth)
    with pytest.raises(ValueError, match="same datapoints"):
        infer.compare(r, iw.values[:5])
    with pytest.raises(ValueError, match="method"):
        infer.log_likelihood(lg.model, lg.guide, x, method="exact")


def pyro_vae_derive(seed, b):
    from pyro_vae.distributed import derive_seed

    return derive_seed(seed, b)

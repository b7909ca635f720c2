"""Behaviours of :mod:`pyro_vae.infer` that users rely on, each pinned by an exact answer or a tolerance from a
standard error (issue 24: masked latents, beta with discrete latents, per-batch seeding, Monte Carlo errors,
subsampled quadrature)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from lingauss import LinearGaussian
from pyro import poutine
from torch.testing import assert_close

import pyro_vae
from pyro_vae.datasets import linear_gaussian_log_prob
from pyro_vae.distributed import derive_seed
from pyro_vae.infer import (
    exact_log_likelihood,
    iwae_bound,
    log_importance_weights,
    log_likelihood,
    replicate_stderr,
)
from pyro_vae.infer.objectives import objective_loss  # the one internal name: an objective's loss of a batch


# ------------------------------------------------------------------------ 1. a masked latent site
def _masked_pair(model_mask, guide_mask):
    """``z ~ N(0, 1)``, ``x ~ N(z, 1)``; the latent site masked in the model and/or the guide; the guide's draws
    are kept so the weights can be computed by hand."""
    draws = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=model_mask) if model_mask is not None else poutine.mask(mask=True):
                z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=guide_mask) if guide_mask is not None else poutine.mask(mask=True):
                draws.append(pyro.sample("z", dist.Normal(0.5 * x, 0.8)))

    return model, guide, draws


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("where", ["model", "guide", "both"])
def test_masked_latent_site_weighs_each_datapoint_as_its_mask_says(num_particles, where):
    x = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4], dtype=torch.float64)
    mask = torch.tensor([True, False, True, False, False])
    model, guide, draws = _masked_pair(mask if where in ("model", "both") else None,
                                       mask if where in ("guide", "both") else None)
    log_w = log_importance_weights(model, guide, x, num_particles=num_particles, max_plate_nesting=1)
    assert log_w.shape == (num_particles, 5)
    z = draws[-1].reshape(num_particles, 5)
    m = mask.to(x.dtype)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z) * (m if where in ("model", "both") else 1.0)
    log_guide = dist.Normal(0.5 * x, 0.8).log_prob(z) * (m if where in ("guide", "both") else 1.0)
    expected = dist.Normal(z, 1.0).log_prob(x) + log_prior - log_guide
    assert_close(log_w, expected)


# ------------------------------------------------------------------------ 2. mean-field: beta on the closed-form KL
@pytest.mark.parametrize("beta", [0.0, 0.3, 2.5])
def test_mean_field_loss_is_distortion_plus_beta_times_closed_form_kl(beta):
    """The library VAE (its own producer of terms): ``loss = -sum log p(x|z) + beta * sum KL(q || N(0, I))``, the
    distortion from the same draw (same seed)."""
    vae = pyro_vae.VAE((6,), latent_dim=3, hidden_dims=(8,), likelihood="normal").double()
    x = torch.randn(7, 6, dtype=torch.float64)
    pyro.set_rng_seed(3)
    loss = objective_loss("mean-field", vae.model, vae.guide, x, num_particles=2, beta=beta)
    pyro.set_rng_seed(3)
    log_lik = pyro_vae.infer.importance_terms(vae.model, vae.guide, x, num_particles=2).log_likelihood
    loc, scale = vae.encode(x)
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)  # KL(N(loc, scale^2) || N(0, 1)), by hand
    assert_close(loss, -(log_lik.sum() / 2) + beta * kl.sum())


# ------------------------------------------------------------------------ 3. beta with a discrete latent
def test_score_function_term_uses_the_beta_weighted_bound():
    """``z ~ Bernoulli`` in the guide: with ``beta`` the ELBO's per-datapoint bound is ``f = log p(x|z) + beta (log
    p(z) - log q(z))`` and the guide's gradient is ``E[grad f + f grad log q] = E[(f - beta) grad log q]`` (the
    direct part ``-beta grad log q``); the single-sample estimate of it by hand, for the same draw."""
    beta = 0.4
    x = torch.tensor([0.2, 1.5, -0.7, 2.2], dtype=torch.float64)
    logits = torch.tensor([0.3, -0.8, 1.1, 0.0], dtype=torch.float64, requires_grad=True)
    draws = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((), 0.3)))
            pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            draws.append(pyro.sample("z", dist.Bernoulli(logits=logits)))

    loss = objective_loss("elbo", model, guide, x, beta=beta, max_plate_nesting=1)
    (grad,) = torch.autograd.grad(loss, logits)
    z = draws[-1].detach()
    q = dist.Bernoulli(logits=logits.detach())
    f = dist.Normal(2.0 * z, 1.0).log_prob(x) + beta * (dist.Bernoulli(0.3).log_prob(z) - q.log_prob(z))
    grad_log_q = z - torch.sigmoid(logits.detach())  # d/dlogits log Bernoulli(z; logits)
    assert_close(loss, -f.sum())
    # -(grad f + (f + beta) grad log q): the ELBO adds beta to the cost, cancelling grad f = -beta grad log q
    assert_close(grad, -(f * grad_log_q))
    log_w = f + (1 - beta) * (dist.Bernoulli(0.3).log_prob(z) - q.log_prob(z))  # the unweighted bound
    assert not torch.allclose(-(log_w * grad_log_q), -(f * grad_log_q))  # what the unweighted cost would give


# ------------------------------------------------------------------------ 4. per-batch seeds
def test_log_likelihood_seed_draws_each_batch_afresh():
    """Two batches of identical data get different draws; the same seed gives the same result; a batch's values
    do not depend on what came before it (batch b is seeded from (seed, b) alone)."""
    lg = LinearGaussian(shift=0.4)
    x = lg.data(6)
    twice = torch.cat([x, x])
    kw = dict(num_particles=7, batch_size=6, diagnostics=False, progress=False, max_plate_nesting=1)
    res = log_likelihood(lg.model, lg.guide, twice, seed=5, **kw)
    assert not torch.equal(res.values[:6], res.values[6:])
    assert (res.values[:6] - res.values[6:]).abs().min() > 0  # every datapoint drew afresh
    again = log_likelihood(lg.model, lg.guide, twice, seed=5, **kw)
    assert torch.equal(res.values, again.values)
    other_first = torch.cat([lg.data(6, seed=9), x])  # another first batch: the second batch is unchanged
    assert torch.equal(log_likelihood(lg.model, lg.guide, other_first, seed=5, **kw).values[6:], res.values[6:])
    pyro.set_rng_seed(123)  # the global state before the call does not matter either
    assert torch.equal(log_likelihood(lg.model, lg.guide, twice, seed=5, **kw).values, res.values)
    # as documented: batch b is drawn after seeding with derive_seed(seed, b), whatever ran before it (so any split
    # of the batches over processes gives the same values; tests/test_guarantees_distributed.py runs 2 processes)
    for b in (1, 0):
        pyro.set_rng_seed(derive_seed(5, b))
        expected = iwae_bound(lg.model, lg.guide, x, num_particles=7, max_plate_nesting=1)
        assert_close(res.values[6 * b:6 * (b + 1)], expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ 5. the Monte Carlo error of the mean
def test_mean_mc_stderr_combines_the_datapoints_errors():
    lg = LinearGaussian(shift=0.6, mean_field=True, scale_factor=1.3)
    x = lg.data(20)
    kw = dict(num_particles=200, batch_size=20, diagnostics=False, progress=False, max_plate_nesting=1)
    res = log_likelihood(lg.model, lg.guide, x, seed=0, **kw)
    per = res.mc_stderr.double()
    assert per.shape == (20,) and bool((per > 0).all())
    assert res.mean_mc_stderr == pytest.approx(float(per.pow(2).sum().sqrt() / 20), rel=1e-12)
    assert res.as_dict()["log_likelihood_mc_stderr"] == res.mean_mc_stderr
    # against the spread of repeated runs: R independent means; their sample sd has relative error 1/sqrt(2(R-1))
    runs = 40
    means, errors = [], []
    for seed in range(1, runs + 1):
        r = log_likelihood(lg.model, lg.guide, x, seed=seed, **kw)
        means.append(r.mean)
        errors.append(r.mean_mc_stderr)
    spread = float(torch.tensor(means, dtype=torch.float64).std())
    reported = float(torch.tensor(errors).mean())
    rel = 1 / math.sqrt(2 * (runs - 1))
    # 4 standard errors of the sd, plus 15% for the delta method's bias at 20 particles a group
    assert abs(spread / reported - 1) < 4 * rel + 0.15, (spread, reported)


# ------------------------------------------------------------------------ 6. replicate_stderr
def test_replicate_stderr_is_the_unbiased_spread_of_group_means():
    log_w = torch.log(torch.tensor([[1.0, 4.0], [3.0, 2.0], [2.0, 6.0], [6.0, 1.0], [5.0, 3.0], [1.0, 5.0],
                                    [9.0, 9.0]], dtype=torch.float64))  # K = 7: 3 groups of 2, the 7th left out
    means = torch.tensor([[2.0, 3.0], [4.0, 3.5], [3.0, 4.0]], dtype=torch.float64)  # group means by hand
    centred = means - means.mean(0)
    expected = (centred.pow(2).sum(0) / 2).sqrt() / math.sqrt(3) / means.mean(0)  # ddof 1
    assert_close(replicate_stderr(log_w, 3), expected)
    assert_close(replicate_stderr(log_w, 3), torch.tensor([1 / 3**0.5 / 3, (1 / 12) ** 0.5 / 3.5], dtype=torch.float64))
    assert bool(replicate_stderr(log_w, 1).isnan().all())  # one group: no spread to measure


# ------------------------------------------------------------------------ 7. exact_log_likelihood, subsampled plate
def test_exact_log_likelihood_scores_one_subsample_over_all_chunks():
    lg = LinearGaussian(dim=3, latent_dim=1)
    W, b, sigma = lg.params
    full = lg.data(40)
    seen = []

    def model(x_all):
        with pyro.plate("data", x_all.shape[0], subsample_size=6) as idx:
            seen.append(idx.clone())
            z = pyro.sample("z", dist.Normal(x_all.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x_all[idx])

    out = exact_log_likelihood(model, full, num_points=2001, chunk_size=200, bounds=(-9.0, 9.0))
    scored = seen[1:]  # the first call finds the latent site and the subsample
    assert len(scored) == 11  # 2001 points in chunks of 200
    assert all(torch.equal(idx, seen[0]) for idx in scored)
    assert_close(out, linear_gaussian_log_prob(full[seen[0]], lg.params), atol=1e-6, rtol=0)

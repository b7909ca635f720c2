"""The site contract as a user's own pair meets it (issue 23): what breaks under the particle dimension is named, a
data plate of another name is suggested, and what the engine accepts (observed sites of any names and number,
discrete latents, sequential latents) gives exact answers where ``log p(x)`` is closed-form."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import infer


class ViewPair:
    """A hand-written pair whose decoder input is ``z.view(N, -1)`` (``flat=False``): fine with one particle,
    broken under the particle plate; ``flat=True`` writes ``z.reshape(*z.shape[:-1], -1)`` instead."""

    def __init__(self, flat: bool = False) -> None:
        self.flat = flat
        self.decoder = nn.Linear(2, 4)
        self.encoder = nn.Linear(4, 4)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            h = z.reshape(*z.shape[:-1], -1) if self.flat else z.view(n, -1)
            pyro.sample("x", dist.Normal(self.decoder(h), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_view_over_the_batch_trains_then_log_likelihood_names_the_particle_rule() -> None:
    pair = ViewPair()
    x = torch.randn(40, 4)
    history = pyro_vae.fit(pair, x, epochs=1, batch_size=20, device="cpu", progress=False)  # one particle: fine
    assert len(history) == 1
    with pytest.raises(RuntimeError, match="leading particle dimension") as info:
        infer.log_likelihood(pair.model, pair.guide, x, num_particles=10, progress=False, diagnostics=False)
    message = str(info.value)
    assert "z.reshape(*z.shape[:-1], ...)" in message and "flatten(-k)" in message and "z.view(N, -1)" in message
    assert "mat1 and mat2" in message  # what torch said, kept in the message's first line ...
    assert isinstance(info.value.__cause__, RuntimeError) and "mat1 and mat2" in str(info.value.__cause__)  # ... and
    # as the cause; the fixed pair evaluates
    fixed = ViewPair(flat=True)
    fixed.decoder, fixed.encoder = pair.decoder, pair.encoder
    res = infer.log_likelihood(fixed.model, fixed.guide, x, num_particles=10, progress=False, diagnostics=False)
    assert res.values.shape == (40,) and bool(torch.isfinite(res.values).all())


def test_other_errors_under_the_particle_plate_are_left_alone() -> None:
    """Only shape errors get the rule; any other error of the user's code surfaces as itself."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            raise RuntimeError("my own bug")

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    with pytest.raises(RuntimeError, match="^my own bug$"):
        infer.iwae_bound(model, guide, torch.randn(5, 4), num_particles=3, max_plate_nesting=1)


def _batch_plate_pair(plate: str):
    """``z ~ N(0, 1)``, ``x | z ~ N(z, 1)`` for ``x`` of shape ``(N, 1)``, the guide the exact posterior."""
    def model(x):
        with pyro.plate(plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate(plate, x.shape[0]):
            shift = pyro.param("shift", lambda: x.new_zeros(()))  # 0 until trained: the exact posterior
            pyro.sample("z", dist.Normal(x / 2 + shift, math.sqrt(0.5)).to_event(1))

    return model, guide


def test_a_data_plate_of_another_name_is_suggested() -> None:
    model, guide = _batch_plate_pair("batch")
    x = torch.randn(6, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"data_plate='batch'"):
        infer.elbo(model, guide, x)
    with pytest.raises(ValueError, match=r"data_plate='batch'"):
        pyro_vae.fit(type("Pair", (), {"model": staticmethod(model), "guide": staticmethod(guide)})(), x, epochs=1,
                     batch_size=3, device="cpu", progress=False)
    pyro.clear_param_store()
    # with the name given, the exact posterior gives log p(x) = log N(x; 0, 2) for every particle
    got = infer.iwae_bound(model, guide, x, num_particles=7, data_plate="batch")
    torch.testing.assert_close(got, dist.Normal(0.0, math.sqrt(2.0)).log_prob(x[:, 0]))


# ------------------------------------------------------------------ what the engine accepts, with exact answers
def test_an_observation_site_of_any_name_a_discrete_latent() -> None:
    """``c ~ Bernoulli(0.3)``, ``x | c ~ N(mu_c, 1)`` observed at a site named ``"obs"``; the guide is the exact
    posterior ``q(c | x)`` (a discrete site, no ``rsample``): every estimate is ``log p(x)`` for every K."""
    mu = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    prior = torch.tensor(0.3, dtype=torch.float64)

    def log_joint(x):  # (2, N): log p(x, c) for c = 0, 1
        log_pc = torch.stack([(1 - prior).log(), prior.log()])
        return log_pc[:, None] + dist.Normal(mu[:, None], 1.0).log_prob(x)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(prior))
            pyro.sample("obs", dist.Normal(mu[c.long()], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=log_joint(x)[1] - log_joint(x)[0]))

    x = torch.tensor([-1.5, 0.2, 0.5, 3.0], dtype=torch.float64)
    exact = torch.logsumexp(log_joint(x), 0)
    for k in (1, 5):
        torch.testing.assert_close(infer.iwae_bound(model, guide, x, num_particles=k), exact)
    torch.testing.assert_close(infer.elbo(model, guide, x, num_particles=3), exact)
    res = infer.log_likelihood(model, guide, x, num_particles=20, progress=False, diagnostics=False)
    torch.testing.assert_close(res.values, exact)


def test_several_observed_sites_and_sequential_latents() -> None:
    """A linear-Gaussian chain written as a Python loop: ``z_t ~ N(a z_{t-1}, 1)`` and ``x_t ~ N(z_t, s^2)``,
    each ``x_t`` its own observed site ``obs_t``. The guide samples the exact posterior step by step (``z_t`` given
    the ``z`` before it), so every importance weight is ``log p(x)``, closed-form: ``x ~ N(0, C + s^2 I)``."""
    T, a, s = 3, 0.8, 0.5
    A = torch.eye(T, dtype=torch.float64) - a * torch.diag(torch.ones(T - 1, dtype=torch.float64), -1)
    C = torch.linalg.inv(A) @ torch.linalg.inv(A).T  # Cov(z)
    P = torch.linalg.inv(torch.linalg.inv(C) + torch.eye(T, dtype=torch.float64) / s**2)  # Cov(z | x)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = x.new_zeros(())
            for t in range(T):
                z = pyro.sample(f"z_{t}", dist.Normal(a * z, 1.0))
                pyro.sample(f"obs_{t}", dist.Normal(z, s), obs=x[..., t])

    def guide(x):
        m = x @ P.T / s**2  # E[z | x], (N, T)
        zs: list[torch.Tensor] = []
        with pyro.plate("data", x.shape[0]):
            for t in range(T):
                coef = torch.linalg.solve(P[:t, :t], P[:t, t]) if t else P.new_zeros(0)
                var = P[t, t] - (P[t, :t] @ coef if t else 0.0)
                loc = m[:, t] + (torch.stack(zs, -1) - m[:, :t]) @ coef if t else m[:, t]
                zs.append(pyro.sample(f"z_{t}", dist.Normal(loc, var.sqrt())))

    x = torch.randn(5, T, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = dist.MultivariateNormal(x.new_zeros(T), C + s**2 * torch.eye(T, dtype=torch.float64)).log_prob(x)
    log_w = infer.log_importance_weights(model, guide, x, num_particles=6)
    assert log_w.shape == (6, 5)
    torch.testing.assert_close(log_w, exact.expand(6, 5))
    res = infer.log_likelihood(model, guide, x, num_particles=8, progress=False, diagnostics=False)
    torch.testing.assert_close(res.values, exact)


def test_bdmc_is_the_one_estimator_that_needs_the_site_named_x() -> None:
    """BDMC simulates the data from the model, so it must know which observed site the data are: ``"x"``."""
    model, guide = _batch_plate_pair("data")

    def renamed(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    x = torch.randn(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="'x'"):
        infer.bdmc(renamed, guide, x, num_chains=2, num_steps=2, num_leapfrog=1)
    assert infer.bdmc(model, guide, x, num_chains=2, num_steps=2, num_leapfrog=1).lower.shape == (4,)

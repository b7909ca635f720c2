"""Enumerated guide sites summed exactly in every objective and estimator, against closed forms.

The pair: ``y ~ Categorical(pi)``, ``z ~ N(0, I_2)``, ``x | y, z ~ N(W z + b_y, sigma^2 I_4)``, so
``p(x) = sum_y pi_y N(x; b_y, W W^T + sigma^2 I)``; the guide is ``q(y | x) q(z | x, y)`` with any ``q(y | x)`` and
``q(z | x, y)`` the exact ``p(z | x, y)`` (or shifted from it).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

from pyro_vae import infer
from pyro_vae.infer.objectives import objective_loss

C, D, L, SIGMA = 3, 4, 2, 0.7


class Mixture:
    def __init__(self, shift=0.0, enumerate=True, learn=False, full_size=None):
        g = torch.Generator().manual_seed(0)
        self.W0 = torch.randn(D, L, generator=g, dtype=torch.float64)
        self.b0 = 2.0 * torch.randn(C, D, generator=g, dtype=torch.float64)
        self.A0 = torch.randn(D, C, generator=g, dtype=torch.float64)
        self.pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
        self.shift, self.enumerate, self.learn, self.full_size = shift, enumerate, learn, full_size

    def plate(self, x):
        if self.full_size is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.full_size, subsample=torch.arange(x.shape[0]))

    def params(self):
        if not self.learn:
            return self.W0, self.b0, self.A0, torch.tensor(self.shift, dtype=torch.float64)
        return (pyro.param("W", self.W0), pyro.param("b", self.b0), pyro.param("A", self.A0),
                pyro.param("shift", torch.tensor(self.shift, dtype=torch.float64)))

    def model(self, x):
        W, b, _, _ = self.params()
        with self.plate(x):
            y = pyro.sample("y", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b[y], SIGMA).to_event(1), obs=x)

    def guide(self, x):
        W, b, A, shift = self.params()
        cov = torch.linalg.inv(torch.eye(L, dtype=x.dtype) + W.T @ W / SIGMA**2)
        with self.plate(x):
            y = pyro.sample("y", dist.Categorical(logits=x @ A),
                            infer={"enumerate": "parallel"} if self.enumerate else {})
            loc = (x - b[y]) @ W / SIGMA**2 @ cov + shift
            pyro.sample("z", dist.MultivariateNormal(loc, cov))

    def exact(self, x):
        cov = self.W0 @ self.W0.T + SIGMA**2 * torch.eye(D, dtype=x.dtype)
        comp = dist.MultivariateNormal(self.b0, cov).log_prob(x.unsqueeze(-2))  # (N, C)
        return torch.logsumexp(comp + self.pi.log(), -1)

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(self.pi, n, replacement=True, generator=g)
        z = torch.randn(n, L, generator=g, dtype=torch.float64)
        return z @ self.W0.T + self.b0[y] + SIGMA * torch.randn(n, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 2, 7])
def test_exact_z_guide_gives_log_px_for_every_k(k):
    """Exact q(z | x, y), any q(y | x): every summed weight is p(x), so IWAE_K, log_likelihood and SUMO equal the
    closed form for every K; without enumeration the same guide samples y and its IWAE_K is not exact."""
    pair = Mixture()
    x = pair.data(8)
    truth = pair.exact(x)
    assert_close(infer.log_importance_weights(pair.model, pair.guide, x, num_particles=k), truth.expand(k, 8))
    assert_close(infer.iwae_bound(pair.model, pair.guide, x, num_particles=k, chunk_size=2), truth)
    res = infer.log_likelihood(pair.model, pair.guide, x, num_particles=max(k, 2), batch_size=3, progress=False,
                               diagnostics=False)
    assert_close(res.values, truth)
    assert_close(infer.sumo(pair.model, pair.guide, x, num_particles_min=k, num_repeats=2, seed=0).values, truth)
    sampled = Mixture(enumerate=False)
    iw = infer.iwae_bound(sampled.model, sampled.guide, x, num_particles=k)
    assert float((iw - truth).abs().max()) > 1e-3


def test_elbo_is_the_exact_expectation_over_y():
    """With the exact q(z | x, y) the enumerated ELBO is log p(x) - KL(q(y|x) || p(y|x)), in closed form for every
    draw of z: the sum over y is exact, only q(y | x) is approximate."""
    pair = Mixture()
    x = pair.data(8)
    cov = pair.W0 @ pair.W0.T + SIGMA**2 * torch.eye(D, dtype=x.dtype)
    log_joint_y = dist.MultivariateNormal(pair.b0, cov).log_prob(x.unsqueeze(-2)) + pair.pi.log()  # (N, C)
    log_post_y = log_joint_y - torch.logsumexp(log_joint_y, -1, keepdim=True)
    log_q_y = torch.log_softmax(x @ pair.A0, -1)
    kl = (log_q_y.exp() * (log_q_y - log_post_y)).sum(-1)
    assert_close(infer.elbo(pair.model, pair.guide, x, num_particles=3), pair.exact(x) - kl)
    res = infer.log_likelihood(pair.model, pair.guide, x, num_particles=4, progress=False, diagnostics=False)
    assert_close(res.elbo, pair.exact(x) - kl)
    assert_close(res.elbo, -(res.rate + res.distortion))
    assert float(kl.min()) > 1e-3  # the check can tell the ELBO from log p(x)


def test_bounds_ordered_and_iwae_converges():
    """A shifted q(z | x, y): ELBO <= IWAE_1 <= IWAE_10 <= IWAE_1000 <= log p(x) within four standard errors, the
    steps not ties, and IWAE_1000 within 0.05 nats of the closed form on average."""
    pair = Mixture(shift=0.2)
    x = pair.data(20)
    truth = pair.exact(x)
    est = {}
    for key, k, reps in (("elbo", 1, 200), (1, 1, 200), (10, 10, 200), (1000, 1000, 5)):
        fn = infer.elbo if key == "elbo" else infer.iwae_bound
        est[key] = fn(pair.model, pair.guide, x.repeat(reps, 1), num_particles=k).reshape(reps, -1)
    means = [v.mean(0) for v in est.values()] + [truth]
    ses = [v.std(0) / math.sqrt(v.shape[0]) for v in est.values()] + [torch.zeros_like(truth)]
    for lo, hi, e1, e2 in zip(means, means[1:], ses, ses[1:]):
        assert bool((lo <= hi + 4 * (e1**2 + e2**2).sqrt()).all())
    for lo, hi in zip(means[:3], means[1:4]):  # the orderings are not ties
        assert float((hi - lo).mean()) > 0.05
    assert float((truth - means[3]).mean()) < 0.05


def test_elbo_gradient_equals_trace_enum_elbo():
    """objective 'elbo' with an enumerated site: the loss and every gradient equal Pyro's TraceEnum_ELBO for the same
    draws (same seed, one particle, no subsampling)."""
    pair = Mixture(shift=0.3, learn=True)
    x = pair.data(6)
    pyro.get_param_store().clear()
    pair.guide(x)  # creates the params
    params = [pyro.param(n).unconstrained() for n in ("W", "b", "A", "shift")]
    out = []
    for which in ("ours", "pyro"):
        pyro.set_rng_seed(3)
        if which == "ours":
            loss = objective_loss("elbo", pair.model, pair.guide, x, num_particles=1, max_plate_nesting=1)
        else:
            loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(pair.model, pair.guide, x)
        out.append((loss, torch.autograd.grad(loss, params)))
    assert_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert_close(a, b)
    assert all(float(g.abs().sum()) > 0 for g in out[0][1])


def test_iwae_objective_sums_y_and_config_enumerate_works():
    """objective 'iwae' takes the summed weights (its value is -sum_n IWAE_K); pyro.infer.config_enumerate marks the
    site as well as infer={...}; q(y | x) gets no IWAE gradient (it left the weight)."""
    pair = Mixture(shift=0.3, learn=True, enumerate=False)
    guide = pyro.infer.config_enumerate(pair.guide)
    x = pair.data(5)
    pyro.set_rng_seed(0)
    loss = objective_loss("iwae", pair.model, guide, x, num_particles=4)
    pyro.set_rng_seed(0)
    assert_close(loss, -infer.iwae_bound(pair.model, guide, x, num_particles=4).sum())
    grad_a = torch.autograd.grad(loss, pyro.param("A").unconstrained(), allow_unused=True)[0]
    assert grad_a is None or float(grad_a.abs().max()) == 0.0
    pyro.set_rng_seed(0)
    elbo_loss = objective_loss("elbo", pair.model, guide, x, num_particles=4)
    assert float(torch.autograd.grad(elbo_loss, pyro.param("A").unconstrained())[0].abs().sum()) > 0


def test_subsampled_plate_unscaled():
    """The plate-scale convention holds with enumeration: a subsampled data plate (scale 100) changes nothing per
    datapoint, in the estimators and in the ELBO objective."""
    pair, sub = Mixture(shift=0.2), Mixture(shift=0.2, full_size=600)
    x = pair.data(6)
    exact_guide = Mixture(full_size=600)
    assert_close(infer.iwae_bound(exact_guide.model, exact_guide.guide, x, num_particles=3), pair.exact(x))
    losses = []
    for p in (pair, sub):
        pyro.set_rng_seed(1)
        losses.append(objective_loss("elbo", p.model, p.guide, x, num_particles=2))
    assert_close(losses[0], losses[1])


def test_refusals():
    pair = Mixture()
    x = pair.data(4)
    with pytest.raises(ValueError, match="AIS does not sum enumerated"):
        infer.ais(pair.model, pair.guide, x, num_chains=2, num_steps=2, num_leapfrog=1)
    with pytest.raises(ValueError, match="enumerated"):
        objective_loss("mean-field", pair.model, pair.guide, x, num_particles=2)


def _shift_gradients(pair, guide, x, objective, k, seed):
    pyro.set_rng_seed(seed)
    loss = objective_loss(objective, pair.model, guide, x, num_particles=k, max_plate_nesting=1)
    return loss, torch.autograd.grad(loss, pyro.param("shift").unconstrained())[0]


def test_dreg_value_is_iwae_and_zero_guide_gradient_for_the_exact_guide():
    """iwae-dreg with an enumerated y: the value of 'iwae' for the same draws; with the exact q(z | x, y) every joint
    weight p(x, y) is constant in z, so DReG's guide gradient is exactly zero, while the IWAE gradient (its score
    term) is not; q(y | x) gets no gradient from either (it left the weights)."""
    pair = Mixture(learn=True)
    x = pair.data(6)
    pyro.get_param_store().clear()
    pair.guide(x)
    for k in (1, 4):
        iwae_loss, iwae_grad = _shift_gradients(pair, pair.guide, x, "iwae", k, seed=5)
        dreg_loss, dreg_grad = _shift_gradients(pair, pair.guide, x, "iwae-dreg", k, seed=5)
        assert_close(dreg_loss, iwae_loss)
        assert_close(dreg_loss, -pair.exact(x).sum())
        assert float(dreg_grad.abs().max()) < 1e-10
        assert float(iwae_grad.abs().max()) > 1e-2
        pyro.set_rng_seed(5)
        loss = objective_loss("iwae-dreg", pair.model, pair.guide, x, num_particles=k)
        grad_a = torch.autograd.grad(loss, pyro.param("A").unconstrained(), allow_unused=True)[0]
        assert grad_a is None or float(grad_a.abs().max()) == 0.0


def _guide_ignoring_y(pair):
    def guide(x):
        _, _, A, shift = pair.params()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=x @ A), infer={"enumerate": "parallel"})
            loc = (x - pair.b0.mean(0)) @ torch.linalg.pinv(pair.W0).T + shift
            pyro.sample("z", dist.Normal(loc, 1.5).to_event(1))
    return guide


@pytest.mark.parametrize("z_depends_on_y", [True, False])
def test_dreg_guide_gradient_is_unbiased(z_depends_on_y):
    """An approximate guide (q(z | x, y) shifted, or q(z | x) ignoring y, whose draw enters the weight of every y):
    over 300 seeds the DReG gradient of the guide's shift has the mean of the IWAE gradient (the paired difference
    within four standard errors of zero), with a third of its variance when z is drawn per y. Planted faults move
    the paired difference by 44 / 20 standard errors (no weight on the path gradient: z drawn per y / shared) and
    34 / 7 (a shared z's weight divided by the number of classes)."""
    pair = Mixture(shift=0.4, learn=True)
    guide = pair.guide if z_depends_on_y else _guide_ignoring_y(pair)
    x = pair.data(4)
    pyro.get_param_store().clear()
    guide(x)
    diffs, iw, dr = [], [], []
    for seed in range(300):
        a = _shift_gradients(pair, guide, x, "iwae", 3, seed)[1]
        b = _shift_gradients(pair, guide, x, "iwae-dreg", 3, seed)[1]
        iw.append(float(a))
        dr.append(float(b))
        diffs.append(float(b - a))
    d = torch.tensor(diffs, dtype=torch.float64)
    se = float(d.std() / math.sqrt(d.numel()))
    assert abs(float(d.mean())) < 4 * se
    if z_depends_on_y:
        assert float(torch.tensor(dr).var()) < 0.5 * float(torch.tensor(iw).var())
    assert abs(float(torch.tensor(iw).mean())) > 4 * float(torch.tensor(iw).std() / math.sqrt(len(iw)))


def test_z_independent_of_y_sums_y_inside_each_weight():
    """A guide whose q(z | x) ignores y: each weight is sum_y p(x, y, z_k) / q(z_k | x) = p(x, z_k) / q(z_k | x), and
    IWAE converges to the closed form (within 0.05 nats on average at K = 10000; more than 1 nat off at K = 1)."""
    pair = Mixture()
    x = pair.data(10)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=x @ pair.A0), infer={"enumerate": "parallel"})
            loc = (x - pair.b0.mean(0)) @ torch.linalg.pinv(pair.W0).T
            pyro.sample("z", dist.Normal(loc, 1.5).to_event(1))

    gap = pair.exact(x) - infer.iwae_bound(pair.model, guide, x, num_particles=10000, chunk_size=2500)
    assert float(gap.mean()) < 0.05 and float(gap.abs().max()) < 0.2
    assert float((pair.exact(x) - infer.iwae_bound(pair.model, guide, x, num_particles=1)).mean()) > 1.0


@pytest.mark.parametrize("k", [1, 3])
def test_two_enumerated_sites_one_depending_on_the_other(k):
    """y1 ~ p(y1), y2 ~ p(y2 | y1), x ~ N(mu[y1, y2], 1), both summed (two enumeration dimensions): every weight is
    sum_{y1, y2} p(x, y1, y2) = p(x), for any q(y1 | x) q(y2 | x, y1)."""
    g = torch.Generator().manual_seed(2)
    p1 = torch.tensor([0.6, 0.4], dtype=torch.float64)
    p2 = torch.softmax(torch.randn(2, 3, generator=g, dtype=torch.float64), -1)
    mu = 3 * torch.randn(2, 3, generator=g, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y1 = pyro.sample("y1", dist.Categorical(p1))
            y2 = pyro.sample("y2", dist.Categorical(p2[y1]))
            pyro.sample("x", dist.Normal(mu[y1, y2], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            y1 = pyro.sample("y1", dist.Categorical(logits=torch.stack([x, -x], -1)))
            pyro.sample("y2", dist.Categorical(logits=torch.stack([x, 0 * x, -x], -1) + y1.unsqueeze(-1)))

    x = torch.tensor([-2.0, 0.5, 1.0, 4.0], dtype=torch.float64)
    exact = torch.logsumexp((p1.log().unsqueeze(-1) + p2.log()).unsqueeze(-1)
                            + dist.Normal(mu.unsqueeze(-1), 1.0).log_prob(x), (0, 1))
    enum_guide = pyro.infer.config_enumerate(guide)
    assert_close(infer.log_importance_weights(model, enum_guide, x, num_particles=k), exact.expand(k, 4))
    # the ELBO is log p(x) - KL(q(y1, y2 | x) || p(y1, y2 | x)) < log p(x)
    assert bool((infer.elbo(model, enum_guide, x, num_particles=k) < exact - 1e-3).all())

"""The engine: one representation of a batch's terms, every objective written once on it.

- a model class's own producer equals the traced path (value and gradient, same seed) for every objective;
- an objective added in one place trains the library's VAE and a user's pair;
- one plate-scale convention: with a subsampled data plate, ``elbo`` and ``iwae`` (K=1) report the same
  per-datapoint loss, and the traced ELBO equals Pyro's ``Trace_ELBO`` (same seed) where Pyro is right;
- a discrete latent gets the score-function gradient (equal to Pyro's, same seed) and trains end to end.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from lingauss import assert_direct_equals_traced
from torch import nn
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer
from pyro_vae.infer.objectives import OBJECTIVES, objective_loss
from pyro_vae.infer.weights import fast_path_owner
from pyro_vae.models import HierarchicalVAE

CASES = [("elbo", 1, 1.0), ("elbo", 3, 0.3), ("mean_field", 2, 0.5), ("iwae", 5, 1.0), ("iwae-dreg", 5, 1.0)]


def traced(pair):
    """Plain functions (not the class's bound methods), so the estimators take the traced path."""
    return (lambda x: pair.model(x)), (lambda x: pair.guide(x))


def _loss_and_grads(objective, model, guide, x, k, beta, params, seed=11):
    pyro.set_rng_seed(seed)
    loss = objective_loss(objective, model, guide, x, num_particles=k, beta=beta)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _assert_producer_equals_traced(vae, objective, k, beta, device="cpu"):
    """The model's own producer and the traced path: the same loss and gradient for the same seed."""
    assert fast_path_owner(vae.model, vae.guide) is vae
    x = torch.bernoulli(torch.rand(7, 1, 8, 8, dtype=torch.float64, device=device))
    params = list(vae.parameters())
    fast, g_fast = _loss_and_grads(objective, vae.model, vae.guide, x, k, beta, params)
    slow, g_slow = _loss_and_grads(objective, *traced(vae), x, k, beta, params)
    assert_close(fast, slow)
    for a, b in zip(g_fast, g_slow):
        assert_close(a, b)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "normal-gamma"])
@pytest.mark.parametrize("objective,k,beta", CASES)
def test_vae_producer_equals_traced_terms(objective, k, beta, likelihood, device):
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,), likelihood=likelihood).to(device).double()
    _assert_producer_equals_traced(vae, objective, k, beta, device)


@pytest.mark.filterwarnings("ignore:Failed to verify mean field")
@pytest.mark.parametrize("objective,k,beta", CASES)
def test_hierarchical_producer_equals_traced_terms(objective, k, beta):
    _assert_producer_equals_traced(HierarchicalVAE((1, 8, 8), layers=((16, 5), (8, 3), (4, 2))).double(),
                                   objective, k, beta)


@pytest.mark.parametrize("model_class", ["vae", "hierarchical"])
def test_producer_terms_equal_traced_terms(model_class):
    if model_class == "vae":
        vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,), likelihood="normal").double()
        x = torch.randn(6, 4, dtype=torch.float64)
    else:
        vae = HierarchicalVAE((4,), layers=((8, 3), (4, 2)), likelihood="normal").double()
        x = torch.randn(6, 4, dtype=torch.float64)
    for k in (1, 4):
        pyro.set_rng_seed(2)
        fast = infer.importance_terms(vae.model, vae.guide, x, num_particles=k)
        pyro.set_rng_seed(2)
        slow = infer.importance_terms(*traced(vae), x, num_particles=k)
        for name in ("log_likelihood", "log_prior", "log_guide"):
            assert getattr(fast, name).shape == (k, 6)
            assert_close(getattr(fast, name), getattr(slow, name))


def test_subclass_overriding_model_takes_the_traced_path():
    class Mine(pyro_vae.VAE):
        def model(self, x):
            return super().model(x)

    vae = Mine((4,), latent_dim=2, hidden_dims=(8,))
    assert fast_path_owner(vae.model, vae.guide) is None
    assert fast_path_owner(pyro.poutine.scale(vae.model, 0.5), vae.guide) is None


class UserPair(nn.Module):
    """A user's own pair of the library VAE's network (not a pyro_vae.VAE)."""

    def __init__(self, d=16, latent=2):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.Tanh(), nn.Linear(32, d))

    def model(self, x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x[idx])

    def guide(self, x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            loc, log_scale = self.encoder(x[idx]).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _half_elbo(produce, *, num_particles=1, beta=1.0):
    """An objective defined here: half the ELBO's loss (its gradient is half the ELBO's)."""
    t = produce(num_particles)
    return -0.5 * t.log_weights.sum() / num_particles


def test_an_objective_added_in_one_place_trains_the_vae_and_a_users_pair(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "half-elbo", _half_elbo)
    x = torch.bernoulli(torch.rand(200, 16, generator=torch.Generator().manual_seed(0)))
    for pair in (pyro_vae.VAE((16,), latent_dim=2, hidden_dims=(32,)), UserPair()):
        before = infer.elbo(pair.model, pair.guide, x, num_particles=20).mean().item()
        history = pyro_vae.fit(pair, x, epochs=6, batch_size=50, lr=1e-2, objective="half-elbo", seed=0,
                               progress=False)
        after = infer.elbo(pair.model, pair.guide, x, num_particles=20).mean().item()
        assert [h["epoch"] for h in history] == list(range(1, 7))
        # the loss is half the negative ELBO per datapoint: compare with an independent estimate
        assert after > before + 1.0, (type(pair).__name__, before, after)
        assert abs(history[-1]["loss"] + 0.5 * after) < 0.25 * abs(after)


def test_subsampled_plate_elbo_and_iwae_k1_report_the_same_per_datapoint_loss():
    pair = UserPair().double()
    x = torch.bernoulli(torch.rand(100, 16, dtype=torch.float64))
    losses = {}
    for objective in ("elbo", "iwae"):
        pyro.set_rng_seed(3)
        losses[objective] = objective_loss(objective, pair.model, pair.guide, x, num_particles=1,
                                           subsample_size=10).item() / 10
    assert_close(losses["elbo"], losses["iwae"])
    # per datapoint, not scaled by N/B = 10: within a few standard errors of the full data's mean ELBO
    full = infer.elbo(pair.model, pair.guide, x, num_particles=50)
    assert abs(losses["elbo"] + full.mean().item()) < 5 * full.std().item() / math.sqrt(10) + 1.0
    # and Pyro's Trace_ELBO, which applies the plate's scale, reports ten times more
    pyro.set_rng_seed(3)
    pyro_loss = pyro.infer.Trace_ELBO().differentiable_loss(pair.model, pair.guide, x, subsample_size=10).item()
    assert_close(pyro_loss / 10, 10 * losses["elbo"])


def test_fit_history_means_the_same_for_every_objective_under_subsampling():
    x = torch.bernoulli(torch.rand(60, 16, generator=torch.Generator().manual_seed(1)))

    class Subsampled(UserPair):
        def model(self, x):
            return super().model(x, subsample_size=20)

        def guide(self, x):
            return super().guide(x, subsample_size=20)

    histories = {}
    for objective in ("elbo", "iwae"):
        torch.manual_seed(0)
        pair = Subsampled()
        histories[objective] = pyro_vae.fit(pair, x, epochs=2, batch_size=30, objective=objective, seed=5,
                                            progress=False)
    for a, b in zip(histories["elbo"], histories["iwae"]):
        assert_close(a["loss"], b["loss"])
    assert 5 < histories["elbo"][0]["loss"] < 30  # about 16 * log 2 nats per datapoint, not 10 times that


@pytest.mark.parametrize("k", [1, 3])
def test_traced_elbo_equals_pyro_trace_elbo_same_seed(k):
    pair = UserPair().double()
    x = torch.bernoulli(torch.rand(9, 16, dtype=torch.float64))
    params = list(pair.parameters())
    mine, g_mine = _loss_and_grads("elbo", pair.model, pair.guide, x, k, 1.0, params)
    pyro.set_rng_seed(11)
    theirs = pyro.infer.Trace_ELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1) \
        .differentiable_loss(pair.model, pair.guide, x)
    g_theirs = torch.autograd.grad(theirs, params)
    assert_close(mine, theirs)
    for a, b in zip(g_mine, g_theirs):
        assert_close(a, b)


class DiscretePair(nn.Module):
    """A mixture model with a discrete latent (no rsample): ``c ~ Cat(pi)``, ``x | c ~ N(mu_c, 1)``."""

    def __init__(self, d=2, components=3):
        super().__init__()
        self.locs = nn.Parameter(torch.randn(components, d))
        self.logits = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, components))
        self.components = components

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(self.components)))
            pyro.sample("x", dist.Normal(self.locs[c], 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=self.logits(x)))


def test_discrete_latent_score_function_equals_pyro_and_trains():
    torch.manual_seed(0)
    pair = DiscretePair().double()
    centers = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]], dtype=torch.float64)
    x = centers[torch.randint(3, (300,))] + torch.randn(300, 2, dtype=torch.float64)
    params = list(pair.parameters())
    for k in (1, 4):
        mine, g_mine = _loss_and_grads("elbo", pair.model, pair.guide, x[:20], k, 1.0, params)
        pyro.set_rng_seed(11)
        theirs = pyro.infer.Trace_ELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1) \
            .differentiable_loss(pair.model, pair.guide, x[:20])
        g_theirs = torch.autograd.grad(theirs, params)
        assert_close(mine, theirs)
        for a, b in zip(g_mine, g_theirs):
            assert_close(a, b)
    with pytest.raises(ValueError, match="reparameterized"):
        objective_loss("iwae-dreg", pair.model, pair.guide, x[:5], num_particles=3)
    pair = pair.float()
    x = x.float()
    before = infer.elbo(pair.model, pair.guide, x, num_particles=50).mean().item()
    pyro_vae.fit(pair, x, epochs=15, batch_size=50, lr=3e-2, seed=0, progress=False)
    after = infer.elbo(pair.model, pair.guide, x, num_particles=50).mean().item()
    pyro_vae.fit(pair, x, epochs=2, batch_size=50, lr=1e-2, objective="iwae", num_particles=4, seed=0,
                 progress=False)
    iwae = infer.iwae_bound(pair.model, pair.guide, x, num_particles=50).mean().item()
    assert after > before + 1.0, (before, after)
    assert iwae > after - 0.5


def test_a_subsampled_plate_scores_the_same_datapoints_in_every_chunk():
    """With an exact-posterior guide each datapoint's IWAE estimate is its exact log p(x); chunks that drew
    different subsamples would mix datapoints and match none."""
    from lingauss import LinearGaussian

    lg = LinearGaussian()
    W, b, sigma = lg.params
    x = lg.data(20)
    exact = lg.exact(x)

    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(lg.d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x[idx])

    def guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
            pyro.sample("z", dist.MultivariateNormal(lg.posterior_mean(x[idx]), lg.post_cov))

    estimate = infer.iwae_bound(model, guide, x, num_particles=8, chunk_size=2)
    assert estimate.shape == (5,)
    distance = (estimate[:, None] - exact[None, :]).abs().min(1).values
    assert float(distance.max()) < 1e-8, distance
    # log_likelihood scores whole batches: a subsample of them is refused with a message, not a bare assert
    with pytest.raises(ValueError, match="subsample"):
        infer.log_likelihood(model, guide, x, num_particles=8, chunk_size=3, batch_size=20, progress=False,
                             diagnostics=False)


def test_a_model_latent_missing_from_the_guide_is_warned_about():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z_missing_from_guide", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pass

    with pytest.warns(RuntimeWarning, match="not in the guide"):
        infer.elbo(model, guide, torch.randn(4))


def test_exact_log_likelihood_warns_on_a_coarse_grid():
    from lingauss import LinearGaussian

    lg = LinearGaussian(latent_dim=1)
    x = lg.data(5)
    with pytest.warns(RuntimeWarning, match="coarse"):
        infer.exact_log_likelihood(lg.model, x, num_points=15)


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

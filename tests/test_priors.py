"""Priors as components (normal, mixture, VampPrior, flow) and flow guides (IAF, spline): densities against
independent computations, IWAE converging to quadrature with a 2-D latent, gradients reaching the prior's
parameters, training with every objective each supports, and exact save/load."""

import math

import pyro
import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer
from pyro_vae.infer.objectives import objective_loss
from pyro_vae.priors import FlowPrior, MixturePrior, StandardNormal, make_prior

CONFIGS = [
    {"prior": "normal"},
    {"prior": "mixture", "prior_options": {"num_components": 3}},
    {"prior": "vamp", "prior_options": {"num_components": 4}},
    {"prior": "flow", "prior_options": {"num_flows": 2}},
    {"guide_flow": "iaf", "num_flows": 2},
    {"prior": "vamp", "prior_options": {"num_components": 4}, "guide_flow": "iaf"},
    {"guide_flow": "spline", "num_flows": 1},
]


def small(latent_dim=2, input_shape=(6,), likelihood="normal", **kw):
    return pyro_vae.VAE(input_shape, latent_dim=latent_dim, hidden_dims=(16,), likelihood=likelihood,
                        likelihood_options={"scale": 0.5} if likelihood == "normal" else None, **kw)


def test_each_prior_log_prob_matches_an_independent_computation():
    z = torch.randn(5, 3, dtype=torch.float64)
    sn = StandardNormal(3).double()
    assert_close(sn.log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))
    mix = MixturePrior(3, num_components=4).double()
    comp = torch.distributions.Normal(mix.locs, mix.log_scales.exp())
    by_hand = torch.logsumexp(torch.log_softmax(mix.logits, 0) + comp.log_prob(z[:, None, :]).sum(-1), -1)
    assert_close(mix.log_prob(z), by_hand)
    vae = small(latent_dim=3, prior="vamp", prior_options={"num_components": 5}).double()
    loc, scale = vae.encoder(vae.prior.pseudo_inputs)
    by_hand = torch.logsumexp(torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1), -1) - math.log(5)
    assert_close(vae.prior.log_prob(z), by_hand)
    flow = FlowPrior(3, num_flows=2).double()
    # change of variables by hand: invert the layers, add the log-Jacobians, score the base
    u, log_det = z, torch.zeros(5, dtype=torch.float64)
    for t in reversed(flow.transforms()):
        x = t.inv(u)
        log_det = log_det + t.log_abs_det_jacobian(x, u)
        u = x
    assert_close(flow.log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(u).sum(-1) - log_det)
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("laplace", 2)
    with pytest.raises(ValueError, match="prior_options"):
        make_prior("mixture", 2, num_component=3)


def test_gradients_reach_the_pseudo_inputs_and_the_mixture_weights():
    x = torch.randn(8, 6)
    for config, names in ((CONFIGS[2], ["prior.pseudo_inputs"]), (CONFIGS[1], ["prior.logits", "prior.locs"]),
                          (CONFIGS[3], ["prior.layers.0"])):
        vae = small(**config)
        loss = objective_loss("elbo", vae.model, vae.guide, x)
        loss.backward()
        for name in names:
            grads = [p.grad for n, p in vae.named_parameters() if n.startswith(name)]
            assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads), (config, name)


# the flow prior and the spline guide are the slowest to train and evaluate here: run by CI, not by default
@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow)
                                    if c.get("prior") == "flow" or c.get("guide_flow") == "spline" else c
                                    for c in CONFIGS],
                         ids=lambda c: "+".join(str(v) for v in c.values() if isinstance(v, str)))
def test_iwae_converges_to_quadrature_and_bounds_are_ordered(config):
    """On data the model simulated, after a short training of the guide (an untrained guide can miss a posterior
    that an untrained flow prior put far away), IWAE with many particles meets the quadrature."""
    pyro.set_rng_seed(0)
    vae = small(**config).double()
    with torch.no_grad():
        data = vae.sample(200, mean=False)
    pyro_vae.fit(vae, data, epochs=40, batch_size=50, lr=1e-2, seed=0, progress=False)
    x = data[:6]
    exact = infer.exact_log_likelihood(vae.model, x, num_points=601)
    with torch.no_grad():
        elbo = infer.elbo(vae.model, vae.guide, x, num_particles=2000)
        iw = infer.iwae_bound(vae.model, vae.guide, x, num_particles=20000, chunk_size=5000)
        lw = infer.log_importance_weights(vae.model, vae.guide, x, num_particles=2000)
    se = float(infer.replicate_stderr(lw, 10).max())
    assert float((elbo - exact).max()) < 0.05  # the ELBO is below log p(x)
    assert float((elbo - iw).max()) < 0.05  # and below IWAE
    assert float((iw - exact).abs().max()) < max(0.1, 4 * se), (iw - exact)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "+".join(str(v) for v in c.values() if isinstance(v, str)))
def test_short_training_improves_the_bound_with_every_objective(config):
    data = pyro_vae.datasets.load("digits")[:300]
    objectives = ["elbo", "iwae", "iwae-dreg"] + (["mean_field"] if config.get("prior", "normal") == "normal"
                                                  and "guide_flow" not in config else [])
    for objective in objectives:
        vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(32,), **config)
        with torch.no_grad():
            before = infer.elbo(vae.model, vae.guide, torch.bernoulli(data[:100],
                                generator=torch.Generator().manual_seed(0)), num_particles=5).mean()
        pyro_vae.fit(vae, data, epochs=3, batch_size=50, lr=1e-2, objective=objective, seed=0, binarize=True,
                     progress=False, num_particles=1 if objective in ("elbo", "mean_field") else 3)
        with torch.no_grad():
            after = infer.elbo(vae.model, vae.guide, torch.bernoulli(data[:100],
                               generator=torch.Generator().manual_seed(0)), num_particles=5).mean()
        assert float(after) > float(before) + 1.0, (objective, float(before), float(after))


def test_mean_field_is_refused_without_a_closed_form_kl():
    vae = small(prior="mixture")
    with pytest.raises(ValueError, match="closed form"):
        pyro_vae.fit(vae, torch.randn(20, 6), epochs=1, batch_size=10, objective="mean_field", progress=False)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "+".join(str(v) for v in c.values() if isinstance(v, str)))
def test_save_load_round_trip_is_exact(config, tmp_path):
    vae = small(**config)
    folder = vae.save(tmp_path / "m")
    again = pyro_vae.load(folder)
    assert again.config == vae.config
    for (n, a), (m, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        assert n == m and torch.equal(a, b)
    x = torch.randn(4, 6)
    pyro.set_rng_seed(3)
    a = infer.elbo(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    b = infer.elbo(again.model, again.guide, x)
    assert_close(a, b)
    assert again.sample(5).shape == (5, 6)


def test_flow_guide_options_are_checked():
    with pytest.raises(ValueError, match="guide_flow"):
        small(guide_flow="maf")
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        small(latent_dim=1, guide_flow="iaf")
    assert small(latent_dim=1, guide_flow="spline").sample(2).shape == (2, 6)


def test_command_line_prior_and_flow_options_are_recorded_and_reloaded(tmp_path):
    from pyro_vae.cli import main

    out = tmp_path / "run"
    assert main(["train", "--prior", "vamp", "--prior-components", "7", "--flow", "iaf", "--num-flows", "1",
                 "--epochs", "2", "--latent-dim", "3", "--out", str(out), "--no-progress"]) == 0
    vae = pyro_vae.load(out)
    assert vae.config["prior"] == "vamp" and vae.config["prior_options"] == {"num_components": 7}
    assert vae.config["guide_flow"] == "iaf" and vae.config["num_flows"] == 1
    assert vae.prior.pseudo_inputs.shape == (7, 1, 8, 8)
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--prior", "mixture", "--epochs", "4"]) == 2
    assert main(["train", "--prior", "laplace", "--epochs", "1", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("prior", ["mixture", "flow"])
def test_hierarchical_vae_takes_a_prior_for_its_top_layer(prior, tmp_path):
    from pyro_vae.models import HierarchicalVAE

    vae = HierarchicalVAE((1, 8, 8), layers=((16, 4), (8, 2)), prior=prior).double()
    x = torch.bernoulli(torch.rand(5, 1, 8, 8, dtype=torch.float64))
    from lingauss import assert_direct_equals_traced

    assert_direct_equals_traced(vae, x, "iwae")
    again = pyro_vae.load(vae.save(tmp_path / "h"))
    assert again.config["prior"] == prior and type(again.prior) is type(vae.prior)
    with pytest.raises(ValueError, match="VampPrior"):
        HierarchicalVAE((1, 8, 8), layers=((16, 4), (8, 2)), prior="vamp")

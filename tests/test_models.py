"""The VAE, its nets and likelihoods: the site contract, shapes, devices, and log densities against torch."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.testing import assert_close

import pyro_vae
from pyro_vae.likelihoods import LIKELIHOODS, make_likelihood
from pyro_vae.models import HierarchicalVAE


def _traces(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return model_trace, guide_trace


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_site_contract_and_shapes(shape, encoder, device):
    vae = pyro_vae.VAE(shape, latent_dim=5, hidden_dims=(16,), encoder=encoder, decoder=encoder).to(device)
    x = torch.bernoulli(torch.rand(6, *shape, device=device))
    model_trace, guide_trace = _traces(vae, x)
    model_trace.compute_log_prob()
    for tr in (model_trace, guide_trace):
        assert "data" in tr.nodes and tr.nodes["data"]["value"].shape == (6,)
        assert [f.name for f in tr.nodes["z"]["cond_indep_stack"]] == ["data"]
    assert model_trace.nodes["x"]["is_observed"] and model_trace.nodes["x"]["log_prob"].shape == (6,)
    assert guide_trace.nodes["z"]["value"].shape == (6, 5)
    z_loc, z_scale = vae.encode(x)
    assert z_loc.shape == z_scale.shape == (6, 5) and (z_scale > 0).all()
    assert vae.decode(z_loc).shape == (6, *shape)
    assert vae.reconstruct(x).shape == (6, *shape)
    s = vae.sample(4)
    assert s.shape == (4, *shape) and s.device.type == device.type and ((s >= 0) & (s <= 1)).all()
    # vectorized particles pass through the nets
    lw = pyro_vae.infer.log_importance_weights(vae.model, vae.guide, x, num_particles=3)
    assert lw.shape == (3, 6) and torch.isfinite(lw).all()


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_log_prob_against_torch(name):
    shape = (1, 4, 4)
    lik = make_likelihood(name, shape)
    params = torch.randn(3, *shape)
    x = torch.rand(3, *shape)
    if name == "bernoulli":
        x = torch.bernoulli(x)
        ref = torch.distributions.Bernoulli(logits=params)
    elif name == "continuous_bernoulli":
        ref = torch.distributions.ContinuousBernoulli(logits=params)
    elif name == "normal":
        ref = torch.distributions.Normal(params, 0.1)
    elif name == "normal-learned":
        with torch.no_grad():
            lik.log_scale.copy_(torch.linspace(-1, 1, 16).reshape(shape))
        ref = torch.distributions.Normal(params, lik.log_scale.exp())
    else:
        with torch.no_grad():
            lik.log_gamma.fill_(-3.0)
        ref = torch.distributions.Normal(params, torch.tensor(-3.0).exp().sqrt())
    d = lik(params)
    assert d.event_shape == shape and d.batch_shape == (3,)
    assert_close(d.log_prob(x), ref.log_prob(x).sum((-1, -2, -3)))


def test_learned_scales_are_parameters():
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,), likelihood="normal-gamma")
    assert any(name.endswith("log_gamma") for name, _ in vae.named_parameters())
    assert_close(vae.likelihood.gamma, torch.tensor(1.0))
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,), likelihood="normal-learned")
    assert vae.likelihood.log_scale.shape == (4,)


def test_support_checks_say_what_to_do():
    grey = torch.rand(5, 1, 8, 8)
    with pytest.raises(ValueError, match="binarize=True"):
        make_likelihood("bernoulli", (1, 8, 8)).check_support(grey)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_likelihood("continuous_bernoulli", (1, 8, 8)).check_support(grey * 2)
    with pytest.raises(ValueError, match="NaN"):
        make_likelihood("normal", (1, 8, 8)).check_support(grey.masked_fill(grey > 0.9, float("nan")))
    make_likelihood("continuous_bernoulli", (1, 8, 8)).check_support(grey)  # grey levels are fine here


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="bernoulli"):
        pyro_vae.VAE((4,), likelihood="poisson")
    with pytest.raises(ValueError, match="mlp"):
        pyro_vae.VAE((4,), encoder="transformer")
    with pytest.raises(ValueError, match="activation"):
        pyro_vae.VAE((4,), activation="swishy")
    with pytest.raises(ValueError, match="divisible"):
        pyro_vae.VAE((1, 30, 30), encoder="conv")
    with pytest.raises(ValueError, match="latent_dim"):
        pyro_vae.VAE((4,), latent_dim=0)
    with pytest.raises(ValueError, match="input_shape"):
        pyro_vae.VAE((0, 4))


@pytest.mark.parametrize("kwargs, name", [
    ({"latent_dim": 2.7}, "latent_dim"), ({"hidden_dims": (16.5,)}, "hidden_dims"),
    ({"latent_dim": True}, "latent_dim"),
    ({"input_shape": (1, 8.5, 8)}, "input_shape"), ({"num_flows": 1.5, "guide_flow": "iaf"}, "num_flows"),
    ({"latent_dim": "3"}, "latent_dim"),
])
def test_fractional_sizes_are_refused_not_truncated(kwargs, name):
    """VAE(latent_dim=2.7) built a 2-dimensional latent space and hidden_dims=(16.5,) 16 units, silently."""
    kwargs = {"input_shape": (1, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=f"{name} must be"):
        pyro_vae.VAE(**kwargs)


def test_whole_sizes_of_other_types_are_accepted():
    import numpy as np

    vae = pyro_vae.VAE((1, 8, 8), latent_dim=4.0, hidden_dims=(torch.tensor(16), 8))
    assert vae.latent_dim == 4 and vae.config["hidden_dims"] == [16, 8]
    vae = pyro_vae.VAE(np.array([1, 8, 8]), latent_dim=np.int64(3), hidden_dims=np.array([16, 8]))
    assert vae.input_shape == (1, 8, 8) and vae.latent_dim == 3 and vae.config["hidden_dims"] == [16, 8]
    # num_flows is unused without a flow: 0 was accepted (and saved) before, and still loads
    assert pyro_vae.VAE((1, 8, 8), hidden_dims=range(8, 10), num_flows=0).config["num_flows"] == 0
    with pytest.raises(ValueError, match="layers must be"):
        HierarchicalVAE((1, 8, 8), layers=[(32, 4.5)])


def test_user_modules_as_encoder_and_decoder():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 4)

        def forward(self, x):
            loc, log_scale = self.lin(x).chunk(2, -1)
            return loc, log_scale.exp()

    dec = nn.Linear(2, 6)
    vae = pyro_vae.VAE((6,), latent_dim=2, encoder=Enc(), decoder=dec, likelihood="normal")
    assert vae.decoder is dec and vae.config["encoder"] == "Enc"
    x = torch.randn(5, 6)
    assert pyro_vae.infer.elbo(vae.model, vae.guide, x).shape == (5,)


def test_prior_is_standard_normal():
    vae = pyro_vae.VAE((4,), latent_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.rand(7, 4))
    model_trace, _ = _traces(vae, x)
    z_site = model_trace.nodes["z"]
    z = z_site["value"]
    assert_close(z_site["fn"].log_prob(z), dist.Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_double_precision_model():
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,)).double()
    x = torch.bernoulli(torch.rand(3, 4, dtype=torch.float64))
    assert pyro_vae.infer.iwae_bound(vae.model, vae.guide, x, num_particles=4).dtype == torch.float64
    assert vae.sample(2).dtype == torch.float64


def test_importing_changes_no_global_setting():
    import importlib

    before = (torch.get_default_dtype(), pyro.infer.util.is_validation_enabled())
    importlib.reload(pyro_vae)
    assert (torch.get_default_dtype(), pyro.infer.util.is_validation_enabled()) == before


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_log_prob_shortcut_equals_the_distribution(name):
    lik = make_likelihood(name, (1, 4, 4))
    params = torch.randn(5, 3, 1, 4, 4)  # (K, N, *event): particles broadcast against the data
    x = torch.bernoulli(torch.rand(3, 1, 4, 4))
    assert_close(lik.log_prob(params, x), lik(params).log_prob(x))
    assert lik.log_prob(params, x).shape == (5, 3)

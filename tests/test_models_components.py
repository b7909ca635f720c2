"""The models as components: the guide component (Gaussian or flow) and the conditional nets give the direct
terms, equal to the traced terms (value and gradient, same seed) for every guide and for a conditional VAE; each
class's settings are a frozen dataclass checked on creation; saved folders of older versions still load."""

import dataclasses
import json

import pyro
import pytest
import torch
from lingauss import assert_direct_equals_traced
from torch.testing import assert_close

import pyro_vae
from pyro_vae import guides
from pyro_vae.infer.weights import direct_terms_owner, fast_path_owner
from pyro_vae.models import HierarchicalVAE, TwoStageVAE, VAEConfig


@pytest.mark.filterwarnings("ignore:Failed to verify mean field")
@pytest.mark.parametrize("flow", ["iaf", "spline"])
@pytest.mark.parametrize("objective", ["elbo", "iwae", "iwae-dreg", "mean-field"])
def test_flow_guide_direct_terms_equal_traced(flow, objective):
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,), guide_flow=flow, num_flows=2).double()
    assert direct_terms_owner(vae.model, vae.guide) is vae and isinstance(vae.q, guides.FlowGuide)
    x = torch.bernoulli(torch.rand(5, 1, 8, 8, dtype=torch.float64))
    assert_direct_equals_traced(vae, x, objective=objective, num_particles=3)


@pytest.mark.parametrize("objective", ["elbo", "iwae", "iwae-dreg", "mean-field"])
@pytest.mark.parametrize("flow", [None, "iaf"])
def test_conditional_vae_direct_terms_equal_traced(objective, flow):
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,), condition_shape=(3,), guide_flow=flow).double()
    x = torch.bernoulli(torch.rand(6, 1, 8, 8, dtype=torch.float64))
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).double()
    params = list(vae.parameters())
    out = []
    for model, guide in ((vae.model, vae.guide), (lambda x, y: vae.model(x, y), lambda x, y: vae.guide(x, y))):
        pyro.set_rng_seed(3)
        from pyro_vae.infer.objectives import objective_loss

        loss = objective_loss(objective, model, guide, x, y, num_particles=4)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append((loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
    assert_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert_close(a, b)
    # and the estimators of log p(x | y) take the same path: equal to the traced estimate for the same seed
    pyro.set_rng_seed(5)
    direct = pyro_vae.infer.iwae_bound(vae.model, vae.guide, x, y, num_particles=7)
    pyro.set_rng_seed(5)
    traced = pyro_vae.infer.iwae_bound(lambda x, y: vae.model(x, y), lambda x, y: vae.guide(x, y), x, y,
                                       num_particles=7)
    assert_close(direct, traced)


def test_conditional_vae_refuses_a_wrong_condition():
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,), condition_shape=(3,), likelihood="normal")
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"needs y of shape \(N, \*\(3,\)\)"):
        vae.model(x)
    with pytest.raises(ValueError, match=r"y must have shape \(N, \*\(3,\)\) with N = 5"):
        vae.guide(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="not conditional"):
        pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,)).model(x, torch.zeros(5, 3))


def test_the_old_name_of_the_direct_terms_owner_still_works():
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,))
    assert fast_path_owner is direct_terms_owner and fast_path_owner(vae.model, vae.guide) is vae


def test_settings_are_a_frozen_checked_dataclass_and_the_saved_config():
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=5)  # one hidden layer given as an int
    assert vae.settings.hidden_dims == (5,) and vae.config == vae.settings.to_dict()
    assert vae.config["hidden_dims"] == [5] and "condition_shape" not in vae.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        vae.settings.latent_dim = 3
    assert VAEConfig(**vae.config) == vae.settings  # what is saved builds the same settings
    for bad, message in [(dict(input_shape=()), "input_shape must name at least one dimension"),
                         (dict(input_shape=(4,), latent_dim=0), "latent_dim must be a whole number >= 1"),
                         (dict(input_shape=(4,), hidden_dims=(8, 2.5)), "hidden_dims must be whole numbers"),
                         (dict(input_shape=(4,), guide_flow="maf"), "unknown guide_flow 'maf'"),
                         (dict(input_shape=(4,), prior_options=3), "prior_options must be a dict"),
                         (dict(input_shape=(4,), likelihood="normal-learned", likelihood_options={"scale": -1}),
                          "needs a finite scale > 0")]:
        with pytest.raises(ValueError, match=message):
            pyro_vae.VAE(**bad)


def test_hierarchical_and_two_stage_settings_are_checked():
    with pytest.raises(ValueError, match="layers must be a non-empty list"):
        HierarchicalVAE((4,), layers=())
    with pytest.raises(ValueError, match="stage2_gamma must be a finite number > 0"):
        TwoStageVAE((4,), latent_dim=2, hidden_dims=(8,), stage2_hidden_dims=(8,), stage2_gamma=-1.0)
    tsv = TwoStageVAE((4,), latent_dim=2, hidden_dims=(8,), stage2_hidden_dims=(8,))
    assert "stage1" not in tsv.config and tsv.config["stage2_hidden_dims"] == [8]  # its settings, once


def test_two_stage_folders_of_older_versions_load(tmp_path):
    """A two-stage folder whose config repeats both stages' configs (0.2) or holds only them (0.1) loads."""
    tsv = TwoStageVAE((4,), latent_dim=2, hidden_dims=(8,), stage2_hidden_dims=(6,), stage1_likelihood="normal")
    folder = tsv.save(tmp_path / "m")
    meta = json.loads((folder / "vae.json").read_text())
    x = torch.randn(3, 4)
    for config in ({**meta["config"], "stage1": tsv.stage1.config, "stage2": tsv.stage2.config},
                   {"stage1": tsv.stage1.config, "stage2": tsv.stage2.config}):
        (folder / "vae.json").write_text(json.dumps({**meta, "config": config}))
        again = pyro_vae.load(folder)
        assert_close(again.reconstruct(x), tsv.reconstruct(x))


def test_hierarchical_sample_and_model_share_one_ancestral_pass():
    """Both draw every layer below the top from p(h_{l-1} | h_l): the model's trace and sample() see the same
    conditional for the same top layer."""
    vae = HierarchicalVAE((4,), layers=((8, 3), (4, 2)), likelihood="normal")
    top = torch.randn(5, 2)
    loc, scale = vae.priors[0](top)
    pyro.set_rng_seed(0)
    h1 = vae._descend(top, lambda name, d: d.sample())
    pyro.set_rng_seed(0)
    expected = torch.distributions.Normal(loc, scale).sample()
    assert_close(h1, expected)

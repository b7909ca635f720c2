"""The library VAE's direct loss equals Pyro's trace path: values and gradients, same seed."""

import pyro
import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer
from pyro_vae.infer.objectives import get_objective
from pyro_vae.infer.weights import fast_path_owner
from pyro_vae.train import ScaleLatents


def traced(vae, scale=1.0):
    """Plain functions (not VAE's bound methods), so the estimators take Pyro's general path."""
    model, guide = (lambda x: vae.model(x)), (lambda x: vae.guide(x))
    if scale != 1.0:
        model, guide = ScaleLatents(scale)(model), ScaleLatents(scale)(guide)
    return model, guide


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "normal-gamma"])
@pytest.mark.parametrize("objective,k,scale", [("elbo", 1, 1.0), ("elbo", 3, 0.3), ("mean_field", 2, 0.5),
                                               ("iwae", 5, 1.0), ("iwae-dreg", 5, 1.0)])
def test_fast_loss_equals_pyro_trace_loss(objective, k, scale, likelihood, device):
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,), likelihood=likelihood).to(device).double()
    x = torch.bernoulli(torch.rand(7, 1, 8, 8, dtype=torch.float64, device=device))
    params = list(vae.parameters())
    pyro.set_rng_seed(11)
    fast = vae.loss(x, objective, k, scale)
    g_fast = torch.autograd.grad(fast, params)
    pyro.set_rng_seed(11)
    model, guide = traced(vae, scale)
    slow = get_objective(objective)(model, guide, x, num_particles=k, max_plate_nesting=1)
    g_slow = torch.autograd.grad(slow, params, allow_unused=True)
    assert_close(fast, slow)
    for a, b in zip(g_fast, g_slow):
        assert_close(a, torch.zeros_like(a) if b is None else b)


def test_fast_importance_terms_equal_traced_terms():
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(8,), likelihood="normal").double()
    x = torch.randn(6, 4, dtype=torch.float64)
    assert fast_path_owner(vae.model, vae.guide) is vae
    pyro.set_rng_seed(2)
    fast = infer.importance_terms(vae.model, vae.guide, x, num_particles=4)
    pyro.set_rng_seed(2)
    slow = infer.importance_terms(*traced(vae), x, num_particles=4)
    for a, b in zip(fast, slow):
        assert_close(a, b)


def test_subclass_overriding_model_takes_the_general_path():
    class Mine(pyro_vae.VAE):
        def model(self, x):
            return super().model(x)

    vae = Mine((4,), latent_dim=2, hidden_dims=(8,))
    assert fast_path_owner(vae.model, vae.guide) is None
    assert fast_path_owner(ScaleLatents(0.5)(vae.model), vae.guide) is None

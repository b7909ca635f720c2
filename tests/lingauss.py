"""A linear-Gaussian model whose log p(x) and posterior are closed-form, with exact and approximate guides."""

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.datasets import linear_gaussian_log_prob, linear_gaussian_params


class LinearGaussian:
    """``z ~ N(0, I_d)``, ``x | z ~ N(W z + b, sigma^2 I)``; ``guide`` is the exact posterior unless ``shift`` or
    ``mean_field`` make it approximate. ``full_size`` subsamples the data plate (scale ``full_size / N``)."""

    def __init__(self, dim=4, latent_dim=2, shift=0.0, mean_field=False, scale_factor=1.0):
        self.params = linear_gaussian_params(dim=dim, latent_dim=latent_dim)
        W, b, sigma = self.params
        self.d = latent_dim
        precision = torch.eye(latent_dim, dtype=W.dtype) + W.T @ W / sigma**2
        self.post_cov = torch.linalg.inv(precision)
        self.shift, self.mean_field, self.scale_factor = shift, mean_field, scale_factor

    def _plate(self, x, full_size):
        if full_size is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", full_size, subsample=torch.arange(x.shape[0]))

    def model(self, x, full_size=None):
        W, b, sigma = self.params
        with self._plate(x, full_size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    def posterior_mean(self, x):
        W, b, sigma = self.params
        return (x - b) @ W / sigma**2 @ self.post_cov

    def guide(self, x, full_size=None):
        loc = self.posterior_mean(x) + self.shift
        with self._plate(x, full_size):
            if self.mean_field:
                scale = self.post_cov.diagonal().sqrt() * self.scale_factor
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            else:
                pyro.sample("z", dist.MultivariateNormal(loc, self.post_cov))

    def exact(self, x):
        return linear_gaussian_log_prob(x, self.params)

    def data(self, n, seed=0):
        W, b, sigma = self.params
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d, generator=g, dtype=W.dtype)
        return z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=g, dtype=W.dtype)


def inner_plate_pair():
    """A data plate at dim -2 with an inner plate: ``z ~ N(0, 1)`` per datapoint, ``u_j ~ N(z, 1)`` per feature,
    ``x_j ~ N(u_j, 0.5)``, so ``x ~ N(0, 1.25 I + 1 1^T)``; an approximate guide. :returns: ``(model, guide,
    exact)`` with ``exact(x)`` the closed-form ``log p(x)`` of ``x`` ``(N, 3)``."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            with pyro.plate("feat", 3, dim=-1):
                u = pyro.sample("u", dist.Normal(z, 1.0))
                pyro.sample("x", dist.Normal(u, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.4 * x.mean(-1, keepdim=True), 0.8))
            with pyro.plate("feat", 3, dim=-1):
                pyro.sample("u", dist.Normal(0.7 * x + 0.1 * z, 0.6))

    def exact(x):
        cov = 1.25 * torch.eye(3, dtype=x.dtype) + torch.ones(3, 3, dtype=x.dtype)
        return dist.MultivariateNormal(torch.zeros(3, dtype=x.dtype), cov).log_prob(x)

    return model, guide, exact


def assert_direct_equals_traced(vae, x, objective="iwae", num_particles=3, beta=1.0, seed=4):
    """A model class's own producer of its terms and the traced path give the same loss and gradients (same
    seed): the bound methods take the direct path, plain functions wrapping them the traced one."""
    from torch.testing import assert_close

    from pyro_vae.infer.objectives import objective_loss

    params = list(vae.parameters())
    out = {}
    for name, model, guide in (("direct", vae.model, vae.guide),
                               ("traced", lambda x: vae.model(x), lambda x: vae.guide(x))):
        pyro.set_rng_seed(seed)
        loss = objective_loss(objective, model, guide, x, num_particles=num_particles, beta=beta)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[name] = (loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    assert_close(out["direct"][0], out["traced"][0])
    for a, b in zip(out["direct"][1], out["traced"][1]):
        assert_close(a, b)

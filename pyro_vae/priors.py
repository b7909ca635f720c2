"""Priors ``p(z)`` as components: a model asks its prior for a distribution, a log density, samples and (where
one exists) the closed-form KL from a diagonal Gaussian guide. Adding a prior is one class here and one entry in
:data:`PRIORS`; ``VAE(..., prior=name, prior_options={...})`` then uses it everywhere (model, estimators,
sampling, figures).

=============  ======================================================================================
name           ``p(z)``
=============  ======================================================================================
``normal``     :math:`\\mathcal{N}(0, I_d)` (Kingma & Welling 2014)
=============  ======================================================================================

Densities come from :mod:`torch.distributions` / Pyro; :class:`StandardNormal` spells out the same formula
as ``Normal(0, 1).log_prob`` for speed (the tests compare them).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["Prior", "StandardNormal", "PRIORS", "make_prior"]

_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))  # exactly as torch's Normal.log_prob spells it


class Prior(nn.Module):
    """Base class: a prior over a ``latent_dim``-dimensional ``z``.

    :param latent_dim: the dimension of ``z``.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        # a buffer gives the prior its device and dtype, so .to(device) moves it
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def distribution(self, like: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """A Pyro distribution of event shape ``(latent_dim,)`` on ``like``'s device and dtype."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:param z: ``(..., latent_dim)``. :returns: ``log p(z)``, shape ``(...)``."""
        return self.distribution(z).log_prob(z)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """:returns: ``(num_samples, latent_dim)`` draws."""
        return self.distribution(self._anchor).sample((int(num_samples),))

    def kl(self, q: torch.distributions.Normal) -> torch.Tensor | None:
        """``KL(q || p)`` summed over the latent dimensions for a diagonal Gaussian ``q`` of batch shape
        ``(..., latent_dim)``, or None where there is no closed form."""
        return None


class StandardNormal(Prior):
    """:math:`p(z) = \\mathcal{N}(0, I_d)`."""

    def distribution(self, like: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(like.new_zeros((self.latent_dim,)), 1.0).to_event(1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        # log N(z; 0, I) as torch's Normal computes it, without building the distribution
        return (-(z**2) / 2 - _HALF_LOG_2PI).sum(-1)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        return torch.randn(int(num_samples), self.latent_dim, device=self._anchor.device, dtype=self._anchor.dtype)

    def kl(self, q: torch.distributions.Normal) -> torch.Tensor:
        p = torch.distributions.Normal(torch.zeros_like(q.loc), 1.0)
        return torch.distributions.kl_divergence(q, p).sum(-1)


#: name -> prior class ``cls(latent_dim, **options)``
PRIORS: dict[str, type[Prior]] = {"normal": StandardNormal}


def make_prior(prior: str | Prior, latent_dim: int, **options: Any) -> Prior:
    """A prior by name (with its options) or a user's :class:`Prior` instance."""
    if isinstance(prior, Prior):
        if prior.latent_dim != int(latent_dim):
            raise ValueError(f"the prior is over {prior.latent_dim} dimensions but latent_dim is {latent_dim}")
        return prior
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(PRIORS)} or pass a pyro_vae.priors.Prior")
    return PRIORS[prior](int(latent_dim), **options)

"""Model/guide pairs.

:class:`VAE` is the library's variational autoencoder (Kingma & Welling 2014): the generative model

.. math::

    z \\sim \\mathcal{N}(0, I_d), \\qquad x \\mid z \\sim p_\\theta(x \\mid z) = \\mathrm{Lik}(f_\\theta(z))

and the amortized recognition model (guide)
:math:`q_\\phi(z \\mid x) = \\mathcal{N}(\\mu_\\phi(x), \\operatorname{diag} \\sigma_\\phi(x)^2)`.

Both keep the site contract that every part of the library relies on: ``model(x)`` and ``guide(x)`` take a
batch ``x`` of shape ``(N, *event_shape)``, open ``pyro.plate("data", N)``, and the observation site is
named ``"x"``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .infer.weights import ImportanceTerms
from .likelihoods import Likelihood, make_likelihood
from .nets import make_decoder, make_encoder

__all__ = ["VAE"]


class VAE(PyroModule):
    """A variational autoencoder with a standard Normal prior and an amortized diagonal Gaussian guide.

    :param input_shape: the shape of one datapoint, e.g. ``(1, 28, 28)`` or ``(784,)``.
    :param latent_dim: the dimension of ``z``.
    :param hidden_dims: hidden layer sizes of the MLP encoder (the decoder uses them reversed).
    :param activation: the MLP activation, e.g. ``"tanh"`` (Burda et al.) or ``"relu"``.
    :param likelihood: a name from :data:`pyro_vae.likelihoods.LIKELIHOODS` or a ``Likelihood`` instance.
    :param encoder: ``"mlp"``, ``"conv"`` or a user's ``nn.Module`` mapping ``x`` to ``(z_loc, z_scale)``.
    :param decoder: ``"mlp"``, ``"conv"`` or a user's ``nn.Module`` mapping ``z`` to the likelihood's
        parameter of shape ``(..., *input_shape)``.
    :param likelihood_options: keyword options of the likelihood, e.g. ``{"scale": 0.1}`` for ``"normal"``.

    Example::

        >>> import torch, pyro_vae
        >>> vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(32,))
        >>> vae.sample(3).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (200, 200),
        activation: str = "tanh",
        likelihood: str | Likelihood = "bernoulli",
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        likelihood_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s < 1 for s in input_shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape}")
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims must be positive sizes, got {hidden_dims}")
        self.input_shape = input_shape
        self.latent_dim = int(latent_dim)
        self.config = {
            "input_shape": list(input_shape), "latent_dim": self.latent_dim, "hidden_dims": list(hidden_dims),
            "activation": activation,
            "likelihood": likelihood if isinstance(likelihood, str) else type(likelihood).__name__,
            "encoder": encoder if isinstance(encoder, str) else type(encoder).__name__,
            "decoder": decoder if isinstance(decoder, str) else type(decoder).__name__,
            "likelihood_options": dict(likelihood_options or {}),
        }
        self.encoder = make_encoder(encoder, input_shape, self.latent_dim, hidden_dims, activation)
        self.decoder = make_decoder(decoder, input_shape, self.latent_dim, hidden_dims, activation)
        self.likelihood = make_likelihood(likelihood, input_shape, **(likelihood_options or {}))
        # a buffer gives the prior its device and dtype, so .to(device) moves everything
        self.register_buffer("_anchor", torch.zeros(()))

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor) -> None:
        """The generative model: ``z ~ N(0, I)`` then ``x ~ p(x | z)``, inside ``pyro.plate("data", N)``.

        :param x: a batch of shape ``(N, *input_shape)``.
        """
        n = x.shape[0]
        with pyro.plate("data", n):
            z_loc = x.new_zeros((self.latent_dim,))
            z = pyro.sample("z", dist.Normal(z_loc, 1.0).expand([self.latent_dim]).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """The recognition model ``q(z | x) = N(z_loc(x), diag z_scale(x)^2)``.

        :param x: a batch of shape ``(N, *input_shape)``.
        """
        n = x.shape[0]
        with pyro.plate("data", n):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    # ------------------------------------------------------------------ fast path
    def importance_terms(self, x: torch.Tensor, num_particles: int = 1) -> ImportanceTerms:
        """The terms of the log importance weights computed directly, without Pyro's tracing.

        Exactly what :func:`pyro_vae.infer.importance_terms` computes for ``self.model``/``self.guide`` (the
        same draws for the same seed, proven by the tests), at plain PyTorch speed.

        :param x: ``(N, *input_shape)``.
        :returns: :class:`~pyro_vae.infer.ImportanceTerms`, each ``(K, N)``.
        """
        z_loc, z_scale = self.encoder(x)
        q = torch.distributions.Normal(z_loc, z_scale, validate_args=False)
        z = q.rsample((int(num_particles),))
        return self._terms(x, z, q)

    def _terms(self, x: torch.Tensor, z: torch.Tensor, q: torch.distributions.Normal) -> ImportanceTerms:
        prior = torch.distributions.Normal(torch.zeros((), dtype=z.dtype, device=z.device), 1.0, validate_args=False)
        return ImportanceTerms(self.likelihood(self.decoder(z)).log_prob(x), prior.log_prob(z).sum(-1),
                               q.log_prob(z).sum(-1))

    def loss(self, x: torch.Tensor, objective: str = "elbo", num_particles: int = 1,
             latent_scale: float = 1.0) -> torch.Tensor:
        """The training loss of a batch for a named objective, computed without Pyro's tracing.

        Equal in value and gradient (same seed) to the objective in
        :data:`pyro_vae.infer.objectives.OBJECTIVES` applied to ``self.model``/``self.guide`` with the latent
        sites scaled by ``latent_scale``; :func:`pyro_vae.fit` uses it for the library's own VAE.

        :returns: a scalar, ``-(sum over the batch of the bound)``.
        """
        k = int(num_particles)
        z_loc, z_scale = self.encoder(x)
        q = torch.distributions.Normal(z_loc, z_scale, validate_args=False)
        z = q.rsample((k,))
        if objective == "iwae-dreg":
            # path gradient through z scaled by the normalised weight; q's parameters detached (Tucker et al.)
            z_hooked = z.view_as(z)
            holder: dict[str, torch.Tensor] = {}
            if z_hooked.requires_grad:
                z_hooked.register_hook(lambda g: g * holder["w"].unsqueeze(-1))
            q_fixed = torch.distributions.Normal(z_loc.detach(), z_scale.detach(), validate_args=False)
            log_w = self._terms(x, z_hooked, q_fixed).log_weights
            holder["w"] = w = torch.softmax(log_w.detach(), 0)
            value = (torch.logsumexp(log_w.detach(), 0) - math.log(k)).sum()
            surrogate = (w * log_w).sum()
            return -(value + surrogate - surrogate.detach())
        t = self._terms(x, z, q)
        if objective == "iwae":
            return -(torch.logsumexp(t.log_weights, 0) - math.log(k)).sum()
        if objective == "elbo":
            return -(t.log_likelihood + latent_scale * (t.log_prior - t.log_guide)).sum() / k
        if objective == "mean_field":
            kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros_like(z_loc), 1.0))
            return -t.log_likelihood.sum() / k + latent_scale * kl.sum()
        raise ValueError(f"unknown objective {objective!r}; choose one of 'elbo', 'mean_field', 'iwae', 'iwae-dreg'")

    # ------------------------------------------------------------------ conveniences
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:param x: ``(N, *input_shape)``. :returns: ``(z_loc, z_scale)``, each ``(N, latent_dim)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """:param z: ``(..., latent_dim)``. :returns: the mean of ``p(x | z)``, ``(..., *input_shape)``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: ``E[x | z = z_loc(x)]``. :returns: ``(N, *input_shape)``."""
        z_loc, _ = self.encoder(x)
        return self.decode(z_loc)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw ``z`` from the prior and decode it.

        :param num_samples: how many samples.
        :param mean: return the mean of ``p(x | z)`` (the usual picture) rather than a draw from it.
        :returns: ``(num_samples, *input_shape)``.
        """
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        z = torch.randn(int(num_samples), self.latent_dim, device=self._anchor.device, dtype=self._anchor.dtype)
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @property
    def num_parameters(self) -> int:
        """The number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.parameters() if p.requires_grad)


# VAE.model/VAE.guide (not a subclass's overrides) may be computed by VAE.importance_terms / VAE.loss directly
VAE._fast_path_for = (VAE.model, VAE.guide)

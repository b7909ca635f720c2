"""The library's variational autoencoder, :class:`VAE`: components (a prior, a guide, a decoder and a likelihood)
and the two Pyro programs written on them, plus one direct producer of their importance terms.

The generative model and the amortized recognition model (guide) are

.. math::

    z \\sim p(z), \\qquad x \\mid z \\sim p_\\theta(x \\mid z) = \\mathrm{Lik}(f_\\theta(z)), \\qquad
    q_\\phi(z \\mid x) = \\mathcal{N}(\\mu_\\phi(x), \\operatorname{diag} \\sigma_\\phi(x)^2)
    \\;\\text{(optionally pushed through a flow)}.

Both keep the site contract every part of the library relies on: ``model(x)`` and ``guide(x)`` take a batch
``x`` of shape ``(N, *event_shape)``, open ``pyro.plate("data", N)``, and the observation site is ``"x"``.

References: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Sohn, Lee & Yan, "Learning Structured
Output Representation using Deep Conditional Generative Models", NeurIPS 2015 (the conditional VAE).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from ..guides import Guide, make_guide
from ..infer.weights import DReG, ImportanceTerms
from ..likelihoods import Likelihood, make_likelihood
from ..nets import init_output_bias, make_decoder, make_encoder
from ..priors import Prior, make_prior
from ..saving import Saveable, register_model_class
from .config import VAEConfig, name_of

__all__ = ["VAE"]


@register_model_class
class VAE(Saveable, PyroModule):
    """A variational autoencoder: a prior component (standard Normal by default; a mixture, the VampPrior or a
    flow), a guide component (a diagonal Gaussian of the encoder's output, optionally pushed through a normalizing
    flow conditioned on ``x``), a decoder network and a likelihood.

    :param input_shape: the shape of one datapoint, e.g. ``(1, 28, 28)`` or ``(784,)``.
    :param latent_dim: the dimension of ``z``.
    :param hidden_dims: hidden layer sizes of the MLP encoder (the decoder uses them reversed).
    :param activation: the MLP activation, e.g. ``"tanh"`` (Burda et al.) or ``"relu"``.
    :param likelihood: a name from :data:`pyro_vae.likelihoods.LIKELIHOODS` or a ``Likelihood`` instance.
    :param encoder: ``"mlp"``, ``"conv"`` or a user's ``nn.Module`` mapping ``x`` to ``(z_loc, z_scale)``.
    :param decoder: ``"mlp"``, ``"conv"`` or a user's ``nn.Module`` mapping ``z`` to the likelihood's
        parameter of shape ``(..., *input_shape)``.
    :param likelihood_options: keyword options of the likelihood, e.g. ``{"scale": 0.1}`` for ``"normal"``.
    :param prior: a name from :data:`pyro_vae.priors.PRIORS` or a :class:`~pyro_vae.priors.Prior` instance.
    :param prior_options: keyword options of the prior.
    :param guide_flow: None (a diagonal Gaussian guide), ``"iaf"`` (inverse autoregressive flow, Kingma et al.
        2016) or ``"spline"`` (conditional neural spline flow): ``num_flows`` autoregressive layers on the
        Gaussian, each conditioned on the encoder's ``(z_loc, log z_scale)`` as context, reversed orders between
        layers (:class:`pyro_vae.guides.FlowGuide`).
    :param num_flows: the number of flow layers of the guide.
    :param condition_shape: makes it a conditional VAE (Sohn et al. 2015): ``model(x, y)``, ``guide(x, y)``,
        ``sample(n, y=...)``, with the decoder and the encoder seeing ``y`` (of shape ``(N, *condition_shape)``)
        joined to their input; every estimator then takes ``y`` after ``x`` and gives ``log p(x | y)``, and
        ``fit(..., condition=y)`` trains it.

    The components are attributes: ``prior`` (:mod:`pyro_vae.priors`), ``q`` (the guide component,
    :mod:`pyro_vae.guides`), ``encoder`` and ``decoder`` (:mod:`pyro_vae.nets`), ``likelihood``
    (:mod:`pyro_vae.likelihoods`); ``settings`` is the checked :class:`~pyro_vae.models.config.VAEConfig`.

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
        hidden_dims: Sequence[int] | int = (200, 200),
        activation: str = "tanh",
        likelihood: str | Likelihood = "bernoulli",
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        likelihood_options: dict[str, Any] | None = None,
        prior: str | Prior = "normal",
        prior_options: dict[str, Any] | None = None,
        guide_flow: str | None = None,
        num_flows: int = 2,
        condition_shape: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        s = self.settings = VAEConfig(
            input_shape, latent_dim, hidden_dims, activation, name_of(likelihood), name_of(encoder),
            name_of(decoder), likelihood_options, name_of(prior), prior_options, guide_flow, num_flows, condition_shape)
        self.config = s.to_dict()
        self.input_shape, self.latent_dim, self.condition_shape = s.input_shape, s.latent_dim, s.condition_shape
        self.prior = make_prior(prior, s.latent_dim, **s.prior_options)
        self.encoder = make_encoder(encoder, s.input_shape, s.latent_dim, s.hidden_dims, activation, s.condition_shape)
        self.prior.set_context(self.encoder, s.input_shape)
        guide = make_guide(self.encoder, s.latent_dim, s.guide_flow, s.num_flows)
        object.__setattr__(self, "q", guide)  # its modules are registered here under their saved names:
        self.guide_flows = getattr(guide, "flows", None)  # encoder.*, guide_flows.*
        self.decoder = make_decoder(decoder, s.input_shape, s.latent_dim, s.hidden_dims, activation, s.condition_shape)
        self.likelihood = make_likelihood(likelihood, s.input_shape, **s.likelihood_options)
        # a buffer gives the prior its device and dtype, so .to(device) moves everything
        self.register_buffer("_anchor", torch.zeros(()))

    q: Guide

    def _inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The nets' extra inputs: ``(y,)`` for a conditional VAE, ``()`` otherwise (which refuses a ``y``)."""
        if self.condition_shape is None:
            if y is not None:
                raise ValueError("this VAE is not conditional: build it with condition_shape=... to pass y")
            return ()
        return (y,)

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The generative model: ``z ~ p(z)`` (the prior component) then ``x ~ p(x | z)`` (``p(x | z, y)`` for a
        conditional VAE), inside ``pyro.plate("data", N)``.

        :param x: a batch of shape ``(N, *input_shape)``.
        :param y: the conditions ``(N, *condition_shape)`` of a conditional VAE (``condition_shape`` set).
        """
        cond = self._inputs(x, y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior.distribution(x))
            pyro.sample("x", self.likelihood(self.decoder(z, *cond)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The recognition model: ``z ~ q(z | x)`` (of ``(x, y)`` for a conditional VAE), the guide component.

        :param x: a batch of shape ``(N, *input_shape)``.
        :param y: the conditions ``(N, *condition_shape)`` of a conditional VAE.
        """
        cond = self._inputs(x, y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x, *cond))

    # ------------------------------------------------------------------ the direct producer of its terms
    def importance_terms(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_particles: int = 1,
                         analytic_kl: bool = False, dreg: DReG | None = None) -> ImportanceTerms:
        """The terms of the log importance weights computed directly on the components, without Pyro's handlers.

        Exactly what the traced path of :func:`pyro_vae.infer.importance_terms` computes for
        ``self.model``/``self.guide`` (the same draws for the same seed, value and gradient, proven by the tests),
        at plain PyTorch speed, for every guide (Gaussian or flow) and for a conditional VAE. Objectives live in
        :mod:`pyro_vae.infer.objectives`, never here.

        :param x: ``(N, *input_shape)``.
        :param y: a conditional VAE's ``(N, *condition_shape)``.
        :param num_particles: ``K``.
        :param analytic_kl: also return ``KL(q(z | x) || p(z))``: in closed form for a Gaussian guide (the prior
            must have one), ``log q - log p`` for a flow guide (as Pyro's ``TraceMeanField_ELBO``).
        :param dreg: the doubly reparameterized gradient's hook (see :class:`~pyro_vae.infer.weights.DReG`).
        :returns: :class:`~pyro_vae.infer.ImportanceTerms`, each ``(K, N)``.
        """
        cond = self._inputs(x, y)
        q = self.q(x, *cond)
        z = q.rsample((int(num_particles),))
        if dreg is None:
            log_guide = q.log_prob(z)
        else:  # path gradient only, scaled per particle by the normalised weight
            hooked = dreg.hook(z, lambda w: w.unsqueeze(-1))
            log_guide = self.q.path_log_prob(q, z, hooked, (x, *cond))
            z = hooked
        log_prior = self.prior.log_prob(z)
        log_lik = self.likelihood.log_prob(self.decoder(z, *cond), x)
        kl = None
        if analytic_kl:  # closed form for a Gaussian guide; a flow's is log q - log p, as Pyro's TraceMeanField_ELBO
            kl = self.prior.kl(q.base_dist) if self.guide_flows is None else log_guide - log_prior
            if kl is None:
                raise ValueError(f"objective 'mean-field' needs KL(q || p) in closed form, and the "
                                 f"{self.config['prior']!r} prior has none: use objective='elbo'")
            kl = kl.expand_as(log_guide)
        return ImportanceTerms(log_lik, log_prior, log_guide, None, kl)

    # ------------------------------------------------------------------ conveniences
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's Gaussian parameters (before any flow).

        :param x: ``(N, *input_shape)``.
        :param y: a conditional VAE's ``(N, *condition_shape)``.
        :returns: ``(z_loc, z_scale)``, each ``(N, latent_dim)``.
        """
        return self.encoder(x, *self._inputs(x, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of ``p(x | z)`` (``p(x | z, y)`` for a conditional VAE).

        :param z: ``(..., latent_dim)``.
        :param y: a conditional VAE's ``(..., *condition_shape)``.
        :returns: ``(..., *input_shape)``.
        """
        return self.likelihood.mean(self.decoder(z, *self._inputs(z, y)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: ``E[x | z = z_loc(x)]``.

        :returns: ``(N, *input_shape)``.
        """
        z_loc, _ = self.encode(x, y)
        return self.decode(z_loc, y)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, y: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``z`` from the prior component and decode it (given ``y`` for a conditional VAE).

        :param num_samples: how many samples.
        :param mean: return the mean of ``p(x | z)`` (the usual picture) rather than a draw from it.
        :param y: a CVAE's condition: one ``(*condition_shape)`` for every sample, or ``(num_samples,
            *condition_shape)``.
        :returns: ``(num_samples, *input_shape)``.
        """
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        n = int(num_samples)
        if y is not None and self.condition_shape is not None and y.dim() == len(self.condition_shape):
            y = y.expand(n, *self.condition_shape)
        z = self.prior.sample(n)
        params = self.decoder(z, *self._inputs(z, y))
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @property
    def num_parameters(self) -> int:
        """The number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.parameters() if p.requires_grad)

    def init_output_bias(self, data: torch.Tensor) -> "VAE":
        """Set the decoder's output bias to the logit of the mean pixel (Burda et al. 2016); see
        :func:`pyro_vae.nets.init_output_bias`.

        :returns: ``self``.
        """
        init_output_bias(self.decoder, data)
        return self


# VAE.model/VAE.guide (not a subclass's overrides, not wrapped) may be computed by VAE.importance_terms directly
VAE._direct_terms_for = (VAE.model, VAE.guide)
VAE.max_plate_nesting = 1

"""The hierarchical VAE, :class:`HierarchicalVAE`: a stack of stochastic layers (Burda et al. 2016's two-layer
model), its Pyro programs sharing one ancestral pass with :meth:`~HierarchicalVAE.sample`, and a direct producer of
its importance terms.

References: Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016, section 5.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ..infer.weights import DReG, ImportanceTerms
from ..likelihoods import Likelihood, make_likelihood
from ..nets import MLPDecoder, MLPEncoder, init_output_bias
from ..priors import Prior, make_prior
from ..saving import Saveable, register_model_class
from .config import HierarchicalConfig, name_of

__all__ = ["HierarchicalVAE"]


@register_model_class
class HierarchicalVAE(Saveable, PyroModule):
    """A VAE with a stack of stochastic layers ``h1, ..., hL`` (Burda et al. 2016, two-layer model).

    The generative model samples the top layer from the prior and each lower layer given the one above:

    .. math::

        h_L \\sim \\mathcal{N}(0, I), \\quad h_{l-1} \\mid h_l \\sim \\mathcal{N}(\\mu_l(h_l),
        \\operatorname{diag} \\sigma_l(h_l)^2), \\quad x \\mid h_1 \\sim \\mathrm{Lik}(f(h_1)),

    and the guide goes bottom-up, :math:`q(h_1 \\mid x) \\, q(h_2 \\mid h_1) \\cdots q(h_L \\mid h_{L-1})`,
    every factor a diagonal Gaussian with ``exp`` scales. Each entry of ``layers`` is ``(*hidden, latent)``:
    the hidden sizes of the deterministic layers between the layer below and this stochastic layer (the
    generative direction uses them reversed), then the stochastic layer's dimension. The default is the IWAE
    paper's two-layer MNIST model: ``x <-> h1`` (100-d) through two 200-unit tanh layers, ``h1 <-> h2``
    (50-d) through two 100-unit tanh layers.

    Sites: ``"h1"``, ..., ``"hL"`` (latent), ``"x"`` (observed), all inside ``pyro.plate("data", N)``. The nets
    act on the last dimension, so the programs broadcast over a leading particle dimension and every estimator
    in :mod:`pyro_vae.infer` and every objective of :func:`pyro_vae.fit` applies. (``objective="mean-field"``
    runs, but Pyro warns that this guide is not mean-field: ``q(h2 | h1)`` depends on the sampled ``h1``, so the
    analytic KL of ``h1`` given a sampled ``h2`` is not the ELBO's term; prefer ``"elbo"``, ``"iwae"`` or
    ``"iwae-dreg"``.)

    :param input_shape: the shape of one datapoint.
    :param layers: one ``(*hidden_dims, latent_dim)`` tuple per stochastic layer, bottom (next to ``x``) first.
    :param activation: the MLP activation (``"tanh"`` in the paper).
    :param likelihood: the observation distribution (a name or a ``Likelihood``).
    :param likelihood_options: its keyword options.
    :param prior: the top layer's prior ``p(h_L)``: a name from :data:`pyro_vae.priors.PRIORS` (not the
        VampPrior) or a :class:`~pyro_vae.priors.Prior`.
    :param prior_options: its keyword options.

    Example::

        >>> from pyro_vae.models import HierarchicalVAE
        >>> vae = HierarchicalVAE((1, 8, 8), layers=((32, 8), (16, 4)))
        >>> vae.sample(3).shape
        torch.Size([3, 1, 8, 8])

    References: Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016, section 5.
    """

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        layers: Sequence[Sequence[int]] = ((200, 200, 100), (100, 100, 50)),
        activation: str = "tanh",
        likelihood: str | Likelihood = "bernoulli",
        likelihood_options: dict[str, Any] | None = None,
        prior: str | Prior = "normal",
        prior_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        s = self.settings = HierarchicalConfig(input_shape, layers, activation, name_of(likelihood),
                                               likelihood_options, name_of(prior), prior_options)
        self.config = s.to_dict()
        self.input_shape, self.layers = s.input_shape, [tuple(layer) for layer in s.layers]
        self.latent_dims = [layer[-1] for layer in self.layers]
        self.latent_dim = self.latent_dims[-1]
        self.site_names = [f"h{i + 1}" for i in range(len(self.layers))]
        below = [math.prod(s.input_shape), *self.latent_dims[:-1]]
        # q(h_l | h_{l-1}) with h_0 = x, and p(h_{l-1} | h_l) for l >= 2: Gaussian MLPs of the layer below / above
        self.encoders = nn.ModuleList(
            [MLPEncoder((below[i],), layer[:-1], layer[-1], activation) for i, layer in enumerate(self.layers)])
        self.priors = nn.ModuleList(
            [MLPEncoder((layer[-1],), tuple(reversed(layer[:-1])), below[i], activation)
             for i, layer in enumerate(self.layers) if i > 0])
        self.decoder = MLPDecoder(self.latent_dims[0], tuple(reversed(self.layers[0][:-1])), s.input_shape, activation)
        self.likelihood = make_likelihood(likelihood, s.input_shape, **s.likelihood_options)
        self.prior = make_prior(prior, self.latent_dims[-1], **s.prior_options)  # p(h_L)
        self.register_buffer("_anchor", torch.zeros(()))

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor) -> None:
        """``h_L ~ p(h_L)``, then ``h_{l-1} ~ p(h_{l-1} | h_l)``, then ``x ~ p(x | h_1)``.

        :param x: a batch of shape ``(N, *input_shape)``.
        """
        with pyro.plate("data", x.shape[0]):
            top = pyro.sample(self.site_names[-1], self.prior.distribution(x))
            h1 = self._descend(top, pyro.sample)
            pyro.sample("x", self.likelihood(self.decoder(h1)), obs=x)

    def _descend(self, top: torch.Tensor, draw: Callable[[str, dist.TorchDistribution], torch.Tensor]) -> torch.Tensor:
        """The ancestral pass below the top layer, shared by :meth:`model` (``draw=pyro.sample``) and :meth:`sample`
        (a plain draw): each lower layer drawn from ``p(h_{l-1} | h_l)``.

        :returns: ``h_1``, ``(..., latent_dims[0])``.
        """
        h = top
        for i in range(len(self.layers) - 1, 0, -1):
            loc, scale = self.priors[i - 1](h)
            h = draw(self.site_names[i - 1], dist.Normal(loc, scale).to_event(1))
        return h

    def guide(self, x: torch.Tensor) -> None:
        """``q(h_1 | x) q(h_2 | h_1) ... q(h_L | h_{L-1})``.

        :param x: a batch of shape ``(N, *input_shape)``.
        """
        n = x.shape[0]
        with pyro.plate("data", n):
            h = x.flatten(-len(self.input_shape))
            for name, encoder in zip(self.site_names, self.encoders):
                loc, scale = encoder(h)
                h = pyro.sample(name, dist.Normal(loc, scale).to_event(1))

    # ------------------------------------------------------------------ conveniences
    def encode(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The guide's means and scales layer by layer, each layer fed the *mean* of the one below.

        :param x: ``(N, *input_shape)``.
        :returns: ``[(loc_1, scale_1), ..., (loc_L, scale_L)]``.
        """
        out = []
        h = x.flatten(-len(self.input_shape))
        for encoder in self.encoders:
            loc, scale = encoder(h)
            out.append((loc, scale))
            h = loc
        return out

    def decode(self, h1: torch.Tensor) -> torch.Tensor:
        """The mean of ``p(x | h1)``, decoded from the lowest latent layer.

        :param h1: ``(..., latent_dims[0])``.
        :returns: ``(..., *input_shape)``.
        """
        return self.likelihood.mean(self.decoder(h1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the mean of ``q(h_1 | x)``.

        :returns: ``(N, *input_shape)``.
        """
        return self.decode(self.encoders[0](x.flatten(-len(self.input_shape)))[0])

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Ancestral sampling: ``h_L`` from the prior, each lower layer drawn, then the mean of ``p(x | h_1)``
        (or a draw from it with ``mean=False``).

        :returns: ``(num_samples, *input_shape)``.
        """
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        h1 = self._descend(self.prior.sample(int(num_samples)), lambda name, d: d.sample())
        params = self.decoder(h1)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    # ------------------------------------------------------------------ the direct producer of its terms
    def importance_terms(self, x: torch.Tensor, *, num_particles: int = 1, analytic_kl: bool = False,
                         dreg: DReG | None = None) -> ImportanceTerms:
        """The log importance weights' terms without Pyro's handlers: the guide's draws in the guide's order, so
        the same draws, values and gradients as the traced path of :func:`pyro_vae.infer.importance_terms` on
        ``self.model``/``self.guide`` for the same seed (tested).

        :param x: ``(N, *input_shape)``.
        :param analytic_kl: also return the analytic KL of every layer given the sampled layers (what Pyro's
            ``TraceMeanField_ELBO`` computes for this pair).
        :param dreg: the doubly reparameterized gradient's hook (see :class:`~pyro_vae.infer.weights.DReG`).
        :returns: :class:`~pyro_vae.infer.ImportanceTerms`, each ``(K, N)``.
        """
        k = int(num_particles)
        flat = x.flatten(-len(self.input_shape))
        h, hs, qs = flat, [], []
        for i, encoder in enumerate(self.encoders):
            loc, scale = encoder(h)
            q = torch.distributions.Normal(loc, scale, validate_args=False)
            h = q.rsample((k,)) if i == 0 else q.rsample()
            hs.append(h)
            qs.append(q)
        if dreg is not None:
            # the densities see hooked views of the draws (the draws' own graph stays unhooked, so no weight is
            # applied twice down the hierarchy), and log q is also taken with every draw detached: subtracting
            # its gradient cancels the score term
            hooked = [dreg.hook(v, lambda w: w.unsqueeze(-1)) for v in hs]
            qs = [self._guide_layer(i, flat if i == 0 else hooked[i - 1]) for i in range(len(hs))]
            fixed = sum(self._guide_layer(i, flat if i == 0 else hs[i - 1].detach()).log_prob(v.detach()).sum(-1)
                        for i, v in enumerate(hs))
            hs = hooked
        log_q = sum(q.log_prob(v).sum(-1) for q, v in zip(qs, hs))
        if dreg is not None:
            log_q = log_q - fixed + fixed.detach()
        ps = [self._prior_layer(i, hs[i]) for i in range(1, len(self.layers))]  # p(h_{i} | h_{i+1}), 0-based
        log_p = self.prior.log_prob(hs[-1]) + sum(p.log_prob(v).sum(-1) for p, v in zip(ps, hs))
        log_lik = self.likelihood(self.decoder(hs[0])).log_prob(x)
        parts = [log_lik, log_p, log_q]
        if analytic_kl:
            top = self.prior.kl(qs[-1])
            if top is None:
                top = qs[-1].log_prob(hs[-1]).sum(-1) - self.prior.log_prob(hs[-1])
            parts.append(top + sum(torch.distributions.kl_divergence(q, p).sum(-1) for q, p in zip(qs, ps)))
        parts = list(torch.broadcast_tensors(*parts))
        return ImportanceTerms(parts[0], parts[1], parts[2], None, parts[3] if analytic_kl else None)

    def _prior_layer(self, i: int, above: torch.Tensor) -> torch.distributions.Normal:
        """``p(h_{i-1} | h_i)``: the density of layer ``i - 1`` (0-based) given the sampled layer ``i`` above it."""
        loc, scale = self.priors[i - 1](above)
        return torch.distributions.Normal(loc, scale, validate_args=False)

    def _guide_layer(self, i: int, below: torch.Tensor) -> torch.distributions.Normal:
        loc, scale = self.encoders[i](below)
        return torch.distributions.Normal(loc, scale, validate_args=False)

    def init_output_bias(self, data: torch.Tensor) -> "HierarchicalVAE":
        """Set the decoder's output bias to ``logit(mean pixel)``; see :func:`pyro_vae.nets.init_output_bias`."""
        init_output_bias(self.decoder, data)
        return self

    @property
    def num_parameters(self) -> int:
        """The number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.parameters() if p.requires_grad)


# HierarchicalVAE.model/.guide (not overridden, not wrapped) may be computed by its importance_terms directly
HierarchicalVAE._direct_terms_for = (HierarchicalVAE.model, HierarchicalVAE.guide)
HierarchicalVAE.max_plate_nesting = 1

"""Priors ``p(z)`` as components: a model asks its prior for a distribution, a log density, samples and (where
one exists) the closed-form KL from a diagonal Gaussian guide. Adding a prior is one class here and one entry in
:data:`PRIORS`; ``VAE(..., prior=name, prior_options={...})`` then uses it everywhere (model, estimators,
sampling, figures).

=============  ======================================================================================
name           ``p(z)``
=============  ======================================================================================
``normal``     :math:`\\mathcal{N}(0, I_d)` (Kingma & Welling 2014)
``mixture``    a learned mixture of diagonal Gaussians, :math:`\\sum_k \\pi_k \\mathcal{N}(\\mu_k, \\operatorname{diag}
               \\sigma_k^2)`
``vamp``       the VampPrior, :math:`\\frac{1}{K} \\sum_k q(z \\mid u_k)` on learned pseudo-inputs :math:`u_k`
               (Tomczak & Welling 2018)
``flow``       :math:`\\mathcal{N}(0, I_d)` pushed through learned spline coupling flows (Durkan et al. 2019)
=============  ======================================================================================

Densities come from :mod:`torch.distributions` / Pyro; :class:`StandardNormal` spells out the same formula
as ``Normal(0, 1).log_prob`` for speed (the tests compare them).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

__all__ = ["Prior", "StandardNormal", "MixturePrior", "VampPrior", "FlowPrior", "DiagonalNormalMixture", "PRIORS",
           "make_prior"]

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
        """The prior's log density.

        :param z: ``(..., latent_dim)``.
        :returns: ``log p(z)``, shape ``(...)``.
        """
        return self.distribution(z).log_prob(z)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """:returns: ``(num_samples, latent_dim)`` draws."""
        return self.distribution(self._anchor).sample((int(num_samples),))

    def kl(self, q: torch.distributions.Normal) -> torch.Tensor | None:
        """``KL(q || p)`` summed over the latent dimensions for a diagonal Gaussian ``q`` of batch shape
        ``(..., latent_dim)``, or None where there is no closed form."""
        return None

    #: whether :meth:`kl` has a closed form (``objective="mean-field"`` needs one)
    has_closed_form_kl = False

    def set_context(self, encoder: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    input_shape: Sequence[int]) -> None:
        """Called by the model with its encoder and input shape (the VampPrior needs them; others ignore it)."""


class StandardNormal(Prior):
    """:math:`p(z) = \\mathcal{N}(0, I_d)`."""

    has_closed_form_kl = True

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


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` of diagonal Gaussians whose ``log_prob`` never materialises a ``(..., K, d)`` tensor:

    .. math::

        \\log \\mathcal{N}(z; \\mu_k, \\sigma_k^2) = -\\tfrac12 \\Big[\\sum_j \\frac{z_j^2}{\\sigma_{kj}^2}
        - 2 \\sum_j \\frac{z_j \\mu_{kj}}{\\sigma_{kj}^2} + \\sum_j \\frac{\\mu_{kj}^2}{\\sigma_{kj}^2}\\Big]
        - \\sum_j \\log \\sigma_{kj} - \\tfrac{d}{2} \\log 2\\pi,

    two matrix products over the components (a VampPrior with K = 500 scored for 1000 particles of 50 datapoints
    would otherwise allocate 4 GB). Sampling is ``MixtureSameFamily``'s; the tests compare ``log_prob`` with it.
    """

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor, validate_args: Any = None):
        super().__init__(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1),
                         validate_args=validate_args)
        self._locs, self._scales, self._logits = locs, scales, logits

    def expand(self, batch_shape: Any, _instance: Any = None) -> dist.TorchDistribution:
        """The same mixture over ``batch_shape`` (an ``ExpandedDistribution``, so ``log_prob`` stays this one)."""
        if tuple(batch_shape) == ():
            return self
        return dist.ExpandedDistribution(self, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The mixture's log density.

        :param value: ``(..., d)``.
        :returns: ``(...)``.
        """
        inv_var = self._scales.pow(-2)  # (K, d)
        quad = (value.pow(2) @ inv_var.T - 2 * (value @ (self._locs * inv_var).T)
                + (self._locs.pow(2) * inv_var).sum(-1))  # (..., K)
        log_norm = -self._scales.log().sum(-1) - 0.5 * self._locs.shape[-1] * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(self._logits, -1) + log_norm - 0.5 * quad, -1)


class MixturePrior(Prior):
    """A learned mixture of ``num_components`` diagonal Gaussians (``MixtureSameFamily``).

    :param num_components: ``K``.
    :param init_scale: the spread of the components' initial means (drawn from ``N(0, init_scale^2)``).
    """

    def __init__(self, latent_dim: int, num_components: int = 10, init_scale: float = 1.0) -> None:
        super().__init__(latent_dim)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.num_components = int(num_components)
        self.locs = nn.Parameter(torch.randn(self.num_components, self.latent_dim) * float(init_scale))
        self.log_scales = nn.Parameter(torch.zeros(self.num_components, self.latent_dim))
        self.logits = nn.Parameter(torch.zeros(self.num_components))

    def distribution(self, like: torch.Tensor) -> dist.TorchDistribution:
        return DiagonalNormalMixture(self.logits.to(like.dtype), self.locs.to(like.dtype),
                                     self.log_scales.to(like.dtype).exp())


class VampPrior(Prior):
    """The VampPrior: :math:`p(z) = \\frac{1}{K}\\sum_k q_\\phi(z \\mid u_k)`, the guide's Gaussian posteriors at
    ``K`` learned pseudo-inputs :math:`u_k` (Tomczak & Welling 2018). The model hands it its encoder
    (:meth:`set_context`); the pseudo-inputs are parameters of the prior and get the gradient of ``log p(z)``.

    :param num_components: ``K`` (500 in the paper).
    :param init: ``"random"``: pseudo-inputs drawn from ``N(init_mean, init_std^2)`` (the paper's), or set them
        later from data with :meth:`init_from_data`.
    :param init_mean: the mean of the random initialisation.
    :param init_std: its standard deviation.
    """

    def __init__(self, latent_dim: int, num_components: int = 500, init: str = "random", init_mean: float = 0.05,
                 init_std: float = 0.01) -> None:
        super().__init__(latent_dim)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        if init not in ("random",):
            raise ValueError(f"unknown init {init!r}; use 'random' (or init_from_data after building the model)")
        self.num_components = int(num_components)
        self.init_mean, self.init_std = float(init_mean), float(init_std)
        self.pseudo_inputs: nn.Parameter | None = None
        self._encoder: list[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = []

    def set_context(self, encoder: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    input_shape: Sequence[int]) -> None:
        self._encoder = [encoder]  # a list: the encoder stays the model's submodule, not the prior's
        shape = (self.num_components, *input_shape)
        self.pseudo_inputs = nn.Parameter(torch.randn(shape) * self.init_std + self.init_mean)

    @torch.no_grad()
    def init_from_data(self, data: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the pseudo-inputs to ``K`` datapoints drawn without replacement (with replacement if fewer)."""
        self._check()
        idx = torch.randperm(data.shape[0], generator=generator)[: self.num_components]
        if idx.numel() < self.num_components:
            idx = torch.randint(data.shape[0], (self.num_components,), generator=generator)
        self.pseudo_inputs.copy_(data[idx].to(self.pseudo_inputs))

    def _check(self) -> None:
        if self.pseudo_inputs is None or not self._encoder:
            raise RuntimeError("the VampPrior needs the model's encoder: build it through VAE(prior='vamp')")

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(loc, scale)`` at the pseudo-inputs, each ``(K, latent_dim)``."""
        self._check()
        return self._encoder[0](self.pseudo_inputs)

    def distribution(self, like: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.components()
        return DiagonalNormalMixture(loc.new_zeros(self.num_components).to(like.dtype), loc.to(like.dtype),
                                     scale.to(like.dtype))


class FlowPrior(Prior):
    """A learned flow on :math:`\\mathcal{N}(0, I_d)`: ``num_flows`` spline coupling layers (elementwise splines
    when ``d = 1``), the dimensions reversed between consecutive layers (so every dimension is coupled).

    :param num_flows: the number of layers.
    :param count_bins: spline bins per dimension.
    :param bound: the splines act on ``[-bound, bound]`` (identity outside).
    """

    def __init__(self, latent_dim: int, num_flows: int = 2, count_bins: int = 8, bound: float = 5.0) -> None:
        super().__init__(latent_dim)
        if int(num_flows) < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        d = self.latent_dim
        layers: list[nn.Module] = []
        for i in range(int(num_flows)):
            if d == 1:
                layers.append(T.Spline(1, count_bins=int(count_bins), bound=float(bound)))
            else:
                layers.append(T.spline_coupling(d, count_bins=int(count_bins), bound=float(bound)))
        self.layers = nn.ModuleList(layers)
        # the reversal puts the dimensions a coupling layer left to its elementwise spline into the part the next
        # layer conditions on, so that every dimension is coupled to the others (a random permutation may keep
        # some of them in the unconditioned part of every layer: the identity for d = 2)
        perms = torch.arange(d - 1, -1, -1).expand(len(layers), d).clone()
        self.register_buffer("permutations", perms)

    def transforms(self) -> list[Any]:
        out: list[Any] = []
        for i, layer in enumerate(self.layers):
            out.append(layer)
            if self.latent_dim > 1 and i + 1 < len(self.layers):
                out.append(T.Permute(self.permutations[i]))
        return out

    def distribution(self, like: torch.Tensor) -> dist.TorchDistribution:
        base = dist.Normal(like.new_zeros((self.latent_dim,)), 1.0).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        return self.distribution(self._anchor).sample((int(num_samples),))


#: name -> prior class ``cls(latent_dim, **options)``
PRIORS: dict[str, type[Prior]] = {"normal": StandardNormal, "mixture": MixturePrior, "vamp": VampPrior,
                                  "flow": FlowPrior}


def make_prior(prior: str | Prior, latent_dim: int, **options: Any) -> Prior:
    """A prior by name (with its options) or a user's :class:`Prior` instance."""
    if isinstance(prior, Prior):
        if prior.latent_dim != int(latent_dim):
            raise ValueError(f"the prior is over {prior.latent_dim} dimensions but latent_dim is {latent_dim}")
        return prior
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(PRIORS)} or pass a pyro_vae.priors.Prior")
    try:
        return PRIORS[prior](int(latent_dim), **options)
    except TypeError as e:
        raise ValueError(f"bad prior_options for the {prior!r} prior: {e}") from None

"""Guides ``q(z | x)`` as components, beside the priors: a model asks its guide for the distribution of ``z``
given the encoder's input, and the same object serves the Pyro ``guide`` program and the model's direct
importance terms (:meth:`pyro_vae.VAE.importance_terms`).

- :class:`GaussianGuide`: :math:`\\mathcal{N}(\\mu_\\phi(x), \\operatorname{diag} \\sigma_\\phi(x)^2)`
  (Kingma & Welling);
- :class:`FlowGuide`: that Gaussian pushed through ``num_flows`` conditional autoregressive flows (``"iaf"``:
  Kingma et al. 2016; ``"spline"``: Durkan et al. 2019), each conditioned on ``(z_loc, log z_scale)``, the
  order reversed between layers.

Densities come from Pyro's distributions and transforms. The encoder maps its input (``x``, or ``(x, y)`` for a
conditional VAE) to ``(z_loc, z_scale)``; see :mod:`pyro_vae.nets`.

References: Kingma & Welling, "Auto-Encoding Variational Bayes", 2014; Kingma et al., "Improved Variational
Inference with Inverse Autoregressive Flow", 2016; Durkan et al., "Neural Spline Flows", 2019.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

__all__ = ["Guide", "GaussianGuide", "FlowGuide", "GUIDE_FLOWS", "make_guide"]

#: the ``guide_flow`` names of :class:`pyro_vae.VAE` (None: a Gaussian guide)
GUIDE_FLOWS = (None, "iaf", "spline")


class Guide(nn.Module):
    """Base class: ``q(z | inputs)`` from an encoder's ``(z_loc, z_scale)``.

    :param encoder: maps the inputs (``x``, or ``x, y``) to ``(z_loc, z_scale)``, each ``(..., latent_dim)``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def distribution_of(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        """``q(z | x)`` given the encoder's output: event shape ``(latent_dim,)``, batch shape ``(N,)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, *inputs: torch.Tensor) -> dist.TorchDistribution:
        """``q(z | inputs)``: a Pyro distribution of event shape ``(latent_dim,)`` and batch shape ``(N,)``."""
        return self.distribution_of(*self.encoder(*inputs))

    def path_log_prob(self, q: dist.TorchDistribution, z: torch.Tensor, hooked: torch.Tensor,
                      inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``log q(z)`` whose gradient reaches the guide's parameters only through the value ``hooked`` (the
        score term cancelled): what the doubly reparameterized gradient needs. The default subtracts the density
        at the detached draw, whose parameter gradient equals the score term exactly.

        :param q: the distribution ``z`` was drawn from; ``z``: the draws ``(K, N, latent_dim)``; ``hooked``: the
            same values through :meth:`pyro_vae.infer.weights.DReG.hook`.
        :returns: ``(K, N)``.
        """
        fixed = q.log_prob(z.detach())
        return q.log_prob(hooked) - fixed + fixed.detach()


class GaussianGuide(Guide):
    """:math:`q(z \\mid x) = \\mathcal{N}(z_{loc}(x), \\operatorname{diag} z_{scale}(x)^2)`."""

    def distribution_of(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(z_loc, z_scale).to_event(1)

    def path_log_prob(self, q: dist.TorchDistribution, z: torch.Tensor, hooked: torch.Tensor,
                      inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        base = q.base_dist
        return torch.distributions.Normal(base.loc.detach(), base.scale.detach(),
                                          validate_args=False).log_prob(hooked).sum(-1)


class FlowGuide(Guide):
    """The Gaussian guide pushed through ``num_flows`` conditional autoregressive flow layers.

    :param encoder: maps the inputs to ``(z_loc, z_scale)``.
    :param latent_dim: the dimension of ``z``.
    :param kind: ``"iaf"`` (affine autoregressive) or ``"spline"`` (rational-quadratic spline autoregressive).
    :param num_flows: the number of layers (>= 1).
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, kind: str = "iaf", num_flows: int = 2) -> None:
        super().__init__(encoder)
        if kind not in GUIDE_FLOWS[1:]:
            raise ValueError(f"unknown guide_flow {kind!r}; choose one of {list(GUIDE_FLOWS)}")
        if int(num_flows) < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        if latent_dim < 2 and kind == "iaf":
            raise ValueError("guide_flow='iaf' needs latent_dim >= 2 (an autoregressive flow over one dimension is "
                             "elementwise): use guide_flow='spline'")
        self.latent_dim = int(latent_dim)
        hidden = [max(4 * self.latent_dim, 16)] * 2
        context = 2 * self.latent_dim
        layers = []
        for _ in range(int(num_flows)):
            if kind == "iaf":
                layers.append(T.conditional_affine_autoregressive(self.latent_dim, context, hidden_dims=hidden))
            elif self.latent_dim == 1:
                layers.append(T.conditional_spline(1, context, hidden_dims=hidden))
            else:
                layers.append(T.conditional_spline_autoregressive(self.latent_dim, context, hidden_dims=hidden))
        self.flows = nn.ModuleList(layers)

    def transforms(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> list[Any]:
        """The flow layers conditioned on ``(z_loc, log z_scale)``, the order reversed between layers."""
        context = torch.cat([z_loc, z_scale.log()], -1)
        out: list[Any] = []
        for i, flow in enumerate(self.flows):
            if i > 0:
                out.append(T.Permute(torch.arange(self.latent_dim - 1, -1, -1, device=z_loc.device)))
            out.append(flow.condition(context))
        return out

    def distribution_of(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.TransformedDistribution(dist.Normal(z_loc, z_scale).to_event(1), self.transforms(z_loc, z_scale))


def make_guide(encoder: nn.Module, latent_dim: int, flow: str | None = None, num_flows: int = 2) -> Guide:
    """A :class:`GaussianGuide` (``flow=None``) or a :class:`FlowGuide` of that kind."""
    if flow not in GUIDE_FLOWS:
        raise ValueError(f"unknown guide_flow {flow!r}; choose one of {list(GUIDE_FLOWS)}")
    return GaussianGuide(encoder) if flow is None else FlowGuide(encoder, latent_dim, flow, num_flows)

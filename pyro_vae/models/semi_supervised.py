"""The semi-supervised VAE (M2) of Kingma, Rezende, Mohamed & Welling (2014), with the label summed exactly.

The generative model and the guide are

.. math::

    p(y) = \\mathrm{Cat}(1/C), \\quad p(z) = \\mathcal{N}(0, I), \\quad p_\\theta(x \\mid y, z); \\qquad
    q_\\phi(y \\mid x) = \\mathrm{Cat}(\\pi_\\phi(x)), \\quad
    q_\\phi(z \\mid x, y) = \\mathcal{N}(\\mu_\\phi(x, y), \\operatorname{diag}\\sigma_\\phi(x, y)^2).

``model(x, y)`` and ``guide(x, y)`` observe the label when it is given; without it the guide's ``y`` site is marked
``infer={"enumerate": "parallel"}``, so the engine sums it exactly (:mod:`pyro_vae.infer.weights`): the ELBO of an
unlabelled datapoint is :math:`\\sum_y q(y \\mid x)[\\log p(x, y, z_y) - \\log q(y \\mid x) - \\log q(z_y \\mid x,
y)]` (Kingma et al.'s :math:`\\mathcal{U}(x)`, as Pyro's ``TraceEnum_ELBO`` computes it) and the importance-weighted
``log p(x)`` sums the label inside every weight. A labelled datapoint's bound is on :math:`\\log p(x, y)`
(:math:`\\mathcal{L}(x, y)`). Because :math:`q(y \\mid x)` gets no gradient from labelled data, the auxiliary
classification loss :math:`-\\alpha \\log q(y \\mid x)` is added on labelled batches (Kingma et al.'s
:math:`\\mathcal{J}^\\alpha`; ``aux_loss_multiplier`` :math:`\\alpha = 46` per datapoint, the value of Pyro's
tutorial).

``pyro_vae.train.fit_semi_supervised`` trains on labelled and unlabelled data as Pyro's example does (the labelled
batches spread evenly among the unlabelled ones, every datapoint once per epoch); :meth:`SSVAE.accuracy` scores the
classifier :math:`\\arg\\max_y q(y \\mid x)`; ``pyro_vae.infer.log_likelihood(ssvae.model, ssvae.guide, x)`` is
the test ``log p(x)`` with the label summed (``condition=y`` gives ``log p(x, y)``).

References: Kingma, Rezende, Mohamed, Welling, "Semi-Supervised Learning with Deep Generative Models", NeurIPS
2014; Pyro's ``examples/vae/ss_vae_M2.py`` and its SS-VAE tutorial.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..likelihoods import Likelihood, make_likelihood
from ..nets import mlp
from ..saving import Saveable, register_model_class
from .config import name_of, sizes

__all__ = ["SSVAE"]


def _on_joined(net: nn.Sequential, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``net([a, b])``, ``[a, b]`` joined along the last dimension with the leading (enumeration, particle, data)
    dimensions broadcast, without building the joined input.

    The first (linear) layer's product is split by input: ``W [a, b] + c = W_a a + W_b b + c``, each part computed
    on its own leading shape and the sums broadcast. Under the enumeration of the label, ``q(z | x, y)`` sees each
    ``x`` with every one of the ``C`` labels: joined first, the 784-wide product of ``x`` would be computed ``C``
    times (a quarter of an unlabelled step's time at Pyro's example's sizes), split it is computed once. The same
    weights, the same values as the joined input gives (``tests/test_semi_supervised.py`` checks both).
    """
    first, width = net[0], a.shape[-1]
    h = F.linear(a, first.weight[:, :width], first.bias) + F.linear(b, first.weight[:, width:])
    for layer in itertools.islice(net, 1, None):
        h = layer(h)
    return h


@register_model_class
class SSVAE(Saveable, nn.Module):
    """The M2 model and its guide, with MLP networks (Pyro's example uses ``hidden_dims=(500,)``,
    ``latent_dim=50``, softplus).

    :param input_shape: the shape of one datapoint, e.g. ``(1, 28, 28)``.
    :param num_classes: ``C``.
    :param latent_dim: the dimension of ``z``.
    :param hidden_dims: hidden layers of each of the three networks (``q(y|x)``, ``q(z|x,y)``, ``p(x|y,z)``).
    :param activation: a name of :data:`pyro_vae.nets.ACTIVATIONS`.
    :param likelihood: a name of :data:`pyro_vae.likelihoods.LIKELIHOODS` or an instance.
    :param aux_loss_multiplier: ``alpha`` of the auxiliary classification loss, per labelled datapoint.

    It saves and loads as every model class does (``ssvae.save(folder)``, ``pyro_vae.load(folder)``), and draws
    pictures as a :class:`~pyro_vae.VAE` does (:meth:`sample`, :meth:`reconstruct`), given a label or its own.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, latent_dim: int = 50,
                 hidden_dims: Sequence[int] = (500,), activation: str = "softplus",
                 likelihood: str | Likelihood = "bernoulli", aux_loss_multiplier: float = 46.0) -> None:
        super().__init__()
        self.input_shape = sizes(input_shape, "input_shape")
        (self.num_classes,) = sizes(num_classes, "num_classes")
        (self.latent_dim,) = sizes(latent_dim, "latent_dim")
        hidden_dims = sizes(hidden_dims, "hidden_dims")
        self.aux_loss_multiplier = float(aux_loss_multiplier)
        self.config = {"input_shape": list(self.input_shape), "num_classes": self.num_classes,
                       "latent_dim": self.latent_dim, "hidden_dims": list(hidden_dims), "activation": activation,
                       "likelihood": name_of(likelihood), "aux_loss_multiplier": self.aux_loss_multiplier}
        size = math.prod(self.input_shape)
        self.encoder_y = mlp([size, *hidden_dims, self.num_classes], activation)
        self.encoder_z = mlp([size + self.num_classes, *hidden_dims, 2 * self.latent_dim], activation)
        self.decoder = mlp([self.latent_dim + self.num_classes, *hidden_dims, size], activation)
        self.likelihood = make_likelihood(likelihood, self.input_shape)

    def _one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if y.dtype.is_floating_point and y.shape[-1:] == (self.num_classes,):
            return y.to(like.dtype)
        return F.one_hot(y.long(), self.num_classes).to(like.dtype)

    def y_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``q(y | x)``, shape ``(..., C)``."""
        return self.encoder_y(x.flatten(-len(self.input_shape)))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``p(y) p(z) p(x | y, z)``; ``y`` (class indices ``(N,)``, or one-hot) observed when given."""
        pyro.module("ssvae", self)
        obs = None if y is None else self._one_hot(y, x)
        with pyro.plate("data", x.shape[0]):
            y_hot = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(self.num_classes)), obs=obs)
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            params = _on_joined(self.decoder, z, y_hot).unflatten(-1, self.input_shape)
            pyro.sample("x", self.likelihood(params), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``q(y | x) q(z | x, y)``; without ``y`` the label site is enumerated (summed exactly)."""
        pyro.module("ssvae", self)
        flat = x.flatten(-len(self.input_shape))
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y_hot = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(flat)),
                                    infer={"enumerate": "parallel"})
            else:
                y_hot = self._one_hot(y, x)
            z_loc, z_log_scale = _on_joined(self.encoder_z, flat, y_hot).chunk(2, -1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))

    def aux_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The auxiliary classification loss ``-alpha sum_n log q(y_n | x_n)`` of a labelled batch (a scalar)."""
        return F.cross_entropy(self.y_logits(x), y.long(), reduction="sum") * self.aux_loss_multiplier

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, y: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``z ~ p(z)`` and decode it with the labels ``y``.

        :param num_samples: how many samples.
        :param mean: return the mean of ``p(x | y, z)`` (the usual picture) rather than a draw from it.
        :param y: class indices ``(num_samples,)`` (default: the classes in turn, ``0, 1, ..., C - 1, 0, ...``).
        :returns: ``(num_samples, *input_shape)``.
        """
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        n = int(num_samples)
        like = next(self.parameters())
        y = torch.arange(n, device=like.device) % self.num_classes if y is None else y.to(like.device)
        z = torch.randn(n, self.latent_dim, device=like.device, dtype=like.dtype)
        params = _on_joined(self.decoder, z, self._one_hot(y, z)).unflatten(-1, self.input_shape)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters of ``q(z | x, y)`` with ``y`` (default: :meth:`classify`'s label).

        :returns: ``(z_loc, z_scale)``, each ``(N, latent_dim)``.
        """
        y_hot = self._one_hot(self.classify(x) if y is None else y, x)
        z_loc, z_log_scale = _on_joined(self.encoder_z, x.flatten(-len(self.input_shape)), y_hot).chunk(2, -1)
        return z_loc, z_log_scale.exp()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of ``q(z | x, y)`` with ``y`` (default: :meth:`classify`'s label).

        :returns: ``(N, *input_shape)``.
        """
        y_hot = self._one_hot(self.classify(x) if y is None else y, x)
        z_loc, _ = self.encode(x, y_hot)
        return self.likelihood.mean(_on_joined(self.decoder, z_loc, y_hot).unflatten(-1, self.input_shape))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``argmax_y q(y | x)``, shape ``(N,)``."""
        return self.y_logits(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
        """The fraction of ``x`` that :meth:`classify` labels ``y``."""
        device = next(self.parameters()).device
        hits = sum(int((self.classify(x[i:i + batch_size].to(device)) == y[i:i + batch_size].to(device)).sum())
                   for i in range(0, x.shape[0], batch_size))
        return hits / x.shape[0]

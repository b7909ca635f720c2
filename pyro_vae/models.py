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

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import PyroModule
from torch import nn

from .infer.weights import DReG, ImportanceTerms
from .io import atomic_save, atomic_write, load_tensors, refuse_link, tensor_checksum
from .likelihoods import Likelihood, make_likelihood
from .nets import MLPDecoder, make_decoder, make_encoder
from .priors import PRIORS, Prior, make_prior

__all__ = ["VAE", "HierarchicalVAE", "TwoStageVAE", "Saveable", "init_output_bias", "save_model", "load_model",
           "build_checked", "MODEL_CLASSES"]

#: the files of a folder written by :meth:`VAE.save`, and its format tag
SAVE_CONFIG, SAVE_WEIGHTS, SAVE_FORMAT = "vae.json", "weights.pt", "pyro-vae/1"


class Saveable:
    """Saving and loading, one format for every model class: a folder with ``vae.json`` (the format tag, the class
    name, the constructor's :attr:`config` and the library version) and ``weights.pt`` (the ``state_dict``,
    read back with ``torch.load(weights_only=True)``, so loading runs no pickled code); both written atomically.
    :func:`pyro_vae.load` reads any of them."""

    config: dict[str, Any]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the configuration and the weights into the folder ``path`` (see :func:`save_model`).

        :returns: the folder, as a :class:`~pathlib.Path`.
        """
        return save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu", **overrides: Any) -> Any:
        """Rebuild a model written by :meth:`save`, in eval mode (see :func:`load_model`).

        :param path: the folder :meth:`save` wrote.
        :param map_location: the device to put the model on (``"cpu"``, ``"cuda"``, a :class:`torch.device`).
        :param overrides: constructor arguments that replace the saved ones; a VAE built with a user's
            ``encoder``/``decoder`` module or ``Likelihood`` instance is loaded by passing a fresh instance
            again, e.g. ``VAE.load(path, encoder=MyEncoder())``.
        :raises FileNotFoundError: if the folder or one of its files is missing.
        :raises ValueError: if the files are not what :meth:`save` writes, the saved class is not this one, or the
            weights do not fit.

        Example::

            >>> import tempfile, torch, pyro_vae
            >>> vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
            >>> folder = vae.save(tempfile.mkdtemp() + "/vae")
            >>> again = pyro_vae.VAE.load(folder)
            >>> x = torch.rand(3, 1, 8, 8)
            >>> torch.equal(vae.reconstruct(x), again.reconstruct(x))
            True
        """
        return load_model(path, map_location=map_location, expected=cls, **overrides)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Build the model that :attr:`config` describes (untrained)."""
        for key in ("encoder", "decoder", "prior"):
            known = ("mlp", "conv") if key != "prior" else tuple(PRIORS)
            if isinstance(config.get(key), str) and config[key] not in known:
                raise ValueError(f"the saved model used a custom {key} ({config[key]}); pass a fresh instance: "
                                 f"{cls.__name__}.load(path, {key}=...)")
        return cls(**config)



class VAE(Saveable, PyroModule):
    """A variational autoencoder: a prior component (standard Normal by default; a mixture, the VampPrior or a
    flow), a decoder likelihood, and an amortized diagonal Gaussian guide, optionally made a normalizing flow
    conditioned on ``x`` (``guide_flow``).

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
        layers. Its densities come from Pyro's conditional transforms (the guide is then always traced).
    :param num_flows: the number of flow layers of the guide.
    :param condition_shape: makes it a conditional VAE (Sohn et al. 2015): ``model(x, y)``, ``guide(x, y)``,
        ``sample(n, y=...)``, with the decoder and the encoder seeing ``y`` (of shape ``(N, *condition_shape)``)
        joined to their input; every estimator then takes ``y`` after ``x`` and gives ``log p(x | y)``, and
        ``fit(..., condition=y)`` trains it.

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
        prior: str | Prior = "normal",
        prior_options: dict[str, Any] | None = None,
        guide_flow: str | None = None,
        num_flows: int = 2,
        condition_shape: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        input_shape = _sizes(input_shape, "input_shape")
        (latent_dim,) = _sizes(latent_dim, "latent_dim")
        hidden_dims = _sizes(hidden_dims, "hidden_dims") if len(hidden_dims) else ()
        if guide_flow is not None:  # without a flow the number is unused (0 was accepted and saved so)
            (num_flows,) = _sizes(num_flows, "num_flows")
        self.input_shape = input_shape
        self.latent_dim = latent_dim
        self.config = {
            "input_shape": list(input_shape), "latent_dim": self.latent_dim, "hidden_dims": list(hidden_dims),
            "activation": activation,
            "likelihood": likelihood if isinstance(likelihood, str) else type(likelihood).__name__,
            "encoder": encoder if isinstance(encoder, str) else type(encoder).__name__,
            "decoder": decoder if isinstance(decoder, str) else type(decoder).__name__,
            "likelihood_options": dict(likelihood_options or {}),
            "prior": prior if isinstance(prior, str) else type(prior).__name__,
            "prior_options": dict(prior_options or {}),
            "guide_flow": guide_flow, "num_flows": int(num_flows),
        }
        self.condition_shape = _condition_shape(condition_shape, encoder, decoder, prior)
        if self.condition_shape is not None:
            self.config["condition_shape"] = list(self.condition_shape)
        c = math.prod(self.condition_shape) if self.condition_shape is not None else 0
        self.prior = make_prior(prior, self.latent_dim, **(prior_options or {}))
        # a conditional VAE's MLPs see y too: the encoder (x, y) flattened and joined, the decoder (z, y)
        encoder_input = input_shape if not c else (math.prod(input_shape) + c,)
        self.encoder = make_encoder(encoder, encoder_input, self.latent_dim, hidden_dims, activation)
        self.prior.set_context(self.encoder, input_shape)
        self.guide_flows = _guide_flows(guide_flow, self.latent_dim, int(num_flows), hidden_dims)
        self.decoder = make_decoder(decoder, input_shape, self.latent_dim + c, hidden_dims, activation)
        self.likelihood = make_likelihood(likelihood, input_shape, **(likelihood_options or {}))
        # a buffer gives the prior its device and dtype, so .to(device) moves everything
        self.register_buffer("_anchor", torch.zeros(()))

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The generative model: ``z ~ p(z)`` (the prior component) then ``x ~ p(x | z)`` (``p(x | z, y)`` for a
        conditional VAE), inside ``pyro.plate("data", N)``.

        :param x: a batch of shape ``(N, *input_shape)``.
        :param y: the conditions ``(N, *condition_shape)`` of a conditional VAE (``condition_shape`` set).
        """
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior.distribution(x))
            pyro.sample("x", self.likelihood(self.decoder(self._join(z, y, n))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The recognition model ``q(z | x) = N(z_loc(x), diag z_scale(x)^2)`` (of ``(x, y)`` for a conditional
        VAE), pushed through the conditional flow layers when ``guide_flow`` is set.

        :param x: a batch of shape ``(N, *input_shape)``.
        :param y: the conditions ``(N, *condition_shape)`` of a conditional VAE.
        """
        n = x.shape[0]
        with pyro.plate("data", n):
            z_loc, z_scale = self.encoder(self._encoder_input(x, y))
            q = dist.Normal(z_loc, z_scale).to_event(1)
            if self.guide_flows is not None:
                q = dist.TransformedDistribution(q, self._conditioned_flows(z_loc, z_scale))
            pyro.sample("z", q)

    @property
    def direct_terms(self) -> bool:
        """Whether :meth:`importance_terms` covers this configuration: it assumes the diagonal Gaussian guide of
        ``x`` alone, so a flow guide or a conditional VAE is traced instead."""
        return self.guide_flows is None and self.condition_shape is None

    def _condition(self, y: torch.Tensor | None, n: int | None) -> torch.Tensor | None:
        """``y`` flattened to ``(N, C)``, checked; None for an unconditional VAE (which refuses a ``y``)."""
        if self.condition_shape is None:
            if y is not None:
                raise ValueError("this VAE is not conditional: build it with condition_shape=... to pass y")
            return None
        if y is None:
            raise ValueError(f"this conditional VAE needs y of shape (N, *{self.condition_shape}): model(x, y), "
                             "guide(x, y), sample(n, y=...)")
        if tuple(y.shape[-len(self.condition_shape):]) != self.condition_shape or (n is not None and y.shape[0] != n):
            raise ValueError(f"y must have shape (N, *{self.condition_shape}) with N = {n}, got {tuple(y.shape)}")
        return y.flatten(-len(self.condition_shape))

    def _join(self, z: torch.Tensor, y: torch.Tensor | None, n: int | None) -> torch.Tensor:
        """The decoder's input: ``z``, with ``y`` (broadcast over any particle dimension) joined for a CVAE."""
        c = self._condition(y, n)
        if c is None:
            return z
        return torch.cat([z, c.to(z.dtype).expand(*z.shape[:-1], c.shape[-1])], -1)

    def _encoder_input(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        c = self._condition(y, x.shape[0])
        if c is None:
            return x
        return torch.cat([x.flatten(-len(self.input_shape)), c.to(x.dtype)], -1)

    def _conditioned_flows(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> list[Any]:
        context = torch.cat([z_loc, z_scale.log()], -1)
        out: list[Any] = []
        for i, flow in enumerate(self.guide_flows):
            if i > 0:  # reverse the autoregressive order between layers
                out.append(T.Permute(torch.arange(self.latent_dim - 1, -1, -1, device=z_loc.device)))
            out.append(flow.condition(context))
        return out

    # ------------------------------------------------------------------ the producer of its terms
    def importance_terms(self, x: torch.Tensor, num_particles: int = 1, *, analytic_kl: bool = False,
                         dreg: DReG | None = None) -> ImportanceTerms:
        """The terms of the log importance weights computed directly, without Pyro's handlers.

        Exactly what the traced path of :func:`pyro_vae.infer.importance_terms` computes for
        ``self.model``/``self.guide`` (the same draws for the same seed, value and gradient, proven by the tests),
        at plain PyTorch speed. Objectives live in :mod:`pyro_vae.infer.objectives`, never here.

        :param x: ``(N, *input_shape)``.
        :param analytic_kl: also return ``KL(q(z | x) || p(z))`` in closed form.
        :param dreg: the doubly reparameterized gradient's hook (see :class:`~pyro_vae.infer.weights.DReG`).
        :returns: :class:`~pyro_vae.infer.ImportanceTerms`, each ``(K, N)``.
        """
        z_loc, z_scale = self.encoder(x)
        q = torch.distributions.Normal(z_loc, z_scale, validate_args=False)
        z = q.rsample((int(num_particles),))
        if dreg is not None:  # path gradient only, scaled per particle by the normalised weight
            z = dreg.hook(z, lambda w: w.unsqueeze(-1))
            q = torch.distributions.Normal(z_loc.detach(), z_scale.detach(), validate_args=False)
        log_prior = self.prior.log_prob(z)
        log_lik = self.likelihood.log_prob(self.decoder(z), x)
        log_guide = q.log_prob(z).sum(-1)
        kl = None
        if analytic_kl:
            kl = self.prior.kl(q)
            if kl is None:
                raise ValueError(f"objective 'mean-field' needs KL(q || p) in closed form, and the "
                                 f"{self.config['prior']!r} prior has none: use objective='elbo'")
            kl = kl.expand_as(log_guide)
        return ImportanceTerms(log_lik, log_prior, log_guide, None, kl)

    # ------------------------------------------------------------------ conveniences
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's Gaussian parameters.

        :param x: ``(N, *input_shape)``.
        :param y: a conditional VAE's ``(N, *condition_shape)``.
        :returns: ``(z_loc, z_scale)``, each ``(N, latent_dim)``.
        """
        return self.encoder(self._encoder_input(x, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of ``p(x | z)`` (``p(x | z, y)`` for a conditional VAE).

        :param z: ``(..., latent_dim)``.
        :param y: a conditional VAE's ``(..., *condition_shape)``.
        :returns: ``(..., *input_shape)``.
        """
        return self.likelihood.mean(self.decoder(self._join(z, y, None)))

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
        params = self.decoder(self._join(self.prior.sample(n), y, n))
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @property
    def num_parameters(self) -> int:
        """The number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.parameters() if p.requires_grad)

    def init_output_bias(self, data: torch.Tensor) -> "VAE":
        """Set the decoder's output bias to the logit of the mean pixel (Burda et al. 2016); see
        :func:`init_output_bias`.

        :returns: ``self``.
        """
        init_output_bias(self.decoder, data)
        return self


# VAE.model/VAE.guide (not a subclass's overrides) may be computed by VAE.importance_terms directly
VAE._fast_path_for = (VAE.model, VAE.guide)
VAE.max_plate_nesting = 1


# ---------------------------------------------------------------------------------------------------------- helpers
GUIDE_FLOWS = (None, "iaf", "spline")


def _sizes(values: Any, name: str) -> tuple[int, ...]:
    """Whole positive sizes (an int, or a float/tensor/numpy value equal to one); 2.7 or 16.5 is refused, not
    truncated."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or getattr(values, "ndim", 1) == 0:
        values = (values,)  # one size (also a 0-d tensor or numpy scalar)
    values = tuple(values)
    out = []
    for v in values:
        try:
            whole = int(v)
            ok = not isinstance(v, bool) and whole == v and whole >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}" if len(values) == 1 else
                             f"{name} must be whole numbers >= 1, got {v!r} in {list(values)}")
        out.append(whole)
    return tuple(out)


def _condition_shape(shape: Sequence[int] | int | None, encoder: Any, decoder: Any,
                     prior: Any) -> tuple[int, ...] | None:
    """A conditional VAE's condition shape, checked against what it can be combined with."""
    if shape is None:
        return None
    shape = _sizes(shape, "condition_shape")
    if encoder != "mlp" or decoder != "mlp":
        raise ValueError("a conditional VAE (condition_shape) takes the MLP encoder and decoder, which see y joined "
                         "to their input; pass encoder='mlp', decoder='mlp'")
    if prior == "vamp":
        raise ValueError("the VampPrior's pseudo-inputs have no condition: use another prior with condition_shape")
    return shape


def _guide_flows(kind: str | None, latent_dim: int, num_flows: int, hidden_dims: Sequence[int]) -> nn.ModuleList | None:
    """The conditional flow layers of a guide (Pyro's conditional transforms), or None for a Gaussian guide."""
    if kind not in GUIDE_FLOWS:
        raise ValueError(f"unknown guide_flow {kind!r}; choose one of {list(GUIDE_FLOWS)}")
    if kind is None:
        return None
    if num_flows < 1:
        raise ValueError(f"num_flows must be >= 1, got {num_flows}")
    if latent_dim < 2 and kind == "iaf":
        raise ValueError("guide_flow='iaf' needs latent_dim >= 2 (an autoregressive flow over one dimension is "
                         "elementwise): use guide_flow='spline'")
    hidden = [max(4 * latent_dim, 16)] * 2
    context = 2 * latent_dim
    layers = []
    for _ in range(num_flows):
        if kind == "iaf":
            layers.append(T.conditional_affine_autoregressive(latent_dim, context, hidden_dims=hidden))
        elif latent_dim == 1:
            layers.append(T.conditional_spline(1, context, hidden_dims=hidden))
        else:
            layers.append(T.conditional_spline_autoregressive(latent_dim, context, hidden_dims=hidden))
    return nn.ModuleList(layers)


@torch.no_grad()
def init_output_bias(decoder: nn.Module, data: torch.Tensor, eps: float = 1e-3) -> nn.Module:
    """Initialise a decoder's output bias to ``logit(mean pixel)`` (Burda et al. 2016, section 5).

    With zero weights into it, the decoder then starts at the data's marginal pixel means, which speeds up the
    first epochs of a Bernoulli model. The last ``nn.Linear`` (one bias per output) takes the per-pixel means;
    a last ``nn.ConvTranspose2d``/``nn.Conv2d`` (one bias per channel) takes the per-channel means.

    :param decoder: the decoder network (its last ``Linear`` or convolution is the output layer).
    :param data: ``(N, *event_shape)`` in ``[0, 1]``.
    :param eps: the means are clamped to ``[eps, 1 - eps]`` before the logit.
    :returns: ``decoder``.
    """
    last = None
    for m in decoder.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            last = m
    if last is None or last.bias is None:
        raise ValueError("init_output_bias needs a decoder whose last layer is an nn.Linear or a convolution "
                         "with a bias")
    mean = data.double().mean(0).clamp(eps, 1 - eps)
    if isinstance(last, nn.Linear):
        if mean.numel() != last.bias.numel():
            raise ValueError(f"the decoder's last layer has {last.bias.numel()} outputs but a datapoint has "
                             f"{mean.numel()} values")
        value = mean.flatten()
    else:
        value = mean.reshape(mean.shape[0], -1).mean(-1) if mean.dim() > 1 else mean
        if value.numel() != last.bias.numel():
            raise ValueError(f"the decoder's last convolution has {last.bias.numel()} channels, the data "
                             f"{value.numel()}")
    last.bias.copy_(torch.logit(value).to(last.bias))
    return decoder


class _GaussianLayer(nn.Module):
    """An MLP from ``(..., in_dim)`` to a diagonal Gaussian's ``(loc, scale)``, each ``(..., out_dim)``, with
    ``scale = exp(.)`` as in Burda et al."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str) -> None:
        super().__init__()
        from .nets import mlp

        self.net = mlp([in_dim, *hidden_dims, 2 * out_dim], activation)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(h).chunk(2, dim=-1)
        return loc, log_scale.exp()


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
        input_shape = _sizes(input_shape, "input_shape")
        layers = [_sizes(layer, "layers") for layer in layers]
        if not layers or any(len(layer) < 1 for layer in layers):
            raise ValueError(f"layers must be a non-empty list of (*hidden_dims, latent_dim) tuples of positive "
                             f"sizes, got {layers}")
        self.input_shape = input_shape
        self.layers = layers
        self.latent_dims = [layer[-1] for layer in layers]
        self.latent_dim = self.latent_dims[-1]
        self.site_names = [f"h{i + 1}" for i in range(len(layers))]
        self.config = {
            "input_shape": list(input_shape), "layers": [list(layer) for layer in layers], "activation": activation,
            "likelihood": likelihood if isinstance(likelihood, str) else type(likelihood).__name__,
            "likelihood_options": dict(likelihood_options or {}),
            "prior": prior if isinstance(prior, str) else type(prior).__name__,
            "prior_options": dict(prior_options or {}),
        }
        x_dim = math.prod(input_shape)
        below = [x_dim, *self.latent_dims[:-1]]
        # q(h_l | h_{l-1}) with h_0 = x
        self.encoders = nn.ModuleList(
            [_GaussianLayer(below[i], layer[:-1], layer[-1], activation) for i, layer in enumerate(layers)])
        # p(h_{l-1} | h_l) for l >= 2
        self.priors = nn.ModuleList(
            [_GaussianLayer(layer[-1], tuple(reversed(layer[:-1])), below[i], activation)
             for i, layer in enumerate(layers) if i > 0])
        self.decoder = MLPDecoder(self.latent_dims[0], tuple(reversed(layers[0][:-1])), input_shape, activation)
        self.likelihood = make_likelihood(likelihood, input_shape, **(likelihood_options or {}))
        if prior == "vamp":
            raise ValueError("the VampPrior needs the guide of the top layer from x in one step; a HierarchicalVAE's "
                             "top layer is reached through the stack: use 'normal', 'mixture' or 'flow'")
        self.prior = make_prior(prior, self.latent_dims[-1], **(prior_options or {}))  # p(h_L)
        self.register_buffer("_anchor", torch.zeros(()))

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor) -> None:
        """``h_L ~ N(0, I)``, then ``h_{l-1} ~ p(h_{l-1} | h_l)``, then ``x ~ p(x | h_1)``.

        :param x: a batch of shape ``(N, *input_shape)``.
        """
        n = x.shape[0]
        with pyro.plate("data", n):
            h = pyro.sample(self.site_names[-1], self.prior.distribution(x))
            for i in range(len(self.layers) - 1, 0, -1):
                loc, scale = self.priors[i - 1](h)
                h = pyro.sample(self.site_names[i - 1], dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(h)), obs=x)

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
        h = self.prior.sample(int(num_samples))
        for i in range(len(self.layers) - 1, 0, -1):
            loc, scale = self.priors[i - 1](h)
            h = loc + scale * torch.randn_like(loc)
        params = self.decoder(h)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    # ------------------------------------------------------------------ fast path
    def importance_terms(self, x: torch.Tensor, num_particles: int = 1, *, analytic_kl: bool = False,
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
        """Set the decoder's output bias to ``logit(mean pixel)``; see :func:`init_output_bias`."""
        init_output_bias(self.decoder, data)
        return self

    @property
    def num_parameters(self) -> int:
        """The number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.parameters() if p.requires_grad)


# HierarchicalVAE.model/.guide (not overridden, not wrapped) may be computed by its importance_terms directly
HierarchicalVAE._fast_path_for = (HierarchicalVAE.model, HierarchicalVAE.guide)
HierarchicalVAE.max_plate_nesting = 1


class TwoStageVAE(Saveable, nn.Module):
    """Dai & Wipf's two-stage VAE: a VAE on the data, then a second VAE on the first one's latent codes.

    **Stage 1** is a :class:`VAE` with a Gaussian decoder of one learned scalar variance ``gamma``
    (likelihood ``"normal-gamma"``). On data that lie near an ``r``-dimensional manifold, the optimum sends
    ``gamma -> 0``: reconstructions become sharp, ``r`` latent dimensions carry the data with posterior variance
    going to 0 and the others collapse to the prior, and the ELBO and ``log p(x)`` grow without bound like
    ``-((D - r)/2) log(gamma)`` (``D`` the data's dimension): a density concentrating on the manifold. The
    aggregate posterior ``q(z) = E_x q(z | x)`` then differs from the prior ``N(0, I)`` on the used dimensions,
    so decoding prior draws gives poor samples although reconstructions are good.

    **Stage 2** is a VAE on the stage-1 codes ``z ~ q(z | x)``, one fresh draw per datapoint at every visit (as
    in the paper: the draws are samples of the aggregate posterior ``q(z)``, which is what stage 2 must learn;
    ``kappa``-dimensional, full-dimensional data now, where a VAE can match the distribution), with a latent
    ``u`` of the same dimension. Training on the posterior means instead (``stage2_codes="means"`` in
    :meth:`fit`) learns the distribution of the means, which is narrower than ``q(z)``: an unused dimension's
    means sit near 0 while its ``q(z)`` is ``N(0, 1)``. Sampling goes ``u ~ N(0, I)``, ``z ~ p(z | u) =
    N(f_2(u), gamma_z I)`` (a draw from stage 2's decoder, as in the paper's code: its mean alone is too narrow
    whenever stage 2 explains part of the codes' spread by its variance ``gamma_z``), then ``x = E[x | z]``
    (stage 1's decoder mean).

    ``model``/``guide`` are stage 1's, so every estimator measures stage 1's ``log p(x)``.

    :param input_shape: the shape of one datapoint.
    :param latent_dim: ``kappa``, the dimension of stage 1's (and stage 2's) latent space.
    :param hidden_dims: stage 1's MLP sizes (ignored by conv nets).
    :param stage2_hidden_dims: stage 2's MLP sizes (Dai & Wipf: three layers of 1024; smaller works on MNIST).
    :param activation: the MLP activation of both stages.
    :param encoder: stage 1's encoder, ``"mlp"``, ``"conv"`` or a module.
    :param decoder: stage 1's decoder.
    :param stage1_likelihood: ``"normal-gamma"`` (the paper) or another name.
    :param stage2_likelihood: ``"normal-gamma"`` or ``"normal-learned"``.
    :param stage2_gamma: the initial variance of stage 2's decoder. Small by default: the stage-1 codes have
        variance of order 1 per dimension, and started at ``gamma = 1`` stage 2 falls into the stationary point
        where its latent is unused and ``gamma`` equals the codes' variance; its samples are then all the mean
        code (measured on MNIST: sample variance 1e-6 against code variance 0.01-1.3 after 10 epochs). Started
        at 0.01 the latent is used from the first step and ``gamma`` keeps falling.

    Example::

        >>> import torch, pyro_vae.models as m
        >>> tsv = m.TwoStageVAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), stage2_hidden_dims=(32,))
        >>> tsv.sample(3).shape
        torch.Size([3, 1, 8, 8])

    References: Dai & Wipf, "Diagnosing and Enhancing VAE Models", ICLR 2019.
    """

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        latent_dim: int = 16,
        hidden_dims: Sequence[int] = (512, 512),
        stage2_hidden_dims: Sequence[int] = (512, 512),
        activation: str = "relu",
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        stage1_likelihood: str | Likelihood = "normal-gamma",
        stage2_likelihood: str | Likelihood = "normal-gamma",
        stage2_gamma: float = 0.01,
    ) -> None:
        super().__init__()
        self.stage1 = VAE(input_shape, latent_dim=latent_dim, hidden_dims=hidden_dims, activation=activation,
                          likelihood=stage1_likelihood, encoder=encoder, decoder=decoder)
        options = {"normal-gamma": {"gamma": stage2_gamma}, "normal-learned": {"scale": math.sqrt(stage2_gamma)}}
        self.stage2 = VAE((int(latent_dim),), latent_dim=latent_dim, hidden_dims=stage2_hidden_dims,
                          activation=activation, likelihood=stage2_likelihood,
                          likelihood_options=options.get(stage2_likelihood) if isinstance(stage2_likelihood, str)
                          else None)
        self.input_shape = self.stage1.input_shape
        self.latent_dim = int(latent_dim)
        self.likelihood = self.stage1.likelihood
        self.config = {"input_shape": list(self.input_shape), "latent_dim": self.latent_dim,
                       "hidden_dims": list(hidden_dims), "stage2_hidden_dims": list(stage2_hidden_dims),
                       "activation": activation, "encoder": self.stage1.config["encoder"],
                       "decoder": self.stage1.config["decoder"], "stage1_likelihood": self.stage1.config["likelihood"],
                       "stage2_likelihood": self.stage2.config["likelihood"], "stage2_gamma": float(stage2_gamma),
                       "stage1": self.stage1.config, "stage2": self.stage2.config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TwoStageVAE":
        """Build the model :attr:`config` describes (also the older config of only ``stage1`` and ``stage2``)."""
        c = dict(config)
        s1, s2 = c.pop("stage1", None), c.pop("stage2", None)
        if "input_shape" not in c and s1 is not None and s2 is not None:  # written before version 0.2
            c = {"input_shape": s1["input_shape"], "latent_dim": s1["latent_dim"], "hidden_dims": s1["hidden_dims"],
                 "stage2_hidden_dims": s2["hidden_dims"], "activation": s1["activation"], "encoder": s1["encoder"],
                 "decoder": s1["decoder"], "stage1_likelihood": s1["likelihood"],
                 "stage2_likelihood": s2["likelihood"]}
        return super().from_config(c)

    # stage 1 is the model of x: estimators and fit see its programs
    @property
    def model(self) -> Any:
        """Stage 1's model (``x`` given ``z``)."""
        return self.stage1.model

    @property
    def guide(self) -> Any:
        """Stage 1's guide."""
        return self.stage1.guide

    @property
    def gamma(self) -> float | None:
        """Stage 1's decoder variance (None for a likelihood without ``gamma``)."""
        g = getattr(self.stage1.likelihood, "gamma", None)
        return None if g is None else float(g.detach())

    @torch.no_grad()
    def posterior(self, data: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's Gaussian posterior ``q(z | x)`` of each datapoint, the distribution stage 2 trains on.

        :param data: ``(N, *input_shape)``.
        :returns: ``(loc, scale)``, each ``(N, latent_dim)``.
        """
        device = self.stage1._anchor.device
        was_training = self.stage1.training
        self.stage1.eval()
        parts = [self.stage1.encode(data[i:i + batch_size].to(device)) for i in range(0, data.shape[0], batch_size)]
        self.stage1.train(was_training)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def codes(self, data: torch.Tensor, batch_size: int = 1000, sample: bool = False) -> torch.Tensor:
        """Stage 1's codes of ``data``: the posterior means ``E_q[z | x]``, or with ``sample`` one draw
        ``z ~ q(z | x)`` each (a sample of the aggregate posterior ``q(z)``, which stage 2 learns).

        :param data: ``(N, *input_shape)``.
        :returns: ``(N, latent_dim)``.
        """
        loc, scale = self.posterior(data, batch_size)
        return loc + scale * torch.randn_like(loc) if sample else loc

    def fit(self, data: torch.Tensor, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
        """Train stage 1 on ``data``, then stage 2 on stage 1's codes: :func:`pyro_vae.train.fit_two_stage`
        (``stage2_codes="samples"``, the default, or ``"means"``)."""
        from .train.two_stage import fit_two_stage  # training sits above the models: imported when called

        return fit_two_stage(self, data, **kwargs)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, stages: int = 2) -> torch.Tensor:
        """Sample through both stages: ``u ~ N(0, I)``, ``z ~ p(z | u)`` (stage 2's decoder), then ``E[x | z]``.

        :param num_samples: how many samples.
        :param mean: return the mean of ``p(x | z)`` rather than a draw.
        :param stages: 2 (the two-stage sampler) or 1 (``z ~ N(0, I)`` straight into stage 1's decoder, for
            comparison).
        :returns: ``(num_samples, *input_shape)``.
        """
        if stages == 1:
            return self.stage1.sample(num_samples, mean=mean)
        if stages != 2:
            raise ValueError(f"stages must be 1 or 2, got {stages}")
        z = self.stage2.sample(num_samples, mean=False)
        params = self.stage1.decoder(z)
        return self.stage1.likelihood.mean(params) if mean else self.stage1.likelihood(params).sample()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1's reconstruction.

        :returns: ``(N, *input_shape)``.
        """
        return self.stage1.reconstruct(x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's encoder: ``(z_loc, z_scale)``, each ``(N, latent_dim)``."""
        return self.stage1.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Stage 1's decoder mean.

        :returns: ``(..., *input_shape)``.
        """
        return self.stage1.decode(z)


#: the classes a saved folder may hold, by the name ``vae.json`` records
MODEL_CLASSES: dict[str, type] = {"VAE": VAE, "HierarchicalVAE": HierarchicalVAE, "TwoStageVAE": TwoStageVAE}


def save_model(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (a :class:`VAE`, :class:`HierarchicalVAE` or :class:`TwoStageVAE`) into the folder ``path``
    (created if needed): ``vae.json`` and ``weights.pt``, both atomically.

    :returns: the folder.
    """
    from ._version import __version__

    path = refuse_link(Path(path))
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"format": SAVE_FORMAT, "class": type(model).__name__, "config": model.config,
            "pyro_vae_version": __version__, "weights_sha256": tensor_checksum(weights)}
    try:
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ValueError(f"the model's configuration cannot be written as JSON ({e}); likelihood_options and "
                         "prior_options must hold plain numbers") from e
    atomic_save(weights, path / SAVE_WEIGHTS)
    atomic_write(path / SAVE_CONFIG, lambda f: f.write(text), binary=False)
    return path


def _check_shapes(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: Path | str) -> None:
    """Refuse ``state`` unless its tensors have exactly the names and shapes of ``module``'s (built on the ``meta``
    device, it costs no memory). ``what`` names the model and ``source`` the folder in the message."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if expected != saved:
        diff = sorted(set(expected.items()) ^ set(saved.items()))[:3]
        raise ValueError(f"the weights in {source} do not fit the {what} its configuration describes "
                         f"(first differences, name and shape: {diff}); a file was changed or they come from "
                         "different models")


def _meta_skeleton(cls: Any, config: dict[str, Any], source: Path | str) -> Any:
    """``cls`` built from ``config`` on the ``meta`` device (shapes, no memory), or None for a model that cannot
    be built there.

    :raises ValueError: when ``config`` does not describe a ``cls``.
    """
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the configuration in {source} does not describe a {cls.__name__} ({e})") from e
    except Exception:  # a module that cannot be built on the meta device: its shapes are checked after building
        return None


def build_checked(cls: Any, config: dict[str, Any], state: dict[str, torch.Tensor] | None, source: Path | str,
                  parts: dict[str, dict[str, torch.Tensor]] | None = None) -> Any:
    """Build ``cls`` from ``config`` after checking, on the ``meta`` device (no memory), that its parameters have
    the shapes of the saved weights ``state``: a tampered config cannot make the loader allocate what the weights
    do not hold. ``parts`` holds weights of sub-modules by attribute name (a two-stage run's ``stage1`` and
    ``stage2`` checkpoints), checked the same way; ``state`` may then be None. ``source`` names the folder in
    messages."""
    skeleton = _meta_skeleton(cls, config, source)
    if skeleton is not None:
        for part, weights in {**({"": state} if state is not None else {}), **(parts or {})}.items():
            _check_shapes(getattr(skeleton, part) if part else skeleton, weights,
                          f"{cls.__name__}{' ' + part if part else ''}", source)
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the configuration in {source} does not describe a {cls.__name__} ({e})") from e


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", expected: type | None = None,
               **overrides: Any) -> Any:
    """Rebuild a model written by :func:`save_model`, in eval mode.

    :param path: the folder.
    :param map_location: the device to put the model on.
    :param expected: refuse a folder that holds another class (``VAE.load`` passes ``VAE``).
    :param overrides: constructor arguments replacing the saved ones (a fresh custom encoder, say).
    :raises FileNotFoundError: if the folder or one of its files is missing.
    :raises ValueError: if the files are not what :func:`save_model` writes, or the weights do not fit.
    """
    path = Path(path)
    config_file, weights_file = path / SAVE_CONFIG, path / SAVE_WEIGHTS
    what = "model" if expected is None else expected.__name__
    if not path.is_dir():
        raise FileNotFoundError(f"no saved {what} at {path}: model.save(path) writes a folder with {SAVE_CONFIG} "
                                f"and {SAVE_WEIGHTS}")
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{path} is not a saved model: it has no {f.name} (model.save(path) writes it)")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SAVE_FORMAT or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{config_file} is not a saved pyro-vae {what} (expected format {SAVE_FORMAT!r})")
    cls = MODEL_CLASSES.get(meta.get("class", "VAE"))
    if cls is None:
        raise ValueError(f"{config_file} holds an unknown model class {meta.get('class')!r}; known: "
                         f"{sorted(MODEL_CLASSES)}")
    if expected is not None and not issubclass(cls, expected):
        raise ValueError(f"{path} holds a {cls.__name__}, not a {expected.__name__}: use pyro_vae.load(path)")
    if expected is not None and issubclass(expected, cls):
        cls = expected  # a subclass loading its own folder
    state = load_tensors(weights_file, "weights file")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{weights_file} does not hold a state dict of tensors")
    model = build_checked(cls, {**meta["config"], **overrides}, state, path)  # shapes first: the clearer message
    expected = meta.get("weights_sha256")
    if expected is not None and tensor_checksum(state) != expected:
        raise ValueError(f"{weights_file} is damaged: it does not match the checksum in {config_file} (a changed or "
                         "flipped byte); restore the folder from a copy")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the weights in {weights_file} do not fit the model of {config_file}: {e}") from e
    model.to(map_location)
    model.eval()
    return model

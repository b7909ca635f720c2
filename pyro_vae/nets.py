"""Encoder and decoder networks.

Encoders map ``x`` of shape ``(..., *input_shape)`` to ``(z_loc, z_scale)``, each ``(..., latent_dim)``.
Decoders map ``z`` of shape ``(..., latent_dim)`` to one parameter tensor ``(..., *output_shape)`` that a
likelihood (:mod:`pyro_vae.likelihoods`) turns into ``p(x | z)``. Leading batch dimensions (particles,
data) pass through, so the same nets serve vectorized importance sampling.

A user's own ``nn.Module`` can replace either, provided it keeps these signatures.

A conditional VAE's nets see a condition ``y`` joined to their input: :class:`ConditionalMLPEncoder` maps
``(x, y)`` and :class:`ConditionalMLPDecoder` maps ``(z, y)`` (``y`` of shape ``(N, *condition_shape)``, broadcast
over any leading particle dimension); :func:`join_condition` is the one place ``y`` is checked and joined.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "ConditionalMLPEncoder",
           "ConditionalMLPDecoder", "join_condition", "make_encoder", "make_decoder", "init_output_bias"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """A stack of linear layers with ``activation`` between them (none after the last)."""
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``x -> (z_loc, z_scale)`` through fully connected layers; ``z_scale = exp(.)`` as in Burda et al.

    :param input_shape: the shape of one datapoint (flattened internally).
    :param hidden_dims: sizes of the hidden layers.
    :param latent_dim: the dimension of ``z``.
    :param activation: a name from :data:`ACTIVATIONS`.
    """

    def __init__(self, input_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int,
                 activation: str = "tanh") -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.net = mlp([math.prod(self.input_shape), *hidden_dims, 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x.flatten(-len(self.input_shape)))
        z_loc, z_log_scale = h.chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class MLPDecoder(nn.Module):
    """``z -> params`` of shape ``(..., *output_shape)`` through fully connected layers."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], output_shape: Sequence[int],
                 activation: str = "tanh") -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = mlp([latent_dim, *hidden_dims, math.prod(self.output_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(-1, self.output_shape)


def join_condition(h: torch.Tensor, y: torch.Tensor | None, condition_shape: tuple[int, ...],
                   event_dims: int = 1) -> torch.Tensor:
    """``h`` (flattened over its last ``event_dims`` dimensions) with the condition ``y`` (flattened) joined on the
    last dimension; ``y`` is broadcast over ``h``'s leading dimensions beyond its own (a particle dimension).

    :param h: ``(..., N, *event)``.
    :param y: ``(N, *condition_shape)``.
    :returns: ``(..., N, prod(event) + prod(condition_shape))``.
    :raises ValueError: when ``y`` is missing or has another shape.
    """
    if y is None:
        raise ValueError(f"this conditional VAE needs y of shape (N, *{condition_shape}): model(x, y), "
                         "guide(x, y), sample(n, y=...)")
    if y.dim() < len(condition_shape) or tuple(y.shape[y.dim() - len(condition_shape):]) != condition_shape \
            or (h.dim() > event_dims and y.shape[0] != h.shape[h.dim() - event_dims - 1]):
        raise ValueError(f"y must have shape (N, *{condition_shape}) with N = {h.shape[h.dim() - event_dims - 1]}, "
                         f"got {tuple(y.shape)}")
    flat = h.flatten(-event_dims) if event_dims > 1 else h
    c = y.flatten(-len(condition_shape)).to(flat.dtype)
    return torch.cat([flat, c.expand(*flat.shape[:-1], c.shape[-1])], -1)


class ConditionalMLPEncoder(MLPEncoder):
    """``(x, y) -> (z_loc, z_scale)``: an :class:`MLPEncoder` of ``x`` and the condition ``y`` joined."""

    def __init__(self, input_shape: Sequence[int], condition_shape: Sequence[int], hidden_dims: Sequence[int],
                 latent_dim: int, activation: str = "tanh") -> None:
        super().__init__((math.prod(input_shape) + math.prod(condition_shape),), hidden_dims, latent_dim, activation)
        self.x_shape, self.condition_shape = tuple(input_shape), tuple(condition_shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(join_condition(x, y, self.condition_shape, len(self.x_shape)))


class ConditionalMLPDecoder(MLPDecoder):
    """``(z, y) -> params``: an :class:`MLPDecoder` of ``z`` and the condition ``y`` joined."""

    def __init__(self, latent_dim: int, condition_shape: Sequence[int], hidden_dims: Sequence[int],
                 output_shape: Sequence[int], activation: str = "tanh") -> None:
        super().__init__(latent_dim + math.prod(condition_shape), hidden_dims, output_shape, activation)
        self.condition_shape = tuple(condition_shape)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(join_condition(z, y, self.condition_shape))


def _conv_geometry(input_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"convolutional nets need images of shape (C, H, W), got input_shape={tuple(input_shape)}")
    _, h, w = input_shape
    f = 2 ** len(channels)
    if h % f or w % f:
        raise ValueError(f"convolutional nets with {len(channels)} stride-2 layers need H and W divisible by {f}, "
                         f"got {h}x{w}")
    return h // f, w // f


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (kernel 4) that halve the image each layer, then a linear layer to ``z``.

    Works for images ``(C, H, W)`` with ``H`` and ``W`` divisible by ``2 ** len(channels)``
    (1x28x28, 1x8x8, 3x32x32 with the default two layers).
    """

    def __init__(self, input_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64),
                 hidden_dim: int = 256, activation: str = "relu") -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        h, w = _conv_geometry(self.input_shape, channels)
        act = _activation(activation)
        layers: list[nn.Module] = []
        c_in = self.input_shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), act()]
            c_in = c
        layers += [nn.Flatten(), nn.Linear(c_in * h * w, hidden_dim), act(), nn.Linear(hidden_dim, 2 * latent_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[:-3]
        h = self.net(x.reshape(-1, *self.input_shape)).reshape(*batch, -1)
        z_loc, z_log_scale = h.chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class ConvDecoder(nn.Module):
    """A linear layer to a small feature map, then stride-2 transposed convolutions back to the image."""

    def __init__(self, latent_dim: int, output_shape: Sequence[int], channels: Sequence[int] = (64, 32),
                 hidden_dim: int = 256, activation: str = "relu") -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        h, w = _conv_geometry(self.output_shape, channels)
        act = _activation(activation)
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden_dim), act(),
                                   nn.Linear(hidden_dim, channels[0] * h * w), act(),
                                   nn.Unflatten(1, (channels[0], h, w))]
        for i, c in enumerate(channels):
            c_out = channels[i + 1] if i + 1 < len(channels) else self.output_shape[0]
            layers.append(nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1))
            if i + 1 < len(channels):
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*batch, *self.output_shape)


def make_encoder(encoder: str | nn.Module, input_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int],
                 activation: str, condition_shape: Sequence[int] | None = None) -> nn.Module:
    """Build an encoder by name (``"mlp"`` or ``"conv"``; a conditional MLP with ``condition_shape``) or pass a
    user's module through."""
    if isinstance(encoder, nn.Module):
        return encoder
    if condition_shape is not None and encoder == "mlp":
        return ConditionalMLPEncoder(input_shape, condition_shape, hidden_dims, latent_dim, activation)
    if encoder == "mlp":
        return MLPEncoder(input_shape, hidden_dims, latent_dim, activation)
    if encoder == "conv":
        return ConvEncoder(input_shape, latent_dim)
    raise ValueError(f"unknown encoder {encoder!r}; choose 'mlp', 'conv' or pass an nn.Module")


def make_decoder(decoder: str | nn.Module, output_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int],
                 activation: str, condition_shape: Sequence[int] | None = None) -> nn.Module:
    """Build a decoder by name (``"mlp"`` or ``"conv"``; a conditional MLP with ``condition_shape``) or pass a
    user's module through."""
    if isinstance(decoder, nn.Module):
        return decoder
    if condition_shape is not None and decoder == "mlp":
        return ConditionalMLPDecoder(latent_dim, condition_shape, tuple(reversed(hidden_dims)), output_shape,
                                     activation)
    if decoder == "mlp":
        return MLPDecoder(latent_dim, tuple(reversed(hidden_dims)), output_shape, activation)
    if decoder == "conv":
        return ConvDecoder(latent_dim, output_shape)
    raise ValueError(f"unknown decoder {decoder!r}; choose 'mlp', 'conv' or pass an nn.Module")


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

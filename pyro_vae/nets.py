"""Encoder and decoder networks.

Encoders map ``x`` of shape ``(..., *input_shape)`` to ``(z_loc, z_scale)``, each ``(..., latent_dim)``.
Decoders map ``z`` of shape ``(..., latent_dim)`` to one parameter tensor ``(..., *output_shape)`` that a
likelihood (:mod:`pyro_vae.likelihoods`) turns into ``p(x | z)``. Leading batch dimensions (particles,
data) pass through, so the same nets serve vectorized importance sampling.

A user's own ``nn.Module`` can replace either, provided it keeps these signatures.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "make_encoder", "make_decoder"]

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


def make_encoder(encoder: str | nn.Module, input_shape: Sequence[int], latent_dim: int,
                 hidden_dims: Sequence[int], activation: str) -> nn.Module:
    """Build an encoder by name (``"mlp"`` or ``"conv"``) or pass a user's module through."""
    if isinstance(encoder, nn.Module):
        return encoder
    if encoder == "mlp":
        return MLPEncoder(input_shape, hidden_dims, latent_dim, activation)
    if encoder == "conv":
        return ConvEncoder(input_shape, latent_dim)
    raise ValueError(f"unknown encoder {encoder!r}; choose 'mlp', 'conv' or pass an nn.Module")


def make_decoder(decoder: str | nn.Module, output_shape: Sequence[int], latent_dim: int,
                 hidden_dims: Sequence[int], activation: str) -> nn.Module:
    """Build a decoder by name (``"mlp"`` or ``"conv"``) or pass a user's module through."""
    if isinstance(decoder, nn.Module):
        return decoder
    if decoder == "mlp":
        return MLPDecoder(latent_dim, tuple(reversed(hidden_dims)), output_shape, activation)
    if decoder == "conv":
        return ConvDecoder(latent_dim, output_shape)
    raise ValueError(f"unknown decoder {decoder!r}; choose 'mlp', 'conv' or pass an nn.Module")

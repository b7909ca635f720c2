"""Frechet classifier distance (FCD): a sample-quality score on the features of a small classifier.

The Frechet distance between two Gaussians fitted to feature vectors,

.. math::

    d^2\\big(\\mathcal{N}(\\mu_1, \\Sigma_1), \\mathcal{N}(\\mu_2, \\Sigma_2)\\big)
    = \\lVert \\mu_1 - \\mu_2 \\rVert^2 + \\operatorname{tr}\\big(\\Sigma_1 + \\Sigma_2
      - 2 (\\Sigma_1 \\Sigma_2)^{1/2}\\big),

is what Heusel et al.'s FID computes on the pool features of an Inception network trained on ImageNet. Those
weights cannot be fetched here, so this module trains its *own* small convolutional classifier on the labelled
training images (MNIST or Fashion-MNIST, 1-2 epochs) and takes the features of its penultimate layer. The
numbers are therefore **not FID** and are not comparable with published FIDs; they are comparable with each
other for the same classifier (same data set, seed and training), which is how Dai & Wipf's Table 1 is read:
the ratio between models.

References: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017; Dai & Wipf, "Diagnosing and Enhancing VAE Models", ICLR 2019.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureClassifier", "train_classifier", "classifier_features", "frechet_distance",
           "frechet_classifier_distance", "load_classifier"]


class FeatureClassifier(nn.Module):
    """A small CNN for ``(C, 28, 28)`` images (or any ``H, W`` divisible by 4): two stride-2 convolutions,
    a ``feature_dim`` ReLU layer (the features) and a linear layer to the class logits."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, feature_dim: int = 128) -> None:
        super().__init__()
        c, h, w = input_shape
        self.input_shape = tuple(input_shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * ((h + 3) // 4) * ((w + 3) // 4), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's penultimate layer, the features the Frechet distance compares.

        :param x: ``(N, C, H, W)``.
        :returns: ``(N, feature_dim)``.
        """
        return self.body(x.reshape(-1, *self.input_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:returns: logits ``(N, num_classes)``."""
        return self.head(self.features(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 2, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, num_classes: int = 10,
                     path: str | os.PathLike | None = None) -> FeatureClassifier:
    """Train :class:`FeatureClassifier` with Adam and cross-entropy (a few minutes on a CPU for MNIST).

    :param images: ``(N, C, H, W)`` in ``[0, 1]``.
    :param labels: ``(N,)`` integer classes.
    :param path: if given, save the weights there (``torch.save`` of the state dict).
    :returns: the trained classifier, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureClassifier(tuple(images.shape[1:]), num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = images.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    if path is not None:
        torch.save(net.state_dict(), path)
    return net


def load_classifier(path: str | os.PathLike, input_shape: Sequence[int] = (1, 28, 28),
                    num_classes: int = 10) -> FeatureClassifier:
    """Load the weights saved by :func:`train_classifier`."""
    net = FeatureClassifier(input_shape, num_classes)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


@torch.no_grad()
def classifier_features(net: FeatureClassifier, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features.

    :returns: ``(N, feature_dim)`` float64 numpy array.
    """
    net.eval()
    return torch.cat([net.features(images[i:i + batch_size].float().cpu())
                      for i in range(0, images.shape[0], batch_size)]).double().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The squared Frechet (2-Wasserstein) distance between two Gaussians.

    :param mu1: ``(D,)`` mean. :param sigma1: ``(D, D)`` covariance. Likewise for the second.
    :returns: a float >= 0 (0 for identical Gaussians, up to round-off).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    def sqrtm(m: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on nearly singular products; checked below
            out = linalg.sqrtm(m)
        return out[0] if isinstance(out, tuple) else out

    covmean = sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise (as in the reference FID code)
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), 0.0))


def frechet_classifier_distance(net: FeatureClassifier, real: torch.Tensor, generated: torch.Tensor) -> float:
    """The Frechet classifier distance (FCD) between real and generated images: the Frechet distance of
    Gaussians fitted to ``net``'s penultimate features. **Not FID** (see the module docstring).

    :param real: ``(N, C, H, W)`` in ``[0, 1]``. :param generated: ``(M, C, H, W)``.
    :returns: a float >= 0; lower is better.
    """
    f1, f2 = classifier_features(net, real), classifier_features(net, generated)
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))

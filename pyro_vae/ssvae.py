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

:func:`fit_semi_supervised` trains on labelled and unlabelled data as Pyro's example does (the labelled batches
spread evenly among the unlabelled ones, every datapoint once per epoch); :meth:`SSVAE.accuracy` scores the
classifier :math:`\\arg\\max_y q(y \\mid x)`; ``pyro_vae.infer.log_likelihood(ssvae.model, ssvae.guide, x)`` is
the test ``log p(x)`` with the label summed (``condition=y`` gives ``log p(x, y)``).

References: Kingma, Rezende, Mohamed, Welling, "Semi-Supervised Learning with Deep Generative Models", NeurIPS
2014; Pyro's ``examples/vae/ss_vae_M2.py`` and its SS-VAE tutorial.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .likelihoods import Likelihood, make_likelihood
from .nets import mlp

__all__ = ["SSVAE", "fit_semi_supervised"]


def _joined(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b]`` along the last dimension, the leading (enumeration, particle, data) dimensions broadcast."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1)


class SSVAE(nn.Module):
    """The M2 model and its guide, with MLP networks (Pyro's example uses ``hidden_dims=(500,)``,
    ``latent_dim=50``, softplus).

    :param input_shape: the shape of one datapoint, e.g. ``(1, 28, 28)``.
    :param num_classes: ``C``.
    :param latent_dim: the dimension of ``z``.
    :param hidden_dims: hidden layers of each of the three networks (``q(y|x)``, ``q(z|x,y)``, ``p(x|y,z)``).
    :param activation: a name of :data:`pyro_vae.nets.ACTIVATIONS`.
    :param likelihood: a name of :data:`pyro_vae.likelihoods.LIKELIHOODS` or an instance.
    :param aux_loss_multiplier: ``alpha`` of the auxiliary classification loss, per labelled datapoint.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, latent_dim: int = 50,
                 hidden_dims: Sequence[int] = (500,), activation: str = "softplus",
                 likelihood: str | Likelihood = "bernoulli", aux_loss_multiplier: float = 46.0) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes, self.latent_dim = int(num_classes), int(latent_dim)
        self.aux_loss_multiplier = float(aux_loss_multiplier)
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
            params = self.decoder(_joined(z, y_hot)).unflatten(-1, self.input_shape)
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
            z_loc, z_log_scale = self.encoder_z(_joined(flat, y_hot)).chunk(2, -1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))

    def aux_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The auxiliary classification loss ``-alpha sum_n log q(y_n | x_n)`` of a labelled batch (a scalar)."""
        return F.cross_entropy(self.y_logits(x), y.long(), reduction="sum") * self.aux_loss_multiplier

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


def fit_semi_supervised(
    ssvae: SSVAE,
    x_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    x_unlabelled: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 200,
    lr: float = 4.2e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    objective: str = "elbo",
    num_particles: int = 1,
    binarize: bool = False,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    time_limit: float | None = None,
    labelled_passes: int = 1,
) -> list[dict[str, Any]]:
    """Train an :class:`SSVAE` on labelled and unlabelled data (Kingma et al.'s :math:`\\mathcal{J}^\\alpha`).

    Each epoch visits every unlabelled datapoint once in batches of ``batch_size``, and every labelled one
    ``labelled_passes`` times, its batches spread evenly among the unlabelled ones (with one pass, Pyro's
    ``ss_vae_M2.py`` schedule). The loop is the library's objective on the engine's terms
    (:func:`~pyro_vae.infer.weights.terms_producer`), not :func:`pyro_vae.fit`: a labelled batch adds the
    auxiliary loss, which is not a bound of the pair. A batch's loss is the
    objective's (:data:`pyro_vae.infer.objectives.OBJECTIVES`, the label summed on unlabelled batches) plus, on
    labelled batches, :meth:`SSVAE.aux_loss`; Adam on the sum divided by the batch size.

    :param ssvae: the model (its parameters on the device to train on).
    :param x_labelled: ``(L, *input_shape)``.
    :param y_labelled: ``(L,)`` class indices.
    :param x_unlabelled: ``(U, *input_shape)``.
    :param binarize: a fresh Bernoulli draw of every batch (dynamic binarization; grey-level data with the
        Bernoulli likelihood need it).
    :param val_data: ``(x, y)``: the classifier's accuracy on them after each epoch.
    :param time_limit: seconds: no new epoch starts once training has run this long.
    :param labelled_passes: passes over the labelled data per epoch (1: Pyro's schedule; more spends a small
        budget's steps on the few labels more often, as Kingma et al.'s mixed minibatches do).
    :returns: one dict per epoch: ``loss_unlabelled`` and ``loss_labelled`` (per datapoint visit, the latter
        without the auxiliary term), ``aux_loss`` (per labelled datapoint visit), ``val_accuracy``, ``seconds``.
    """
    from .infer.objectives import get_objective
    from .infer.weights import terms_producer

    if seed is not None:
        pyro.set_rng_seed(int(seed))
    if int(labelled_passes) < 1:
        raise ValueError(f"labelled_passes must be >= 1, got {labelled_passes!r}")
    if x_labelled.shape[0] != y_labelled.shape[0] or x_labelled.shape[0] == 0 or x_unlabelled.shape[0] == 0:
        raise ValueError(f"need labelled data with one label each and unlabelled data, got {x_labelled.shape[0]} "
                         f"labelled datapoints, {y_labelled.shape[0]} labels, {x_unlabelled.shape[0]} unlabelled")
    loss_fn = get_objective(objective)
    device = next(ssvae.parameters()).device
    optimizer = torch.optim.Adam(ssvae.parameters(), lr=lr, betas=betas)

    def batch_loss(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's loss of a batch (summed) and, for a labelled one, its auxiliary loss."""
        x = x.to(device)
        if binarize:
            x = torch.bernoulli(x)
        args = (x,) if y is None else (x, y.to(device))
        produce = terms_producer(ssvae.model, ssvae.guide, *args, max_plate_nesting=1)
        aux = ssvae.aux_loss(*args) if y is not None else x.new_zeros(())
        return loss_fn(produce, num_particles=num_particles), aux

    history: list[dict[str, Any]] = []
    began = time.perf_counter()
    for epoch in range(int(epochs)):
        if time_limit is not None and time.perf_counter() - began > float(time_limit):
            break
        start = time.perf_counter()
        unlabelled = torch.randperm(x_unlabelled.shape[0]).split(int(batch_size))
        labelled = torch.randperm(x_labelled.shape[0]).split(int(batch_size))
        if labelled_passes > 1:  # each labelled datapoint several times per epoch, reshuffled each time
            labelled = tuple(idx for _ in range(int(labelled_passes))
                             for idx in torch.randperm(x_labelled.shape[0]).split(int(batch_size)))
        every = max(1, (len(unlabelled) + len(labelled)) // len(labelled))
        schedule: list[tuple[str, torch.Tensor]] = [("unlabelled", idx) for idx in unlabelled]
        for j, idx in enumerate(labelled):  # one labelled batch every `every` batches
            schedule.insert(min(j * every, len(schedule)), ("labelled", idx))
        sums = {"unlabelled": 0.0, "labelled": 0.0, "aux": 0.0}
        for kind, idx in schedule:
            if kind == "unlabelled":
                loss, aux = batch_loss(x_unlabelled[idx])
            else:
                loss, aux = batch_loss(x_labelled[idx], y_labelled[idx])
            sums[kind] += float(loss.detach())
            sums["aux"] += float(aux.detach())
            optimizer.zero_grad(set_to_none=True)
            ((loss + aux) / idx.numel()).backward()
            optimizer.step()
        record = {"epoch": epoch + 1, "seconds": time.perf_counter() - start,
                  "loss_unlabelled": sums["unlabelled"] / x_unlabelled.shape[0],
                  "loss_labelled": sums["labelled"] / (x_labelled.shape[0] * int(labelled_passes)),
                  "aux_loss": sums["aux"] / (x_labelled.shape[0] * int(labelled_passes))}
        if val_data is not None:
            ssvae.eval()
            record["val_accuracy"] = ssvae.accuracy(*val_data)
            ssvae.train()
        history.append(record)
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  file=sys.stderr, flush=True)
        if on_epoch_end is not None:
            on_epoch_end(record)
    return history

"""Dai & Wipf's two-stage VAE, :class:`TwoStageVAE`: stage 1 a :class:`~pyro_vae.VAE` of the data with a learned
decoder variance, stage 2 a :class:`~pyro_vae.VAE` of stage 1's codes; samples go through both stages.

References: Dai & Wipf, "Diagnosing and Enhancing VAE Models", ICLR 2019.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..likelihoods import Likelihood
from ..saving import Saveable, register_model_class
from .config import TwoStageConfig, name_of
from .vae import VAE

__all__ = ["TwoStageVAE"]


@register_model_class
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
    :param stage2_gamma: the initial variance of stage 2's decoder. Small by default: started at ``gamma = 1``
        stage 2 falls into the stationary point where its latent is unused and ``gamma`` equals the codes'
        variance (its samples are then all the mean code; ``docs/results.md`` has the measurement); started small,
        the latent is used from the first step and ``gamma`` keeps falling.

    Example::

        >>> import torch, pyro_vae.models as m
        >>> tsv = m.TwoStageVAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), stage2_hidden_dims=(32,))
        >>> tsv.sample(3).shape
        torch.Size([3, 1, 8, 8])

    References: Dai & Wipf, "Diagnosing and Enhancing VAE Models", ICLR 2019.
    """

    #: the run folder's checkpoint folders, one a stage (``pyro_vae.runs`` resumes and loads from them)
    checkpoint_parts = ("stage1", "stage2")

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
        s = self.settings = TwoStageConfig(input_shape, latent_dim, hidden_dims, stage2_hidden_dims, activation,
                                           name_of(encoder), name_of(decoder), name_of(stage1_likelihood),
                                           name_of(stage2_likelihood), stage2_gamma)
        self.config = s.to_dict()
        self.stage1 = VAE(s.input_shape, latent_dim=s.latent_dim, hidden_dims=s.hidden_dims, activation=activation,
                          likelihood=stage1_likelihood, encoder=encoder, decoder=decoder)
        options = {"normal-gamma": {"gamma": s.stage2_gamma}, "normal-learned": {"scale": math.sqrt(s.stage2_gamma)}}
        self.stage2 = VAE((s.latent_dim,), latent_dim=s.latent_dim, hidden_dims=s.stage2_hidden_dims,
                          activation=activation, likelihood=stage2_likelihood,
                          likelihood_options=options.get(stage2_likelihood) if isinstance(stage2_likelihood, str)
                          else None)
        self.input_shape = self.stage1.input_shape
        self.latent_dim = s.latent_dim
        self.likelihood = self.stage1.likelihood

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TwoStageVAE":
        """Build the model :attr:`config` describes (also a saved config of version 0.1, of only ``stage1`` and
        ``stage2``, and one that repeats them beside its own settings)."""
        return super().from_config(TwoStageConfig.from_saved(config))

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
        from ..train.two_stage import fit_two_stage  # training sits above the models: imported when called

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

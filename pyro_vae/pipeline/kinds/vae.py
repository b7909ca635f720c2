"""The recipe of a plain VAE run (``pyro-vae train``): a :class:`~pyro_vae.VAE` with its prior, flow guide and
networks from the settings, trained by :func:`pyro_vae.fit` with the training metrics, TensorBoard and a
``train.log`` line as callbacks and a checkpoint after every epoch. The other kinds start from this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import datasets
from ..registry import register_kind
from ..settings import DATASET_DEFAULTS, TRAIN_METRICS_SIZE, RunSettings
from .base import RunContext, RunData, RunKind

__all__ = ["VAEKind"]


@register_kind
class VAEKind(RunKind):
    """A :class:`~pyro_vae.VAE` run: every option of the plain model (priors, flows, networks, likelihoods)."""

    name = "VAE"
    #: its trainer is :func:`pyro_vae.fit`, which takes ``compile`` (``--compile``)
    compiles = True
    fresh_folder = False

    def build(self, s: RunSettings, data: RunData, out: Path) -> Any:
        from ...models import VAE

        prior_options = {"num_components": int(s.prior_components)} if s.prior_components else {}
        return VAE(input_shape=datasets.event_shape(s.dataset), latent_dim=s.latent_dim,
                   hidden_dims=tuple(s.hidden_dims or ()), activation=s.activation, likelihood=s.likelihood,
                   encoder=s.encoder, decoder=s.decoder, prior=s.prior, prior_options=prior_options,
                   guide_flow=s.flow, num_flows=int(s.num_flows))

    def callbacks(self, model: Any, ctx: RunContext) -> list[Any]:
        """The callbacks of :func:`pyro_vae.fit`: training metrics (joining each epoch's record before the
        checkpoint, so saved with it), TensorBoard, the epoch's line in ``train.log``."""
        from ...train import EpochFunction, TensorBoard, TrainingMetrics
        from ...train.callbacks import epoch_line

        s = ctx.settings
        callbacks: list[Any] = [TrainingMetrics(model, ctx.data.train[:TRAIN_METRICS_SIZE].to(ctx.device),
                                                bool(s.binarize))]
        if ctx.tensorboard and ctx.main:
            callbacks.append(TensorBoard(ctx.out / "tensorboard"))
        callbacks.append(EpochFunction(lambda record: ctx.log.line(epoch_line(record, s.epochs))))
        return callbacks

    def fit_options(self, model: Any, ctx: RunContext) -> dict[str, Any]:
        """What every trainer of a run takes: batches, Adam, the device, the seed, the checkpoint, the callbacks."""
        s = ctx.settings
        # the run's threads: --num-threads, or "auto" re-checked by fit at every epoch (one for the small data sets)
        auto = s.num_threads in (None, "auto")
        num_threads = (1 if s.dataset in DATASET_DEFAULTS else "auto") if auto else int(s.num_threads)
        return dict(batch_size=self.batch_size(s, ctx.data), lr=float(s.lr), device=ctx.device, seed=s.seed,
                    progress=ctx.progress, checkpoint_dir=ctx.out, resume=ctx.resume,
                    callbacks=self.callbacks(model, ctx), num_threads=num_threads, compile=bool(s.compile))

    def train(self, model: Any, ctx: RunContext) -> Any:
        from ...train import fit

        s = ctx.settings
        return fit(model, ctx.data.train, epochs=s.epochs, objective=s.objective, num_particles=s.num_particles,
                   val_data=ctx.data.valid, binarize=bool(s.binarize), config={"dataset": s.dataset},
                   **self.fit_options(model, ctx))

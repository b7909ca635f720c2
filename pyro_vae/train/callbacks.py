"""Callbacks: what :func:`~pyro_vae.train.fit` calls around its epochs (progress, metrics, loggers, stopping).

A callback subclasses :class:`Callback` and overrides what it needs:

- ``on_step_end(epoch, step, steps, loss, size)``: after every step (``loss`` is the summed loss of the
  ``size`` datapoints of this process's batch, a tensor on the device: reading it synchronises with the device,
  so do it rarely);
- ``on_epoch_metrics(record)``: when the epoch's metrics are known, *before* the checkpoint is written: a metric
  added to ``record`` here is saved with the state (:class:`TrainingMetrics` does this);
- ``on_epoch_end(record)``: after the checkpoint; raise ``StopIteration`` to stop training (early stopping);
- ``on_train_end(history)``: once, when training ends (close files here).

A user's logger (MLflow, Weights & Biases, ...) is a callback passed in ``fit(..., callbacks=[...])``; the old
``on_epoch_end=function`` argument is wrapped in :class:`EpochFunction`. Under ``torchrun`` every rank calls
its callbacks (a ``StopIteration`` on any rank stops all); :class:`Progress` shows on rank 0 only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import pyro
import torch

from ..rng import preserved_rng

__all__ = ["Callback", "EpochFunction", "Progress", "TrainingMetrics", "TensorBoard", "CallbackList"]


class Callback:
    """The hooks of :func:`~pyro_vae.train.fit`; each does nothing by default."""

    def on_step_end(self, epoch: int, step: int, steps: int, loss: torch.Tensor, size: int) -> None:
        """After step ``step`` (0-based) of ``steps`` in ``epoch`` (0-based); ``loss`` is the summed loss of the
        ``size`` datapoints of the batch."""

    def on_epoch_metrics(self, record: dict[str, Any]) -> None:
        """Add metrics to the epoch's ``record`` before the checkpoint (with them) is written."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """After the checkpoint; raise ``StopIteration`` to stop."""

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        """When training ends."""


class EpochFunction(Callback):
    """A plain function ``fn(record)`` called at the end of each epoch (``fit``'s ``on_epoch_end`` argument)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.fn(record)


class Progress(Callback):
    """A progress bar on a terminal; otherwise one line per epoch (a batch job's log is never silent for long).

    :param total_steps: the steps this run will take (for the bar).
    :param epochs: the run's number of epochs.
    :param stream: where to write (standard error by default).
    """

    def __init__(self, total_steps: int, epochs: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.epochs = epochs
        self.bar = None
        if total_steps > 0 and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, desc="training", unit="step", file=self.stream)

    def on_step_end(self, epoch: int, step: int, steps: int, loss: torch.Tensor, size: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if step % 20 == 0:
                self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item() / size:.2f}")

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            return
        line = (f"epoch {record['epoch']}/{self.epochs}: loss {record['loss']:.3f}"
                f"{', valid ELBO %.3f' % record['val_elbo'] if 'val_elbo' in record else ''}"
                f" ({record['seconds']:.1f} s, {record['images_per_second']:,.0f} images/s)")
        print(line, file=self.stream, flush=True)

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainingMetrics(Callback):
    """Record ``train_elbo``, ``train_rate`` and ``train_distortion`` of a fixed subset of the training data each
    epoch (one sample each, as the validation metrics), saved with the checkpoint. The random number generators
    are restored afterwards, so training draws exactly what it would without it (and a resumed run stays identical
    to an uninterrupted one).

    :param pair: the trained pair.
    :param data: the subset, on the training device.
    :param binarize: binarize it dynamically (with a seed per epoch).
    """

    def __init__(self, pair: Any, data: torch.Tensor, binarize: bool = False) -> None:
        self.pair, self.data, self.binarize = pair, data, binarize

    def on_epoch_metrics(self, record: dict[str, Any]) -> None:
        from .validation import evaluate_elbo

        training = getattr(self.pair, "training", None)
        if training is not None:
            self.pair.eval()
        try:
            with preserved_rng():
                pyro.set_rng_seed(int(record["epoch"]))
                metrics = evaluate_elbo(self.pair, self.data, binarize=self.binarize)
        finally:
            if training:
                self.pair.train()
        record.update({f"train_{k}": v for k, v in metrics.items()})


class TensorBoard(Callback):
    """Write each epoch's numbers as TensorBoard scalars into ``log_dir`` (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("TensorBoard logging needs the tensorboard package: pip install "
                             "'pyro-vae[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                tag = f"validation/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                self.writer.add_scalar(tag, value, int(record["epoch"]))
        self.writer.flush()

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        self.writer.close()


class CallbackList(Callback):
    """Several callbacks called in order; ``on_epoch_end`` returns whether one asked to stop."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        for c in callbacks:
            if not isinstance(c, Callback):
                raise TypeError(f"callbacks must be pyro_vae.train.Callback instances, got {type(c).__name__}; wrap a "
                                "function f(record) as EpochFunction(f)")
        self.callbacks = list(callbacks)
        # only those that override on_step_end are called every step
        self.stepping = [c for c in self.callbacks if type(c).on_step_end is not Callback.on_step_end]

    def prepend(self, callback: Callback) -> None:
        """Put ``callback`` first (``fit`` puts its progress display there)."""
        self.callbacks.insert(0, callback)
        if type(callback).on_step_end is not Callback.on_step_end:
            self.stepping.insert(0, callback)

    def on_step_end(self, epoch: int, step: int, steps: int, loss: torch.Tensor, size: int) -> None:
        for c in self.stepping:
            c.on_step_end(epoch, step, steps, loss, size)

    def on_epoch_metrics(self, record: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_metrics(record)

    def on_epoch_end(self, record: dict[str, Any]) -> bool:  # type: ignore[override]
        stop = False
        for c in self.callbacks:
            try:
                c.on_epoch_end(record)
            except StopIteration:
                stop = True
        return stop

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        for c in self.callbacks:
            c.on_train_end(history)

"""Callbacks: what :func:`~pyro_vae.train.fit` calls around its epochs (progress, metrics, loggers, stopping).

A callback subclasses :class:`Callback` and overrides what it needs:

- ``on_step_end(epoch, step, steps, loss, size)``: after every step (``loss`` is the summed loss of the
  ``size`` datapoints of this process's batch, a tensor on the device: reading it synchronises with the device,
  so do it rarely);
- ``on_epoch_metrics(record)``: when the epoch's metrics are known, *before* the checkpoint is written: a metric
  added to ``record`` here is saved with the state (:class:`TrainingMetrics` does this);
- ``on_epoch_end(record)``: after the checkpoint; raise ``StopIteration`` to stop training (early stopping);
- ``on_train_end(history)``: once, when training ends (close files here).

A user's logger (Weights & Biases, ...) is a callback passed in ``fit(..., callbacks=[...])``; the old
``on_epoch_end=function`` argument is wrapped in :class:`EpochFunction`. Three loggers come with the library:
:class:`TensorBoard`, :class:`CSVLogger` (no dependency) and :class:`MLflowLogger` (a local MLflow file store, or
any tracking server). Under ``torchrun`` every rank calls its callbacks (a ``StopIteration`` on any rank stops
all); :class:`Progress` and the loggers write on rank 0 only.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import pyro
import torch

from ..distributed import is_main_process
from ..io import atomic_write
from ..rng import preserved_rng

__all__ = ["Callback", "EpochFunction", "Progress", "TrainingMetrics", "TensorBoard", "CSVLogger", "MLflowLogger",
           "CallbackList", "epoch_line"]


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


def epoch_line(record: dict[str, Any], epochs: int | None = None) -> str:
    """The line an epoch's record reads as (the progress line off a terminal, and the run's ``train.log``)."""
    line = f"epoch {record['epoch']}{f'/{epochs}' if epochs else ''}: loss {record['loss']:.3f}"
    if "val_elbo" in record:
        line += f", valid ELBO {record['val_elbo']:.3f}"
    if "seconds" in record and "images_per_second" in record:
        line += f" ({record['seconds']:.1f} s, {record['images_per_second']:,.0f} images/s)"
    return line


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
        print(epoch_line(record, self.epochs), file=self.stream, flush=True)

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
    :param binarize: binarize it dynamically (with a seed per epoch; the first argument).
    :param data_plate: the name of the pair's plate of datapoints (as :func:`~pyro_vae.train.fit`).

    ``data`` may be a tensor, a tuple of tensors batched along dim 0, or a ``Dataset`` with ``collate_fn`` (as
    :func:`~pyro_vae.train.fit` takes them).
    """

    def __init__(self, pair: Any, data: Any, binarize: bool = False, data_plate: str = "data",
                 collate_fn: Any = None) -> None:
        self.pair, self.data, self.binarize = pair, data, binarize
        self.data_plate, self.collate_fn = data_plate, collate_fn

    def on_epoch_metrics(self, record: dict[str, Any]) -> None:
        from .validation import evaluate_elbo

        training = getattr(self.pair, "training", None)
        if training is not None:
            self.pair.eval()
        try:
            with preserved_rng():
                pyro.set_rng_seed(int(record["epoch"]))
                metrics = evaluate_elbo(self.pair, self.data, binarize=self.binarize, data_plate=self.data_plate,
                                        collate_fn=self.collate_fn)
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


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers (lists such as ``nan_events`` and strings left out)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class CSVLogger(Callback):
    """Write each epoch's numbers as a row of a CSV file (one column per metric, ``epoch`` first), needing no
    package. The file is rewritten atomically after every epoch, so it is always complete and readable while
    training runs; a metric that appears in a later epoch (``val_iwae`` every few epochs) adds a column, left empty
    in the rows without it.

    :param path: the CSV file (its folder is created).
    :param append: keep the rows already in the file whose epoch comes before the first logged one (continue the
        file of a resumed run); False starts the file afresh.
    """

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        self.rows: list[dict[str, Any]] | None = None

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        if self.rows is None:
            self.rows = []
            if self.append and self.path.is_file():
                with open(self.path, newline="") as f:
                    self.rows = [r for r in csv.DictReader(f) if float(r["epoch"]) < float(record["epoch"])]
        self.rows.append(_scalars(record))
        columns = list(dict.fromkeys(["epoch", *(k for row in self.rows for k in row)]))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: f.write(text.getvalue()), binary=False)


class MLflowLogger(Callback):
    """Log each epoch's numbers as MLflow metrics (``step`` = the epoch), and the run's settings as parameters
    (needs the ``mlflow`` package: ``pip install 'pyro-vae[mlflow]'``). Everything stays on this machine unless
    ``tracking_uri`` names a server.

    A folder (the default ``mlruns``) holds a local store: the SQLite database ``mlflow.db`` and the folder
    ``artifacts``, browsed with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``. (MLflow 3 keeps its
    older file store, ``file:`` URIs, in maintenance mode and refuses it unless the environment sets
    ``MLFLOW_ALLOW_FILE_STORE=true``; with that set, ``tracking_uri="file:./mlruns"`` writes one.) Nothing
    global is changed: the logger talks to its store through its own ``MlflowClient`` (no
    ``mlflow.set_tracking_uri``, no active run).

    :param tracking_uri: a folder for a local store, or an MLflow tracking URI (``sqlite:///mlflow.db``,
        ``file:./mlruns``, ``http://server:5000``).
    :param experiment: the experiment's name (created when missing).
    :param run_name: the run's name (MLflow makes one up when None).
    :param params: settings recorded once as the run's parameters (``{"lr": 1e-3, "objective": "iwae"}``).
    :param run_id: continue this run (a resumed training) instead of starting a new one.
    :param tags: the run's tags.
    """

    def __init__(self, tracking_uri: str | Path = "mlruns", experiment: str = "pyro-vae", run_name: str | None = None,
                 params: dict[str, Any] | None = None, run_id: str | None = None,
                 tags: dict[str, str] | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ValueError("MLflow logging needs the mlflow package: pip install 'pyro-vae[mlflow]'") from None
        uri, self.artifacts = str(tracking_uri), None
        if ":" not in uri:  # a folder: a local SQLite store, its artifacts beside it
            folder = Path(uri).resolve()
            uri, self.artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
            if is_main_process():
                folder.mkdir(parents=True, exist_ok=True)
        self.tracking_uri, self.experiment, self.run_name = uri, experiment, run_name
        self.params, self.tags, self.run_id = dict(params or {}), dict(tags or {}), run_id
        self.client = MlflowClient(tracking_uri=uri) if is_main_process() else None

    def _start(self) -> str:
        """Create (or find) the experiment and the run; log the parameters."""
        if self.run_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found is not None else \
                self.client.create_experiment(self.experiment, artifact_location=self.artifacts)
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
            for key, value in self.params.items():
                self.client.log_param(self.run_id, key, value)
        return self.run_id

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if not is_main_process():
            return
        run_id = self._start()
        now, step = int(time.time() * 1000), int(record["epoch"])
        metrics = [Metric(key, float(value), now, step) for key, value in _scalars(record).items() if key != "epoch"]
        self.client.log_batch(run_id, metrics=metrics)

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        if self.run_id is not None and is_main_process():
            self.client.set_terminated(self.run_id)


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

"""Training: :func:`fit` (the loop, :mod:`pyro_vae.train.loop`) and its components, one job a module.

=========================  ==============================================================================
module                     its job
=========================  ==============================================================================
``loop``                   :func:`fit` (and :func:`~pyro_vae.train.loop.run_fit`), read top to bottom
``config``                 :class:`FitConfig`: every option of :func:`fit`, checked on creation
``step``                   :class:`TrainStep`: one step shaped like Pyro's ``SVI.step`` (any objective)
``nan``                    :class:`NanGuard`: detect NaN/inf, replay the epoch to name the site, roll back
``state``                  :class:`TrainState`: snapshots, checkpoint and resume (weights, optimizer, ...)
``parallel``               the ``torchrun`` plumbing (DDP, sharded batches); no-ops in one process
``callbacks``              :class:`Callback`: progress, training metrics, loggers (TensorBoard, CSV, MLflow)
``schedules``              learning-rate schedules, beta and KL warm-up
``validation``             data checks, the device, trainable parameters, the validation ELBO
``two_stage``              :func:`fit_two_stage`: Dai & Wipf's two stages, each a :func:`fit`
``semi_supervised``        :func:`fit_semi_supervised` (labelled and unlabelled batches), :func:`balanced_split`
=========================  ==============================================================================
"""

from ..io import atomic_save, atomic_write
from .callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EpochFunction,
    MLflowLogger,
    Progress,
    TensorBoard,
    TrainingMetrics,
)
from .config import FitConfig
from .loop import fit, run_fit
from .nan import ON_NAN, NanGuard
from .schedules import LR_SCHEDULES, iwae_schedule
from .semi_supervised import balanced_split, fit_semi_supervised
from .state import CHECKPOINT_NAME, METRICS_NAME, TrainState, load_checkpoint
from .step import StepCheck, TrainStep
from .two_stage import fit_two_stage
from .validation import check_data, evaluate_elbo, resolve_device

__all__ = ["fit", "atomic_write", "atomic_save", "evaluate_elbo", "resolve_device", "check_data", "LR_SCHEDULES",
           "CHECKPOINT_NAME", "METRICS_NAME", "iwae_schedule", "load_checkpoint", "ON_NAN", "Callback",
           "CallbackList", "EpochFunction", "Progress", "TensorBoard", "TrainingMetrics", "TrainStep", "NanGuard",
           "fit_two_stage", "fit_semi_supervised", "balanced_split", "CSVLogger", "MLflowLogger", "FitConfig",
           "run_fit", "TrainState", "StepCheck"]

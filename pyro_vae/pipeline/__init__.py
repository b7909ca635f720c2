"""The run pipeline: what ``pyro-vae train`` and ``pyro-vae evaluate`` do, as functions a notebook calls too.

:func:`train_run` takes the options of a run (any unset one gets its data set's default; with ``resume`` they come
from the run's ``config.json``), checks all of them before anything is written, trains any model kind (a
:class:`~pyro_vae.VAE`, a :class:`~pyro_vae.HierarchicalVAE` with ``layers``, a :class:`~pyro_vae.TwoStageVAE`
with ``two_stage``, the semi-supervised :class:`~pyro_vae.SSVAE` with ``semi_supervised`` and ``labels``) and leaves
a complete run folder (:mod:`pyro_vae.runs`); :func:`evaluate_run` estimates
``log p(x)`` of a run's test data and writes ``evaluation.json`` and its figures; :func:`pyro_vae.plots.plot_run`
draws every figure. The command line (:mod:`pyro_vae.cli`) only parses options and prints what these return.

The rooms, one job each (imports point down this list):

- :mod:`~pyro_vae.pipeline.settings`: every option, the data sets' defaults, the checks that refuse a bad one
  before anything is written (:func:`run_settings`, :func:`check_step_fits`);
- :mod:`~pyro_vae.pipeline.semi_supervised`: training a semi-supervised run (M2, the label summed);
- :mod:`~pyro_vae.pipeline.training`: :func:`train_run` (a VAE, hierarchical or two-stage run, checkpointed);
- :mod:`~pyro_vae.pipeline.evaluation`: :func:`evaluate_run`.

Example::

    from pyro_vae.pipeline import train_run, evaluate_run
    run = train_run({"dataset": "digits", "epochs": 5}, "runs/digits")
    print(run.test_metrics["elbo"])
    evaluation = evaluate_run("runs/digits", num_particles=1000)
"""

from __future__ import annotations

from .evaluation import evaluate_run
from .settings import (
    DATASET_DEFAULTS,
    RUN_IDENTITY,
    SEMI_SUPERVISED_CLASSES,
    SEMI_SUPERVISED_DEFAULTS,
    TRAIN_METRICS_SIZE,
    TRAINING_KEYS,
    TrainedRun,
    check_step_fits,
    parse_dims,
    parse_layers,
    resolve_threads,
    run_settings,
)
from .training import train_run

__all__ = ["train_run", "evaluate_run", "run_settings", "TrainedRun", "DATASET_DEFAULTS", "RUN_IDENTITY",
           "TRAINING_KEYS", "TRAIN_METRICS_SIZE", "SEMI_SUPERVISED_CLASSES", "SEMI_SUPERVISED_DEFAULTS", "parse_dims",
           "parse_layers", "resolve_threads", "check_step_fits"]

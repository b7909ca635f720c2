"""The run pipeline: what ``pyro-vae train``, ``evaluate`` and ``plot`` do, as functions a notebook calls too.

:func:`train_run` takes the options of a run (any unset one gets its data set's default; with ``resume`` they come
from the run's ``config.json``) as typed :class:`RunSettings`, checks all of them before anything is written, trains
the run's kind and leaves a complete run folder (:mod:`pyro_vae.runs`); :func:`evaluate_run` estimates ``log p(x)``
of a run's test data and writes ``evaluation.json`` and its figures; :func:`plot_run` draws every figure of a run.
The command line (:mod:`pyro_vae.cli`) only parses options and prints what these return.

The rooms, one job each (imports point down this list):

- :mod:`~pyro_vae.pipeline.registry`: the run kinds by name (:func:`register_kind`, :func:`get_kind`);
- :mod:`~pyro_vae.pipeline.settings`: :class:`RunSettings` (every option, typed and checked), the data sets'
  defaults, :func:`run_settings` (new or resumed), :func:`check_step_fits`;
- :mod:`~pyro_vae.pipeline.kinds`: one recipe per run kind (a plain VAE, hierarchical, two-stage,
  semi-supervised): how it is built, trained, resumed, tested, evaluated and drawn;
- :mod:`~pyro_vae.pipeline.training`: :func:`train_run`, the same steps for every kind;
- :mod:`~pyro_vae.pipeline.evaluation`: :func:`evaluate_run`;
- :mod:`~pyro_vae.pipeline.figures`: :func:`plot_run`, the run's figures (the primitives are :mod:`pyro_vae.plots`);
- :mod:`~pyro_vae.pipeline.compare`: :func:`compare_runs`, several runs paired on the same test points;
- :mod:`~pyro_vae.pipeline.reports`: :func:`report`, one self-contained HTML page of a run or a comparison.

A kind of your own is one file: a :class:`~pyro_vae.pipeline.kinds.RunKind` subclass under ``@register_kind``
(see ``docs/architecture.md``); ``pyro-vae train --kind NAME`` then trains it.

Example::

    from pyro_vae.pipeline import train_run, evaluate_run
    run = train_run({"dataset": "digits", "epochs": 5}, "runs/digits")
    print(run.test_metrics["elbo"])
    evaluation = evaluate_run("runs/digits", num_particles=1000)
"""

from __future__ import annotations

from .compare import compare_runs
from .evaluation import evaluate_run
from .figures import RUN_FIGURES, plot_run
from .kinds import SEMI_SUPERVISED_CLASSES, SEMI_SUPERVISED_DEFAULTS, RunKind  # noqa: I001  (registers the kinds)
from .registry import KINDS, get_kind, register_kind
from .reports import report
from .settings import (
    DATASET_DEFAULTS,
    RUN_IDENTITY,
    TRAIN_METRICS_SIZE,
    TRAINING_KEYS,
    RunSettings,
    TrainedRun,
    check_step_fits,
    parse_dims,
    parse_layers,
    resolve_threads,
    run_settings,
)
from .training import train_run

__all__ = ["train_run", "evaluate_run", "plot_run", "run_settings", "RunSettings", "TrainedRun", "RunKind",
           "register_kind", "get_kind", "KINDS", "RUN_FIGURES", "DATASET_DEFAULTS", "RUN_IDENTITY", "TRAINING_KEYS",
           "TRAIN_METRICS_SIZE", "SEMI_SUPERVISED_CLASSES", "SEMI_SUPERVISED_DEFAULTS", "parse_dims", "parse_layers",
           "resolve_threads", "check_step_fits", "compare_runs", "report"]

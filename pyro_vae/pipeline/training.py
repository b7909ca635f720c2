"""Training a run: :func:`train_run` is what ``pyro-vae train`` does for every kind of run: the settings checked,
the data read and checked against the model, the folder locked and ``config.json`` written, the kind's training
with a checkpoint after every epoch, then the model, the test metrics, the figures and the log. What differs
between kinds is the kind's recipe (:mod:`pyro_vae.pipeline.kinds`); this module never asks which kind it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pyro

from .. import distributed, threads
from ..io import RunLock, write_json
from ..run_files import CHECKPOINT_NAME, MODEL_DIR, PROG, TEST_METRICS_NAME
from ..runs import EVALUATION_NAME, RunLog, read_evaluation, write_config
from ..train import resolve_device
from .kinds import RunContext
from .registry import get_kind
from .settings import TrainedRun, _require_tensorboard, resolve_threads, run_settings

__all__ = ["train_run"]


def train_run(options: dict[str, Any], out: str | os.PathLike[str] | None = None, *, resume: bool = False,
              progress: bool = True, tensorboard: bool = False, say: Callable[..., None] = print,
              hold: contextlib.ExitStack | None = None) -> TrainedRun:
    """Train a run and write its folder: what ``pyro-vae train`` does, for every kind of run (its recipe in
    :mod:`pyro_vae.pipeline.kinds` trains, tests and draws). Options, data and a step's memory are checked before the
    folder is locked and ``config.json`` written; a checkpoint follows every epoch; then ``model/``,
    ``test_metrics.json``, the figures and ``train.log``. Under ``torchrun`` rank 0 alone writes and speaks.

    :param options: the run's options (see :class:`~pyro_vae.pipeline.RunSettings`).
    :param out: the run folder.
    :param resume: continue the run in ``out`` from its last complete epoch (a finished run given no more epochs
        only writes its outputs again; what else a kind does is its recipe's, e.g. a two-stage run's stage 2).
    :param progress: show progress; ``tensorboard``: also log every epoch into ``out/tensorboard``; ``say``: prints
        the run's lines; ``hold``: an exit stack that keeps the folder's lock until it closes.
    :returns: a :class:`~pyro_vae.pipeline.TrainedRun`.
    :raises ValueError: for bad options or data, before anything is written (FileExistsError: ``out`` holds a run).
    """
    main = distributed.is_main_process()
    s, out = run_settings(options, out, resume)
    kind = get_kind(s.kind)
    if tensorboard:
        _require_tensorboard()
    device = resolve_device(s.device)
    if not resume and ((out / CHECKPOINT_NAME).exists() or kind.fresh_folder and out.exists() and any(out.iterdir())):
        raise FileExistsError(f"{out} already holds a run; continue it with --resume or choose another --out")
    with threads.torch_threads(resolve_threads(s.num_threads, s.dataset)):
        pyro.clear_param_store()
        pyro.set_rng_seed(s.seed)
        s, data = kind.read_data(s, out, resume)
        model = kind.resume_model(s, out) if resume else kind.build(s, data, out)
        kind.check_run(s, data, model, device)  # the data against the model, a step's memory: before any write
        config = kind.config(s, model, data)
        with contextlib.ExitStack() as stack:
            if main:
                (hold or stack).enter_context(RunLock(out))  # refuses a second writer before anything is written
                write_config(config, out)
            log = RunLog(out, enabled=main)  # train.log: what is said here, each epoch, the test metrics, a stop
            run = RunContext(s, out, device, data, resume, progress, tensorboard, main, log,
                             log.saying(say if main else _silent))
            stack.enter_context(log.stops())
            run.say(f"run folder: {out}", flush=True)
            world = f" on {distributed.world_size()} processes" if distributed.launched() else ""
            run.say(kind.data_line(s, data, model, world), flush=True)
            kind.before_training(model, run)
            t0 = time.perf_counter()
            history = kind.train(model, run)
            seconds = time.perf_counter() - t0
            if main:
                model.save(out / MODEL_DIR)  # configuration + weights (pyro_vae.load reads it)
            model.eval()
            metrics = kind.test_metrics(model, history, run)  # every rank takes part
            written: list[Path] = []
            if main:
                write_json(metrics, out / TEST_METRICS_NAME)
                log.line(f"test metrics ({TEST_METRICS_NAME}): {json.dumps(metrics)}")
                written = kind.figures(model, history, run)
                stale = _mark_stale_evaluation(out, metrics["epochs"])
                if stale:
                    run.say(stale, flush=True)
    return TrainedRun(out, model, history, metrics, seconds, written)


def _silent(*args: Any, **kwargs: Any) -> None:
    """``say`` on the ranks other than 0."""


def _mark_stale_evaluation(out: Path, epochs: int) -> str | None:
    """Mark an ``evaluation.json`` of the run's model at another epoch as stale (it stays, with the reason).

    :returns: the line to say, or None when there is nothing stale.
    """
    path = out / EVALUATION_NAME
    evaluation = read_evaluation(out)
    if evaluation is None or evaluation.get("epochs") == epochs or "stale" in evaluation:
        return None
    evaluation["stale"] = (f"the run trained on to epoch {epochs} after this evaluation (of epoch "
                           f"{evaluation.get('epochs', 'unknown')}): run '{PROG} evaluate' again")
    write_json(evaluation, path)
    return f"{path} is now stale ({evaluation['stale']})"

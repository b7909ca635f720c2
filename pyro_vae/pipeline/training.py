"""Training a run: :func:`train_run` is what ``pyro-vae train`` does for a VAE, a hierarchical (``--layers``) or
a two-stage run (a semi-supervised run goes to :mod:`pyro_vae.pipeline.semi_supervised`): settings checked, data read
and checked against the model, the folder locked and ``config.json`` written, :func:`pyro_vae.fit` with a checkpoint
after every epoch, then the model, the test metrics and the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from .. import datasets, distributed, threads
from ..io import RunLock, write_json
from ..run_files import CHECKPOINT_NAME, MODEL_DIR, PROG, TEST_METRICS_NAME
from ..runs import (
    EVALUATION_NAME,
    RunLog,
    model_for_resume,
    read_config,
    read_evaluation,
    read_metrics,
    write_config,
)
from .semi_supervised import train_semi_supervised
from .settings import (
    RUN_IDENTITY,
    TRAIN_METRICS_SIZE,
    TRAINING_KEYS,
    TrainedRun,
    _require_tensorboard,
    _splits,
    _version,
    check_step_fits,
    resolve_threads,
    run_settings,
)

__all__ = ["train_run"]


def _build_model(s: dict[str, Any], shape: tuple[int, ...], out: Path) -> Any:
    from ..models import VAE, HierarchicalVAE, TwoStageVAE

    cls = {"VAE": VAE, "HierarchicalVAE": HierarchicalVAE, "TwoStageVAE": TwoStageVAE}[s.get("class", "VAE")]
    if "vae_config" in s:  # resuming: the very model of the run, its config checked against its weights
        return model_for_resume(cls, s["vae_config"], out)
    if cls is TwoStageVAE:
        likelihood = s["likelihood"] if s["likelihood"] in ("normal-gamma", "normal-learned") else "normal-gamma"
        return TwoStageVAE(shape, latent_dim=s["latent_dim"], hidden_dims=tuple(s["hidden_dims"]),
                           stage2_hidden_dims=tuple(s["hidden_dims"]), activation=s["activation"],
                           encoder=s["encoder"], decoder=s["decoder"], stage1_likelihood=likelihood)
    if cls is HierarchicalVAE:
        return HierarchicalVAE(shape, layers=s["layers"], activation=s["activation"], likelihood=s["likelihood"])
    prior_options = {"num_components": int(s["prior_components"])} if s.get("prior_components") else {}
    return VAE(input_shape=shape, latent_dim=s["latent_dim"], hidden_dims=tuple(s["hidden_dims"]),
               activation=s["activation"], likelihood=s["likelihood"], encoder=s["encoder"], decoder=s["decoder"],
               prior=s.get("prior", "normal"), prior_options=prior_options, guide_flow=s.get("flow"),
               num_flows=int(s.get("num_flows", 2)))


def _epochs_done(out: Path, two_stage: bool) -> tuple[int, int]:
    """Complete epochs of a run (stage 1's and stage 2's for a two-stage run), from its metrics files."""
    if two_stage:
        return len(read_metrics(out / "stage1")), len(read_metrics(out / "stage2"))
    return len(read_metrics(out)), 0


def train_run(options: dict[str, Any], out: str | os.PathLike[str] | None = None, *, resume: bool = False,
              progress: bool = True, tensorboard: bool = False, say: Callable[..., None] = print,
              hold: contextlib.ExitStack | None = None) -> TrainedRun:
    """Train a run and write its folder: what ``pyro-vae train`` does.

    Every option is checked, the data are read and checked against the model, and a step's memory is compared
    with the device's, all before the folder is locked and ``config.json`` written; then :func:`pyro_vae.fit`
    (:func:`~pyro_vae.train.fit_two_stage` for a two-stage run) trains with a checkpoint after every epoch
    (:func:`~pyro_vae.train.fit_semi_supervised` for a semi-supervised run: ``metrics.jsonl`` after every epoch, no
    checkpoint; its test metrics are the accuracy of ``argmax q(y|x)`` and ``log p(x)`` with the label summed), and the
    trained model (``model/``), the test metrics (``test_metrics.json``), the samples and the training curves are
    written. Under ``torchrun`` every rank trains and rank 0 alone writes and speaks.

    :param options: the run's options (see :func:`~pyro_vae.pipeline.run_settings`).
    :param out: the run folder.
    :param resume: continue the run in ``out`` from its last complete epoch. A finished run given more epochs
        trains them; given no more, it says so and only writes its outputs again. A two-stage run whose stage 2
        has started and that is given more stage-1 epochs trains them, then trains stage 2 again from the start on
        the new codes (stage 2 learned the old ones; its folder is kept as ``stage2-on-stage1-epochN``); given
        only more stage-2 epochs (``stage2_epochs``), stage 2 continues.
    :param progress: show progress (a bar on a terminal, otherwise a line per epoch on standard error).
    :param tensorboard: also log every epoch for TensorBoard into ``out/tensorboard``.
    :param say: prints the run's lines (the folder, the data, what resuming does); rank 0 only.
    :param hold: an exit stack that keeps the run folder's lock until it closes (default: released on return).
    :returns: a :class:`~pyro_vae.pipeline.TrainedRun`.
    :raises ValueError: for bad options or data, before anything is written.
    :raises FileExistsError: when ``out`` already holds a run and ``resume`` is not set.
    """
    from ..plots import image_grid, is_image_shape, save_samples, training_curves
    from ..train import EpochFunction, TensorBoard, TrainingMetrics, check_data, evaluate_elbo, fit, resolve_device
    from ..train.callbacks import epoch_line

    main = distributed.is_main_process()
    say = say if main else (lambda *a, **k: None)
    s, out = run_settings(options, out, resume)
    kind = s.get("class", "VAE")
    two_stage = kind == "TwoStageVAE"
    if tensorboard:
        _require_tensorboard()
    device = resolve_device(s["device"])
    if not resume and (out / CHECKPOINT_NAME).exists() or not resume and kind != "VAE" and out.exists() \
            and any(out.iterdir()):
        raise FileExistsError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if kind == "SSVAE":
        return train_semi_supervised(s, out, device, resume=resume, progress=progress, tensorboard=tensorboard,
                                     say=say, hold=hold)
    if two_stage:  # a resumed run keeps what its stage 2 trains on; runs older than the option trained on the means
        saved_codes = (read_config(out).get("training") or {}).get("stage2_codes", "means") if resume else None
        codes = s.get("stage2_codes") or saved_codes or "samples"
        if saved_codes and codes != saved_codes and (out / "stage2" / CHECKPOINT_NAME).exists():
            raise ValueError(f"--stage2-codes {codes} differs from the run's {saved_codes!r}, and its stage 2 has "
                             "started: a resumed stage 2 keeps its training data (start a new run instead)")
        s["stage2_codes"] = codes
    done = _epochs_done(out, two_stage) if resume else (0, 0)
    # more stage-1 epochs change the codes stage 2 learned: stage 2 then starts again (its old folder is kept)
    restart_stage2 = two_stage and done[1] > 0 and s["epochs"] > done[0]
    shape = datasets.event_shape(s["dataset"])
    train_split, valid_split, test_split = _splits(s["dataset"])
    with threads.torch_threads(resolve_threads(s.get("num_threads"), s["dataset"])):
        import pyro

        pyro.clear_param_store()
        pyro.set_rng_seed(s["seed"])
        model = _build_model(s, shape, out)
        x_train = datasets.load(s["dataset"], train_split, root=s["data_root"])
        x_valid = datasets.load(s["dataset"], valid_split, root=s["data_root"])
        x_test = datasets.load(s["dataset"], test_split, root=s["data_root"])
        if two_stage:
            s["binarize"] = False
        elif s["binarize"] == "auto":
            s["binarize"] = s["likelihood"] == "bernoulli" and not bool(((x_train == 0) | (x_train == 1)).all())
        binarize = bool(s["binarize"])
        stage1 = model.stage1 if two_stage else model
        # the data against the model (shape, NaN, the likelihood's support) before anything is written
        check_data(x_train, f"the {train_split} split of {s['dataset']!r}", stage1, binarize)
        batch_size = min(s["batch_size"], x_train.shape[0])
        check_step_fits(s["num_particles"], batch_size, shape, device)
        config = {"vae": model.config, "dataset": s["dataset"], "data_root": s["data_root"],
                  "splits": {"train": train_split, "valid": valid_split, "test": test_split},
                  "model_args": {k: s[k] for k in RUN_IDENTITY if k in s},
                  "training": {k: s[k] for k in TRAINING_KEYS}, "pyro_vae_version": _version()}
        if kind != "VAE":
            config["class"] = kind
        if two_stage:
            config["training"].update(stage2_epochs=s.get("stage2_epochs"), stage2_codes=s["stage2_codes"])
        with contextlib.ExitStack() as stack:
            if main:
                (hold or stack).enter_context(RunLock(out))  # refuses a second writer before anything is written
                write_config(config, out)
            log = RunLog(out, enabled=main)  # train.log: what is said here, each epoch, the test metrics, a stop
            say = log.saying(say)
            stack.enter_context(log.stops())
            world = f" on {distributed.world_size()} processes" if distributed.launched() else ""
            say(f"run folder: {out}", flush=True)
            say(f"data: {s['dataset']} {train_split} {tuple(x_train.shape)}, {valid_split} {x_valid.shape[0]}, "
                f"{test_split} {x_test.shape[0]}; likelihood {stage1.config['likelihood']}"
                f"{' with dynamic binarization' if binarize else ''}{world}", flush=True)
            stage2_epochs = s.get("stage2_epochs") or s["epochs"]
            if restart_stage2 and main:
                kept = _unused(out / f"stage2-on-stage1-epoch{done[0]}")
                (out / "stage2").rename(kept)
                say(f"stage 1 trains from epoch {done[0]} to {s['epochs']}; stage 2 was fitted to the codes of epoch "
                    f"{done[0]}, so it starts again on the new ones (the old stage 2 is kept in {kept})", flush=True)
            elif resume and done[0] >= s["epochs"] and (not two_stage or done[1] >= stage2_epochs):
                say(f"the run has {done[0]} complete epochs{f' (stage 2: {done[1]})' if two_stage else ''}, as many as "
                    f"asked (--epochs {s['epochs']}): nothing to train; its outputs are written again", flush=True)
            callbacks: list[Any] = []
            if not two_stage:  # training metrics join each epoch's record before the checkpoint: saved with it
                callbacks.append(TrainingMetrics(model, x_train[:TRAIN_METRICS_SIZE].to(device), binarize))
            if tensorboard and main:
                callbacks.append(TensorBoard(out / "tensorboard"))
            if not two_stage:
                callbacks.append(EpochFunction(lambda record: log.line(epoch_line(record, s["epochs"]))))
            common = dict(batch_size=batch_size, lr=float(s["lr"]), device=device, seed=s["seed"], progress=progress,
                          checkpoint_dir=out, resume=resume, callbacks=callbacks)
            t0 = time.perf_counter()
            if two_stage:
                history: Any = model.fit(x_train, epochs=s["epochs"], stage2_epochs=s.get("stage2_epochs"),
                                         val_data=x_valid, stage2_codes=s["stage2_codes"],
                                         on_epoch_end=lambda stage, r: log.line(f"stage {stage} {epoch_line(r)}"),
                                         **common)
                if main:
                    write_json(history, out / "history.json")  # both stages; stage 1's with gamma per epoch
            else:
                history = fit(model, x_train, epochs=s["epochs"], objective=s["objective"],
                              num_particles=s["num_particles"], val_data=x_valid, binarize=binarize,
                              config={"dataset": s["dataset"]}, **common)
            seconds = time.perf_counter() - t0
            if main:
                model.save(out / MODEL_DIR)  # configuration + weights (pyro_vae.load reads it)
            model.eval()
            pyro.set_rng_seed(s["seed"])  # the test ELBO of dynamically binarized data is a random draw: fix it
            metrics = evaluate_elbo(stage1, x_test.to(device), binarize=binarize)  # every rank takes part
            if two_stage:
                metrics["gamma"] = model.gamma
            metrics = {"split": test_split, **metrics, "num_datapoints": int(x_test.shape[0]),
                       "epochs": len(history["stage1"] if two_stage else history)}
            written: list[Path] = []
            if main:
                write_json(metrics, out / TEST_METRICS_NAME)
                log.line(f"test metrics ({TEST_METRICS_NAME}): {json.dumps(metrics)}")
                pyro.set_rng_seed(s["seed"])
                if two_stage and is_image_shape(shape):
                    image_grid(model.sample(64).clamp(0, 1).cpu(), path=out / "samples.png",
                               title="two-stage samples (decoder means)")
                else:
                    reference = x_train[:2000] if x_train.dim() == 2 else None
                    save_samples(model, out / "samples.png", num_samples=64 if reference is None else 2000,
                                 data=reference)
                training_curves(history["stage1"] if two_stage else history, out / "training.png")
                written = [out / "samples.png", out / "training.png"]
                stale = _mark_stale_evaluation(out, metrics["epochs"])
                if stale:
                    say(stale, flush=True)
    return TrainedRun(out, model, history, metrics, seconds, written)


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


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... the first that does not exist."""
    candidate, i = path, 1
    while candidate.exists() or candidate.is_symlink():
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate

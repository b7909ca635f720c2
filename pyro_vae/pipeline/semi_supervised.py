"""Training a semi-supervised run (``pyro-vae train --semi-supervised --labels N``): Kingma et al.'s M2
(:class:`~pyro_vae.SSVAE`) on a balanced set of labelled training datapoints and the unlabelled rest, trained by
:func:`~pyro_vae.train.fit_semi_supervised` with the label summed, then the test accuracy of ``argmax_y q(y | x)``
and the test ``log p(x)`` with the label summed inside every importance weight.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .. import datasets, threads
from ..io import RunLock, write_json
from ..run_files import MODEL_DIR, TEST_METRICS_NAME
from ..runs import RunLog, model_for_resume, read_metrics, run_test_data, write_config
from .settings import (
    EVALUATE_BATCH_SIZE,
    RUN_IDENTITY,
    SEMI_SUPERVISED_CLASSES,
    SEMI_SUPERVISED_DEFAULTS,
    TRAINING_KEYS,
    TrainedRun,
    _splits,
    _version,
    check_step_fits,
    resolve_threads,
)

__all__ = ["train_semi_supervised"]


def _label_split(y: torch.Tensor, s: dict[str, Any], num_classes: int,
                 split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled datapoints of a semi-supervised run (as many of each class) and its unlabelled ones (the rest
    of the split, or ``num_unlabelled`` of them drawn at random), both from the seed.

    :raises ValueError: naming the option, when the split has too few datapoints of a class or too few left.
    """
    from ..train import balanced_split

    per, counts = s["labels"] // num_classes, torch.bincount(y, minlength=num_classes)
    if int(counts.min()) < per:
        raise ValueError(f"--labels {s['labels']} asks for {per} labelled datapoints of each class, and the {split} "
                         f"split of {s['dataset']!r} has only {int(counts.min())} of class {int(counts.argmin())}: "
                         f"give at most --labels {int(counts.min()) * num_classes}")
    labelled, unlabelled = balanced_split(y, s["labels"], num_classes, s["seed"])
    if s.get("num_unlabelled") is not None:
        if s["num_unlabelled"] > unlabelled.numel():
            raise ValueError(f"--num-unlabelled {s['num_unlabelled']} is more than the {unlabelled.numel()} datapoints "
                             f"of the {split} split of {s['dataset']!r} left unlabelled: give at most "
                             f"--num-unlabelled {unlabelled.numel()}, or leave it out (all of them)")
        g = torch.Generator().manual_seed(int(s["seed"]))
        unlabelled = unlabelled[torch.randperm(unlabelled.numel(), generator=g)[: s["num_unlabelled"]]]
    elif unlabelled.numel() == 0:
        raise ValueError(f"--labels {s['labels']} labels the whole {split} split of {s['dataset']!r}, leaving no "
                         "unlabelled datapoints: give fewer labels")
    return labelled, unlabelled


def train_semi_supervised(s: dict[str, Any], out: Path, device: torch.device, *, resume: bool, progress: bool,
                          tensorboard: bool, say: Callable[..., None], hold: contextlib.ExitStack | None) -> TrainedRun:
    """:func:`~pyro_vae.pipeline.train_run` of a semi-supervised run (settings checked): Kingma et al.'s M2 trained by
    :func:`~pyro_vae.train.fit_semi_supervised` on ``labels`` labelled training datapoints and the unlabelled rest,
    then the test accuracy of ``argmax_y q(y | x)`` and the test ``log p(x)`` with the label summed (IWAE with
    ``test_particles`` particles, the seed's batches as ``pyro-vae evaluate --num-particles K`` draws them).
    ``checkpoint.pt`` and ``metrics.jsonl`` are written after every epoch (``resume`` continues from them: the same
    labelled and unlabelled datapoints, from the seed), the model at the end."""
    import pyro

    from .. import infer
    from ..models import SSVAE
    from ..plots import save_samples, training_curves
    from ..train import TensorBoard, check_data, fit_semi_supervised

    dataset, shape = s["dataset"], datasets.event_shape(s["dataset"])
    num_classes = SEMI_SUPERVISED_CLASSES[dataset]
    train_split, valid_split, test_split = _splits(dataset)
    with threads.torch_threads(resolve_threads(s.get("num_threads"), dataset)):
        pyro.clear_param_store()
        pyro.set_rng_seed(s["seed"])
        x_train, y_train = datasets.load(dataset, train_split, root=s["data_root"], return_labels=True)
        x_valid, y_valid = datasets.load(dataset, valid_split, root=s["data_root"], return_labels=True)
        labelled, unlabelled = _label_split(y_train, s, num_classes, train_split)
        if s["binarize"] == "auto":
            s["binarize"] = not bool(((x_train == 0) | (x_train == 1)).all())
        binarize = bool(s["binarize"])
        if binarize:  # the classifier is scored on binary images, as it is trained (one fixed draw, from the seed)
            x_valid = datasets.binarize(x_valid, torch.Generator().manual_seed(int(s["seed"])))
        if resume:  # the run's model, its config checked against the checkpoint's weights (fit loads them)
            model = model_for_resume(SSVAE, s["vae_config"], out)
        else:
            model = SSVAE(shape, num_classes=num_classes, latent_dim=s["latent_dim"],
                          hidden_dims=tuple(s["hidden_dims"]), activation=s["activation"], likelihood=s["likelihood"],
                          aux_loss_multiplier=s["aux_loss_multiplier"])
        check_data(x_train, f"the {train_split} split of {dataset!r}", model, binarize)
        batch_size = min(s["batch_size"], unlabelled.numel())
        # an unlabelled batch decodes every class: C times the datapoints of a VAE's step
        check_step_fits(s["num_particles"] * num_classes, batch_size, shape, device)
        semi = {k: s[k] for k in SEMI_SUPERVISED_DEFAULTS if k != "aux_loss_multiplier"}
        config = {"vae": model.config, "class": "SSVAE", "dataset": dataset, "data_root": s["data_root"],
                  "splits": {"train": train_split, "valid": valid_split, "test": test_split},
                  "model_args": {**{k: s[k] for k in RUN_IDENTITY if k in s},
                                 "aux_loss_multiplier": s["aux_loss_multiplier"]},
                  "training": {**{k: s[k] for k in TRAINING_KEYS}, **semi}, "pyro_vae_version": _version()}
        # the test data every command sees (one fixed binarization from the seed), read before anything is written
        x_test, y_test = run_test_data(config, seed=s["seed"], labels=True, device=device)
        assert y_test is not None
        num_l, num_u, passes = labelled.numel(), unlabelled.numel(), s["labelled_passes"]
        done = len(read_metrics(out)) if resume else 0
        with contextlib.ExitStack() as stack:
            (hold or stack).enter_context(RunLock(out))  # refuses a second writer before anything is written
            write_config(config, out)
            log = RunLog(out)  # train.log: what is said here, each epoch, the test metrics, a stop
            say = log.saying(say)
            stack.enter_context(log.stops())
            say(f"run folder: {out}", flush=True)
            say(f"data: {dataset} {train_split} {tuple(x_train.shape)}, {valid_split} {x_valid.shape[0]}, "
                f"{test_split} {x_test.shape[0]}; likelihood {model.config['likelihood']}"
                f"{' with dynamic binarization' if binarize else ''}; {num_l} labelled ({num_l // num_classes} per "
                f"class), {num_u} unlabelled", flush=True)
            if resume and done >= s["epochs"]:
                say(f"the run has {done} complete epochs, as many as asked (--epochs {s['epochs']}): nothing to "
                    "train; its outputs are written again", flush=True)
            logger = TensorBoard(out / "tensorboard") if tensorboard else None

            def on_epoch_end(record: dict[str, Any]) -> None:
                visits = num_u + num_l * passes
                record["loss"] = (record["loss_unlabelled"] * num_u + record["loss_labelled"] * num_l * passes) / visits
                record["lr"], record["images_per_second"] = float(s["lr"]), visits / record["seconds"]
                if logger is not None:
                    logger.on_epoch_end(record)
                line = (f"epoch {record['epoch']}/{s['epochs']}: loss {record['loss']:.3f} (unlabelled "
                        f"{record['loss_unlabelled']:.3f}, labelled {record['loss_labelled']:.3f} + auxiliary "
                        f"{record['aux_loss']:.3f}), valid accuracy {record['val_accuracy']:.4f} "
                        f"({record['seconds']:.1f} s, {record['images_per_second']:,.0f} images/s)")
                log.line(line)
                if progress:
                    print(line, file=sys.stderr, flush=True)

            model.to(device)
            t0 = time.perf_counter()
            # checkpoint.pt and metrics.jsonl after every epoch (after on_epoch_end: the records hold what it adds)
            history = fit_semi_supervised(model, x_train[labelled], y_train[labelled], x_train[unlabelled],
                                          epochs=s["epochs"], batch_size=batch_size, lr=float(s["lr"]),
                                          objective=s["objective"], num_particles=s["num_particles"],
                                          binarize=binarize, val_data=(x_valid, y_valid), seed=s["seed"],
                                          progress=False, on_epoch_end=on_epoch_end, labelled_passes=passes,
                                          checkpoint_dir=out, resume=resume)
            seconds = time.perf_counter() - t0
            if logger is not None:
                logger.on_train_end(history)
            model.save(out / MODEL_DIR)  # configuration + weights (pyro_vae.load reads it)
            model.eval()
            result = infer.log_likelihood(model.model, model.guide, x_test, num_particles=s["test_particles"],
                                          batch_size=EVALUATE_BATCH_SIZE, seed=s["seed"], diagnostics=False,
                                          progress=progress)
            d = result.as_dict()
            metrics = {"split": test_split, "accuracy": model.accuracy(x_test, y_test),
                       **{k: d[k] for k in ("log_likelihood", "log_likelihood_stderr", "log_likelihood_mc_stderr",
                                            "num_particles", "elbo", "elbo_stderr", "rate", "distortion")},
                       "seed": s["seed"], "num_datapoints": int(x_test.shape[0]), "epochs": len(history),
                       "labels": num_l, "num_unlabelled": num_u}
            write_json(metrics, out / TEST_METRICS_NAME)
            log.line(f"test metrics ({TEST_METRICS_NAME}): {json.dumps(metrics)}")
            pyro.set_rng_seed(s["seed"])
            save_samples(model, out / "samples.png", num_samples=10 * num_classes, nrow=num_classes,
                         title="samples from the model: decoder means E[x|y,z],\nz ~ p(z), one class y a column")
            written = [out / "samples.png"]
            if history:
                training_curves(history, out / "training.png")
                written.append(out / "training.png")
    return TrainedRun(out, model, history, metrics, seconds, written)

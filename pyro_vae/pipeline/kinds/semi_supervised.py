"""The recipe of a semi-supervised run (``pyro-vae train --semi-supervised --labels N``): Kingma et al.'s M2
(:class:`~pyro_vae.SSVAE`) on a balanced set of labelled training datapoints and the unlabelled rest, trained by
:func:`~pyro_vae.train.fit_semi_supervised` with the label summed (``checkpoint.pt`` and ``metrics.jsonl`` after every
epoch), then the test accuracy of ``argmax_y q(y | x)`` and the test ``log p(x)`` with the label summed inside every
importance weight. Its options, its refusals (what M2 here does not take) and its resume rules live here.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from ... import datasets
from ...runs import run_test_data
from ...train.semi_supervised import AUX_STEPS, LABELLED_SCHEDULES, LOSS_SCALES
from ..registry import register_kind
from ..settings import EVALUATE_BATCH_SIZE, RunSettings, check_step_fits, run_splits, whole_option
from .base import RunContext, RunData, RunKind

__all__ = ["SemiSupervisedKind", "SEMI_SUPERVISED_CLASSES", "SEMI_SUPERVISED_DEFAULTS", "model_accuracy"]

#: the data sets a semi-supervised run takes (images with class labels) and their number of classes
SEMI_SUPERVISED_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10}
#: the options of a semi-supervised run alone (stored in config.json's ``training``), and their defaults: the
#: labelled training datapoints (required), the unlabelled ones (None: the rest of the training split), Kingma et
#: al.'s alpha, passes over the labelled data per epoch (10: the setting the ablation at 100 labels found to move
#: the accuracy most, docs/results.md §5.1; Pyro's schedule is 1), K of the test log p(x), and the training options
#: of :func:`~pyro_vae.train.fit_semi_supervised`
SEMI_SUPERVISED_DEFAULTS: dict[str, Any] = {"labels": None, "num_unlabelled": None, "aux_loss_multiplier": 46.0,
                                            "labelled_passes": 10, "test_particles": 100, "aux_step": "joint",
                                            "loss_scale": "mean", "adam_beta1": 0.9, "init_std": None,
                                            "labelled_schedule": "interleaved"}
#: the network and optimiser of a new semi-supervised run where not given: Kingma et al.'s and Pyro's example's
#: (784-500-50 with softplus; Adam at 4.2e-4, batches of 200), not the plain VAE's
NETWORK_DEFAULTS: dict[str, Any] = {"hidden_dims": [500], "latent_dim": 50, "activation": "softplus", "batch_size": 200,
                                    "lr": 4.2e-4}
#: what a run written before an option existed trained with (a resumed run keeps it)
_LEGACY = {"aux_step": "joint", "loss_scale": "mean", "adam_beta1": 0.9, "init_std": None,
           "labelled_schedule": "interleaved"}
#: the options a resumed run keeps (its data and its schedule: all but the test's K)
_KEPT = tuple(k for k in SEMI_SUPERVISED_DEFAULTS if k != "test_particles")
#: the options a semi-supervised run refuses, with the one value (or the values) each may take (None: none)
_NOT_SEMI_SUPERVISED: dict[str, Any] = {
    "two_stage": None, "layers": None, "stage2_epochs": None, "stage2_codes": None, "prior": "normal",
    "prior_components": None, "flow": None, "encoder": "mlp", "decoder": "mlp",
    "objective": ("elbo", "iwae", "iwae-dreg"), "likelihood": "bernoulli"}
#: the folder of a run that holds the model of the best validation accuracy
BEST_DIR = "best"
#: K of the importance-weighted ``log p(x, y)`` behind :func:`model_accuracy` (its argmax over the labels needs no
#: more than this: the labels' bounds differ by nats where the model tells them apart)
MODEL_ACCURACY_PARTICLES = 10
#: the semi-supervised options stored in config.json's ``training`` (alpha is a model argument)
_TRAINING = tuple(k for k in SEMI_SUPERVISED_DEFAULTS if k != "aux_loss_multiplier")


def _refuse_what_m2_lacks(given: dict[str, Any], who: str = "--semi-supervised") -> None:
    """Refuse the options the semi-supervised VAE does not take, naming why and what to drop or choose."""
    for key, allowed in _NOT_SEMI_SUPERVISED.items():
        value = given.get(key)
        if value is None or value is False or value == allowed or isinstance(allowed, tuple) and value in allowed:
            continue
        flag = "--" + key.replace("_", "-")
        spelled = flag if value is True else f"{flag} {value}"
        why = {"objective": "the label is summed exactly in elbo, iwae and iwae-dreg, and mean-field has no closed "
                            "form for it (choose one of those three)",
               "likelihood": "the semi-supervised VAE's decoder is Bernoulli"}.get(
                   key, "the semi-supervised VAE is one MLP model with a Gaussian guide and the standard normal prior")
        raise ValueError(f"{who} does not take {spelled}: {why} (drop {flag})")


@register_kind
class SemiSupervisedKind(RunKind):
    """An :class:`~pyro_vae.SSVAE` run, selected by ``semi_supervised`` (with ``labels``)."""

    name = "SSVAE"
    single_process = True
    selected_by = "semi_supervised"
    has_labels = True

    # ------------------------------------------------------------------------------------------------ settings
    def configure(self, s: RunSettings, given: dict[str, Any]) -> RunSettings:
        if s.dataset not in SEMI_SUPERVISED_CLASSES:
            raise ValueError(f"--semi-supervised needs a data set of images with class labels, and {s.dataset!r} has "
                             f"none that fit: choose --dataset {', '.join(SEMI_SUPERVISED_CLASSES)}")
        if given.get("labels") is None:
            raise ValueError(f"--semi-supervised needs --labels N, the number of labelled training datapoints (a "
                             f"multiple of the {SEMI_SUPERVISED_CLASSES[s.dataset]} classes, e.g. --labels 100)")
        _refuse_what_m2_lacks(given)
        network = {k: v for k, v in NETWORK_DEFAULTS.items() if k not in given}
        return s.replace(**network, **{k: given.get(k, default) for k, default in SEMI_SUPERVISED_DEFAULTS.items()})

    def refuse_stray(self, given: dict[str, Any], chosen: Any, out: Path | None) -> None:
        stray = [k for k in (self.selected_by, *SEMI_SUPERVISED_DEFAULTS) if given.get(k) not in (None, False)]
        if not stray:
            return
        flag = "--" + stray[0].replace("_", "-")
        if out is not None:
            raise ValueError(f"the run in {out} trains a {chosen.name}, not a semi-supervised VAE: {flag} does not "
                             f"apply to it (drop {flag}, or start a new run)")
        raise ValueError(f"{flag} applies to semi-supervised runs: add --semi-supervised (Kingma et al.'s M2 "
                         f"trained on --labels N labelled datapoints), or drop {flag}")

    def resumed(self, s: RunSettings, given: dict[str, Any], saved: dict[str, Any], out: Path) -> RunSettings:
        """The run's labelled and unlabelled data, alpha and schedule are the run's (given again, they must be the
        same); ``test_particles`` may change."""
        _refuse_what_m2_lacks(given, f"the semi-supervised run in {out}")
        default = SEMI_SUPERVISED_DEFAULTS["aux_loss_multiplier"]
        alpha = (saved.get("model_args") or {}).get("aux_loss_multiplier", default)
        training = saved.get("training") or {}
        s = s.replace(aux_loss_multiplier=alpha, **{k: v for k, v in _LEGACY.items() if k not in training})
        for key in _KEPT:
            old = getattr(s, key)
            if key in given and given[key] != old:
                raise ValueError(f"--{key.replace('_', '-')} {given[key]} differs from the run's {old!r}: a resumed "
                                 "semi-supervised run keeps its labelled and unlabelled data and its schedule "
                                 "(start a new run instead)")
        return s.replace(**{k: given.get(k, default if getattr(s, k) is None else getattr(s, k))
                            for k, default in SEMI_SUPERVISED_DEFAULTS.items() if k not in _LEGACY})

    def check(self, s: RunSettings) -> None:
        values = {key: whole_option(key, getattr(s, key))
                  for key in ("labels", "num_unlabelled", "labelled_passes", "test_particles")
                  if not (key == "num_unlabelled" and s.num_unlabelled is None)}
        classes = SEMI_SUPERVISED_CLASSES[s.dataset]
        if values["labels"] % classes:
            labels = values["labels"]
            raise ValueError(f"--labels {labels} is not a multiple of the {classes} classes of {s.dataset!r}: the "
                             f"labelled datapoints are as many of each class (e.g. --labels "
                             f"{max(classes, labels // classes * classes)})")
        alpha = s.aux_loss_multiplier
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"--aux-loss-multiplier must be >= 0 and finite, got {alpha!r}")
        for key, names in (("aux_step", AUX_STEPS), ("loss_scale", LOSS_SCALES),
                           ("labelled_schedule", LABELLED_SCHEDULES)):
            if getattr(s, key) not in names:
                value = getattr(s, key)
                raise ValueError(f"--{key.replace('_', '-')} must be one of {', '.join(names)}, got {value!r}")
        beta1 = s.adam_beta1
        if isinstance(beta1, bool) or not isinstance(beta1, (int, float)) or not 0 <= beta1 < 1:
            raise ValueError(f"--adam-beta1 must be in [0, 1), got {beta1!r}")
        std = s.init_std
        if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < math.inf):
            raise ValueError(f"--init-std must be > 0 and finite (or left out: torch's initialisation), got {std!r}")

    # ------------------------------------------------------------------------------------------------ training
    def read_data(self, s: RunSettings, out: Path, resume: bool) -> tuple[RunSettings, RunData]:
        """The training and validation splits with labels, the labelled and unlabelled datapoints (from the seed),
        and the test data every command sees (one fixed binarization from the seed)."""
        whole = ("labels", "num_unlabelled", "labelled_passes", "test_particles")
        s = s.replace(**{k: int(getattr(s, k)) for k in whole if getattr(s, k) is not None},
                      aux_loss_multiplier=float(s.aux_loss_multiplier), adam_beta1=float(s.adam_beta1),
                      init_std=None if s.init_std is None else float(s.init_std))
        train, valid, test = run_splits(s.dataset)
        x_train, y_train = datasets.load(s.dataset, train, root=s.data_root, return_labels=True)
        x_valid, y_valid = datasets.load(s.dataset, valid, root=s.data_root, return_labels=True)
        labelled, unlabelled = _label_split(y_train, s, SEMI_SUPERVISED_CLASSES[s.dataset], train)
        if s.binarize == "auto":
            s = s.replace(binarize=not bool(((x_train == 0) | (x_train == 1)).all()))
        if s.binarize:  # the classifier is scored on binary images, as it is trained (one fixed draw, from the seed)
            x_valid = datasets.binarize(x_valid, torch.Generator().manual_seed(int(s.seed)))
        config = {"dataset": s.dataset, "data_root": s.data_root, "splits": {"test": test},
                  "training": {"binarize": s.binarize}, "vae": {"likelihood": s.likelihood}}
        x_test, y_test = run_test_data(config, seed=s.seed, labels=True)
        assert y_test is not None
        return s, RunData((train, valid, test), x_train, x_valid, x_test,
                          labels={"train": y_train, "valid": y_valid, "test": y_test},
                          extra={"labelled": labelled, "unlabelled": unlabelled})

    def build(self, s: RunSettings, data: RunData, out: Path) -> Any:
        from ...models import SSVAE
        from ...train.semi_supervised import init_hidden_normal_

        model = SSVAE(datasets.event_shape(s.dataset), num_classes=SEMI_SUPERVISED_CLASSES[s.dataset],
                      latent_dim=s.latent_dim, hidden_dims=tuple(s.hidden_dims or ()), activation=s.activation,
                      likelihood=s.likelihood, aux_loss_multiplier=s.aux_loss_multiplier)
        return model if s.init_std is None else init_hidden_normal_(model, s.init_std)

    def batch_size(self, s: RunSettings, data: RunData) -> int:
        return min(s.batch_size, data.extra["unlabelled"].numel())

    def check_run(self, s: RunSettings, data: RunData, model: Any, device: torch.device) -> None:
        from ...train import check_data

        # values in [0, 1]: binarized afresh, or grey levels taken as Bernoulli targets (--no-binarize, Pyro's)
        check_data(data.train, f"the {data.splits[0]} split of {s.dataset!r}", model, True)
        # an unlabelled batch decodes every class: C times the datapoints of a VAE's step
        check_step_fits(s.num_particles * SEMI_SUPERVISED_CLASSES[s.dataset], self.batch_size(s, data),
                        datasets.event_shape(s.dataset), device)

    def config(self, s: RunSettings, model: Any, data: RunData) -> dict[str, Any]:
        base = super().config(s, model, data)
        return {"vae": base["vae"], "class": self.name, "dataset": base["dataset"], "data_root": base["data_root"],
                "splits": base["splits"], "model_args": {**base["model_args"],
                                                          "aux_loss_multiplier": s.aux_loss_multiplier},
                "training": {**base["training"], **s.as_dict(_TRAINING)},
                "pyro_vae_version": base["pyro_vae_version"]}

    def data_line(self, s: RunSettings, data: RunData, model: Any, world: str) -> str:
        num_l, num_u = data.extra["labelled"].numel(), data.extra["unlabelled"].numel()
        classes = SEMI_SUPERVISED_CLASSES[s.dataset]
        return (f"{super().data_line(s, data, model, '')}; {num_l} labelled ({num_l // classes} per class), {num_u} "
                "unlabelled")

    def train(self, model: Any, ctx: RunContext) -> Any:
        from ...train import TensorBoard, fit_semi_supervised

        s, data = ctx.settings, ctx.data
        labelled, unlabelled = data.extra["labelled"], data.extra["unlabelled"]
        num_l, num_u, passes = labelled.numel(), unlabelled.numel(), s.labelled_passes
        logger = TensorBoard(ctx.out / "tensorboard") if ctx.tensorboard else None

        def on_epoch_end(record: dict[str, Any]) -> None:
            visits = num_u + num_l * passes
            record["loss"] = (record["loss_unlabelled"] * num_u + record["loss_labelled"] * num_l * passes) / visits
            record["lr"], record["images_per_second"] = float(s.lr), visits / record["seconds"]
            if logger is not None:
                logger.on_epoch_end(record)
            line = (f"epoch {record['epoch']}/{s.epochs}: loss {record['loss']:.3f} (unlabelled "
                    f"{record['loss_unlabelled']:.3f}, labelled {record['loss_labelled']:.3f} + auxiliary "
                    f"{record['aux_loss']:.3f}), valid accuracy {record['val_accuracy']:.4f} "
                    f"({record['seconds']:.1f} s, {record['images_per_second']:,.0f} images/s)")
            ctx.log.line(line)
            if ctx.progress:
                print(line, file=sys.stderr, flush=True)

        model.to(ctx.device)
        # checkpoint.pt and metrics.jsonl after every epoch (after on_epoch_end: the records hold what it adds)
        history = fit_semi_supervised(model, data.train[labelled], data.labels["train"][labelled],
                                      data.train[unlabelled], epochs=s.epochs, batch_size=self.batch_size(s, data),
                                      lr=float(s.lr), objective=s.objective, num_particles=s.num_particles,
                                      binarize=bool(s.binarize), val_data=(data.valid, data.labels["valid"]),
                                      seed=s.seed, progress=False, on_epoch_end=on_epoch_end, labelled_passes=passes,
                                      checkpoint_dir=ctx.out, resume=ctx.resume, aux_step=s.aux_step,
                                      loss_scale=s.loss_scale, betas=(float(s.adam_beta1), 0.999),
                                      labelled_schedule=s.labelled_schedule,
                                      best_dir=ctx.out / BEST_DIR)
        if logger is not None:
            logger.on_train_end(history)
        return history

    def test_metrics(self, model: Any, history: Any, ctx: RunContext) -> dict[str, Any]:
        """The test accuracy of ``argmax_y q(y | x)`` (and of the model's own ``argmax_y p(x, y)``,
        :func:`model_accuracy`), at the last and at the best validation epoch, and the test ``log p(x)`` with the
        label summed (IWAE with ``test_particles`` particles, the seed's batches as ``pyro-vae evaluate
        --num-particles K`` draws them)."""
        from ... import infer

        s, data = ctx.settings, ctx.data
        x_test, y_test = data.test.to(ctx.device), data.labels["test"].to(ctx.device)
        result = infer.log_likelihood(model.model, model.guide, x_test, num_particles=s.test_particles,
                                      batch_size=EVALUATE_BATCH_SIZE, seed=s.seed, diagnostics=False,
                                      progress=ctx.progress)
        d = result.as_dict()
        last = {"accuracy": model.accuracy(x_test, y_test),
                "model_accuracy": model_accuracy(model, x_test, y_test, seed=s.seed)}
        best = _best(history, ctx.out, ctx.device, x_test, y_test, s.seed, last)
        return {"split": data.splits[2], **last, **best,
                **{k: d[k] for k in ("log_likelihood", "log_likelihood_stderr", "log_likelihood_mc_stderr",
                                     "num_particles", "elbo", "elbo_stderr", "rate", "distortion")},
                "seed": s.seed, "num_datapoints": int(x_test.shape[0]), "epochs": len(history),
                "labels": data.extra["labelled"].numel(), "num_unlabelled": data.extra["unlabelled"].numel()}

    def figures(self, model: Any, history: Any, ctx: RunContext) -> list[Path]:
        import pyro

        from ...drawing import save_samples, training_curves

        classes = SEMI_SUPERVISED_CLASSES[ctx.settings.dataset]
        pyro.set_rng_seed(ctx.settings.seed)
        save_samples(model, ctx.out / "samples.png", num_samples=10 * classes, nrow=classes,
                     title="samples from the model: decoder means E[x|y,z],\nz ~ p(z), one class y a column")
        written = [ctx.out / "samples.png"]
        if history:
            training_curves(history, ctx.out / "training.png")
            written.append(ctx.out / "training.png")
        return written

    # ------------------------------------------------------------------------------------------------ a trained run
    def describe(self, config: dict[str, Any]) -> str:
        return "SSVAE (the label y summed exactly)"

    def refuse_evaluation(self, ais_steps: int) -> None:
        if ais_steps:
            raise ValueError(f"--ais-steps {ais_steps}: AIS cannot anneal the label y of a semi-supervised run (its "
                             "guide sums y exactly, and AIS moves continuous latents only); drop --ais-steps to "
                             "measure log p(x) with the label summed by IWAE")

    def evaluation_extras(self, model: Any, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        # the classifier argmax q(y | x) on the same datapoints
        return {} if labels is None else {"accuracy": model.accuracy(x, labels)}


def model_accuracy(model: Any, x: torch.Tensor, y: torch.Tensor, *, num_particles: int = MODEL_ACCURACY_PARTICLES,
                   seed: int = 0, progress: bool = False) -> float:
    """The accuracy of the generative model's own classifier, :math:`\\arg\\max_y p(x, y) = \\arg\\max_y p(y \\mid
    x)` (IWAE_K of :math:`\\log p(x, y)` for every label), beside the accuracy of :math:`q(y \\mid x)`.

    The unlabelled bound pulls :math:`q(y \\mid x)` towards the model's posterior over the label; that helps the
    classifier only where the model's label carries the class. With many labels the two classifiers agree; when the
    decoder leaves the class to ``z`` the model's accuracy stays far below the classifier's (docs/results.md §5.2).

    Every label's estimate uses the same draws (the seed fixes each batch's noise, so ``z = loc_y + scale_y eps``
    with one ``eps`` for all labels: common random numbers). With a draw of its own per label, the heavy right tail
    of a few-particle IWAE swamps the labels' differences: on a 100-label model of §5.2, independent draws at
    ``K = 10`` give an accuracy of 0.22 to 0.29 where shared ones give 0.64 (0.65 at ``K = 100``).

    :param model: a trained :class:`~pyro_vae.SSVAE` (in eval mode).
    :param x: ``(N, *input_shape)`` on the model's device; ``y``: ``(N,)`` class indices.
    :param seed: the batches' draws, as :func:`~pyro_vae.infer.log_likelihood` seeds them, the same for every label.
    """
    from ... import infer

    scores = torch.stack([
        infer.log_likelihood(model.model, model.guide, x, num_particles=num_particles, batch_size=EVALUATE_BATCH_SIZE,
                             seed=seed, diagnostics=False, progress=progress,
                             condition=torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)).values
        for label in range(model.num_classes)], -1)
    return float((scores.argmax(-1) == y.cpu()).double().mean())


def _best(history: list[dict[str, Any]], out: Path, device: torch.device, x: torch.Tensor,
          y: torch.Tensor, seed: int, last: dict[str, float]) -> dict[str, Any]:
    """The best-validation epoch, its validation accuracy and the test accuracies of its model (kept in ``best/``):
    its classifier's and its generative model's (:func:`model_accuracy`); ``last``'s when the best epoch is the last
    (the same weights: not scored twice)."""
    from ...saving import load_model

    scored = [h for h in history if "val_accuracy" in h]
    if not scored or not (out / BEST_DIR).is_dir():
        return {}
    best = max(scored, key=lambda h: h["val_accuracy"])  # the first of ties, as the trainer keeps it
    if best["epoch"] == len(history):
        accuracy, generative = last["accuracy"], last["model_accuracy"]
    else:
        model = load_model(out / BEST_DIR, map_location=device).eval()
        accuracy, generative = model.accuracy(x, y), model_accuracy(model, x, y, seed=seed)
    return {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "best_accuracy": accuracy,
            "best_model_accuracy": generative}


def _label_split(y: torch.Tensor, s: RunSettings, num_classes: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled datapoints of a semi-supervised run (as many of each class) and its unlabelled ones (the rest
    of the split, or ``num_unlabelled`` of them drawn at random), both from the seed.

    :raises ValueError: naming the option, when the split has too few datapoints of a class or too few left.
    """
    from ...train import balanced_split

    labels = int(s.labels or 0)
    per, counts = labels // num_classes, torch.bincount(y, minlength=num_classes)
    if int(counts.min()) < per:
        raise ValueError(f"--labels {labels} asks for {per} labelled datapoints of each class, and the {split} "
                         f"split of {s.dataset!r} has only {int(counts.min())} of class {int(counts.argmin())}: "
                         f"give at most --labels {int(counts.min()) * num_classes}")
    labelled, unlabelled = balanced_split(y, labels, num_classes, s.seed)
    if s.num_unlabelled is not None:
        if s.num_unlabelled > unlabelled.numel():
            raise ValueError(f"--num-unlabelled {s.num_unlabelled} is more than the {unlabelled.numel()} datapoints "
                             f"of the {split} split of {s.dataset!r} left unlabelled: give at most "
                             f"--num-unlabelled {unlabelled.numel()}, or leave it out (all of them)")
        g = torch.Generator().manual_seed(int(s.seed))
        unlabelled = unlabelled[torch.randperm(unlabelled.numel(), generator=g)[: s.num_unlabelled]]
    elif unlabelled.numel() == 0:
        raise ValueError(f"--labels {labels} labels the whole {split} split of {s.dataset!r}, leaving no "
                         "unlabelled datapoints: give fewer labels")
    return labelled, unlabelled

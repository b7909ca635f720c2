"""What a run kind's recipe says, and what every kind shares: :class:`RunKind`, whose methods are the steps of
:func:`~pyro_vae.pipeline.train_run` (the settings a kind takes, its data, its model, its ``config.json``, its
training with callbacks and checkpoints, what counts as an epoch done, its test metrics and figures) and of
:func:`~pyro_vae.pipeline.evaluate_run` and :func:`~pyro_vae.pipeline.plot_run` (what is measured and how it is
named, what the figures draw); :class:`RunData` and :class:`RunContext`, what the steps are handed.

A kind overrides only what differs from a plain VAE run (:class:`~pyro_vae.pipeline.kinds.vae.VAEKind`); the
pipeline calls these methods and never asks which kind it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ... import datasets
from ..._version import __version__
from ...runs import RunLog, read_metrics
from ..settings import RUN_IDENTITY, TRAINING_KEYS, RunSettings, check_step_fits, run_splits

__all__ = ["RunKind", "RunData", "RunContext"]


@dataclass
class RunData:
    """A run's data, read once before anything is written: the three splits' names and tensors, and the labels of
    the splits where a kind needs them."""

    splits: tuple[str, str, str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    #: what else a kind drew from the data (the labelled and unlabelled indices of a semi-supervised run)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a recipe's training, test and figures are handed once the folder is locked and ``config.json`` written."""

    settings: RunSettings
    out: Path
    device: torch.device
    data: RunData
    resume: bool
    progress: bool
    tensorboard: bool
    #: rank 0 (the only rank that writes and speaks)
    main: bool
    log: RunLog
    say: Callable[..., None]


class RunKind:
    """The recipe of a plain run; a kind subclasses it, sets :attr:`name` and overrides what differs.

    Register a kind with :func:`~pyro_vae.pipeline.register_kind`; its model class must be registered for saving
    (:func:`~pyro_vae.saving.register_model_class`) so that ``pyro_vae.load`` reads its run folders.
    """

    #: the kind's name: config.json's ``"class"`` (left out for ``VAE``, as earlier versions wrote) and ``--kind``
    name = "VAE"
    #: the option that selects this kind besides ``--kind`` (``layers``, ``two_stage``, ...), or None
    selected_by: str | None = None
    #: a new run refuses an ``--out`` that holds anything (False: only one that holds a checkpoint)
    fresh_folder = True
    #: the run's test data come with labels (``evaluate`` reports what the kind measures with them)
    has_labels = False
    #: the kind's trainer runs in one process: a run launched with ``torchrun`` is refused before anything is read
    single_process = False

    # ------------------------------------------------------------------------------------------------ settings
    def configure(self, s: RunSettings, given: dict[str, Any]) -> RunSettings:
        """A new run's settings of this kind (``given``: the options set), the kind's own refusals first."""
        return s

    def resumed(self, s: RunSettings, given: dict[str, Any], saved: dict[str, Any], out: Path) -> RunSettings:
        """A resumed run's settings (``saved``: its ``config.json``), refusing what it cannot change."""
        return s

    def refuse_stray(self, given: dict[str, Any], chosen: Any, out: Path | None) -> None:
        """Refuse this kind's own options given to a run of another kind ``chosen`` (``out``: the resumed run)."""
        flag = self.selected_by
        if out is not None and flag and given.get(flag) not in (None, False) and given.get("kind") != chosen.name:
            raise ValueError(f"the run in {out} trains a {chosen.name}: a resumed run keeps its model (start a new run "
                             "instead)")

    def check(self, s: RunSettings) -> None:
        """Refuse settings the kind cannot take (before anything is read)."""

    # ------------------------------------------------------------------------------------------------ training
    def read_data(self, s: RunSettings, out: Path, resume: bool) -> tuple[RunSettings, RunData]:
        """The run's data, and the settings they resolve (``binarize="auto"``: on for grey data and a Bernoulli
        likelihood)."""
        train, valid, test = run_splits(s.dataset)
        data = RunData((train, valid, test), *(datasets.load(s.dataset, split, root=s.data_root)
                                               for split in (train, valid, test)))
        if s.binarize == "auto":
            s = s.replace(binarize=s.likelihood == "bernoulli" and not bool(((data.train == 0) | (data.train == 1))
                                                                               .all()))
        return s, data

    def build(self, s: RunSettings, data: RunData, out: Path) -> Any:
        """The model of a new run."""
        raise NotImplementedError

    def resume_model(self, s: RunSettings, out: Path) -> Any:
        """The very model of a resumed run, its config checked against its checkpoints' weights."""
        from ...runs import model_for_resume

        return model_for_resume(self.model_class(), s.model_config or {}, out)

    def model_class(self) -> type:
        """The model class of this kind (what ``config.json`` describes)."""
        from ...saving import MODEL_CLASSES

        return MODEL_CLASSES[self.name]

    def trained(self, model: Any) -> Any:
        """The model the data are checked against and the test ELBO measures."""
        return model

    def check_run(self, s: RunSettings, data: RunData, model: Any, device: torch.device) -> None:
        """The data against the model (shape, NaN, the likelihood's support) and a step's memory, before anything is
        written."""
        from ...train import check_data

        check_data(data.train, f"the {data.splits[0]} split of {s.dataset!r}", self.trained(model), bool(s.binarize))
        check_step_fits(s.num_particles, self.batch_size(s, data), datasets.event_shape(s.dataset), device)

    def batch_size(self, s: RunSettings, data: RunData) -> int:
        """Datapoints per step (no more than the training data)."""
        return min(s.batch_size, data.train.shape[0])

    def config(self, s: RunSettings, model: Any, data: RunData) -> dict[str, Any]:
        """What ``config.json`` holds (its key order is what earlier versions wrote)."""
        train, valid, test = data.splits
        config = {"vae": model.config, "dataset": s.dataset, "data_root": s.data_root,
                  "splits": {"train": train, "valid": valid, "test": test},
                  "model_args": s.as_dict(RUN_IDENTITY), "training": s.as_dict(TRAINING_KEYS),
                  "pyro_vae_version": __version__}
        if self.name != "VAE":
            config["class"] = self.name
        return config

    def data_line(self, s: RunSettings, data: RunData, model: Any, world: str) -> str:
        """The line that says what the run trains on."""
        train, valid, test = data.splits
        return (f"data: {s.dataset} {train} {tuple(data.train.shape)}, {valid} {data.valid.shape[0]}, {test} "
                f"{data.test.shape[0]}; likelihood {self.trained(model).config['likelihood']}"
                f"{' with dynamic binarization' if s.binarize else ''}{world}")

    def epochs_done(self, out: Path) -> int:
        """Complete epochs of the run in ``out``, from its metrics."""
        return len(read_metrics(out))

    def before_training(self, model: Any, ctx: RunContext) -> None:
        """What resuming does, said before training (a run already as long as asked: nothing to train)."""
        done = self.epochs_done(ctx.out) if ctx.resume else 0
        if ctx.resume and done >= ctx.settings.epochs:
            ctx.say(f"the run has {done} complete epochs, as many as asked (--epochs {ctx.settings.epochs}): nothing "
                    "to train; its outputs are written again", flush=True)

    def train(self, model: Any, ctx: RunContext) -> Any:
        """Train the model (a checkpoint after every epoch); returns its history."""
        raise NotImplementedError

    def test_metrics(self, model: Any, history: Any, ctx: RunContext) -> dict[str, Any]:
        """``test_metrics.json``: the test ELBO, rate and distortion (every rank takes part)."""
        import pyro

        from ...train import evaluate_elbo

        pyro.set_rng_seed(ctx.settings.seed)  # the test ELBO of dynamically binarized data is a random draw: fix it
        metrics = evaluate_elbo(self.trained(model), ctx.data.test.to(ctx.device), binarize=bool(ctx.settings.binarize))
        metrics.update(self.model_metrics(model))
        return {"split": ctx.data.splits[2], **metrics, "num_datapoints": int(ctx.data.test.shape[0]),
                "epochs": self.history_length(history)}

    def model_metrics(self, model: Any) -> dict[str, Any]:
        """What the test metrics record of the trained model itself (a two-stage run: its decoder variance)."""
        return {}

    def history_length(self, history: Any) -> int:
        """Epochs in a history :meth:`train` returned."""
        return len(history)

    def figures(self, model: Any, history: Any, ctx: RunContext) -> list[Path]:
        """The figures written at the end of training (rank 0): samples and the training curves."""
        import pyro

        from ...drawing import save_samples, training_curves

        pyro.set_rng_seed(ctx.settings.seed)
        reference = ctx.data.train[:2000] if ctx.data.train.dim() == 2 else None
        save_samples(model, ctx.out / "samples.png", num_samples=64 if reference is None else 2000, data=reference)
        training_curves(history, ctx.out / "training.png")
        return [ctx.out / "samples.png", ctx.out / "training.png"]

    # ------------------------------------------------------------------------------------------------ a trained run
    def measured(self, model: Any) -> Any:
        """The model whose ``log p(x)`` ``evaluate`` and ``plot`` estimate (its ``.model`` and ``.guide``)."""
        return model

    def describe(self, config: dict[str, Any]) -> str:
        """What ``evaluation.json``'s ``"model"`` says was measured."""
        return self.name

    def refuse_evaluation(self, ais_steps: int) -> None:
        """Refuse an evaluation the kind cannot take (AIS for a discrete latent), before any work."""

    def evaluation_extras(self, model: Any, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        """What ``evaluate`` measures besides ``log p(x)`` on the same datapoints."""
        return {}

    def histories(self, run_dir: Path) -> dict[str, tuple[list[dict[str, Any]], str | None]]:
        """The training-curve figures of a run folder: ``{file name: (records, title)}``."""
        return {"training.png": (read_metrics(run_dir), None)}

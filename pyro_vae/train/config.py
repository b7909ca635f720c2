"""The options of a training run: :class:`FitConfig`, a frozen dataclass checked on creation.

:func:`~pyro_vae.train.fit` builds one from its keyword arguments, so a wrong option is refused before any work,
with a message that names it; :func:`~pyro_vae.train.loop.run_fit` takes one directly (a run's options kept,
compared or varied with :func:`dataclasses.replace`). The data (``data``, ``val_data``, conditions) and the
callbacks are not options: they are checked against the model when training starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Callable, Sequence

import torch

from ..checks import whole_number
from ..infer.objectives import get_objective
from ..threads import resolve_threads
from .compiled import refuse_distributed
from .nan import ON_NAN
from .schedules import get_lr_schedule

__all__ = ["FitConfig"]


def _positive(value: Any, name: str, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) number."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Every option of :func:`~pyro_vae.train.fit` (see its parameters for their meaning), checked on creation:
    whole numbers and positive numbers are normalised to ``int`` and ``float``; a wrong value raises
    ``ValueError`` (or ``TypeError``) naming the option.

    ``config`` of :func:`~pyro_vae.train.fit` is ``extra`` here: JSON-able settings recorded in the checkpoint.

    Example::

        >>> from pyro_vae.train import FitConfig
        >>> FitConfig(epochs=2, batch_size=100.0).batch_size
        100
    """

    epochs: int
    batch_size: int
    lr: float = 1e-3
    objective: str = "elbo"
    num_particles: int = 1
    device: str | torch.device = "auto"
    checkpoint_dir: str | os.PathLike | None = None
    resume: bool = False
    seed: int | None = None
    progress: bool = True
    binarize: bool = False
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    lr_schedule: str | Callable[[int, int], float] = "constant"
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None
    max_plate_nesting: int | None = None
    extra: dict[str, Any] | None = None
    direct_terms: bool = True
    on_nan: str = "raise"
    nan_check_every: int = 50
    max_rollbacks: int = 10
    distributed: bool | None = None
    num_threads: int | str | None = "auto"
    data_plate: str = "data"
    vectorize_particles: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        get_objective(self.objective)  # an unknown name lists the known ones
        if self.objective.startswith("iwae") and (self.beta != 1.0 or self.kl_warmup_epochs):
            raise ValueError("beta and kl_warmup_epochs weight the rate term of the ELBO; they do not apply to the "
                             f"{self.objective!r} objective (use objective='elbo' or 'mean-field')")
        put("epochs", whole_number(self.epochs, "epochs"))
        put("num_particles", whole_number(self.num_particles, "num_particles"))
        put("lr", _positive(self.lr, "lr"))
        put("beta", _positive(self.beta, "beta", allow_zero=True))
        put("kl_warmup_epochs", whole_number(self.kl_warmup_epochs, "kl_warmup_epochs", low=0))
        if self.clip_norm is not None:
            put("clip_norm", _positive(self.clip_norm, "clip_norm"))
        if self.on_nan not in ON_NAN:
            raise ValueError(f"unknown on_nan {self.on_nan!r}; choose one of {list(ON_NAN)}")
        put("nan_check_every", whole_number(self.nan_check_every, "nan_check_every"))
        put("max_rollbacks", whole_number(self.max_rollbacks, "max_rollbacks", low=0))
        get_lr_schedule(self.lr_schedule)
        put("batch_size", whole_number(self.batch_size, "batch_size"))
        if self.max_plate_nesting is not None:
            put("max_plate_nesting", whole_number(self.max_plate_nesting, "max_plate_nesting", low=0))
        put("betas", tuple(float(b) for b in self.betas))
        put("eps", _positive(self.eps, "eps", allow_zero=True))
        if self.num_threads not in (None, "auto"):
            put("num_threads", resolve_threads(self.num_threads))
        if not isinstance(self.data_plate, str) or not self.data_plate:
            raise TypeError(f"data_plate must be the name of a plate (a str), got {self.data_plate!r}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")
        refuse_distributed(self.compile, self.distributed)
        if self.checkpoint_dir is None and self.resume:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")

    @property
    def loss_fn(self) -> Callable[..., torch.Tensor]:
        """The objective's function (:data:`pyro_vae.infer.objectives.OBJECTIVES`)."""
        return get_objective(self.objective)

    @property
    def schedule(self) -> Callable[[int, int], float]:
        """The learning-rate factor ``factor(epoch, epochs)``."""
        return get_lr_schedule(self.lr_schedule)

    def run_config(self) -> dict[str, Any]:
        """The settings recorded in the checkpoint (``extra`` last: the CLI's arguments)."""
        return {"objective": self.objective, "num_particles": self.num_particles, "batch_size": self.batch_size,
                "lr": self.lr, "epochs": self.epochs, "seed": self.seed, "binarize": self.binarize,
                "beta": self.beta, "kl_warmup_epochs": self.kl_warmup_epochs, **(self.extra or {})}

"""Schedules: the learning-rate factor of each epoch (by name) and the rate term's weight (beta, KL warm-up)."""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["LR_SCHEDULES", "iwae_schedule", "get_lr_schedule", "rate_weight"]


def _constant(epoch: int, epochs: int) -> float:
    return 1.0


def _cosine(epoch: int, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


def iwae_schedule(epoch: int, epochs: int) -> float:
    """Burda et al.'s schedule: stage ``i = 0, 1, ...`` lasts ``3**i`` passes at ``lr * 10**(-i/7)``.

    With ``lr = 1e-3`` and 8 stages this is the IWAE paper's 3280 passes. ``epochs`` is ignored: the stage depends
    on the epoch only, so a shorter run is the start of the paper's schedule.
    """
    stage, end = 0, 1
    while epoch >= end:
        stage += 1
        end += 3**stage
    return 10.0 ** (-stage / 7)


#: name -> ``factor(epoch, epochs)`` multiplying ``lr`` during ``epoch`` (0-based)
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {"constant": _constant, "cosine": _cosine,
                                                        "iwae": iwae_schedule}


def get_lr_schedule(schedule: str | Callable[[int, int], float]) -> Callable[[int, int], float]:
    """A schedule by name (or a user's function), with an error that lists the names."""
    if isinstance(schedule, str):
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {sorted(LR_SCHEDULES)}")
        return LR_SCHEDULES[schedule]
    if not callable(schedule):
        raise TypeError(f"lr_schedule must be a name or a function factor(epoch, epochs), got {schedule!r}")
    return schedule


def rate_weight(epoch: int, beta: float, kl_warmup_epochs: int) -> float:
    """The weight of the rate term in ``epoch`` (0-based): ``beta``, ramped linearly from ``beta / warm-up``
    over the first ``kl_warmup_epochs`` epochs."""
    warm = min(1.0, (epoch + 1) / kl_warmup_epochs) if kl_warmup_epochs > 0 else 1.0
    return beta * warm

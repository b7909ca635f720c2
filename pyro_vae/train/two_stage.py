"""Dai & Wipf's two-stage training: :func:`fit` on stage 1, then on stage 1's codes ``z ~ q(z | x)`` for stage 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .callbacks import Callback
from .loop import fit

__all__ = ["fit_two_stage", "STAGE2_CODES"]

STAGE2_CODES = ("samples", "means")


class _StageRecords(Callback):
    """Adds ``gamma`` (stage 1's decoder variance) to stage 1's records before they are saved, and calls the user's
    ``on_epoch_end(stage, record)``."""

    def __init__(self, model: Any, stage: int, on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> None:
        self.model, self.stage, self.user = model, stage, on_epoch_end

    def on_epoch_metrics(self, record: dict[str, Any]) -> None:
        if self.stage == 1 and self.model.gamma is not None:
            record["gamma"] = self.model.gamma

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.user is not None:
            self.user(self.stage, record)


def fit_two_stage(model: Any, data: torch.Tensor, *, epochs: int, stage2_epochs: int | None = None,
                  batch_size: int = 100, stage2_batch_size: int | None = None, val_data: torch.Tensor | None = None,
                  on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
                  stage2_codes: str = "samples", **fit_kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    """Train a :class:`~pyro_vae.TwoStageVAE`: stage 1 on ``data``, then stage 2 on stage 1's codes.

    :param epochs: stage 1's passes.
    :param stage2_epochs: stage 2's passes (default: ``epochs``).
    :param val_data: validation data for stage 1 (one draw of its codes validates stage 2).
    :param stage2_codes: what stage 2 trains on: ``"samples"`` (Dai & Wipf: ``z ~ q(z | x)``, a fresh draw per
        datapoint at every visit, samples of the aggregate posterior) or ``"means"`` (the posterior means, fixed;
        narrower than the aggregate posterior, kept for comparison).
    :param on_epoch_end: called as ``on_epoch_end(stage, record)`` with ``stage`` 1 or 2.
    :param fit_kwargs: passed to both :func:`~pyro_vae.fit` calls (``lr``, ``device``, ``seed``, ``resume``, ...);
        ``checkpoint_dir`` gets a ``stage1/`` and a ``stage2/`` folder, so a killed run resumes in either stage.
    :returns: ``{"stage1": history, "stage2": history}``; stage 1's records carry ``gamma``.
    """
    if stage2_codes not in STAGE2_CODES:
        raise ValueError(f"stage2_codes must be one of {list(STAGE2_CODES)}, got {stage2_codes!r}")
    checkpoint_dir = fit_kwargs.pop("checkpoint_dir", None)
    callbacks = list(fit_kwargs.pop("callbacks", ()))

    def folder(stage: str) -> Path | None:
        return None if checkpoint_dir is None else Path(checkpoint_dir) / stage

    h1 = fit(model.stage1, data, epochs=epochs, batch_size=batch_size, val_data=val_data,
             checkpoint_dir=folder("stage1"), callbacks=[*callbacks, _StageRecords(model, 1, on_epoch_end)],
             **fit_kwargs)
    codes, scale = model.posterior(data)
    val_codes = model.codes(val_data, sample=stage2_codes == "samples") if val_data is not None else None
    fit_kwargs.pop("binarize", None)
    h2 = fit(model.stage2, codes, epochs=stage2_epochs or epochs,
             data_scale=scale if stage2_codes == "samples" else None,
             batch_size=min(stage2_batch_size or batch_size, codes.shape[0]), val_data=val_codes,
             checkpoint_dir=folder("stage2"), callbacks=[*callbacks, _StageRecords(model, 2, on_epoch_end)],
             **fit_kwargs)
    return {"stage1": h1, "stage2": h2}

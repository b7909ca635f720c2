"""How an estimator over a data set (:func:`~pyro_vae.infer.log_likelihood`,
:func:`~pyro_vae.infer.ais_log_likelihood`) takes its data: checked once before any work, then batch by batch,
each batch moved to the model's device and dtype (the data may stay on the CPU, or come as float64) and
transformed (e.g. a fixed binarization).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .weights import check_estimator_input

__all__: list[str] = []


def _check_data(model: Callable, guide: Callable, data: Any, num_particles: int,
                transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
    """Refuse a data set an estimator cannot score, before any work: not a non-empty tensor, or (through
    :func:`~pyro_vae.infer.weights.check_estimator_input`) the wrong dtype or shape for a library model, NaN/inf
    values and, without a ``transform``, values outside the likelihood's support."""
    if not torch.is_tensor(data) or data.dim() < 1 or data.shape[0] == 0:
        raise ValueError("data must be a non-empty tensor of shape (N, *event_shape)")
    check_estimator_input(model, guide, (data,), num_particles, support=transform is None, placement=False)


def _placement(model: Callable, data: torch.Tensor, device: Any, dtype: Any) -> tuple[Any, Any]:
    """The device and dtype each batch is moved to: those given, else those of the model's parameters (for a
    model that is a method of a module) where the data differ (data may stay on the CPU, or come as float64)."""
    owner = getattr(model, "__self__", None)
    param = next(owner.parameters(), None) if isinstance(owner, torch.nn.Module) else None
    if param is not None:
        device = param.device if device is None and data.device != param.device else device
        dtype = param.dtype if dtype is None and data.is_floating_point() and data.dtype != param.dtype else dtype
    return device, dtype


def _batch(data: torch.Tensor, start: int, size: int, device: Any, dtype: Any,
           transform: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Datapoints ``start .. start + size`` on ``device`` in ``dtype``, transformed."""
    x = data[start:start + size]
    if device is not None:
        x = x.to(device)
    if dtype is not None:
        x = x.to(dtype)
    return transform(x) if transform is not None else x

"""What :func:`~pyro_vae.train.fit` checks and measures outside its steps: the device, the data (refused before
any work, with a message that says what to do), the pair's trainable parameters, and the validation ELBO."""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from .. import distributed as dist
from ..datasets import binarize as binarize_batch
from ..infer.batches import BatchedArgs, first_transformed
from ..infer.weights import terms_producer
from ..rng import preserved_rng

__all__ = ["resolve_device", "check_data", "collect_parameters", "evaluate_elbo"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error. Under ``torchrun``,
    ``"auto"`` and ``"cuda"`` mean this process's GPU, ``cuda:LOCAL_RANK``."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
    return dist.local_device(device)


def check_data(data: Any, name: str, vae: Any, binarize: bool) -> torch.Tensor:
    """Refuse data that is not a finite float tensor of the model's shape and support (before any work).

    :param vae: the model/guide pair (its ``input_shape`` and ``likelihood``, where it has them, are checked).
    """
    if not torch.is_tensor(data):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, *event_shape), got {type(data).__name__}; "
                        "use pyro_vae.datasets.from_array for numpy arrays")
    if not data.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {data.dtype}; convert it with .float()")
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor of shape (N, *event_shape), got {tuple(data.shape)}")
    input_shape = getattr(vae, "input_shape", None)
    if input_shape is not None and tuple(data.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{name} has datapoints of shape {tuple(data.shape[1:])} but the model's input_shape is "
                         f"{tuple(input_shape)}: reshape the data or build the model with that input_shape")
    likelihood = getattr(vae, "likelihood", None)
    if binarize:
        low, high = torch.aminmax(data)  # one pass: NaN propagates, and inf is outside [0, 1]
        if not (bool(low >= 0) and bool(high <= 1)):
            if not torch.isfinite(data).all():
                raise ValueError(f"{name} holds NaN or inf values: clean the data before training")
            raise ValueError(f"binarize=True needs {name} in [0, 1] (pixel intensities), got values from "
                             f"{low.item():g} to {high.item():g}")
        return data
    if not torch.isfinite(data).all():
        raise ValueError(f"{name} holds NaN or inf values: clean the data before training")
    if likelihood is not None and hasattr(likelihood, "check_support"):
        likelihood.check_support(data)
    return data


def collect_parameters(pair: Any, example: tuple) -> list[torch.Tensor]:
    """The trainable tensors of a model/guide pair: an ``nn.Module``'s parameters, else the param store's."""
    if isinstance(pair, nn.Module):
        params = [p for p in pair.parameters() if p.requires_grad]
    else:
        with poutine.block(), torch.no_grad(), preserved_rng():
            guide_trace = poutine.trace(pair.guide, param_only=True).get_trace(*example)
            model_trace = poutine.trace(pair.model, param_only=True).get_trace(*example)
        store = dict(pyro.get_param_store().named_parameters())
        names = [n for tr in (guide_trace, model_trace) for n in tr.nodes if n in store]
        params = list({id(store[n]): store[n] for n in names}.values())
    if not params:
        raise ValueError("the model/guide pair has no trainable parameters (no nn.Module parameters and no "
                         "pyro.param sites)")
    return params


@torch.no_grad()
def evaluate_elbo(pair: Any, data: Any, batch_size: int = 1000, binarize: bool = False,
                  max_plate_nesting: int | None = None, distributed: bool | None = None,
                  condition: torch.Tensor | None = None, data_plate: str = "data",
                  collate_fn: Any = None) -> dict[str, float]:
    """Mean per-datapoint ELBO, rate and distortion (one sample each) of ``data``.

    :param data: ``(N, *event_shape)``, a tuple of tensors batched along dim 0 (the model's positional arguments)
        or a ``Dataset`` with a ``collate_fn`` (:class:`~pyro_vae.infer.batches.BatchedArgs`); ``binarize``
        applies to the first argument.
    :param distributed: under ``torchrun`` (None: when launched with several processes) every rank takes every
        ``world_size``-th batch and the sums are added up over the ranks; every rank must call it.
    :param condition: a conditional model's conditions ``(N, *condition_shape)``, batched with ``data``.
    :param data_plate: the name of the pair's plate of datapoints.
    :returns: ``{"elbo": ..., "rate": ..., "distortion": ...}`` in nats per datapoint, where
        ``rate = E_q[log q(z | x) - log p(z)]`` and ``distortion = -E_q[log p(x | z)]`` (a ``poutine.scale`` the
        program wrote is left out, with one warning: these estimate the unscaled model).
    """
    distributed = dist.launched() if distributed is None else distributed
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    batched = BatchedArgs.of(data, condition, collate_fn)
    n = batched.n
    device = batched.first.device if batched.first is not None else batched.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for start in range(rank * batch_size, n, world * batch_size):
        args = batched.slice(start, start + batch_size)
        if binarize:
            args = first_transformed(args, binarize_batch, "binarize")
        produce = terms_producer(pair.model, pair.guide, *args, max_plate_nesting=max_plate_nesting,
                                 data_plate=data_plate)
        t = produce(1)
        sums += torch.stack([t.elbo_integrand.sum(), (t.log_guide - t.log_prior).sum(),
                             -t.log_likelihood.sum()]).to(sums)
    if distributed:
        sums = dist.all_reduce(sums)
    elbo, rate, distortion = (sums / n).tolist()
    return {"elbo": elbo, "rate": rate, "distortion": distortion}

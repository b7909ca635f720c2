"""How a data set reaches a model: :class:`BatchedArgs`, and how an estimator over a data set
(:func:`~pyro_vae.infer.log_likelihood`, :func:`~pyro_vae.infer.ais_log_likelihood`) takes its data: checked once
before any work, then batch by batch, each batch moved to the model's device and dtype (the data may stay on the
CPU, or come as float64) and transformed (e.g. a fixed binarization).

A model's data come in one of three forms, as PyTorch users hold them (``fit``, ``log_likelihood`` and
``evaluate_elbo`` take all three):

- a tensor ``x`` ``(N, *event_shape)``: the model is called as ``model(x_batch)``;
- a tuple of tensors batched together along dim 0, ``(x, mask, lengths, ...)``, each with ``N`` rows: the model is
  called as ``model(x_batch, mask_batch, lengths_batch, ...)``;
- a :class:`torch.utils.data.Dataset` of ``N`` datapoints and a ``collate_fn`` that builds a batch's arguments from a
  list of datapoints (a deep Markov model's padded batch, its reversed ``PackedSequence``, mask and lengths).
  The ``collate_fn`` must keep every datapoint of the batch, in the order given (a result per datapoint is matched
  to its index); ``pack_padded_sequence(..., enforce_sorted=False)`` keeps the order.

Every argument of a datapoint stays with it: a batch is one index (a shuffled, sharded or chunked one) applied to
every tensor, or the ``collate_fn`` of those datapoints. A conditional model's ``condition=`` is one more tensor,
appended after the data's arguments. Dynamic binarization, ``data_scale`` noise and an estimator's ``transform``
apply to the **first** argument only: the observed tensor (a tuple's other tensors are masks, lengths or
conditions; a ``collate_fn``'s first output must then be a floating tensor). A plain tensor takes the same path as
before: one index per batch, no ``DataLoader``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .weights import check_estimator_input

__all__ = ["BatchedArgs"]


def _rows(value: Any) -> int | None:
    """The number of datapoints a collated argument holds (None where it cannot tell)."""
    if torch.is_tensor(value):
        return int(value.shape[0]) if value.dim() >= 1 else None
    batch_sizes = getattr(value, "batch_sizes", None)  # a PackedSequence: as many sequences as its first step
    if torch.is_tensor(batch_sizes) and batch_sizes.numel():
        return int(batch_sizes[0])
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _move(value: Any, device: Any) -> Any:
    """A collated argument on ``device`` (a tensor, a ``PackedSequence`` or anything with ``.to``)."""
    if device is None:
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "to"):
        return type(value)(_move(v, device) for v in value)
    return value.to(device) if hasattr(value, "to") else value


class BatchedArgs:
    """A data set as a model's positional arguments, batched along dim 0 (see the module docstring).

    :param tensors: the arguments as tensors with one row per datapoint (None with a ``dataset``).
    :param dataset: a :class:`torch.utils.data.Dataset` (with ``__len__``).
    :param collate_fn: builds a batch's arguments from a list of datapoints (default: PyTorch's
        ``default_collate``; a result that is not a tuple is the one argument).
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...] | None = None, dataset: Any = None,
                 collate_fn: Callable[[list], Any] | None = None, device: Any = None, dtype: Any = None) -> None:
        self.tensors, self.dataset, self.collate_fn = tensors, dataset, collate_fn
        self.device, self.dtype = device, dtype  # where a dataset's batches go (tensors are moved once, by .to)
        self.n = int(tensors[0].shape[0]) if tensors is not None else len(dataset)

    @classmethod
    def of(cls, data: Any, condition: torch.Tensor | None = None, collate_fn: Callable[[list], Any] | None = None,
           name: str = "data") -> BatchedArgs:
        """Check ``data`` (a tensor, a tuple of tensors or a ``Dataset``) and ``condition`` before any work.

        :raises TypeError: for anything else, or a ``collate_fn`` without a ``Dataset``.
        :raises ValueError: for arguments with different numbers of rows, or no datapoint.
        """
        if isinstance(data, BatchedArgs):
            return data
        if isinstance(data, torch.utils.data.Dataset) and not torch.is_tensor(data):
            if condition is not None:
                raise ValueError("condition= goes with tensor data; with a Dataset, let its collate_fn return the "
                                 "condition among the batch's arguments")
            try:
                n = len(data)
            except TypeError:
                raise TypeError(f"{name} is a Dataset without __len__: give a map-style Dataset") from None
            if n == 0:
                raise ValueError(f"{name} must be non-empty: it holds no datapoint")
            if collate_fn is None:
                from torch.utils.data import default_collate as collate_fn
            return cls(dataset=data, collate_fn=collate_fn)
        if collate_fn is not None:
            raise TypeError(f"collate_fn= builds the batches of a torch.utils.data.Dataset; {name} is a "
                            f"{type(data).__name__}")
        if torch.is_tensor(data):
            tensors: tuple = (data,)
        elif isinstance(data, (tuple, list)) and data and all(torch.is_tensor(t) for t in data):
            tensors = tuple(data)
        else:
            raise TypeError(f"{name} must be a tensor (N, *event_shape), a tuple of tensors batched along dim 0 "
                            "(the model's positional arguments) or a torch.utils.data.Dataset with a collate_fn, got "
                            f"{type(data).__name__}")
        if condition is not None:
            tensors = tensors + (condition,)
        if any(t.dim() < 1 for t in tensors):
            raise ValueError(f"every argument in {name} needs a leading dimension of datapoints; got shapes "
                             f"{[tuple(t.shape) for t in tensors]}")
        lengths = [int(t.shape[0]) for t in tensors]
        if len(set(lengths)) > 1:
            what = ", ".join(f"argument {i}: {m}" for i, m in enumerate(lengths))
            raise ValueError(f"the arguments in {name} have different numbers of datapoints ({what}): each must hold "
                             "one row per datapoint, batched along dim 0")
        if lengths[0] == 0:
            raise ValueError(f"{name} must be non-empty: it holds no datapoint")
        return cls(tensors)

    @property
    def first(self) -> torch.Tensor | None:
        """The observed tensor (the first argument) of tensor data; None for a ``Dataset``."""
        return self.tensors[0] if self.tensors is not None else None

    @property
    def is_tensor(self) -> bool:
        """Whether the data are one plain tensor."""
        return self.tensors is not None and len(self.tensors) == 1

    def to(self, device: Any, dtype: Any = None) -> BatchedArgs:
        """On ``device``; the first argument in ``dtype`` (when it is floating). A ``Dataset``'s batches are moved
        as they are built."""
        if self.tensors is None:
            return BatchedArgs(dataset=self.dataset, collate_fn=self.collate_fn, device=device, dtype=dtype)
        first = self.tensors[0].to(device=device, dtype=dtype if self.tensors[0].is_floating_point() else None)
        return BatchedArgs((first,) + tuple(t.to(device) for t in self.tensors[1:]))

    def take(self, index: torch.Tensor | Sequence[int] | slice) -> tuple:
        """The model's arguments for the datapoints ``index`` (in that order)."""
        if self.tensors is not None:
            return tuple(t[index] for t in self.tensors)
        if isinstance(index, slice):
            index = range(*index.indices(self.n))
        ids = index.tolist() if torch.is_tensor(index) else list(index)
        out = self.collate_fn([self.dataset[i] for i in ids])
        args = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        for i, a in enumerate(args):
            rows = _rows(a)
            if rows is not None and rows != len(ids):
                raise ValueError(f"the collate_fn returned argument {i} with {rows} datapoints for a batch of "
                                 f"{len(ids)}: it must keep every datapoint of the batch, in the order given (results "
                                 "are matched to datapoints by position)")
        args = tuple(_move(a, self.device) for a in args)
        if self.dtype is not None and torch.is_tensor(args[0]) and args[0].is_floating_point():
            args = (args[0].to(self.dtype),) + args[1:]
        return args

    def slice(self, start: int, stop: int) -> tuple:
        """The model's arguments for datapoints ``start .. stop``."""
        return self.take(slice(start, stop))


def first_transformed(args: tuple, fn: Callable[[torch.Tensor], torch.Tensor] | None, what: str) -> tuple:
    """``args`` with ``fn`` applied to the first argument (the observed tensor) only."""
    if fn is None:
        return args
    if not torch.is_tensor(args[0]) or not args[0].is_floating_point():
        raise TypeError(f"{what} applies to the first argument of each batch (the observed tensor), and it is "
                        f"a {type(args[0]).__name__}: let the collate_fn return the observed tensor first")
    return (fn(args[0]),) + tuple(args[1:])


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

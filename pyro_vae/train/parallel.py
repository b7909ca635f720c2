"""The distributed plumbing of :func:`~pyro_vae.train.fit` under ``torchrun``; in one process every method is a
no-op (or the identity).

``batch_size`` is the *global* batch: every rank draws the same permutation and rank ``r`` takes datapoints
``r, r + W, ...`` of each batch; its summed loss is divided by ``|batch| / W``, so that averaging the ranks'
gradients gives the gradient of the global batch. ``nn.Module`` pairs are wrapped in
``DistributedDataParallel``; ``pyro.param`` pairs start from rank 0's values and average gradients by hand.
"""

from __future__ import annotations

import gc
import inspect
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed as dist

__all__ = ["Parallel"]


class _BatchLoss(nn.Module):
    """What ``DistributedDataParallel`` wraps: the pair (so every parameter of its encoder, decoder and likelihood
    is synchronised) and a forward that returns a batch's loss."""

    def __init__(self, pair: nn.Module) -> None:
        super().__init__()
        self.pair = pair

    def forward(self, args: tuple, compute_loss: Callable[[tuple], torch.Tensor]) -> torch.Tensor:
        return compute_loss(args)


class Parallel:
    """One process (``enabled=False``) or every process ``torchrun`` started.

    :param enabled: train with every process (None: when ``torchrun`` started more than one).
    :param device: this process's device.
    """

    def __init__(self, enabled: bool | None, device: torch.device) -> None:
        self.enabled = dist.launched() if enabled is None else bool(enabled)
        if self.enabled:
            dist.init(device)
        self.rank, self.world = (dist.rank(), dist.world_size()) if self.enabled else (0, 1)
        self.device = device
        self.runner: nn.Module | None = None
        self.hand_average = False

    def check(self, data: torch.Tensor, batch_size: int) -> None:
        """Refuse different data on the ranks, and a global batch smaller than the number of processes."""
        if self.enabled:
            dist.check_same_data(data)
        if batch_size < self.world:
            raise ValueError(f"batch_size ({batch_size}) is the global batch, split over {self.world} processes: it "
                             f"must be at least {self.world}")

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and give every rank its result (or its exception)."""
        return dist.on_main_process(fn, self.enabled)

    def wrap(self, pair: Any, params: list[torch.Tensor]) -> None:
        """Synchronise the ranks' starting parameters and arrange the gradients' averaging."""
        if not self.enabled:
            return
        if isinstance(pair, nn.Module):
            from torch.nn.parallel import DistributedDataParallel

            # construction copies rank 0's parameters and buffers to every rank; backward averages the gradients.
            # Buffers are sent again before every step only when some change in training (running statistics of
            # batch normalization): otherwise that is one more collective per step for nothing.
            running = any(getattr(m, "track_running_stats", False) for m in pair.modules())
            sync = "forward_sync_buffers"  # torch >= 2.13; ``broadcast_buffers`` before (now deprecated)
            sync = sync if sync in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.runner = DistributedDataParallel(_BatchLoss(pair), device_ids=device_ids, **{sync: running})
        else:  # a pair of pyro.param sites: the same start everywhere, gradients averaged by hand
            dist.broadcast_parameters(params)
            self.hand_average = True

    def batch(self, order: torch.Tensor, step: int, batch_size: int) -> tuple[torch.Tensor, float]:
        """The indices of this rank's part of the step's batch, and what its summed loss is divided by: the global
        batch's size over the number of processes (averaging the ranks' gradients then gives the global batch's
        mean)."""
        index = order[step * batch_size:(step + 1) * batch_size]
        return (index[self.rank::self.world] if self.world > 1 else index), index.numel() / self.world

    def loss(self, args: tuple, compute_loss: Callable[[tuple], torch.Tensor]) -> torch.Tensor:
        return self.runner(args, compute_loss) if self.runner is not None else compute_loss(args)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        if self.hand_average:
            dist.average_gradients(params)

    def all_ok(self, ok: torch.Tensor) -> bool:
        """Whether ``ok`` holds on every rank (one host synchronisation)."""
        ok = ok.float()
        return bool(dist.all_reduce(ok, "min") if self.enabled else ok)

    def any(self, flag: bool) -> bool:
        return bool(dist.all_reduce(torch.tensor(float(flag)), "max")) if self.enabled else flag

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce(tensor) if self.enabled else tensor

    def broadcast(self, obj: Any) -> Any:
        return dist.broadcast_object(obj) if self.enabled else obj

    def gather(self, obj: Any) -> list[Any]:
        return dist.all_gather_objects(obj) if self.enabled else [obj]

    def first_report(self, report: str | None) -> str | None:
        return dist.first_report(report) if self.enabled else report

    def close(self) -> None:
        """Free the DDP wrapper (and its reducer's pending work) now, not at interpreter exit."""
        if self.runner is not None:
            self.runner = None
            gc.collect()

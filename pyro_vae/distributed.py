"""Running under ``torchrun``: one process per device, the data sharded by rank, results combined.

Nothing here starts processes. ``torchrun`` (or ``srun`` launching ``torchrun``) does, and describes the job
to each process through the environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT``. :func:`pyro_vae.fit` and :func:`pyro_vae.infer.log_likelihood` read them: when
``WORLD_SIZE`` is above 1 they join the process group (:func:`init`; gloo on CPU, nccl on CUDA), and

- :func:`pyro_vae.fit` wraps the model/guide pair in ``DistributedDataParallel``, gives each rank a strided
  shard of every (global) batch, seeds each rank differently and reproducibly (:func:`rank_seed`), and writes
  checkpoints and logs on rank 0 only;
- :func:`pyro_vae.infer.log_likelihood` hands out whole batches round-robin, seeds every batch from the seed
  and the batch's index (so the estimate does not depend on the number of processes) and gathers the
  per-datapoint values so that every rank returns the full result, each datapoint counted once
  (:func:`gather_datapoints` checks it).

Every helper below is a no-op in a single process, so the library's code reads the same with and without
``torchrun``. See ``docs/distributed.md``.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["launched", "init", "finish", "rank", "world_size", "local_rank", "is_main_process", "local_device",
           "rank_seed", "derive_seed", "shared_seed", "on_main_process", "all_reduce", "broadcast_object",
           "all_gather_objects", "check_same_data", "first_report", "average_gradients", "broadcast_parameters",
           "gather_datapoints", "TIMEOUT_ENV"]

#: environment variable: seconds a collective waits for the other ranks before failing (default 600)
TIMEOUT_ENV = "PYRO_VAE_DIST_TIMEOUT"


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """Whether this process is one of several: a process group is initialised with more than one rank, or
    ``torchrun`` set ``WORLD_SIZE`` above 1."""
    if _initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    if _initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    if _initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its node: the index of its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main_process() -> bool:
    """True on rank 0, the one that writes files and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun``, a CUDA device without an index becomes this process's GPU, ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", local_rank() % max(torch.cuda.device_count(), 1))
    return device


def _shutdown() -> None:
    """At exit: leave the process group while the interpreter is fully alive. Objects still holding work of the
    group (a ``DistributedDataParallel`` in a reference cycle) are collected first: freed during interpreter
    finalization instead, they can abort the process."""
    if _initialized():
        gc.collect()
        dist.destroy_process_group()


def finish() -> None:
    """Wait for every rank, then leave the process group (what the ``pyro-vae`` command does before it exits, so
    that no rank tears down its connections while another still works). A no-op in a single process."""
    if _initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def init(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes, once (later calls return at once).

    The backend is nccl for a CUDA ``device`` and gloo otherwise; a group the user initialised already is kept as
    it is. Collectives wait ``$PYRO_VAE_DIST_TIMEOUT`` seconds (default 600) for the other ranks before failing.

    :returns: whether there are several processes.
    """
    if not launched():
        return False
    if _initialized():
        return True
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: launch the "
                           "processes with torchrun (see docs/distributed.md)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    atexit.register(_shutdown)
    return True


def _comm_device() -> torch.device:
    """Where collective tensors must live: this process's GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def derive_seed(*keys: int) -> int:
    """A seed in ``[0, 2**32)`` (what ``pyro.set_rng_seed`` accepts) from integer keys, through NumPy's
    ``SeedSequence``: different keys give unrelated streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint32)[0])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank: ``seed`` itself on rank 0 (a single process draws what it always drew), an unrelated
    stream on every other rank, so that dynamic binarization and the latent samples differ across ranks."""
    return int(seed) if rank == 0 else derive_seed(seed, rank)


def shared_seed(seed: int | None) -> int:
    """``seed``, or when None a random seed drawn on rank 0 and sent to every rank."""
    if seed is not None:
        return int(seed)
    drawn = int(torch.randint(2**32, ()))
    return int(broadcast_object(drawn))


def on_main_process(fn: Callable[[], Any], distributed: bool = True) -> Any:
    """``fn()`` on rank 0 only (reading or writing a file); every rank returns its value, or raises the exception
    it raised, so that a failure on rank 0 stops every rank instead of leaving them waiting."""
    if not (distributed and launched()):
        return fn()
    outcome = None
    if rank() == 0:
        try:
            outcome = (True, fn())
        except Exception as e:  # sent to every rank and raised there
            outcome = (False, e)
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of ``tensor`` over the ranks (``op``: sum, min or max); ``tensor`` itself in one process."""
    if not launched():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    work = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(work, op=ops[op])
    return work.to(tensor.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; keep it small)."""
    if not launched():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled; keep it small)."""
    if not launched():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def first_report(report: str | None) -> str | None:
    """The first non-None ``report`` over the ranks (prefixed with its rank), the same on every rank."""
    if not launched():
        return report
    for r, text in enumerate(all_gather_objects(report)):
        if text is not None:
            return f"{text} (on rank {r})"
    return None


def check_same_data(data: torch.Tensor, name: str = "data") -> None:
    """Raise ``ValueError`` on every rank unless every rank holds the same ``data`` (its shape and the float64 sum
    of its values): each rank takes its own part of it, so different data would be silently mixed up."""
    if not launched():
        return
    mine = (tuple(data.shape), float(data.detach().double().sum()))
    seen = all_gather_objects(mine)
    if any(other != seen[0] for other in seen):
        detail = "; ".join(f"rank {r}: shape {shape}, sum {total:.6g}" for r, (shape, total) in enumerate(seen))
        raise ValueError(f"{name} differs between the processes ({detail}): under torchrun every rank must pass the "
                         "same data (each works on its own part of it)")


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients over the ranks, as ``DistributedDataParallel`` does (for pairs that are not an
    ``nn.Module``, and when a failing step is replayed)."""
    if not launched():
        return
    n = world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(all_reduce(p.grad) / n)


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank."""
    if not launched():
        return
    with torch.no_grad():
        for p in params:
            work = p.detach().to(_comm_device(), copy=True)
            dist.broadcast(work, src=0)
            p.copy_(work.to(p.device))


def gather_datapoints(rows: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Put every rank's per-datapoint values in their places and share the result.

    :param rows: ``(F, n_local)``: ``F`` per-datapoint quantities of this rank's datapoints.
    :param index: ``(n_local,)``: their positions in the data set.
    :param total: ``N``, the size of the data set.
    :returns: ``(F, N)`` float64 on every rank, on ``rows``' device (float32 values come back exactly). Raises
        ``RuntimeError`` unless every datapoint was computed by exactly one rank.
    """
    assert rows.dim() == 2 and rows.shape[1] == index.numel(), (rows.shape, index.shape)
    out = torch.zeros(rows.shape[0], total, dtype=torch.float64, device=rows.device)
    out[:, index.to(rows.device)] = rows.double()  # x + 0.0 == x: the sum over ranks below is exact
    counts = torch.zeros(total, dtype=torch.float64, device=rows.device)
    counts.index_add_(0, index.to(rows.device), torch.ones(index.numel(), dtype=torch.float64, device=rows.device))
    if launched():
        out, counts = all_reduce(out), all_reduce(counts)
    if not bool((counts == 1).all()):
        bad = (counts != 1).nonzero().flatten()[:5].tolist()
        raise RuntimeError(f"datapoints {bad} were computed {counts[bad].tolist()} times across the ranks "
                           "(each must be computed exactly once)")
    return out

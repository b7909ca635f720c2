"""Checkpoint and resume state: :class:`TrainState` holds what a run changes (weights, optimizer, scheduler,
generators, history) and keeps it in memory (:meth:`~TrainState.snapshot`, for the NaN guard's replay and
rollback) and on disk (:meth:`~TrainState.checkpoint`: ``checkpoint.pt`` with ``metrics.jsonl``;
:meth:`~TrainState.resume`).

Checkpoints are written atomically (temporary file, fsync, rename) at the end of each epoch, together with the
metrics file, so that one state holds both; a checkpoint that cannot be written (disk full, read-only folder)
raises a clear ``OSError`` and leaves the previous one intact. ``load_checkpoint`` runs no pickled code.
"""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path
from typing import Any, Callable

import pyro
import torch
from torch import nn

from .. import distributed as dist
from ..io import atomic_save, atomic_write, describe_write_error, is_write_failure, load_tensors, tensor_checksum
from ..rng import rng_state, set_rng_state
from ..run_files import CHECKPOINT_NAME, METRICS_NAME
from .parallel import Parallel

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "SEMI_SUPERVISED_TRAINER", "load_checkpoint", "check_checkpoint",
           "rng_state", "set_rng_state", "pair_state", "load_pair_state", "Snapshot", "TrainState",
           "prepare_checkpoint_dir", "save_checkpoint", "write_metrics"]

#: the ``trainer`` entry of a checkpoint written by :func:`pyro_vae.train.fit_semi_supervised`
SEMI_SUPERVISED_TRAINER = "fit_semi_supervised"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (no pickled code can run) and verify the checksum
    of its weights (a flipped bit is refused, not loaded).

    :raises ValueError: for a corrupt, unsafe or tampered file.
    """
    state = load_tensors(path, "pyro-vae checkpoint")
    expected = state.get("pair_sha256") if isinstance(state, dict) else None
    if expected is not None and tensor_checksum(state.get("pair", {})) != expected:
        raise ValueError(f"{path} is damaged: its weights do not match the checksum stored with them (a changed "
                         "or flipped byte); restore it from a copy, or start the run again")
    return state


def check_checkpoint(state: Any, path: str | os.PathLike) -> None:
    """Refuse a checkpoint that lacks what resuming reads, naming the file and the entry: the weights
    (``pair``), the optimizer's and the scheduler's state, the shuffling generator, the epoch (a whole number) and
    the history (one JSON object per epoch).

    :raises ValueError: for the first entry that is missing or of the wrong kind.
    """
    where = f"{path} cannot be resumed"
    if not isinstance(state, dict):
        raise ValueError(f"{where}: it holds a {type(state).__name__}, not a checkpoint of pyro_vae.fit")
    # pyro_vae.train.fit_semi_supervised's checkpoint has no scheduler and no shuffling generator of its own
    semi_supervised = state.get("trainer") == SEMI_SUPERVISED_TRAINER
    entries = (("pair", dict), ("optimizer", dict), ("history", list),
               *((("rng", dict),) if semi_supervised else (("scheduler", dict),)))
    for key, kind in entries:
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{where}: its '{key}' entry is {'missing' if key not in state else 'damaged'} (a "
                             f"{kind.__name__} expected); restore the file from a copy or start a new run")
    if not semi_supervised and not torch.is_tensor(state.get("shuffle_rng")):
        raise ValueError(f"{where}: its 'shuffle_rng' entry is missing or damaged")
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{where}: its 'epoch' entry is {epoch!r}, not a whole number of epochs")
    for i, h in enumerate(state["history"]):
        try:
            record = json.loads(h)
        except (TypeError, ValueError):
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: history entry {i + 1} is not a JSON record of an epoch ({str(h)[:40]!r})")


def pair_state(pair: Any) -> dict[str, Any]:
    """The trainable state of a pair: an ``nn.Module``'s ``state_dict``, else Pyro's param store."""
    if isinstance(pair, nn.Module):
        return {"module": pair.state_dict()}
    return {"param_store": {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}}


def load_pair_state(pair: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`pair_state` returned."""
    if "module" in state:
        pair.load_state_dict(state["module"])
    else:
        store = dict(pyro.get_param_store().named_parameters())
        for name, value in state["param_store"].items():
            if name in store:
                store[name].data.copy_(value)


class Snapshot:
    """A copy in memory of everything an epoch changes: weights, optimizer, scheduler and generators."""

    def __init__(self, pair: Any, optimizer: torch.optim.Optimizer, scheduler: Any, shuffle: torch.Generator) -> None:
        state = pair_state(pair)
        if "module" in state:
            state = {"module": {k: v.detach().clone() for k, v in state["module"].items()}}
        self.pair, self.shuffle = state, shuffle.get_state()
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.scheduler = copy.deepcopy(scheduler.state_dict())
        self.rng = rng_state()

    def restore(self, pair: Any, optimizer: torch.optim.Optimizer, scheduler: Any, shuffle: torch.Generator) -> None:
        load_pair_state(pair, self.pair)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))  # load_state_dict may keep the tensors
        optimizer.zero_grad(set_to_none=True)
        scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        shuffle.set_state(self.shuffle)
        set_rng_state(self.rng)


class TrainState:
    """Everything a run changes, in one object: the pair's weights, the optimizer, the learning-rate scheduler, the
    shuffling generator (the global generators beside it) and the history, whose length is the number of epochs
    done.

    :param vae: the model/guide pair being trained.
    :param optimizer: its ``torch.optim`` optimizer.
    :param scheduler: the learning-rate scheduler of ``optimizer``.
    :param shuffle: the generator of each epoch's permutation (the same on every rank).
    :param parallel: the distributed plumbing (rank 0 alone writes checkpoints).
    :param base_seed: the run's seed (shared by the ranks), recorded so that a resume on another number of
        processes reseeds reproducibly; None without a seed.
    """

    def __init__(self, vae: Any, optimizer: torch.optim.Optimizer, scheduler: Any, shuffle: torch.Generator,
                 parallel: Parallel, base_seed: int | None) -> None:
        self.vae, self.optimizer, self.scheduler, self.shuffle = vae, optimizer, scheduler, shuffle
        self.parallel, self.base_seed = parallel, base_seed
        self.history: list[dict[str, Any]] = []

    @property
    def epoch(self) -> int:
        """Epochs done."""
        return len(self.history)

    def snapshot(self) -> Snapshot:
        """A copy in memory of the state (the NaN guard's replay and rollback start from it)."""
        return Snapshot(self.vae, self.optimizer, self.scheduler, self.shuffle)

    def restore(self, snapshot: Snapshot) -> None:
        """Go back to ``snapshot`` (the history is not part of it: it only grows at an epoch's end)."""
        snapshot.restore(self.vae, self.optimizer, self.scheduler, self.shuffle)

    def checkpoint(self, path: Path, run_config: dict[str, Any]) -> None:
        """Write ``path`` and the metrics beside it (rank 0; every rank's generators are gathered into it)."""
        state = {"epoch": self.epoch, "pair": pair_state(self.vae), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "shuffle_rng": self.shuffle.get_state(),
                 "rng_ranks": self.parallel.gather(rng_state()), "base_seed": self.base_seed,
                 "world_size": self.parallel.world, "history": [json.dumps(h) for h in self.history],
                 "config": json.dumps(run_config)}
        state["rng"] = state["rng_ranks"][0]
        self.parallel.on_main(lambda: save_checkpoint(state, self.history, path))

    def resume(self, path: Path, lr: float, schedule: Callable[[int, int], float], epochs: int) -> None:
        """Load the checkpoint at ``path`` if there is one (rank 0 reads it and sends it to the others): weights,
        optimizer, scheduler, generators and history. A different ``lr`` takes effect from the resumed epoch; on
        another number of processes the random streams are reseeded from the run's seed and the epoch."""
        state = self.parallel.on_main(lambda: load_checkpoint(path) if path.exists() else None)
        if state is None:
            return
        check_checkpoint(state, path)
        load_pair_state(self.vae, state["pair"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["shuffle_rng"])
        self.history = [json.loads(h) for h in state["history"]]
        start_epoch = int(state["epoch"])
        saved_lr = json.loads(state.get("config") or "{}").get("lr")
        if saved_lr is not None and float(saved_lr) != lr:  # a new learning rate given on resume takes effect
            self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
            for group in self.optimizer.param_groups:
                group["initial_lr"] = lr
                group["lr"] = lr * schedule(start_epoch, epochs)
        parallel = self.parallel
        rng_ranks = state.get("rng_ranks") or [state["rng"]]
        if len(rng_ranks) == parallel.world:  # the same number of processes: every stream continues where it stopped
            set_rng_state(rng_ranks[parallel.rank])
        else:  # another number: fresh streams, reproducible from the run's seed and the epoch
            saved = state.get("base_seed")
            reseed = int(saved) if saved is not None else dist.shared_seed(None) if parallel.enabled else None
            if reseed is not None:
                pyro.set_rng_seed(dist.derive_seed(reseed, start_epoch, parallel.world, parallel.rank))


def prepare_checkpoint_dir(folder: Path) -> None:
    """Create the checkpoint folder, check it is writable, and clear what a killed run left half-written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the checkpoint folder {folder}: {e.strerror}") from e
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"the checkpoint folder {folder} is not writable")
    for name in (CHECKPOINT_NAME, METRICS_NAME):  # temporaries of a process killed while writing
        for tmp in folder.glob(name + ".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


def write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    """Rewrite the JSON-lines metrics file atomically, so it always matches the last checkpoint."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(h) + "\n" for h in history)), binary=False)


def save_checkpoint(state: dict[str, Any], history: list[dict[str, Any]], path: Path) -> None:
    """Write the checkpoint (with the checksum of its weights) and the metrics atomically; a failure raises an
    ``OSError`` that says what to do (a full disk also shows as torch's ``RuntimeError`` from ``torch.save``)."""
    previous = (f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint has been written yet")
    state = {**state, "pair_sha256": tensor_checksum(state["pair"])}
    for target, write in ((path, lambda: atomic_save(state, path)),
                          (path.parent / METRICS_NAME, lambda: write_metrics(history, path.parent / METRICS_NAME))):
        try:
            write()
        except (OSError, RuntimeError) as e:
            if not is_write_failure(e):
                raise
            code = e.errno if isinstance(e, OSError) else errno.ENOSPC
            raise OSError(code, f"could not write {target} after epoch {state['epoch']}: {describe_write_error(e)}; "
                                f"{previous} (free some space or make the folder writable, then continue with "
                                "resume=True, or 'pyro-vae train --resume')") from e

"""Checkpoint and resume state: what an epoch changes (weights, optimizer, scheduler, generators), in memory
(snapshots, for the NaN guard's replay and rollback) and on disk (``checkpoint.pt`` with ``metrics.jsonl``).

Checkpoints are written atomically (temporary file, fsync, rename) at the end of each epoch, together with the
metrics file, so that one state holds both; a checkpoint that cannot be written (disk full, read-only folder)
raises a clear ``OSError`` and leaves the previous one intact. ``load_checkpoint`` runs no pickled code.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn

from ..io import atomic_save, atomic_write, describe_write_error, is_write_failure, load_tensors, tensor_checksum
from ..run_files import CHECKPOINT_NAME, METRICS_NAME

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "load_checkpoint", "rng_state", "set_rng_state", "pair_state",
           "load_pair_state", "Snapshot", "prepare_checkpoint_dir", "save_checkpoint", "write_metrics"]



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


def rng_state() -> dict[str, Any]:
    """Every random number generator's state (torch, CUDA, numpy, Python), in a form ``torch.save`` keeps."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": json.dumps(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


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

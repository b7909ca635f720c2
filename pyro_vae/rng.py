"""The random number generators' state in one place: save and restore it (to replay the same draws), and its
serialisable form for checkpoints.

A traced look at a program (the plate nesting, the parameters, the sites of a NaN) must not move the random
streams that training or evaluation then draws from, so such code runs under :func:`preserved_rng`. Every
generator the library draws from is covered: torch's (CPU, and CUDA once it is initialised), numpy's and
Python's.
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["preserved_rng", "rng_state", "set_rng_state"]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put every generator back where it was (also when the block raises): code after it
    draws exactly what it would have drawn without the block."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def rng_state() -> dict[str, Any]:
    """Every random number generator's state (torch, CUDA, numpy, Python), in a form ``torch.save`` keeps and
    ``torch.load(weights_only=True)`` reads."""
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

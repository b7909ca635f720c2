"""Issue 24's guarantees under ``torchrun`` with 2 gloo processes, against one process: the last partial batch's
gradient (item 15) and ``log_likelihood(seed=...)`` for any split of the batches over processes (item 4).

One launch of ``tests/guarantees_worker.py`` per process count serves every test here (a launch costs seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distributed import _launch
from torch.testing import assert_close

WORKER = Path(__file__).with_name("guarantees_worker.py")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """``{1: [rank0], 2: [rank0, rank1]}``: what each rank of ``guarantees_worker.py all`` saved."""
    out = {}
    for nproc in (1, 2):
        folder = tmp_path_factory.mktemp(f"nproc{nproc}")
        proc = _launch([str(WORKER), "all", "--out", str(folder)], nproc)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[nproc] = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    assert out[2][0]["world_size"] == 2
    return out


def test_last_partial_batch_gradient_is_the_global_batch_mean(ranks):
    """7 datapoints in global batches of 4 over 2 ranks: the last batch of 3 is split 2 + 1. The averaged gradient of
    ``theta`` at every step is ``-(mean of the global batch - theta)`` on both ranks, and what one process gets."""
    r0, r1 = ranks[2]
    (one,) = ranks[1]
    assert [b.shape[0] for b in r0["batches"]] == [2, 2] and [b.shape[0] for b in r1["batches"]] == [2, 1]
    assert len(r0["grads"]) == len(r1["grads"]) == len(one["grads"]) == 2
    theta = r0["theta"]
    for step in range(2):
        batch = torch.cat([r0["batches"][step], r1["batches"][step]])
        expected = -(batch.mean(0) - theta)
        for grads in (r0["grads"], r1["grads"], one["grads"]):
            assert_close(grads[step], expected, rtol=1e-12, atol=1e-14)


def test_log_likelihood_seed_is_the_same_for_any_split_into_processes(ranks):
    """Three identical batches (batches 0 and 2 on rank 0, batch 1 on rank 1): the same values on every rank and in
    one process, and each batch drew its own particles."""
    one = ranks[1][0]["values"]
    for rank in ranks[2]:
        assert torch.equal(rank["values"], one)
    a, b, c = one.reshape(3, 6)
    assert not torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a, c)

"""A script that tests/test_lightning.py runs once: ``Trainer(devices=2, accelerator="cpu", strategy="ddp")`` on a
:class:`pyro_vae.lightning.VAEModule` (Lightning starts the second process by running this script again).

The pair is ``DeltaPair`` of ``distributed_worker.py`` in float64 (a point-mass guide: the loss is a deterministic
function of the weights). The two ranks get shards of different sizes (3 and 5 datapoints of one global batch of
8, with Lightning's distributed sampler off), so the gradient of the global batch's mean loss comes out only if
each rank divides its summed loss by the global batch over the number of processes. Each rank writes
``rank<R>.pt`` into ``--out``: the starting weights, the gradient of the first step (after DDP's averaging), the
final weights and the logged metrics.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning.pytorch as pl
import pyro
import torch
from distributed_worker import DeltaPair
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae.lightning import VAEModule

SHARDS = (slice(0, 3), slice(3, 8))


def data() -> torch.Tensor:
    """The global batch: 8 datapoints of dimension 3."""
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


class FirstGradient(pl.Callback):
    """Keep the gradient of the first step, as DDP averaged it."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_after_backward(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in module.pair.named_parameters()}


def main(args: argparse.Namespace) -> None:
    rank = int(os.environ.get("LOCAL_RANK", 0))
    pyro.set_rng_seed(0)
    pair = DeltaPair(3).double()
    start = {k: v.clone() for k, v in pair.state_dict().items()}
    module = VAEModule(pair, lr=0.01, iwae_every=1, iwae_particles=20)
    shard = TensorDataset(data()[SHARDS[rank]])
    first = FirstGradient()
    trainer = pl.Trainer(devices=2, accelerator="cpu", strategy="ddp", max_epochs=args.epochs,
                         use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[first])
    trainer.fit(module, DataLoader(shard, batch_size=8), DataLoader(shard, batch_size=8))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out = Path(args.out)
    torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "start": start, "grads": first.grads,
                "final": pair.state_dict(), "metrics": metrics}, out / f"rank{trainer.global_rank}.pt")
    # end the process group before the interpreter does: left to exit, gloo's threads were once torn down in the
    # wrong order ("terminate called without an active exception", the rank aborted after its work was done)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    main(parser.parse_args())

"""What ``tests/test_guarantees_train.py`` runs under ``torchrun`` (2 gloo processes) and alone: each rank saves
``rank<R>.pt`` into ``--out``.

- ``partial``: :class:`FixedPair` trained with a short last batch (7 datapoints in global batches of 4: the last
  batch of 3 is split 2 + 1 over two ranks); every rank's batches and the gradient of ``theta`` after each step.
- ``loglik``: ``log_likelihood(seed=...)`` of a linear-Gaussian pair on data that repeats one batch.
- ``all``: both, in one launch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae
from pyro_vae import distributed
from pyro_vae.train import Callback

DIM = 2


class FixedPair(nn.Module):
    """``z ~ N(0, I)``, ``x ~ N(theta, I)`` (``x`` independent of ``z``); guide ``z ~ N(m, exp(log_s)^2)``: with
    ``objective="mean-field"`` a datapoint's loss is ``-log N(x; theta, I) + KL(q || p)``, deterministic, and its
    gradient in ``theta`` is ``-(x - theta)``. Training batches (and their conditions ``y``) are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.4, -0.3], dtype=torch.float64))
        self.m = nn.Parameter(torch.tensor([0.5, 1.0], dtype=torch.float64))
        self.log_s = nn.Parameter(torch.tensor([-0.2, 0.3], dtype=torch.float64))
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if torch.is_grad_enabled():  # training steps, not validation
            self.seen.append((x.detach().clone(), None if y is None else y.detach().clone()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.theta.expand_as(x), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.m.expand_as(x), self.log_s.exp().expand_as(x)).to_event(1))

    @torch.no_grad()
    def distortion_and_rate(self, x: torch.Tensor) -> tuple[float, float]:
        """The mean over ``x`` of ``-log p(x | z)``, and the closed-form ``KL(q || p)``."""
        distortion = -dist.Normal(self.theta, 1.0).log_prob(x).sum(-1).mean()
        s = self.log_s.exp()
        rate = (0.5 * (self.m**2 + s**2 - 1) - self.log_s).sum()
        return float(distortion), float(rate)


class Grads(Callback):
    """The gradient of ``theta`` after every step (what the optimizer stepped with: averaged over the ranks)."""

    def __init__(self, pair: FixedPair) -> None:
        self.pair, self.grads = pair, []

    def on_step_end(self, epoch: int, step: int, steps: int, loss: torch.Tensor, size: int) -> None:
        self.grads.append(self.pair.theta.grad.detach().clone())


def data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    result: dict = {}
    if args.job in ("partial", "all"):
        pair = FixedPair()
        grads = Grads(pair)
        pyro_vae.fit(pair, data(7), epochs=1, batch_size=4, lr=1e-30, objective="mean-field", seed=0,
                     progress=False, device="cpu", callbacks=[grads])
        result.update(batches=[bx for bx, _ in pair.seen if bx.shape[0] <= 4], grads=grads.grads,
                      theta=pair.theta.detach().clone())
    if args.job in ("loglik", "all"):
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from lingauss import LinearGaussian

        lg = LinearGaussian(shift=0.4)
        x = lg.data(6)
        res = pyro_vae.infer.log_likelihood(lg.model, lg.guide, torch.cat([x, x, x]), num_particles=7, batch_size=6,
                                            diagnostics=False, progress=False, max_plate_nesting=1, seed=5)
        result["values"] = res.values
    result["world_size"] = distributed.world_size()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{distributed.rank()}.pt")
    distributed.finish()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job", choices=["partial", "loglik", "all"])
    parser.add_argument("--out", required=True)
    main(parser.parse_args())

"""A script that tests/test_distributed.py runs under ``torchrun`` (several processes) and alone (one).

Each job writes ``rank<R>.pt`` into ``--out`` with what the test compares. Jobs:

- ``delta``: a pair whose guide is a point mass (no randomness in the loss), trained in float64: one process and
  two processes must take the same steps.
- ``vae``: the library's VAE with dynamic binarization; the history and the parameters of every rank.
- ``loglik``: ``log_likelihood`` of a fixed VAE.
- ``checkpointed``: ``vae`` with a checkpoint folder and ``--resume``; ``--kill-after E`` kills rank 1 (SIGKILL)
  once epoch E's checkpoint is written.
- ``nan``: a learning rate so large that the weights blow up; every rank saves the ``FloatingPointError``.
- ``mismatch``: rank 1 passes other data than rank 0 to ``fit`` and ``log_likelihood``; the ``ValueError`` of each.

Several jobs run in one launch when separated by ``--then`` (``nan --out A --then mismatch --out B``): each starts
afresh (param store cleared, seeded), and the launch's cost (every process imports torch and Pyro) is paid once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae
from pyro_vae import distributed


class DeltaPair(nn.Module):
    """Gaussian decoder, point-mass encoder: the ELBO of a batch is a deterministic function of the weights."""

    def __init__(self, input_dim: int, latent_dim: int = 2) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Linear(input_dim, latent_dim)
        self.decoder = nn.Linear(latent_dim, input_dim)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.encoder(x), event_dim=1))


class ParamDeltaPair:
    """``DeltaPair`` made of ``pyro.param`` sites instead of an ``nn.Module`` (gradients averaged by hand)."""

    def __init__(self, input_dim: int, latent_dim: int = 2) -> None:
        self.input_dim, self.latent_dim = input_dim, latent_dim

    def model(self, x: torch.Tensor) -> None:
        w = pyro.param("dec_w", lambda: 0.1 * torch.randn(self.latent_dim, self.input_dim, dtype=x.dtype))
        b = pyro.param("dec_b", lambda: torch.zeros(self.input_dim, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w + b, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        w = pyro.param("enc_w", lambda: 0.1 * torch.randn(self.input_dim, self.latent_dim, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(x @ w, event_dim=1))


def main(args: argparse.Namespace, last: bool = True) -> None:
    torch.set_num_threads(1)  # torchrun's default; the single-process reference runs with the same
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    out = Path(args.out)
    data = pyro_vae.datasets.load("digits")[: args.size]
    result: dict = {}
    if args.job == "delta":
        data = data.flatten(1)
        pair = ParamDeltaPair(data.shape[1]) if args.param_store else DeltaPair(data.shape[1]).double()
        if args.batchnorm:  # running statistics: DDP sends rank 0's buffers before every step
            pair.encoder = nn.Sequential(nn.BatchNorm1d(data.shape[1]), pair.encoder).double()
        result["history"] = pyro_vae.fit(pair, data.double(), epochs=args.epochs, batch_size=args.batch_size,
                                         lr=1e-2, seed=args.seed, progress=False, device="cpu")
        result["state"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()} if args.param_store \
            else pair.state_dict()
    elif args.job in ("vae", "checkpointed"):
        vae = pyro_vae.VAE(data.shape[1:], latent_dim=4, hidden_dims=(32,))
        extra = {"objective": args.objective, "num_particles": 5} if args.objective != "elbo" else {}
        hook = None
        if args.kill_after is not None:
            def hook(record: dict) -> None:
                if record["epoch"] == args.kill_after and distributed.rank() == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
        result["history"] = pyro_vae.fit(
            vae, data, epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, seed=args.seed, progress=False,
            binarize=True, val_data=pyro_vae.datasets.load("digits", "test"), device="cpu", on_epoch_end=hook,
            checkpoint_dir=out / "run" if args.job == "checkpointed" else None, resume=args.resume, **extra)
        result["state"] = vae.state_dict()
        result["draw"] = torch.rand(4)  # the rank's random stream after training
    elif args.job == "nan":
        vae = pyro_vae.VAE(data.shape[1:], latent_dim=4, hidden_dims=(32,), likelihood="normal")
        try:
            pyro_vae.fit(vae, data, epochs=2, batch_size=args.batch_size, lr=1e4, seed=args.seed, progress=False,
                         device="cpu", nan_check_every=2)
        except FloatingPointError as e:
            result["error"] = str(e)
    elif args.job == "mismatch":  # rank 1 passes one datapoint less
        vae = pyro_vae.VAE(data.shape[1:], latent_dim=2, hidden_dims=(8,))
        for name, call in (("fit", lambda x: pyro_vae.fit(vae, x, epochs=1, batch_size=50, progress=False,
                                                         binarize=True)),
                           ("log_likelihood", lambda x: pyro_vae.infer.log_likelihood(
                               vae.model, vae.guide, x.round(), num_particles=2, progress=False))):
            try:
                call(data[: len(data) - distributed.rank()])
            except ValueError as e:
                result[name] = str(e)
    elif args.job == "loglik":
        vae = pyro_vae.VAE(data.shape[1:], latent_dim=3, hidden_dims=(16,))
        x = pyro_vae.datasets.binarize(data, torch.Generator().manual_seed(1))
        res = pyro_vae.infer.log_likelihood(vae.model, vae.guide, x, num_particles=60, batch_size=args.batch_size,
                                            k_values=(1, 5, 50), seed=args.seed, progress=False)
        result.update(values=res.values, elbo=res.elbo, rate=res.rate, distortion=res.distortion, ess=res.ess,
                      khat=res.khat, curve=res.curve)
    result["world_size"] = distributed.world_size()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{distributed.rank()}.pt")
    if last:
        distributed.finish()  # what docs/distributed.md asks of a script: wait for every rank, leave the group


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job", choices=["delta", "vae", "loglik", "checkpointed", "nan", "mismatch"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after", type=int, default=None)
    parser.add_argument("--param-store", action="store_true", help="delta: the pair of pyro.param sites")
    parser.add_argument("--batchnorm", action="store_true", help="delta: batch normalization in the encoder")
    parser.add_argument("--objective", default="elbo", help="vae: the training objective (K = 5 unless elbo)")
    jobs: list[list[str]] = [[]]
    for arg in sys.argv[1:]:
        if arg == "--then":
            jobs.append([])
        else:
            jobs[-1].append(arg)
    for i, job in enumerate(jobs):
        main(parser.parse_args(job), last=i == len(jobs) - 1)

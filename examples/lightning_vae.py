"""Train a VAE with PyTorch Lightning (``pyro_vae.lightning.VAEModule``), with an IWAE ``log p(x)`` every few epochs.

Lightning's ``Trainer`` runs the loop (devices, ``strategy="ddp"``, checkpoints, loggers); the module's
``training_step`` is the library's objective, the same loss and gradient as :func:`pyro_vae.fit`. Each validation
logs the test ELBO, and every ``--iwae-every`` epochs the IWAE estimate of ``log p(x)`` with ``K =
--iwae-particles`` and its Monte Carlo error. Lightning's CSV logger writes the metrics to
``OUT/lightning/version_0/metrics.csv`` and its checkpoint callback the last epoch to ``OUT/checkpoints``; the
script prints the validation metrics of each epoch and the checkpoint it restores at the end.

Run (``pip install 'pyro-vae[lightning]'``)::

    python examples/lightning_vae.py                                   # digits, 20 epochs, IWAE-5 objective
    python examples/lightning_vae.py --dataset binarized-mnist --epochs 100 --iwae-every 10
    python examples/lightning_vae.py --devices 2 --strategy ddp        # two CPU processes
    python examples/lightning_vae.py --smoke-test

Reference: Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pyro
import torch
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae
from pyro_vae import datasets


def main(args: argparse.Namespace) -> dict[str, float]:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from pyro_vae.lightning import VAEModule

    pyro.clear_param_store()
    pl.seed_everything(args.seed, verbose=False)  # torch, numpy and Python (Pyro draws from torch's generator)
    train = datasets.load(args.dataset, "train", root=args.data_root)
    test = datasets.load(args.dataset, "test", root=args.data_root)
    if args.smoke_test:
        train, test = train[:300], test[:100]
    binarize = args.dataset != "binarized-mnist"  # grey levels: a fresh binarization of every batch

    def vae() -> pyro_vae.VAE:
        return pyro_vae.VAE(train.shape[1:], latent_dim=args.latent_dim, hidden_dims=(args.hidden_dim,))

    module = VAEModule(vae(), objective=args.objective, num_particles=args.num_particles, lr=args.lr,
                       binarize=binarize, iwae_every=args.iwae_every, iwae_particles=args.iwae_particles)
    out = Path(args.out)
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
                         strategy=args.strategy, logger=CSVLogger(out, name="lightning", version=0),
                         callbacks=[checkpoints], enable_progress_bar=not args.smoke_test,
                         enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(module, DataLoader(TensorDataset(train), batch_size=args.batch_size, shuffle=True),
                DataLoader(TensorDataset(test), batch_size=500))
    if trainer.global_rank != 0:
        return {}
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_elbo")]
    print(f"{args.epochs} epochs on {args.dataset} ({len(train)} images, objective {args.objective}, "
          f"K = {args.num_particles}); test set ({len(test)} images), nats per image:")
    for row in rows:
        line = f"  epoch {int(row['epoch']) + 1:3d}: ELBO {float(row['val_elbo']):8.3f}"
        if row.get("val_iwae"):
            line += (f"   log p(x) ~ IWAE_{args.iwae_particles} {float(row['val_iwae']):8.3f} "
                     f"+- {float(row['val_iwae_stderr']):.3f} "
                     f"(Monte Carlo error {float(row['val_iwae_mc_stderr']):.3f})")
        print(line)
    restored = VAEModule.load_from_checkpoint(checkpoints.last_model_path, vae_or_pair=vae())
    same = all(torch.equal(a, b) for a, b in zip(restored.pair.state_dict().values(),
                                                 module.pair.state_dict().values()))
    print(f"restored {Path(checkpoints.last_model_path).name}: weights {'equal' if same else 'DIFFERENT'} to the "
          f"trained ones (objective {restored.objective!r}, K = {restored.num_particles})")
    return {k: float(v) for k, v in rows[-1].items() if v}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion-mnist",
                                                                "binarized-mnist"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--objective", default="iwae", choices=["elbo", "mean-field", "iwae", "iwae-dreg"])
    parser.add_argument("--num-particles", type=int, default=5)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--iwae-every", type=int, default=5, help="IWAE log p(x) every this many epochs")
    parser.add_argument("--iwae-particles", type=int, default=500)
    parser.add_argument("--accelerator", default="cpu", help="Lightning's accelerator: cpu, gpu, auto")
    parser.add_argument("--devices", default="1", help="Lightning's devices: a number, or 'auto'")
    parser.add_argument("--strategy", default="auto", help="Lightning's strategy: auto, ddp, ...")
    parser.add_argument("--out", default="runs/lightning", help="folder of the metrics and checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="data folder for the file-based sets (default: "
                                                          "$PYRO_VAE_DATA; digits needs none)")
    parser.add_argument("--smoke-test", action="store_true", help="3 epochs on 300 images, K = 50")
    args = parser.parse_args()
    args.devices = int(args.devices) if args.devices.isdigit() else args.devices
    if args.smoke_test:
        args.epochs, args.iwae_every, args.iwae_particles = 3, 3, 50
    try:
        main(args)
    except datasets.DataNotFoundError as e:  # one line saying where to point, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e} (from the command line: --data-root FOLDER)\n")

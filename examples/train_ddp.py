"""Train and evaluate a VAE with one process per GPU (or several CPU processes) under ``torchrun``.

The script is an ordinary single-process script as well: run without ``torchrun`` it trains alone. Under
``torchrun`` every process runs it; :func:`pyro_vae.fit` and :func:`pyro_vae.infer.log_likelihood` find the
other processes through the environment torchrun sets and

- ``fit`` splits each global batch of ``--batch-size`` datapoints over the processes and averages their
  gradients with ``DistributedDataParallel`` (each process draws its own binarization and latent samples,
  from its own seed); rank 0 alone writes the checkpoints and the metrics;
- ``log_likelihood`` hands out whole batches of test data to the processes and gathers the per-datapoint
  estimates, so every process gets the full result, equal to the single-process one for the same seed.

The options are spelled as ``pyro-vae train``'s (``--hidden-dims 200,200``, ``--out``, ``--resume``,
``--device``, ``--data-root``). ``--out RUN`` keeps fit's checkpoint there, and ``--resume`` makes the script
restartable: run it again (on any number of processes, or let ``torchrun --max-restarts`` do it) and it
continues from the last complete epoch. ``--num-particles`` is the ``K`` of the ``log p(x)`` estimate, as in
``pyro-vae evaluate``.

Run::

    python examples/train_ddp.py --smoke-test                                  # one process
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --smoke-test  # two CPU processes (gloo)
    torchrun --standalone --nproc_per_node=gpu examples/train_ddp.py --dataset binarized-mnist --epochs 100 \
        --out runs/ddp-script --resume

See ``docs/distributed.md`` for several nodes and SLURM.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae import datasets, distributed


def hidden_dims(text: str) -> tuple[int, ...]:
    """``200,200`` -> ``(200, 200)``, as ``pyro-vae train --hidden-dims`` reads it."""
    try:
        dims = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated positive sizes such as 200,200 expected, got {text!r}")
    return dims


def main(args: argparse.Namespace) -> None:
    if args.checkpoint_dir is not None:  # the older spelling, which always resumed
        if args.out is not None and args.out != args.checkpoint_dir:
            raise SystemExit("give --out or --checkpoint-dir, not both")
        args.out, args.resume = args.checkpoint_dir, True
    if args.out is not None and not args.resume and (Path(args.out) / pyro_vae.train.CHECKPOINT_NAME).exists():
        raise SystemExit(f"{args.out} holds a checkpoint: continue it with --resume, or choose another --out")
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    dataset = "digits" if args.smoke_test else args.dataset
    epochs = 2 if args.smoke_test else args.epochs
    num_particles = 50 if args.smoke_test else args.num_particles
    x_train = datasets.load(dataset, "train", root=args.data_root)
    x_test = datasets.load(dataset, "test", root=args.data_root)
    if args.smoke_test:
        x_test = x_test[:100]
    # one binarization of the test data for every process: a seeded generator, not the global one (fit seeds
    # each process differently)
    binary = bool(((x_train == 0) | (x_train == 1)).all())
    if not binary:
        x_test = datasets.binarize(x_test, torch.Generator().manual_seed(args.seed))

    vae = pyro_vae.VAE(x_train.shape[1:], latent_dim=args.latent_dim, hidden_dims=args.hidden_dims)
    history = pyro_vae.fit(vae, x_train, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                           binarize=not binary, seed=args.seed, checkpoint_dir=args.out, resume=args.resume,
                           device=args.device, progress=not args.smoke_test)
    device = next(vae.parameters()).device  # cuda:LOCAL_RANK under torchrun on GPUs
    result = pyro_vae.infer.log_likelihood(vae.model, vae.guide, x_test.to(device), num_particles=num_particles,
                                           seed=args.seed, progress=not args.smoke_test)
    if distributed.is_main_process():
        last = history[-1]
        print(f"{distributed.world_size()} process(es); {len(history)} epochs on {dataset}, global batch "
              f"{args.batch_size}: train loss {last['loss']:.2f} nats, {last['images_per_second']:,.0f} images/s")
        print(result.summary())
    distributed.finish()  # every process waits for the others, then leaves the process group


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="binarized-mnist", help="data set (default binarized-mnist)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100, help="global batch over all processes")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--hidden-dims", type=hidden_dims, default=(200, 200),
                        help="comma-separated hidden layer sizes, e.g. 200,200")
    parser.add_argument("--num-particles", type=int, default=5000, help="K of the log p(x) estimate")
    parser.add_argument("--out", default=None, help="run folder for fit's checkpoint and metrics")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="the older spelling of '--out DIR --resume' (kept so restart scripts keep working)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last complete epoch (if it has one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--data-root", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="digits, 2 epochs, 100 test images, K = 50")
    args = parser.parse_args()
    try:
        main(args)
    except datasets.DataNotFoundError as e:  # one line saying where to point, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e} (from the command line: --data-root FOLDER)\n")

"""Throughput of ``pyro_vae.fit`` and ``log_likelihood`` with 1 and 2 processes under ``torchrun``.

Each configuration is ``P`` processes with ``T`` torch threads each (on CPU, gloo; on CUDA, nccl with one GPU
per process). The driver launches, for every configuration in turn and for ``--rounds`` rounds (the order
rotating between rounds, so that all see the same background load)::

    OMP_NUM_THREADS=T python -m torch.distributed.run --standalone --nproc_per_node=P \\
        benchmarks/distributed.py --worker ...

and each launch measures, on dynamically binarized MNIST:

(a) training, the library: the IWAE paper's one-layer VAE (784-200-200-50, tanh, Bernoulli) trained by
    ``pyro_vae.fit`` (single-sample ELBO, Adam lr 1e-3, global batch ``--batch-size``) for ``--epochs`` epochs;
    its images per second are the training set's size over the ``seconds`` that ``fit`` records per epoch (the
    steps only: no set-up, no checkpoint); the epochs after the first are used (the first warms up);
(b) training, the reference: the same network written by hand (``ReferenceVAE`` of
    ``benchmarks/train_mnist.py``) in ``DistributedDataParallel`` with the same sharding of each global batch
    (rank ``r`` takes datapoints ``r, r + P, ...``), the same loss scaling and the same optimizer, timed the
    same way; (a) and (b) alternate epochs;
(c) evaluation: ``pyro_vae.infer.log_likelihood`` with ``K = --num-particles`` over ``--eval-size`` test images,
    timed on rank 0 from a barrier before to the gathered result.

Output: one JSON line per configuration and round, then a summary per configuration: medians over rounds of
the images/s of (a) and (b), their ratio (library / reference, 1.0 = no overhead), the speed-up of (a) and (c)
against the first configuration. ``--write-docs`` records it in ``docs/benchmarks.md`` (section
``distributed``).

Usage::

    python benchmarks/distributed.py --smoke-test
    python benchmarks/distributed.py --configs 1x2,2x1,1x1 --write-docs
    python benchmarks/distributed.py --device cuda --configs 1x1,2x1     # needs 2 GPUs for 2x1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (  # run as ``python benchmarks/distributed.py``: benchmarks/ is on the path
    REPO_ROOT,
    command_line,
    machine_info,
    machine_markdown,
    markdown_table,
    print_json,
    update_section,
    utc_date,
)

BENCHMARK = "distributed"
LR = 1e-3


# ------------------------------------------------------------------------------------------------ worker
class _ElboModule(torch.nn.Module):
    """``ReferenceVAE`` with ``forward = elbo``, for ``DistributedDataParallel``."""

    def __init__(self) -> None:
        super().__init__()
        from train_mnist import ReferenceVAE

        self.vae = ReferenceVAE()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.elbo(x)


def worker(args: argparse.Namespace) -> None:
    import pyro
    from train_mnist import reference_epoch

    import pyro_vae
    from pyro_vae import distributed

    (batch_size,) = args.batch_size  # the driver passes one
    device = pyro_vae.train.resolve_device(args.device)
    distributed.init(device)
    rank, world = distributed.rank(), distributed.world_size()
    root = args.data_root
    train = pyro_vae.datasets.load("mnist", "train", root=root).flatten(1)[:args.train_size].to(device)
    test = pyro_vae.datasets.load("mnist", "test", root=root).flatten(1)[:args.eval_size].to(device)
    test = torch.bernoulli(test, generator=torch.Generator(device=device).manual_seed(12345))
    n = train.shape[0]

    pyro.set_rng_seed(distributed.rank_seed(args.seed, rank))
    vae = pyro_vae.VAE((784,), latent_dim=50, hidden_dims=(200, 200), activation="tanh", likelihood="bernoulli")
    ref = _ElboModule().to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(ref, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else ref
    ref_opt = torch.optim.Adam(ref.parameters(), lr=LR)
    shuffle = torch.Generator().manual_seed(args.seed)
    lib_seconds, ref_seconds = [], []
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        ckpt = distributed.broadcast_object(tmp)  # rank 0's folder: fit writes there only on rank 0
        for epoch in range(args.epochs):
            for impl in (("lib", "ref") if epoch % 2 == 0 else ("ref", "lib")):
                if impl == "lib":  # one more epoch of the same run: fit resumes from its checkpoint
                    history = pyro_vae.fit(vae, train, epochs=epoch + 1, batch_size=batch_size, lr=LR,
                                           binarize=True, seed=args.seed, progress=False, device=device,
                                           checkpoint_dir=ckpt, resume=True)
                    lib_seconds.append(history[-1]["seconds"])
                else:
                    ref_seconds.append(reference_epoch(ref.vae, ref_opt, train, batch_size, shuffle, None, ddp, rank,
                                                      world)[0])
        vae.eval()
        distributed.all_reduce(torch.zeros(1))  # a barrier (also where a single process simply goes on)
        t0 = time.perf_counter()
        res = pyro_vae.infer.log_likelihood(vae.model, vae.guide, test, num_particles=args.num_particles,
                                            batch_size=args.eval_batch_size, seed=args.seed, progress=False,
                                            diagnostics=False)
        eval_seconds = time.perf_counter() - t0
    timed = slice(1, None) if args.epochs > 1 else slice(None)  # the first epoch warms up
    record = {
        "processes": world, "threads": torch.get_num_threads(), "device": str(device),
        "train_size": n, "batch_size": batch_size, "epochs": args.epochs,
        "pyro_vae_images_per_second": n / statistics.median(lib_seconds[timed]),
        "reference_images_per_second": n / statistics.median(ref_seconds[timed]),
        "eval_size": test.shape[0], "num_particles": args.num_particles,
        "eval_datapoints_per_second": test.shape[0] / eval_seconds, "log_likelihood": res.mean,
        "train_loss": history[-1]["loss"],
    }
    if rank == 0:
        Path(args.result).write_text(json.dumps(record))
    distributed.finish()


# ------------------------------------------------------------------------------------------------ driver
def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size takes integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-size takes positive integers, got {text!r}")
    return sizes


def parse_configs(text: str) -> list[tuple[int, int]]:
    try:
        configs = [tuple(int(v) for v in c.lower().split("x")) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--configs takes PxT items such as 1x2,2x1, got {text!r}") from None
    if not configs or any(len(c) != 2 or min(c) < 1 for c in configs):
        raise argparse.ArgumentTypeError(f"--configs takes PxT items such as 1x2,2x1, got {text!r}")
    return configs  # type: ignore[return-value]


def launch(args: argparse.Namespace, processes: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(Path(__file__).resolve()), "--worker", "--result", str(result)]
        for key in ("epochs", "batch_size", "train_size", "eval_size", "eval_batch_size", "num_particles", "seed",
                    "device", "data_root"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "Error" in line and "ChildFailedError" not in line]
            raise SystemExit(f"{processes} process(es) x {threads} thread(s) failed:\n" + "\n".join(errors[-10:]))
        return json.loads(result.read_text())


def summarize(records: list[dict[str, Any]], configs: list[tuple[int, int]], batch_size: int) -> list[dict[str, Any]]:
    rows = []
    for p, t in configs:
        mine = [r for r in records if (r["processes"], r["threads"], r["batch_size"]) == (p, t, batch_size)]
        lib = statistics.median(r["pyro_vae_images_per_second"] for r in mine)
        ref = statistics.median(r["reference_images_per_second"] for r in mine)
        ratios = sorted(r["pyro_vae_images_per_second"] / r["reference_images_per_second"] for r in mine)
        rows.append({"benchmark": BENCHMARK, "batch_size": batch_size, "processes": p, "threads": t,
                     "rounds": len(mine),
                     "pyro_vae_images_per_second": lib, "reference_images_per_second": ref,
                     "ratio": statistics.median(ratios), "ratio_min_max": [ratios[0], ratios[-1]],
                     "eval_datapoints_per_second": statistics.median(r["eval_datapoints_per_second"] for r in mine),
                     "log_likelihood": [r["log_likelihood"] for r in mine]})
    base = rows[0]
    for row in rows:
        row["train_speedup"] = row["pyro_vae_images_per_second"] / base["pyro_vae_images_per_second"]
        row["reference_speedup"] = row["reference_images_per_second"] / base["reference_images_per_second"]
        row["eval_speedup"] = row["eval_datapoints_per_second"] / base["eval_datapoints_per_second"]
    return rows


def docs_section(rows: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any], command: str,
                 date: str, seconds: float) -> str:
    base = rows[0]
    table = markdown_table(
        ["global batch", "processes x threads", "pyro_vae images/s", "reference images/s", "ratio (min to max)",
         f"training speed-up vs {base['processes']}x{base['threads']} (pyro_vae / reference)",
         "log p(x) datapoints/s", "evaluation speed-up", "log p(x)"],
        [[r["batch_size"], f"{r['processes']}x{r['threads']}", f"{r['pyro_vae_images_per_second']:,.0f}",
          f"{r['reference_images_per_second']:,.0f}",
          f"**{r['ratio']:.3f}** ({r['ratio_min_max'][0]:.3f} to {r['ratio_min_max'][1]:.3f})",
          f"{r['train_speedup']:.2f} / {r['reference_speedup']:.2f}", f"{r['eval_datapoints_per_second']:,.1f}",
          f"{r['eval_speedup']:.2f}", f"{statistics.median(r['log_likelihood']):.2f}"] for r in rows])
    repeat = all(len(set(r["log_likelihood"])) == 1 for r in rows)
    return f"""## distributed: 1 and 2 processes under torchrun

Script: [`benchmarks/distributed.py`](../benchmarks/distributed.py). Each configuration is P processes with T
torch threads each, launched by `torchrun --standalone` ({info['device']}; gloo on CPU). Every launch trains
the IWAE paper's one-layer VAE (784-200-200-50, tanh, Bernoulli) on dynamically binarized MNIST
({args.train_size:,} training images, {args.epochs} epochs, the first one not timed) with `pyro_vae.fit`,
alternating epochs with a hand-written PyTorch VAE of the same network in `DistributedDataParallel` with the
same sharding of each global batch ("reference"); then it estimates
`log p(x)` of {args.eval_size:,} test images with K = {args.num_particles} (`log_likelihood`, batches of
{args.eval_batch_size} dealt round-robin to the ranks). The configurations take turns, {args.rounds} rounds;
the numbers are medians over rounds. "Ratio" is pyro_vae's images/s over the reference's in the same
launch (1.0 = no overhead); the speed-ups are against the first row of the same global batch size.

- date: {date}
- command: `{command}`
{machine_markdown(info)}
- total run time: {seconds:.0f} s
- a configuration's rounds gave {"identical" if repeat else "different"} `log p(x)` estimates (same seed, same
  number of processes: the same run); across configurations the trained models differ (each number of
  processes draws its own random streams), so their estimates differ by training noise

{table}

On this machine P x T is at most its {info['usable_cores']} cores: 2 processes of 1 thread use the same cores as
1 process of 2 threads, and the comparison between those two rows shows what data parallelism costs or gains
against torch's intra-op threads at equal hardware. A GPU row needs a lent GPU per process.
"""


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.worker:
        worker(args)
        return []
    if args.smoke_test:
        args.epochs, args.train_size, args.eval_size, args.num_particles, args.rounds = 2, 400, 40, 10, 1
        args.configs, args.batch_size = [(1, 1), (2, 1)], [100]
    if args.data_root is None:
        args.data_root = os.environ.get("PYRO_VAE_DATA") or str(REPO_ROOT.parent / "shared" / "data")
    info = machine_info(threads=None, device=args.device)
    info["threads"] = "per configuration (T below)"
    t0 = time.perf_counter()
    records, rows = [], []
    batch_sizes = args.batch_size
    for batch_size in batch_sizes:
        args.batch_size = batch_size
        for round_ in range(args.rounds):
            k = round_ % len(args.configs)
            for processes, threads in args.configs[k:] + args.configs[:k]:  # rotate the order between rounds
                record = {**launch(args, processes, threads), "round": round_ + 1}
                print_json(record)
                records.append(record)
        rows += summarize(records, args.configs, batch_size)
    args.batch_size = batch_sizes
    for row in rows:
        print_json(row)
    if args.write_docs and not args.smoke_test:
        path = update_section(BENCHMARK, docs_section(rows, args, info, command_line(), utc_date(),
                                                      time.perf_counter() - t0))
        print(f"wrote the {BENCHMARK} section of {path}", file=sys.stderr)
    return rows


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=parse_configs, default=[(1, 2), (2, 1), (1, 1)],
                   help="processes x threads per process, comma separated (default 1x2,2x1,1x1)")
    p.add_argument("--rounds", type=int, default=3, help="launches per configuration, interleaved (default 3)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per launch, the first not timed")
    p.add_argument("--batch-size", type=parse_batch_sizes, default=[100, 1000],
                   help="global batch size, or a comma list (default 100,1000)")
    p.add_argument("--train-size", type=int, default=20000, help="training images (default 20000)")
    p.add_argument("--eval-size", type=int, default=500, help="test images for log p(x) (default 500)")
    p.add_argument("--eval-batch-size", type=int, default=50, help="datapoints per log p(x) batch (default 50)")
    p.add_argument("--num-particles", type=int, default=500, help="K of the log p(x) estimate (default 500)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--data-root", default=None, help="folder holding mnist/ (default $PYRO_VAE_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, 1x1 and 2x1: checks that it runs")
    p.add_argument("--write-docs", action="store_true", help="update this benchmark's section of docs/benchmarks.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    main(make_parser().parse_args())

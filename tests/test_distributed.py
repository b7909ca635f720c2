"""Training and evaluation under ``torchrun`` with 2 CPU processes (gloo), against one process.

Every job runs ``tests/distributed_worker.py`` (or the ``pyro-vae`` command) through
``python -m torch.distributed.run --standalone --nproc_per_node=N``; each rank saves what it computed.
Every launch takes seconds (three interpreters import torch and Pyro): those tests are marked ``slow``, left out of
the default ``pytest`` and run by CI (``.ci/run``); ``pytest -m slow`` runs them here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae import distributed

WORKER = Path(__file__).with_name("distributed_worker.py")


def _launch(args: list[str], nproc: int, timeout: float = 300, torchrun: tuple[str, ...] = (),
            **env_extra: str) -> subprocess.CompletedProcess:
    if nproc == 1:  # one process, no torchrun: the single-process path
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *torchrun,
               *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def run_worker(job: str, out: Path, nproc: int, *args: str, check: bool = True) -> list[dict]:
    """Run a job of distributed_worker.py; returns what every rank saved."""
    return run_jobs([(job, out, args)], nproc, check=check)[0]


def run_jobs(jobs: list[tuple[str, Path, tuple[str, ...]]], nproc: int, check: bool = True) -> list[list[dict]]:
    """Run jobs ``(job, out, args)`` of distributed_worker.py one after another in ONE launch (``--then``);
    returns, for each job, what every rank saved."""
    argv: list[str] = []
    for job, out, args in jobs:
        argv += [*(["--then"] if argv else []), job, "--out", str(out), *args]
    proc = _launch([str(WORKER), *argv], nproc)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [[torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)] for _, out, _ in jobs]


# the jobs of several tests, run in one launch per number of processes (the launch, where every process imports
# torch and Pyro, costs more than most jobs): name -> the worker's arguments
JOBS = {
    "delta-module": ("delta", "--epochs", "2", "--batch-size", "50", "--size", "400"),
    "delta-param-store": ("delta", "--epochs", "2", "--batch-size", "50", "--size", "400", "--param-store"),
    "batchnorm": ("delta", "--epochs", "1", "--size", "400", "--batchnorm"),
    "iwae-dreg": ("vae", "--epochs", "1", "--size", "400", "--objective", "iwae-dreg"),
    # 250 datapoints in batches of 40: 7 batches, 4 on rank 0 and 3 on rank 1, the last one short
    "loglik": ("loglik", "--batch-size", "40", "--size", "250", "--seed", "3"),
    "loglik-small": ("loglik", "--batch-size", "40", "--size", "30"),  # fewer batches than processes
    "mismatch": ("mismatch", "--size", "100"),
    "nan": ("nan", "--size", "400"),
}
ONE_PROCESS_JOBS = ("delta-module", "delta-param-store", "loglik", "loglik-small")  # the references


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """``launched(name, nproc)``: what every rank of job ``JOBS[name]`` saved; the jobs for ``nproc`` processes
    (every job for 2, the references for 1) run together in one launch, the first time one is asked for."""
    root = tmp_path_factory.mktemp("launched")
    done: dict[int, dict[str, list[dict]]] = {}

    def get(name: str, nproc: int) -> list[dict]:
        if nproc not in done:
            names = ONE_PROCESS_JOBS if nproc == 1 else tuple(JOBS)
            done[nproc] = {}  # a failed launch fails the first test that asked, and the others find no result
            results = run_jobs([(JOBS[n][0], root / f"{n}-{nproc}", JOBS[n][1:]) for n in names], nproc)
            done[nproc] = dict(zip(names, results))
        assert name in done[nproc], f"the launch of the {nproc}-process jobs failed (see the first test that asked)"
        return done[nproc][name]

    return get


def untimed(history: list[dict]) -> list[dict]:
    """A history without its timings (which differ from run to run)."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_second")} for h in history]


def assert_same_state(a: dict, b: dict, **tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------------------------------------ single process
def test_helpers_are_no_ops_in_one_process():
    assert not distributed.launched() and distributed.rank() == 0 and distributed.world_size() == 1
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_objects(3) == [3]
    assert distributed.first_report("x") == "x"
    assert distributed.on_main_process(lambda: 5) == 5


def test_rank_seeds_differ_across_ranks_and_are_reproducible():
    assert distributed.rank_seed(7, 0) == 7  # rank 0 draws what a single process draws
    seeds = [distributed.rank_seed(7, r) for r in range(8)]
    assert len(set(seeds)) == 8
    assert seeds == [distributed.rank_seed(7, r) for r in range(8)]
    assert all(0 <= s < 2**32 for s in seeds)
    assert distributed.derive_seed(7, 1) != distributed.derive_seed(1, 7)


def test_gather_datapoints_places_values_and_refuses_double_counting():
    rows = torch.tensor([[1.0, 2.0, 3.0]])
    full = distributed.gather_datapoints(rows, torch.tensor([2, 0, 1]), 3)
    torch.testing.assert_close(full, torch.tensor([[2.0, 3.0, 1.0]], dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"datapoints \[1\] were computed \[0.0\] times"):
        distributed.gather_datapoints(rows[:, :2], torch.tensor([2, 0]), 3)
    with pytest.raises(RuntimeError, match="computed"):
        distributed.gather_datapoints(rows, torch.tensor([0, 0, 1]), 3)


def test_cli_options_survive_torchrun():
    """torchrun's parser takes an option of the script that abbreviates one of its own (``--num`` is read as
    ``--numa-binding``): no option of ``pyro-vae`` except the aliases kept for one process may do that."""
    from torch.distributed.run import get_args_parser

    from pyro_vae.cli import build_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings if o not in ("-h", "--help")]
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    clashes = []
    for name, parser in sub.choices.items():
        for action in parser._actions:
            ours = [o for o in action.option_strings if not any(t.startswith(o) for t in theirs)]
            if action.option_strings and action.option_strings != ["-h", "--help"] and not ours:
                clashes.append((name, action.option_strings))
    assert not clashes, clashes


# ------------------------------------------------------------------------------------------------ 2 processes
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["module", "param-store"])
def test_two_processes_take_the_steps_of_one(launched, kind):
    """A point-mass guide makes the loss deterministic: 2 processes on the same global batch follow one process
    to rounding (float64), and both ranks hold the same weights bit for bit. An ``nn.Module`` pair goes through
    DistributedDataParallel, a pair of ``pyro.param`` sites through broadcast and hand-averaged gradients."""
    (one,) = launched(f"delta-{kind}", 1)  # --epochs 2 --batch-size 50 --size 400 (--param-store)
    r0, r1 = launched(f"delta-{kind}", 2)
    assert r0["world_size"] == 2
    assert_same_state(r0["state"], r1["state"], rtol=0, atol=0)
    assert_same_state(r0["state"], one["state"], rtol=0, atol=1e-12)
    assert r0["history"] == r1["history"]
    for a, b in zip(one["history"], r0["history"]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6)


@pytest.mark.slow
def test_running_statistics_are_synchronised(launched):
    """A pair with batch normalization takes the path where DDP sends rank 0's buffers before every step: it
    trains, and the ranks keep one set of weights (each batch-normalizes its own shard, so these are not the steps
    of one process, and the running statistics differ by the ranks' last updates)."""
    r0, r1 = launched("batchnorm", 2)  # delta --epochs 1 --size 400 --batchnorm
    weights = {k for k in r0["state"] if "running" not in k and "num_batches" not in k}
    assert_same_state({k: r0["state"][k] for k in weights}, {k: r1["state"][k] for k in weights}, rtol=0, atol=0)
    # the buffers differ by one step at most: the ranks' last update, each from its own shard
    assert int(r0["state"]["encoder.0.num_batches_tracked"]) == int(r1["state"]["encoder.0.num_batches_tracked"])
    torch.testing.assert_close(r0["state"]["encoder.0.running_mean"], r1["state"]["encoder.0.running_mean"],
                               rtol=0, atol=0.2)


@pytest.mark.slow
def test_iwae_dreg_objective_trains_under_two_processes(launched):
    """The DReG surrogate (gradient hooks on replayed particles) under DistributedDataParallel: one model."""
    r0, r1 = launched("iwae-dreg", 2)  # vae --epochs 1 --size 400 --objective iwae-dreg
    assert_same_state(r0["state"], r1["state"], rtol=0, atol=0)
    assert math.isfinite(r0["history"][-1]["loss"]) and math.isfinite(r0["history"][-1]["val_elbo"])


@pytest.mark.slow
def test_evaluation_gathers_every_datapoint_once_and_equals_one_process(launched):
    # 250 datapoints in batches of 40: 7 batches, 4 on rank 0 and 3 on rank 1, the last one short
    (one,) = launched("loglik", 1)  # --batch-size 40 --size 250 --seed 3
    r0, r1 = launched("loglik", 2)
    for key in ("values", "elbo", "rate", "distortion", "ess", "khat"):
        assert one[key].shape == (250,)
        assert torch.equal(r0[key], one[key]), key
        assert torch.equal(r1[key], one[key]), key
    assert one["curve"].keys() == r0["curve"].keys() == {1, 5, 50, 60}  # ends at the headline K
    for k in one["curve"]:
        assert torch.equal(r0["curve"][k], one["curve"][k])
    # fewer batches than processes: rank 1 computes nothing and still gets the result
    (one,) = launched("loglik-small", 1)  # --batch-size 40 --size 30
    r0, r1 = launched("loglik-small", 2)
    assert torch.equal(r1["values"], one["values"]) and torch.equal(r1["curve"][50], one["curve"][50])


@pytest.mark.slow
def test_vae_training_agrees_with_one_process(tmp_path):
    """The library's VAE with dynamic binarization: the ranks draw different numbers, so 2 processes agree with
    one only in distribution. The training loss after 3 epochs, over 2 seeds (2 processes) and 4 seeds (one),
    must agree within 4 standard errors of the difference (seed-to-seed sd about 0.08 nats)."""
    args = ("--epochs", "3", "--batch-size", "50", "--size", "1000")
    single = [r for r, in run_jobs([("vae", tmp_path / f"one{s}", (*args, "--seed", str(s))) for s in range(4)], 1)]
    double = run_jobs([("vae", tmp_path / f"two{s}", (*args, "--seed", str(s))) for s in range(2)], 2)
    for r0, r1 in double:
        assert_same_state(r0["state"], r1["state"], rtol=0, atol=0)  # gradients are averaged: one model
        assert not torch.equal(r0["draw"], r1["draw"])  # but every rank has its own random stream
    a = torch.tensor([h["history"][-1]["loss"] for h in single], dtype=torch.float64)
    b = torch.tensor([r0["history"][-1]["loss"] for r0, _ in double], dtype=torch.float64)
    pooled = torch.cat([a - a.mean(), b - b.mean()]).pow(2).sum() / (len(a) + len(b) - 2)
    stderr = float((pooled * (1 / len(a) + 1 / len(b))).sqrt())
    assert abs(float(a.mean() - b.mean())) <= 4 * max(stderr, 0.02), (a, b, stderr)
    # and the same seed on the same number of processes gives the same run
    again = run_worker("vae", tmp_path / "again", 2, *args, "--seed", "0")
    assert_same_state(again[0]["state"], double[0][0]["state"], rtol=0, atol=0)


@pytest.mark.slow
def test_killed_rank_fails_cleanly_and_the_run_resumes(tmp_path):
    args = ("--epochs", "4", "--batch-size", "50", "--size", "400")
    full = run_worker("checkpointed", tmp_path / "full", 2, *args)
    t0 = time.perf_counter()
    proc = _launch([str(WORKER), "checkpointed", "--out", str(tmp_path / "cut"), *args, "--kill-after", "2"], 2)
    assert proc.returncode != 0  # torchrun stops the other rank and reports the failure
    assert "SIGKILL" in proc.stderr and "rank      : 1" in proc.stderr, proc.stderr[-2000:]
    assert time.perf_counter() - t0 < 120
    run = tmp_path / "cut" / "run"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not list(run.glob("*.tmp"))
    shutil.copytree(tmp_path / "cut", tmp_path / "cut1")
    # on 2 processes again: exactly the uninterrupted run, every random stream included
    r0, _ = run_worker("checkpointed", tmp_path / "cut", 2, *args, "--resume")
    assert_same_state(r0["state"], full[0]["state"], rtol=0, atol=0)
    assert untimed(r0["history"]) == untimed(full[0]["history"])
    # on 1 process: the first two epochs kept, two more trained from the checkpoint
    (one,) = run_worker("checkpointed", tmp_path / "cut1", 1, *args, "--resume")
    assert one["world_size"] == 1 and len(one["history"]) == 4
    assert untimed(one["history"][:2]) == untimed(full[0]["history"][:2])
    assert all(math.isfinite(h["val_elbo"]) for h in one["history"])
    # torchrun --max-restarts restarts the processes with the same command, which resumes from the checkpoint: the
    # run ends as the uninterrupted one (torch 2.13 needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 to reconnect)
    auto = tmp_path / "auto"
    proc = _launch([str(WORKER), "checkpointed", "--out", str(auto), *args, "--kill-after", "2", "--resume"], 2,
                   timeout=240, torchrun=("--max-restarts=1",), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIGKILL" in proc.stderr or "exitcode: -9" in proc.stderr  # it did die once
    r0 = torch.load(auto / "rank0.pt", weights_only=False)
    assert_same_state(r0["state"], full[0]["state"], rtol=0, atol=0)


@pytest.mark.slow
def test_nan_is_reported_on_every_rank(launched):
    """A NaN on one rank must not leave the other waiting: every rank raises the same report."""
    r0, r1 = launched("nan", 2)  # --size 400
    assert r0["error"] == r1["error"]
    assert r0["error"].startswith("NaN or inf in epoch 1, step ") and "(on rank " in r0["error"], r0["error"]


@pytest.mark.slow
def test_different_data_on_the_ranks_is_refused(launched):
    r0, r1 = launched("mismatch", 2)  # --size 100
    for name in ("fit", "log_likelihood"):
        assert r0[name] == r1[name]
        assert "differs between the processes" in r0[name] and "(100, 1, 8, 8)" in r0[name], r0[name]


@pytest.mark.slow
def test_cli_train_and_evaluate_under_torchrun(tmp_path):
    exe = shutil.which("pyro-vae")
    if exe is None:
        pytest.skip("the pyro-vae command is not installed")
    run = tmp_path / "run"
    proc = _launch([exe, "train", "--out", str(run), "--epochs", "2", "--no-progress"], 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1 and "on 2 processes" in proc.stdout  # rank 0 alone prints
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl", "test_metrics.json", "samples.png"):
        assert (run / name).is_file(), name
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and "train_elbo" in history[-1]
    evaluate = [exe, "evaluate", str(run), "--num-particles", "20", "--num-datapoints", "130", "--batch-size", "25",
                "--no-progress", "--no-diagnostics"]
    proc = _launch(evaluate, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("log p(x)") == 1
    two = json.loads((run / "evaluation.json").read_text())
    proc = _launch(evaluate, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((run / "evaluation.json").read_text())
    assert two["num_datapoints"] == one["num_datapoints"] == 130
    assert math.isclose(two["log_likelihood"], one["log_likelihood"], rel_tol=1e-6)
    assert math.isclose(two["elbo"], one["elbo"], rel_tol=1e-6)
    # the one-process subcommands say so instead of writing the same files from every rank
    proc = _launch([exe, "sample", str(run), "--out", str(tmp_path / "s.png")], 2)
    assert proc.returncode != 0 and "runs in one process: launch it without torchrun" in proc.stderr


@pytest.mark.slow
def test_ddp_example_runs_under_torchrun(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
    proc = _launch([str(script), "--smoke-test"], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("log p(x) (IWAE, K=50)") == 1 and "2 process(es)" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_benchmark_runs(tmp_path):
    """benchmarks/distributed.py --smoke-test: 1 and 2 processes, one JSON summary line per configuration."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "distributed.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke-test"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if '"train_speedup"' in line]
    assert [(r["processes"], r["threads"]) for r in rows] == [(1, 1), (2, 1)]
    assert all(r["pyro_vae_images_per_second"] > 0 and math.isfinite(r["log_likelihood"][0]) for r in rows)

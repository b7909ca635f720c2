"""The training benchmarks run (``--smoke-test``): they time what they say, so none can rot."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each runs a script in a fresh interpreter (importing torch and Pyro, reading MNIST): run by CI, not by default
pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke-test", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_mnist_compares_whole_fit_calls_of_the_vae_and_a_users_pair(data_root: Path) -> None:
    lines = [json.loads(line) for line in _run("train_mnist.py", "--batch-size", "100", "--data-root",
                                               str(data_root)).splitlines() if line.startswith("{")]
    impls = {r["impl"] for r in lines if "impl" in r}
    assert impls == {"library", "user_pair", "reference"}
    ratios = {r["numerator"]: r for r in lines if r.get("metric") == "images_per_second_ratio"}
    assert set(ratios) == {"library", "user_pair"}
    assert all(r["ratio"] > 0 and r["rounds"] == 2 for r in ratios.values())
    # the two fit calls trained the same network from the same weights on the same data: close losses
    loss = {r["impl"]: r["last_epoch_train_loss"] for r in lines if "impl" in r}
    assert abs(loss["library"] - loss["user_pair"]) < 0.05 * abs(loss["reference"])


@pytest.mark.filterwarnings("ignore")
def test_profile_step_times_every_variant() -> None:
    out = _run("profile_step.py")
    for name in ("reference", "engine", "engine, validated", "Trace_ELBO", "library VAE", "Pyro floor"):
        assert f"{name} " in out
    assert "tottime" in out


def test_the_pyro_floor_is_the_engines_loss_with_less_work(benchmark_module) -> None:
    """profile_step's floor computes what the engine computes for the user's pair: the same loss and gradients
    for the same draws, so its time is a like-for-like bound."""
    import pyro

    module = benchmark_module("profile_step")
    import torch
    from train_mnist import INPUT_DIM, UserPair  # imported by profile_step

    from pyro_vae.infer.objectives import elbo
    from pyro_vae.infer.weights import terms_producer

    torch.manual_seed(0)
    pair, x = UserPair(), torch.bernoulli(torch.rand(7, INPUT_DIM))
    params = list(pair.parameters())
    pyro.set_rng_seed(3)
    floor = module.floor_loss(pair.model, pair.guide, x)
    pyro.set_rng_seed(3)
    engine = elbo(terms_producer(pair.model, pair.guide, x, max_plate_nesting=1))
    assert torch.allclose(floor, engine, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(floor, params), torch.autograd.grad(engine, params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_priors_reproduction_runs_every_row(data_root: Path) -> None:
    lines = [json.loads(line) for line in _run("priors.py", "--data-root", str(data_root)).splitlines()
             if line.startswith("{")]
    assert [r["row"] for r in lines] == ["standard prior", "mixture prior (K=50)", "VampPrior (K=500)",
                                         "IAF guide (2 flows)", "VampPrior + IAF"]
    assert all(r["log_likelihood"] < 0 and 0 <= r["active_units"] <= 40 for r in lines)


def test_step_time_reports_both_pairs_and_where_pyro_vae_came_from() -> None:
    out = _run("step_time.py", "--epochs", "1", "--train-size", "400").splitlines()
    assert len(out) == 2 and out[0].split(":")[1].strip().startswith("library VAE, batch 20")
    assert "user pair" in out[1] and str(ROOT) in out[0]
    assert all(float(line.rsplit(":", 1)[1].split()[0]) > 0 for line in out)


def test_threads_benchmark_times_each_setting_idle_and_under_load() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "threads.py"), "--smoke-test"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["competing_processes"] for r in records} == {0, 1} and all(r["images_per_s"] > 0 for r in records)
    assert {r["setting"] for r in records} >= {"1", "auto"}


def test_ss_step_times_every_variant() -> None:
    out = _run("ss_step.py")
    for name in ("reference", "pyro-vae", "pyro-vae, joined input"):
        assert f"| {name} |" in out


def test_the_ss_step_reference_is_the_librarys_loss(benchmark_module) -> None:
    """ss_step's hand-written M2 loss, and the library on the joined input, compute the library's unlabelled loss and
    gradients for the same draws: the three times are like for like."""
    import pyro
    import torch
    from torch.testing import assert_close

    from pyro_vae import SSVAE

    module = benchmark_module("ss_step")
    torch.manual_seed(0)
    ssvae = SSVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden_dims=(8,)).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64).round()
    params = list(ssvae.parameters())
    results = []
    for loss_of, joined in ((module.library_loss, False), (module.reference_loss, False), (module.library_loss, True)):
        pyro.set_rng_seed(3)
        with module.joined_input() if joined else contextlib.nullcontext():
            loss = loss_of(ssvae, x)
        results.append((loss, torch.autograd.grad(loss, params)))
    for loss, grads in results[1:]:
        assert_close(loss, results[0][0])
        for a, b in zip(grads, results[0][1]):
            assert_close(a, b)

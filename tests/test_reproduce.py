"""The reproduction scripts run end to end in their --smoke-test mode (tiny models on sklearn's digits)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# each trains and evaluates several models in a fresh interpreter: run by CI, not by default
pytestmark = pytest.mark.slow


def _run(script, tmp_path, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke-test", "--out", str(tmp_path),
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_reproduce_iwae_smoke(tmp_path):
    _run("reproduce_iwae.py", tmp_path, "--rows", "vae-k1-l1,iwae-k5-l2")
    one = json.loads((tmp_path / "vae-k1-l1-dynamic.json").read_text())
    two = json.loads((tmp_path / "iwae-k5-l2-dynamic.json").read_text())
    assert one["paper_test_log_likelihood"] == -86.76 and two["paper_test_log_likelihood"] == -83.89
    assert two["active_units"].keys() == {"h1", "h2"}
    assert one["passes"] == 2 and one["fraction_of_paper_budget"] == 2 / 3280
    # IWAE_k is non-decreasing in k up to noise, and the estimate is finite
    assert two["iwae_curve"]["5"] > two["iwae_curve"]["1"] - 1.0
    for row in (one, two):
        values = torch.tensor(row["test_log_likelihood_values"], dtype=torch.float64)
        assert len(values) == row["eval_num"] == 40
        # the reported mean and standard error are those of the per-datapoint estimates
        assert row["test_log_likelihood"] == pytest.approx(float(values.mean()), abs=1e-6)
        assert row["test_log_likelihood_stderr"] == pytest.approx(float(values.std() / 40 ** 0.5), rel=1e-3)
        # 64 binary pixels: between a fair coin per pixel (-64 log 2 = -44.4 nats) and certainty (0)
        assert -64 * math.log(2) < row["test_log_likelihood"] < 0
        # log-mean-exp of K weights is at least their mean: IWAE_K >= the ELBO of the same draws
        assert row["test_log_likelihood"] >= row["test_elbo"] - 1e-6


def test_two_stage_smoke(tmp_path):
    _run("two_stage.py", tmp_path, "--no-figure")
    rec = json.loads((tmp_path / "two_stage.json").read_text())
    assert set(rec["fcd"]) == {"plain VAE (gamma = 1)", "learned-gamma VAE (stage 1 only)", "two-stage VAE",
                               "two-stage VAE, stage 2 on means"}
    # stage 2 on draws z ~ q(z | x) learns their spread; the posterior means are narrower on every dimension
    spread = rec["code_variance_per_dim"]
    assert all(m < s for m, s in zip(spread["posterior means"], spread["z ~ q(z | x) (aggregate posterior)"]))
    # the sampler study reads the same folder: both samplers, each seed, the spread of the FCD over seeds
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "two_stage_sampling.py"), str(tmp_path),
                           "--seeds", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = json.loads(proc.stdout.strip().splitlines()[-1])
    drawn = study["fcd"]["z drawn from p(z | u) (the sampler)"]
    assert len(drawn["values"]) == 2 and drawn["values"][0] != drawn["values"][1]  # the seed changes the samples
    assert drawn["mean"] == pytest.approx(sum(drawn["values"]) / 2) and drawn["sd"] > 0
    assert study["stage2_gamma"] > 0
    assert len(rec["gamma_trajectory"]) == 2
    assert "Gaussian KDE (Parzen)" in rec["log_likelihood"]

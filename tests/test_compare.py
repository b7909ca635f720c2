"""``pyro-vae compare`` (``pyro_vae.pipeline.compare_runs``, issue 33): runs measured on the same points with the same
binarization and seeds, so that the table equals ``log_likelihood``'s on those points and the paired differences
equal ``infer.compare``'s; an evaluation of the same setting is reused and said so; every refusal comes before any
work and names the runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from pyro_vae import infer
from pyro_vae.io import RunLock
from pyro_vae.pipeline import compare_runs, evaluate_run, get_kind, train_run
from pyro_vae.pipeline.compare import COMPARISON_NAME, check_comparison, read_comparison, table_rows
from pyro_vae.runs import load_run, run_test_data

K, N, BATCH = 30, 40, 16  # a batch size that does not divide N: the seeds are per batch, the last one short
TINY = {"dataset": "digits", "latent_dim": 3, "hidden_dims": "16", "epochs": 1, "batch_size": 200}


def _quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    """Three small runs on the digits: a VAE, an IWAE-trained one and one with another latent size."""
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for name, extra in (("elbo", {}), ("iwae", {"objective": "iwae", "num_particles": 3}), ("z2", {"latent_dim": 2})):
        train_run({**TINY, **extra}, root / name, progress=False, say=_quiet)
        runs.append(root / name)
    return runs


def _copy(run: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(run, dest)
    if config_changes:
        config = json.loads((dest / "config.json").read_text())
        for key, value in config_changes.items():
            if isinstance(value, dict):
                config[key] = {**config.get(key, {}), **value}
            else:
                config[key] = value
        (dest / "config.json").write_text(json.dumps(config))
    return dest


def _direct(run: Path):
    """``log_likelihood`` of the run on the first N test points, called by hand."""
    vae, config = load_run(run)
    x, _ = run_test_data(config, num=N, seed=0)
    measured = get_kind(config.get("class", "VAE")).measured(vae)
    return infer.log_likelihood(measured.model, measured.guide, x, num_particles=K, batch_size=BATCH, seed=0,
                                progress=False)


def test_the_table_is_log_likelihoods_on_the_same_points_and_the_differences_are_infer_compares(three_runs, tmp_path):
    said = []
    out = compare_runs(three_runs, tmp_path / "cmp", num_particles=K, num=N, batch_size=BATCH, device="cpu",
                       progress=False, say=lambda *a, **k: said.append(a[0]))
    direct = [_direct(r) for r in three_runs]
    for row, result in zip(out["runs"], direct):
        assert row["iwae"]["mean"] == pytest.approx(result.mean, abs=1e-12)
        assert row["iwae"]["stderr"] == pytest.approx(result.stderr, abs=1e-12)
        assert row["iwae"]["mc_stderr"] == pytest.approx(result.mean_mc_stderr, abs=1e-12)
        assert row["elbo"]["mean"] == pytest.approx(float(result.elbo.double().mean()), abs=1e-12)
        assert row["khat_above"] == pytest.approx(float((result.khat > 0.7).double().mean()))
        assert row["reused"] is False and row["epochs"] == 1 and row["parameters"] > 0
    assert [d["run"] for d in out["differences"]] == ["iwae", "iwae", "z2", "z2"]
    for d in out["differences"]:
        other = direct[[r.name for r in three_runs].index(d["run"])]
        if d["estimate"] == "ELBO":
            c = infer.compare(other.elbo, direct[0].elbo)
            assert d["mc_stderr"] is None
        else:
            assert d["estimate"] == f"IWAE_{K}"
            c = infer.compare(other, direct[0])
            assert d["mc_stderr"] == pytest.approx(c.mc_stderr, abs=1e-12) and math.isfinite(c.mc_stderr)
        assert (d["mean"], d["stderr"]) == pytest.approx((c.mean, c.stderr), abs=1e-12)
        assert d["ci95"] == pytest.approx([c.ci_low, c.ci_high], abs=1e-12)
        assert d["against"] == "elbo" and d["num_datapoints"] == N
    # what is written reads back the same, with every run's values
    saved, results = read_comparison(tmp_path / "cmp")
    assert saved["differences"] == out["differences"] and list(results) == ["elbo", "iwae", "z2"]
    torch.testing.assert_close(results["iwae"].values, direct[1].values)
    for name in ("comparison.json", "comparison_values.pt", "k_curves.png", "differences.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    headers, rows, _, diff_rows = table_rows(saved)
    assert headers[:3] == ["run", "ELBO", f"IWAE_{K}"] and [r[0] for r in rows] == ["elbo", "iwae", "z2"]
    assert len(diff_rows) == 4 and all("measuring" in line for line in said)


def test_an_evaluation_of_the_same_setting_is_reused_and_said_so_another_is_not(three_runs, tmp_path):
    runs = [_copy(r, tmp_path / r.name) for r in three_runs[:2]]
    evaluate_run(runs[0], num_particles=K, num=N, batch_size=BATCH, device="cpu", progress=False)
    evaluate_run(runs[1], num_particles=K + 1, num=N, batch_size=BATCH, device="cpu", progress=False)
    said = []
    out = compare_runs(runs, tmp_path / "cmp", num_particles=K, num=N, batch_size=BATCH, device="cpu",
                       progress=False, say=lambda *a, **k: said.append(a[0]))
    assert [r["reused"] for r in out["runs"]] == [True, False]
    assert said[0].startswith("elbo: reused") and "evaluation.json" in said[0] and "measuring" in said[1]
    direct = _direct(runs[0])
    torch.testing.assert_close(out["results"]["elbo"].values, direct.values)  # the reused values are the same
    assert out["runs"][0]["active_units"] >= 0 and out["runs"][0]["dimensions"] == 3
    # another batch size draws other seeds: not reused
    again = compare_runs(runs, tmp_path / "cmp2", num_particles=K, num=N, batch_size=BATCH + 1, device="cpu",
                         progress=False)
    assert [r["reused"] for r in again["runs"]] == [False, False]
    # an evaluation marked stale (the run trained on) is not reused either
    evaluation = json.loads((runs[0] / "evaluation.json").read_text())
    (runs[0] / "evaluation.json").write_text(json.dumps({**evaluation, "stale": "trained on"}))
    stale = compare_runs(runs, tmp_path / "cmp3", num_particles=K, num=N, batch_size=BATCH, device="cpu",
                         progress=False)
    assert stale["runs"][0]["reused"] is False


def test_ais_is_added_and_paired_where_asked(three_runs, tmp_path):
    out = compare_runs(three_runs[:2], tmp_path / "cmp", num_particles=K, num=12, batch_size=BATCH, device="cpu",
                       ais_steps=4, ais_chains=4, progress=False)
    ais = out["ais_results"]
    assert set(ais) == {"elbo", "iwae"} and out["runs"][1]["ais"]["num_steps"] == 4
    d = next(d for d in out["differences"] if d["estimate"] == "AIS")
    c = infer.compare(ais["iwae"], ais["elbo"])
    assert (d["mean"], d["stderr"], d["mc_stderr"]) == pytest.approx((c.mean, c.stderr, c.mc_stderr), abs=1e-12)
    assert "AIS" in table_rows(out)[0]


def test_refusals_come_before_any_work_and_name_the_runs(three_runs, tmp_path):
    a, b = three_runs[:2]
    out = tmp_path / "cmp"

    def refused(runs, message, error=ValueError, **kw):
        with pytest.raises(error, match=message):
            compare_runs(runs, out, num_particles=K, num=N, device="cpu", progress=False, **kw)
        assert not out.exists()

    refused([a], "at least two runs")
    refused([a, a], "named twice")
    with pytest.raises(ValueError, match="--num-particles must be >= 1"):
        compare_runs([a, b], out, num_particles=0, progress=False)
    refused([a, b], "--allow everything: unknown", allow=["everything"])
    other_split = _copy(b, tmp_path / "valid-split", splits={"test": "valid"})
    refused([a, other_split], r"different data.*elbo: digits test split.*valid-split: digits valid split")
    grey = _copy(b, tmp_path / "grey", training={"binarize": False}, vae={"likelihood": "gaussian"})
    refused([a, grey], r"different data.*grey: digits test split\b(?!, binarized)")
    # grey levels as Bernoulli targets: evaluated on the binarized test points (run_test_data), the same data as a
    # binarized run, so compared
    bernoulli = _copy(b, tmp_path / "grey-bernoulli", training={"binarize": False})
    assert len(check_comparison([a, bernoulli], ais_steps=0, num_particles=K, num=N, chunk_size=None,
                                ais_chains=4, batch_size=BATCH)) == 2
    labelled = _copy(b, tmp_path / "ss", **{"class": "SSVAE"})
    refused([a, labelled], r"ss measure log p\(x\) with the label summed.*elbo plain log p\(x\).*--allow label-summed")
    checked = check_comparison([a, labelled], allow=["label-summed"], ais_steps=5, num_particles=K, num=N,
                               chunk_size=None, ais_chains=4, batch_size=BATCH)
    assert checked[0].ais_refused is None and "AIS" in checked[1].ais_refused  # AIS left out where not allowed
    with RunLock(b):  # a run still training holds its lock
        refused([a, b], r"still training \(the run's lock is held\): iwae", error=OSError)


def test_the_command_line_prints_the_table_and_the_paired_differences(three_runs, tmp_path, run_cli):
    code, out, err = run_cli(["compare", *three_runs[:2], "--num-particles", K, "--num-datapoints", N, "--out",
                              tmp_path / "cmp", "--no-progress", "--device", "cpu"])
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("run ") and f"IWAE_{K}" in line and "k-hat > 0.7" in line for line in lines)
    assert any(line.startswith("elbo ") for line in lines) and any(line.startswith("iwae ") for line in lines)
    assert "paired differences against the first run" in out and "iwae − elbo" in out
    assert json.loads((tmp_path / "cmp" / COMPARISON_NAME).read_text())["setting"]["num_particles"] == K
    code, _, err = run_cli(["compare", three_runs[0], "--out", tmp_path / "c2"])
    assert code == 2 and "at least two runs" in err and not (tmp_path / "c2").exists()

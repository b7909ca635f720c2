"""Tests of the ``pyro-vae`` command line (``pyro_vae.cli.main``), on scikit-learn's digits (no files needed)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.cli import load_run, main
from pyro_vae.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
TEST_ELBO = re.compile(r"^test ELBO: (\S+) nats", re.MULTILINE)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return matplotlib.image.imread(path)


def assert_picture(path: Path) -> np.ndarray:
    img = read_png(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert img[..., :3].std() > 0.05, f"{path} is (almost) one colour"
    return img


@pytest.fixture(autouse=True)
def _seed() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One short training run on digits, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("cli") / "run"
    code, out, err = run_cli(["train", "--dataset", "digits", "--epochs", str(EPOCHS), "--out", str(run),
                              "--no-progress"])
    assert code == 0, err
    return run, out


def test_train_writes_a_run_folder(trained: tuple[Path, str]) -> None:
    run, out = trained
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "samples.png", "training.png",
                 "test_metrics.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "digits"
    assert config["vae"]["input_shape"] == [1, 8, 8]
    assert config["vae"]["likelihood"] == "bernoulli"
    assert config["training"]["epochs"] == EPOCHS and config["training"]["binarize"] is True
    assert config["splits"] == {"train": "train-without-valid", "valid": "valid", "test": "test"}
    VAE(**config["vae"])  # the stored config rebuilds the model
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(json.loads(line)["val_elbo"]) for line in lines)
    match = TEST_ELBO.search(out)
    assert match, out
    test_elbo = float(match.group(1))
    # 64 binary pixels: a fair coin per pixel scores -64 log 2 = -44.4 nats; 3 epochs reach about -28.4
    assert -64 * math.log(2) + 10 < test_elbo < 0
    # the test split and the validation split are draws of one distribution: their ELBOs agree within noise
    # (per-datapoint spread about 5 nats over about 300 datapoints each: a standard error near 0.45 for the gap)
    assert abs(test_elbo - json.loads(lines[-1])["val_elbo"]) < 2.5
    assert json.loads((run / "test_metrics.json").read_text())["elbo"] == pytest.approx(test_elbo, abs=0.006)
    assert_picture(run / "samples.png")
    assert_picture(run / "training.png")


def test_load_run(trained: tuple[Path, str]) -> None:
    run, _ = trained
    vae, config = load_run(run)
    assert isinstance(vae, VAE) and not vae.training
    assert config["vae"] == vae.config
    state = load_checkpoint(run / "checkpoint.pt")["pair"]["module"]
    for name, value in vae.state_dict().items():
        torch.testing.assert_close(value, state[name])
    assert vae.sample(5).shape == (5, 1, 8, 8)


def test_sample(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    code, out, err = run_cli(["sample", str(run), "--num-samples", "16", "--out", str(tmp_path / "a.png")])
    assert code == 0, err
    a = assert_picture(tmp_path / "a.png")
    assert run_cli(["sample", str(run), "--num-samples", "16", "--out", str(tmp_path / "b.png")])[0] == 0
    assert run_cli(["sample", str(run), "--num-samples", "16", "--out", str(tmp_path / "c.png"),
                    "--seed", "1"])[0] == 0
    np.testing.assert_array_equal(a, read_png(tmp_path / "b.png"))  # same seed, same picture
    assert not np.array_equal(a, read_png(tmp_path / "c.png"))


def test_reconstruct(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    code, out, err = run_cli(["reconstruct", str(run), "--num", "16", "--out", str(tmp_path / "r.png")])
    assert code == 0, err
    assert_picture(tmp_path / "r.png")
    assert str(tmp_path / "r.png") in out


def test_resume_continues_the_run(trained: tuple[Path, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    code, out, err = run_cli(["train", "--out", str(run), "--resume", "--epochs", str(EPOCHS + 2), "--no-progress"])
    assert code == 0, err
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    original = [json.loads(line) for line in (trained[0] / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in resumed] == list(range(1, EPOCHS + 3))
    assert resumed[:EPOCHS] == original
    assert json.loads((run / "config.json").read_text())["training"]["epochs"] == EPOCHS + 2
    assert TEST_ELBO.search(out)

    # resuming gives the same result as training the epochs in one go
    straight = tmp_path / "straight"
    assert run_cli(["train", "--epochs", str(EPOCHS + 2), "--out", str(straight), "--no-progress"])[0] == 0
    last = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["loss"] == pytest.approx(resumed[-1]["loss"], rel=1e-5)
    assert last["val_elbo"] == pytest.approx(resumed[-1]["val_elbo"], rel=1e-5)


def test_resume_keeps_the_model(trained: tuple[Path, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "--latent-dim", "3"])
    assert code == 2 and "--latent-dim" in err


def test_existing_run_needs_resume(trained: tuple[Path, str]) -> None:
    code, _, err = run_cli(["train", "--out", str(trained[0]), "--epochs", "1"])
    assert code == 2 and "--resume" in err


@pytest.mark.parametrize("argv, message", [
    (["sample", "{tmp}/missing"], "does not exist"),
    (["reconstruct", "{tmp}/missing"], "does not exist"),
    (["evaluate", "{tmp}/missing"], "does not exist"),
    (["evaluate", "{tmp}"], "no config.json"),
    (["sample", "{tmp}"], "no config.json"),
    (["train", "--dataset", "no-such-set", "--out", "{tmp}/run"], "unknown data set 'no-such-set'"),
    (["train", "--likelihood", "no-such-likelihood", "--out", "{tmp}/run"], "invalid choice: 'no-such-likelihood'"),
    (["train", "--objective", "no-such-objective", "--out", "{tmp}/run"], "invalid choice: 'no-such-objective'"),
    (["train", "--activation", "swishy", "--out", "{tmp}/run"], "invalid choice: 'swishy'"),
    (["train", "--hidden-dims", "a,b", "--out", "{tmp}/run"], "--hidden-dims"),
    (["train", "--resume", "--out", "{tmp}/missing"], "does not exist"),
])
def test_clear_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    code, out, err = run_cli([a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    # a usage error is argparse's (the usage, then "pyro-vae train: error: ..." with the choices), bad input ours
    assert (err.startswith("pyro-vae: error: ") or "pyro-vae train: error: " in err) and message in err, err
    if "invalid choice" in message:
        option = argv[1].lstrip("-")
        names = {"likelihood": "continuous_bernoulli", "objective": "iwae-dreg", "activation": "gelu"}[option]
        assert names in err  # the message lists the choices
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a command that failed its checks


def test_folder_without_checkpoint(tmp_path: Path, trained: tuple[Path, str]) -> None:
    shutil.copy(trained[0] / "config.json", tmp_path / "config.json")
    code, _, err = run_cli(["sample", str(tmp_path)])
    assert code == 2 and "checkpoint.pt" in err
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path)


def test_usage_errors_return_2() -> None:
    assert run_cli([])[0] == 2
    assert run_cli(["no-such-command"])[0] == 2
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "--resume" in out


def test_train_toy_set_with_scatter_samples(tmp_path: Path) -> None:
    code, out, err = run_cli(["train", "--dataset", "ring", "--epochs", "2", "--out", str(tmp_path / "ring"),
                              "--no-progress"])
    assert code == 0, err
    config = json.loads((tmp_path / "ring" / "config.json").read_text())
    assert config["vae"]["likelihood"] == "normal" and config["training"]["binarize"] is False
    assert math.isfinite(float(TEST_ELBO.search(out).group(1)))
    assert_picture(tmp_path / "ring" / "samples.png")


def test_python_dash_m(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "sample", str(run), "--out",
                           str(tmp_path / "s.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_picture(tmp_path / "s.png")
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "sample", str(tmp_path / "missing")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pyro-vae: error: ") and "Traceback" not in proc.stderr


def test_evaluate_writes_estimates_diagnostics_and_figures(trained: tuple[Path, str]) -> None:
    run, _ = trained
    code, out, err = run_cli(["evaluate", str(run), "--num-particles", "60", "--num", "40", "--no-progress"])
    assert code == 0, err
    report = json.loads((run / "evaluation.json").read_text())
    assert report["num_particles"] == 60 and report["num_datapoints"] == 40
    assert set(report["curve"]) == {"1", "5", "50", "60"}  # ends at the headline K
    # IWAE_60 >= ELBO on average (tolerance from the paired standard error), and the curve rises with K
    assert report["gap"] > -3 * report["gap_stderr"]
    assert report["curve"]["50"]["mean"] > report["curve"]["1"]["mean"]
    assert report["latent_usage"]["z"]["dimensions"] == 8
    bands = report["khat_bands"]
    assert sum(bands.values()) == 40 and report["num_unreliable"] == bands["bad"]
    assert report["khat_threshold"] == pytest.approx(1 - 1 / math.log10(60))
    for name in ("k_curve.png", "gaps.png", "khat.png"):
        assert_picture(run / name)
    assert "log p(x) (IWAE, K=60)" in out and "Pareto k-hat" in out and "units active" in out
    code, _, err = run_cli(["evaluate", str(run), "--num-particles", "0"])
    assert code == 2 and "--num-particles" in err


def test_hierarchical_and_two_stage_runs_are_readable(tmp_path: Path) -> None:
    """``train --layers`` and ``train --two-stage`` runs work with sample, reconstruct and evaluate."""
    layers, two = tmp_path / "layers", tmp_path / "two"
    code, _, err = run_cli(["train", "--layers", "32,8;16,4", "--epochs", "2", "--out", str(layers), "--no-progress"])
    assert code == 0, err
    code, _, err = run_cli(["train", "--two-stage", "--epochs", "2", "--stage2-epochs", "1", "--likelihood",
                            "normal-gamma", "--out", str(two), "--no-progress"])
    assert code == 0, err
    from pyro_vae import HierarchicalVAE, TwoStageVAE

    assert isinstance(load_run(layers)[0], HierarchicalVAE) and isinstance(load_run(two)[0], TwoStageVAE)
    for run in (layers, two):
        code, _, err = run_cli(["sample", str(run), "--out", str(run / "s.png")])
        assert code == 0, err
        assert_picture(run / "s.png")
        code, out, err = run_cli(["evaluate", str(run), "--num-particles", "20", "--num", "20", "--no-progress"])
        assert code == 0 and "log p(x) (IWAE, K=20)" in out, err
    code, _, err = run_cli(["reconstruct", str(layers), "--out", str(layers / "r.png")])
    assert code == 0, err
    for run in (layers, two):  # every figure of every model class
        code, _, err = run_cli(["plot", str(run), "--out", str(run / "figures"), "--num-particles", "10",
                                "--num", "30"])
        assert code == 0, err
        assert_picture(run / "figures" / "latent_space.png")
    # one saved-model format: pyro_vae.load reads the run folder and its model/ folder alike
    import pyro_vae

    for run, cls in ((layers, HierarchicalVAE), (two, TwoStageVAE)):
        assert isinstance(pyro_vae.load(run), cls) and isinstance(pyro_vae.load(run / "model"), cls)
    # a run of version 0.1 (weights in model.pt) still loads
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((layers / "config.json").read_text())
    torch.save(load_run(layers)[0].state_dict(), legacy / "model.pt")
    assert isinstance(load_run(legacy)[0], HierarchicalVAE)
    (legacy / "model.pt").write_bytes(b"not a weights file")
    code, _, err = run_cli(["sample", str(legacy)])
    assert code == 2 and "model.pt" in err
    (two / "model" / "weights.pt").write_bytes(b"not a weights file")
    code, _, err = run_cli(["sample", str(two)])
    assert code == 2 and "weights.pt" in err


def test_hierarchical_and_two_stage_runs_resume(tmp_path: Path) -> None:
    """``--resume`` continues ``--layers`` and ``--two-stage`` runs from their checkpoints."""
    layers, two = tmp_path / "layers", tmp_path / "two"
    code, _, err = run_cli(["train", "--layers", "32,8;16,4", "--epochs", "1", "--out", str(layers), "--no-progress"])
    assert code == 0, err
    code, _, err = run_cli(["train", "--out", str(layers), "--resume", "--epochs", "3", "--no-progress"])
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (layers / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    code, _, err = run_cli(["train", "--two-stage", "--epochs", "1", "--stage2-epochs", "1", "--out", str(two),
                            "--no-progress"])
    assert code == 0, err
    code, _, err = run_cli(["train", "--out", str(two), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, err
    history = json.loads((two / "history.json").read_text())
    assert len(history["stage1"]) == 2 and "gamma" in history["stage1"][-1]
    code, _, err = run_cli(["train", "--layers", "32,8;16,4", "--epochs", "1", "--out", str(layers), "--no-progress"])
    assert code == 2 and "--resume" in err


def test_fixed_value_options_list_the_registries_names_and_take_the_old_objective_spellings(tmp_path: Path) -> None:
    """--likelihood, --activation and --objective have argparse choices, spelled in cli.py so that parsing imports
    no torch; they must stay the registries' names. The older objective spellings (mean_field, iwae_dreg) are
    taken on the command line and in a config file, and stored as the one spelling."""
    from pyro_vae import cli
    from pyro_vae.infer.objectives import OBJECTIVES
    from pyro_vae.likelihoods import LIKELIHOODS
    from pyro_vae.nets import ACTIVATIONS

    assert set(cli.LIKELIHOOD_NAMES) == set(LIKELIHOODS)
    assert set(cli.ACTIVATION_NAMES) == set(ACTIVATIONS)
    assert set(cli.OBJECTIVE_NAMES) == set(OBJECTIVES)
    assert all("_" not in name for name in OBJECTIVES)  # one separator
    code, _, err = run_cli(["train", "--objective", "mean_field", "--epochs", "1", "--out", str(tmp_path / "a"),
                            "--no-progress"])
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "config.json").read_text())["training"]["objective"] == "mean-field"
    config = tmp_path / "run.yaml"
    config.write_text("objective: iwae_dreg\nepochs: 1\n")
    code, _, err = run_cli(["train", "--config", str(config), "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["training"]["objective"] == "iwae-dreg"

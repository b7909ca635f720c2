"""Tests of the ``pyro-vae`` command line (``pyro_vae.cli.main``), on scikit-learn's digits (no files needed): the
subcommands, bad input refused with a message and before anything is written, untrusted files, signals."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae import VAE
from pyro_vae.cli import load_run, main
from pyro_vae.train import CHECKPOINT_NAME, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
TEST_ELBO = re.compile(r"^test ELBO: (\S+) nats", re.MULTILINE)


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, run_cli) -> tuple[Path, str]:
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


def test_sample(trained: tuple[Path, str], tmp_path: Path, run_cli) -> None:
    run, _ = trained
    code, out, err = run_cli(["sample", str(run), "--num-samples", "16", "--out", str(tmp_path / "a.png")])
    assert code == 0, err
    a = assert_picture(tmp_path / "a.png")
    assert run_cli(["sample", str(run), "--num-samples", "16", "--out", str(tmp_path / "b.png")])[0] == 0
    assert run_cli(["sample", str(run), "--num-samples", "16", "--out", str(tmp_path / "c.png"),
                    "--seed", "1"])[0] == 0
    np.testing.assert_array_equal(a, read_png(tmp_path / "b.png"))  # same seed, same picture
    assert not np.array_equal(a, read_png(tmp_path / "c.png"))


def test_reconstruct(trained: tuple[Path, str], tmp_path: Path, run_cli) -> None:
    run, _ = trained
    code, out, err = run_cli(["reconstruct", str(run), "--num", "16", "--out", str(tmp_path / "r.png")])
    assert code == 0, err
    assert_picture(tmp_path / "r.png")
    assert str(tmp_path / "r.png") in out


def test_resume_continues_the_run(trained: tuple[Path, str], tmp_path: Path, run_cli) -> None:
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


def _log_lines(run: Path) -> list[str]:
    """train.log without the time stamps (each line starts with 'YYYY-MM-DD HH:MM:SS ')."""
    lines = (run / "train.log").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), lines
    return [line[20:] for line in lines]


def test_train_log_holds_what_train_said_and_each_epoch(trained: tuple[Path, str], tmp_path: Path, run_cli) -> None:
    """train.log: the lines train printed, one per epoch (as metrics.jsonl has them) and the test metrics; a resumed
    run appends below them."""
    lines = _log_lines(trained[0])
    assert lines[0] == f"run folder: {trained[0]}" and lines[1].startswith("data: digits")
    epochs = [line for line in lines if line.startswith("epoch ")]
    records = [json.loads(line) for line in (trained[0] / "metrics.jsonl").read_text().splitlines()]
    assert [e.split(":")[0] for e in epochs] == [f"epoch {i}/{EPOCHS}" for i in range(1, EPOCHS + 1)]
    assert all(f"loss {r['loss']:.3f}, valid ELBO {r['val_elbo']:.3f}" in e for e, r in zip(epochs, records))
    test = json.loads((trained[0] / "test_metrics.json").read_text())
    prefix = "test metrics (test_metrics.json): "
    assert lines[-1].startswith(prefix) and json.loads(lines[-1][len(prefix):]) == test
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    assert run_cli(["train", "--out", str(run), "--resume", "--epochs", str(EPOCHS + 1), "--no-progress"])[0] == 0
    resumed = _log_lines(run)
    assert resumed[: len(lines)] == lines and resumed[len(lines)] == f"run folder: {run}"
    assert [line.split(":")[0] for line in resumed[len(lines):] if line.startswith("epoch ")] == [
        f"epoch {EPOCHS + 1}/{EPOCHS + 1}"]


def test_resume_keeps_the_model(trained: tuple[Path, str], tmp_path: Path, run_cli) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "--latent-dim", "3"])
    assert code == 2 and "--latent-dim" in err


def test_existing_run_needs_resume(trained: tuple[Path, str], run_cli) -> None:
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
def test_clear_errors(tmp_path: Path, argv: list[str], message: str, run_cli) -> None:
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


def test_folder_without_checkpoint(tmp_path: Path, trained: tuple[Path, str], run_cli) -> None:
    shutil.copy(trained[0] / "config.json", tmp_path / "config.json")
    code, _, err = run_cli(["sample", str(tmp_path)])
    assert code == 2 and "checkpoint.pt" in err
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path)


def test_usage_errors_return_2(run_cli) -> None:
    assert run_cli([])[0] == 2
    assert run_cli(["no-such-command"])[0] == 2
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "--resume" in out


def test_train_toy_set_with_scatter_samples(tmp_path: Path, run_cli) -> None:
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


def test_evaluate_writes_estimates_diagnostics_and_figures(trained: tuple[Path, str], run_cli) -> None:
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


def test_hierarchical_and_two_stage_runs_are_readable(tmp_path: Path, run_cli) -> None:
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


def test_hierarchical_and_two_stage_runs_resume(tmp_path: Path, run_cli, copy_run) -> None:
    """``--resume`` continues ``--layers`` and ``--two-stage`` runs from their checkpoints."""
    layers, two = tmp_path / "layers", tmp_path / "two"
    copy_run(layers, "layers")  # train --layers 32,8;16,4 --epochs 1
    code, _, err = run_cli(["train", "--out", str(layers), "--resume", "--epochs", "3", "--no-progress"])
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (layers / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    copy_run(two, "two-stage")  # train --two-stage --epochs 1 --stage2-epochs 1
    code, out, err = run_cli(["train", "--out", str(two), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, err
    # stage 1 trained a second epoch, so stage 2 (fitted to the old codes) started again; the old one is kept
    assert "starts again on the new ones" in out
    assert [json.loads(line)["epoch"] for line in (two / "stage1" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [json.loads(line)["epoch"] for line in (two / "stage2" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (two / "stage2-on-stage1-epoch1" / "checkpoint.pt").is_file()
    code, out, err = run_cli(["train", "--out", str(two), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0 and "nothing to train" in out, err
    history = json.loads((two / "history.json").read_text())
    assert len(history["stage1"]) == 2 and "gamma" in history["stage1"][-1]
    code, _, err = run_cli(["train", "--layers", "32,8;16,4", "--epochs", "1", "--out", str(layers), "--no-progress"])
    assert code == 2 and "--resume" in err


def test_fixed_value_options_list_the_registries_names_and_take_the_old_objective_spellings(tmp_path: Path,
                                                                                             run_cli) -> None:
    """--likelihood, --activation, --objective and the semi-supervised schedule options have argparse choices,
    spelled in cli.py so that parsing imports no torch; they must stay the registries' names. The older objective
    spellings (mean_field, iwae_dreg) are taken on the command line and in a config file, and stored as the one
    spelling."""
    from pyro_vae import cli
    from pyro_vae.infer.objectives import OBJECTIVES
    from pyro_vae.likelihoods import LIKELIHOODS
    from pyro_vae.nets import ACTIVATIONS
    from pyro_vae.priors import PRIORS
    from pyro_vae.train.semi_supervised import AUX_STEPS, LABELLED_SCHEDULES, LOSS_SCALES

    assert set(cli.PRIOR_NAMES) == set(PRIORS)
    assert set(cli.LIKELIHOOD_NAMES) == set(LIKELIHOODS)
    assert set(cli.ACTIVATION_NAMES) == set(ACTIVATIONS)
    assert set(cli.OBJECTIVE_NAMES) == set(OBJECTIVES)
    assert (cli.AUX_STEP_NAMES, cli.LOSS_SCALE_NAMES, cli.LABELLED_SCHEDULE_NAMES) == (
        AUX_STEPS, LOSS_SCALES, LABELLED_SCHEDULES)
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


def test_cli_refuses_bad_options_without_a_traceback_or_a_file(tmp_path, run_cli):
    code, _, err = run_cli(["train", "--device", "bogus", "--out", tmp_path / "a"])
    assert code == 2 and "unknown device" in err and "Traceback" not in err and not (tmp_path / "a").exists()
    code, _, err = run_cli(["plot", tmp_path / "typo", "--out", tmp_path / "figs"])
    assert code == 2 and not (tmp_path / "figs").exists()
    config = tmp_path / "run.yaml"
    for text, match in (("epochs: five\n", "epochs must be an integer"), ("two_stage: 'no'\n", "true or false"),
                        ("binarize: maybe\n", "true, false or auto"), ("epochs: 1.5\n", "integer")):
        config.write_text(text)
        code, _, err = run_cli(["train", "--config", config, "--out", tmp_path / "b"])
        assert code == 2 and match in err, (text, err)
    config.write_text("lr: 1e-3\nepochs: 1\nbinarize: true\n")  # YAML reads 1e-3 as a string: converted
    code, _, err = run_cli(["train", "--config", config, "--out", tmp_path / "c", "--no-progress"])
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "config.json").read_text())["training"]["lr"] == 1e-3


def test_cli_defaults_write_into_the_run_folder_and_objective_spellings_agree(tmp_path, monkeypatch, run_cli):
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--epochs", "1", "--out", run, "--objective", "mean-field", "--no-progress"])
    assert code == 0, err
    assert run_cli(["sample", run])[0] == 0 and (run / "samples-sample.png").is_file()
    assert run_cli(["reconstruct", run])[0] == 0 and (run / "reconstructions.png").is_file()
    assert not list(tmp_path.glob("*.png"))  # nothing in the current folder
    code, out, _ = run_cli(["evaluate", run, "--num-particles", "8", "--num", "10", "--no-progress"])
    assert code == 0 and "evaluation.json" in out and "k_curve.png" in out and "gaps.png" in out
    from pyro_vae.infer.objectives import OBJECTIVES, get_objective

    assert get_objective("iwae_dreg") is OBJECTIVES["iwae-dreg"] and get_objective("mean_field") is OBJECTIVES[
        "mean-field"]
    code, _, err = run_cli(["train", "--prior", "laplace", "--out", tmp_path / "x"])
    assert code == 2 and "invalid choice" in err


def test_evaluate_reports_ais_beside_the_elbo_and_iwae(tmp_path, run_cli, copy_run):
    run = tmp_path / "run"
    copy_run(run)
    code, out, err = run_cli(["evaluate", run, "--num-particles", "20", "--num", "12", "--ais-steps", "10",
                              "--ais-chains", "4", "--no-progress"])
    assert code == 0, err
    assert "log p(x) (AIS, 4 chains, 10 steps)" in out and "AIS - IWAE" in out
    report = json.loads((run / "evaluation.json").read_text())
    assert report["ais"]["num_steps"] == 10 and "minus_iwae" in report["ais"]
    # AIS - IWAE has the sign its name says: the paired mean is the difference of the two means (same datapoints)
    minus_iwae = report["ais"]["log_likelihood"] - report["log_likelihood"]
    assert report["ais"]["minus_iwae"]["mean"] == pytest.approx(minus_iwae, abs=1e-9)
    assert f"AIS - IWAE: {minus_iwae:.3f} +-" in out
    assert run_cli(["evaluate", run, "--ais-steps", "-1"])[0] == 2


def test_help_is_fast_because_it_imports_neither_torch_nor_pyro():
    code = ("import sys; from pyro_vae.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'pyro' not in sys.modules, sorted(sys.modules)[:5]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--prior" in proc.stdout
    import pyro_vae as package

    assert package.VAE is pyro_vae.models.VAE and callable(package.fit) and callable(package.load)


def test_a_layers_run_with_a_bad_option_writes_nothing_so_the_retry_runs(tmp_path, run_cli):
    out = tmp_path / "h"
    for bad, message in ((["--lr", "-1"], "--lr must be > 0"), (["--batch-size", "0"], "--batch-size must be >= 1"),
                         (["--layers", "16,x"], "--layers")):  # refused by the variant itself, not by argparse
        argv = ["train", "--layers", "16,4", "--out", out, "--epochs", "1", *bad]
        code, _, err = run_cli(argv)
        assert code == 2 and message in err and not out.exists(), err
    code, _, err = run_cli(["train", "--layers", "16,4", "--out", out, "--epochs", "1", "--no-progress"])
    assert code == 0, err


def test_sigterm_during_training_ends_with_a_message_and_the_run_resumes(tmp_path):
    """SIGTERM (a scheduler's stop) used to end the program silently; now it ends as Ctrl-C does: a message, exit
    status 143, the lock released, the complete epochs kept, and --resume continues."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pyro_vae", "train", "--dataset", "digits", "--epochs", "400", "--out", str(out),
            "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    done = load_checkpoint(out / CHECKPOINT_NAME)["epoch"]
    assert 1 <= done < 400
    code = subprocess.run([*argv[:-3], "--epochs", str(done + 1), "--out", str(out), "--resume", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert code.returncode == 0, code.stderr  # not refused as locked: the lock went with the terminated run
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == done + 1
    log = (out / "train.log").read_text()  # the log says why the first run stopped, and the second went on
    assert log.count("stopped: ") == 1 and f"epoch {done + 1}/{done + 1}" in log.split("stopped: ")[1]


def test_a_signal_anywhere_in_main_is_a_message_and_handlers_are_restored(monkeypatch, run_cli):
    import signal

    from pyro_vae import cli

    before = signal.getsignal(signal.SIGTERM)

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this frame long before
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setitem(cli.SUBCOMMANDS, "sample", (cli.SUBCOMMANDS["sample"][0], terminated))
    code, _, err = run_cli(["sample", "anything"])
    assert code == 143 and "terminated by SIGTERM" in err
    assert signal.getsignal(signal.SIGTERM) is before  # called from code: the caller's handler is back

    def interrupted():  # Ctrl-C while the parser is built (the earliest moment main controls)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, _, err = run_cli(["sample", "anything"])
    assert code == 130 and "interrupted" in err


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_line_is_imported_is_a_message(how, monkeypatch, capsys):
    """The console script imports pyro_vae.cli under its own handlers: a stop during that import (where the
    program's own handling is not yet in place) prints one line and the status, not an import traceback."""
    import signal

    from pyro_vae import _console

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "pyro_vae.cli":
                if how == "SIGINT":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            return None

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.delitem(sys.modules, "pyro_vae.cli")
    monkeypatch.delattr(pyro_vae, "cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    status = _console.run()
    assert status == {"SIGINT": 130, "SIGTERM": 143}[how]
    assert capsys.readouterr().err.strip() == _console._MESSAGES[status]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_late_stop_after_the_work_is_done_ends_at_once_and_quietly(tmp_path):
    """A Ctrl-C while the interpreter shuts down (after the work) printed 'Exception ignored ... KeyboardInterrupt';
    the console script now flushes the output and exits at once with the command's status (so a shutdown that
    hangs can still be stopped), while ``main()`` called from code leaves the caller's handlers as they were."""
    out = tmp_path / "run"
    code = ("import os, signal, sys, time; "
            f"sys.argv = ['pyro-vae', 'train', '--epochs', '1', '--out', {str(out)!r}, '--no-progress']; "
            "from pyro_vae._console import run; status = run(); print('returned', status); "
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(30); sys.exit(99)")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and "returned 0" in proc.stdout, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert time.monotonic() - t0 < 25 and (out / "model").is_dir()  # the work was done, the sleep cut short
    code = ("import signal; from pyro_vae.cli import main; before = signal.getsignal(signal.SIGINT), "
            "signal.getsignal(signal.SIGTERM); main(['--help']); "
            "assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before; print('kept')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "kept" in proc.stdout, proc.stderr[-2000:]


def test_an_allocation_beyond_memory_is_a_message(monkeypatch, run_cli):
    """torch's allocator error for a size option too large (``--latent-dim 10**9``) is a RuntimeError; the CLI
    turns it into one line naming the options to lower (the real allocation is not made here: it would take the
    test machine's memory)."""
    from pyro_vae import cli

    def huge(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 4000000000000 bytes.")

    monkeypatch.setitem(cli.SUBCOMMANDS, "train", (cli.SUBCOMMANDS["train"][0], huge))
    code, _, err = run_cli(["train", "--latent-dim", 10**9])
    assert code == 2 and "not enough memory" in err and "--latent-dim" in err and "Traceback" not in err

    def other(args):
        raise RuntimeError("an index out of range: a bug")

    monkeypatch.setitem(cli.SUBCOMMANDS, "train", (cli.SUBCOMMANDS["train"][0], other))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is not hidden behind a message
        main(["train"])


def test_device_defaults_to_auto_in_every_subcommand():
    from pyro_vae.cli import build_parser

    parser = build_parser()
    for argv in (["train"], ["sample", "r"], ["reconstruct", "r"], ["evaluate", "r"], ["plot", "r"]):
        args = parser.parse_args(argv)
        assert args.device in (None, "auto"), argv  # train's None is filled with auto below
    from pyro_vae.pipeline.settings import _default

    assert _default("digits", "device") == "auto"


def test_evaluate_refuses_chunk_size_zero_and_a_missing_data_folder_names_data_root(tmp_path, monkeypatch, run_cli,
                                                                                    copy_run):
    run = tmp_path / "run"
    copy_run(run)
    code, _, err = run_cli(["evaluate", run, "--chunk-size", 0])
    assert code == 2 and "--chunk-size must be >= 1" in err and not (run / "evaluation.json").exists()
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    code, _, err = run_cli(["train", "--dataset", "mnist", "--epochs", 1, "--out", tmp_path / "m"])
    assert code == 2 and "PYRO_VAE_DATA" in err and "(on the command line: --data-root FOLDER)" in err


@pytest.mark.parametrize("variant", [[], ["--layers", "32,4"], ["--two-stage"]])
def test_particles_beyond_memory_are_refused_before_anything_is_written(tmp_path, variant, run_cli):
    """--num-particles 10**9 wrote config.json and the lock file, then failed in the first step; a step's
    decoder output alone (K x batch x pixels float32 numbers) is now compared with the device's memory first."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    code, _, err = run_cli(["train", *variant, "--num-particles", 10**9, "--epochs", 1, "--out", out,
                            "--no-progress"])
    assert code == 2 and "lower --num-particles or --batch-size" in err and "GiB" in err
    assert not out.exists() and time.perf_counter() - t0 < 10
    # a size that fits is not refused by the estimate (it is a lower bound of what a step needs)
    from pyro_vae.pipeline import check_step_fits

    check_step_fits(5000, 100, (1, 28, 28), torch.device("cpu"))


def _fake_run(small_vae, folder: Path, vae_config: dict | None = None) -> Path:
    """A run folder (config.json + checkpoint.pt) made without training: an untrained VAE's weights."""
    folder.mkdir(parents=True, exist_ok=True)
    vae = small_vae()
    training = {"epochs": 1, "batch_size": 100, "lr": 1e-3, "objective": "elbo", "num_particles": 1, "seed": 0,
                "binarize": True, "device": "cpu", "num_threads": 1}
    config = {"vae": vae_config if vae_config is not None else vae.config, "dataset": "digits",
              "splits": {"train": "train-without-valid", "valid": "valid", "test": "test"}, "training": training,
              "model_args": {"dataset": "digits", "likelihood": "bernoulli", "latent_dim": 4, "hidden_dims": [32],
                             "activation": "tanh", "encoder": "mlp", "decoder": "mlp"}}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"epoch": 1, "pair": {"module": vae.state_dict()}}, folder / CHECKPOINT_NAME)
    return folder


@pytest.mark.parametrize("argv, message", [
    (["train", "--num-particles", "0", "--out", "{tmp}/run"], "--num-particles"),
    (["train", "--batch-size", "0", "--out", "{tmp}/run"], "--batch-size"),
    (["train", "--epochs", "0", "--out", "{tmp}/run"], "--epochs"),
    (["train", "--lr", "-1", "--out", "{tmp}/run"], "--lr"),
    (["train", "--dataset", "mnist", "--data-root", "{tmp}/nodata", "--out", "{tmp}/run"], "mnist"),
    (["train", "--likelihood", "bernoulli", "--no-binarize", "--out", "{tmp}/run"], "binarize"),
    (["train", "--dataset", "ring", "--likelihood", "continuous_bernoulli", "--out", "{tmp}/run"], "[0, 1]"),
    (["sample", "{tmp}/file.txt"], "not a folder"),
    (["evaluate", "{tmp}/fake", "--num-particles", "0"], "--num-particles"),
    (["train", "--out", "{tmp}/damaged", "--resume"], "lacks the training settings ['objective']"),
])
def test_cli_refuses_bad_input_before_writing(tmp_path, argv, message, run_cli, small_vae):
    (tmp_path / "file.txt").write_text("not a run")
    (tmp_path / "nodata").mkdir()
    _fake_run(small_vae, tmp_path / "fake")
    damaged = _fake_run(small_vae, tmp_path / "damaged")
    config = json.loads((damaged / "config.json").read_text())
    del config["training"]["objective"]
    (damaged / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli([a.format(tmp=tmp_path) for a in argv])
    assert code == 2, err
    assert err.startswith("pyro-vae: error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing written
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["checkpoint.pt", "config.json"]


def test_cli_refuses_a_config_that_is_not_a_vae(tmp_path, run_cli, small_vae):
    run = _fake_run(small_vae, tmp_path / "run", vae_config={"input_shape": [1, 8, 8], "evil": "__import__('os')"})
    code, _, err = run_cli(["sample", run, "--out", tmp_path / "s.png"])
    assert code == 2 and "does not describe a VAE" in err and "Traceback" not in err
    (run / "config.json").write_text("!!python/object/apply:os.system ['echo pwned']")  # YAML tags: not JSON
    code, _, err = run_cli(["sample", run, "--out", tmp_path / "s.png"])
    assert code == 2 and "not valid JSON" in err
    assert not (tmp_path / "s.png").exists()


def test_malicious_checkpoint_in_a_run_folder_runs_no_code(tmp_path, run_cli, small_vae):
    run = _fake_run(small_vae, tmp_path / "run")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(run / CHECKPOINT_NAME, "wb") as f:
        pickle.dump({"epoch": 1, "pair": {"module": Evil()}}, f, protocol=2)
    for argv in (["sample", run, "--out", tmp_path / "s.png"], ["evaluate", run, "--num-particles", "2"],
                 ["train", "--out", run, "--resume", "--epochs", "2"]):
        code, _, err = run_cli(argv)
        assert code == 2 and "weights_only" in err and "Traceback" not in err, err
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only"):
        pyro_vae.cli.load_run(run)
    assert not marker.exists()


def test_config_files_are_parsed_safely(tmp_path, run_cli):
    """``train --config`` reads YAML with ``yaml.safe_load``: a Python tag is refused, not run."""
    pytest.importorskip("yaml")
    marker = tmp_path / "pwned"
    config = tmp_path / "run.yaml"
    config.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_cli(["train", "--config", config, "--out", tmp_path / "run"])
    assert code == 2 and "not valid YAML" in err and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()
    config.write_text("- a list\n- not options\n")
    code, _, err = run_cli(["train", "--config", config, "--out", tmp_path / "run"])
    assert code == 2 and "mapping" in err
    config.write_text("epochz: 3\n")
    code, _, err = run_cli(["train", "--config", config, "--out", tmp_path / "run"])
    assert code == 2 and "unknown option 'epochz'" in err
    assert not (tmp_path / "run").exists()


def test_a_json_config_with_a_syntax_error_names_the_file(tmp_path: Path, run_cli) -> None:
    config = tmp_path / "run.json"
    config.write_text('{"epochs": 1,}')
    code, _, err = run_cli(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert code == 2 and f"--config {config} is not valid JSON" in err and not (tmp_path / "r").exists()

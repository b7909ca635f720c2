"""``pyro-vae train --semi-supervised --labels N`` (Kingma et al.'s M2 through the run pipeline) on scikit-learn's
digits: the run folder, the test accuracy and the test log p(x) with the label summed recomputed from the saved
model, ``evaluate``/``sample``/``reconstruct``/``plot`` on such a run, and bad input refused before anything is
written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae import SSVAE, infer
from pyro_vae.runs import read_config, run_test_data
from pyro_vae.train import balanced_split
from pyro_vae.train.state import load_checkpoint

K = 20
LABELS, UNLABELLED, EPOCHS = 50, 300, 2
TINY = ["--hidden-dims", "32", "--latent-dim", "4", "--no-progress"]
RUN = ["train", "--semi-supervised", "--labels", LABELS, "--num-unlabelled", UNLABELLED, "--epochs", EPOCHS,
       "--test-particles", K, *TINY]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, run_cli) -> tuple[Path, str, str]:
    """One short semi-supervised run on digits, shared by the tests that only read it (copied by those that write)."""
    run = tmp_path_factory.mktemp("ss") / "run"
    code, out, err = run_cli([*RUN, "--out", run])
    assert code == 0, err
    return run, out, err


@pytest.fixture
def run_copy(trained: tuple[Path, str, str], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "test_metrics.json").read_text())


def test_train_writes_a_semi_supervised_run_folder(trained: tuple[Path, str, str]) -> None:
    run, out, _ = trained
    for name in ("config.json", "metrics.jsonl", "model", "samples.png", "training.png", "test_metrics.json"):
        assert (run / name).exists(), name
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == EPOCHS  # --resume continues from it
    config = read_config(run)
    assert config["class"] == "SSVAE" and config["dataset"] == "digits"
    assert config["training"]["labels"] == LABELS and config["training"]["num_unlabelled"] == UNLABELLED
    assert config["training"]["test_particles"] == K and config["training"]["binarize"] is True
    assert config["vae"]["latent_dim"] == 4 and config["vae"]["hidden_dims"] == [32]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    for r in records:
        assert {"loss", "loss_unlabelled", "loss_labelled", "aux_loss", "val_accuracy", "seconds"} <= set(r)
        assert 0 <= r["val_accuracy"] <= 1 and r["loss"] > 0
    assert "data: digits train-without-valid (1200, 1, 8, 8), valid 300, test 297; likelihood bernoulli with " \
           f"dynamic binarization; {LABELS} labelled ({LABELS // 10} per class), {UNLABELLED} unlabelled" in out
    log = (run / "train.log").read_text()
    assert f"epoch {EPOCHS}/{EPOCHS}: loss {records[-1]['loss']:.3f}" in log
    assert f"valid accuracy {records[-1]['val_accuracy']:.4f}" in log and "test metrics (test_metrics.json)" in log
    m = _test_metrics(run)
    assert m["split"] == "test" and m["num_datapoints"] == 297 and m["epochs"] == EPOCHS and m["num_particles"] == K
    assert f"test accuracy of argmax q(y|x): {m['accuracy']:.4f}" in out
    assert f"test accuracy of the model's own argmax p(y|x): {m['model_accuracy']:.4f}" in out
    assert f"test log p(x), label summed (IWAE, K={K}): {m['log_likelihood']:.2f}" in out


def test_saved_model_gives_the_written_accuracy_and_log_likelihood(trained: tuple[Path, str, str]) -> None:
    """The test metrics recomputed from the saved model on the same test data (one fixed binarization from the
    seed): the accuracy exactly, log p(x) with the label summed as infer.log_likelihood gives it with the same seed."""
    run = trained[0]
    m = _test_metrics(run)
    model = pyro_vae.load(run)
    assert isinstance(model, SSVAE) and model.latent_dim == 4
    x, y = run_test_data(read_config(run), seed=0, labels=True)
    assert 0 <= m["accuracy"] <= 1
    assert m["accuracy"] == model.accuracy(x, y)
    result = infer.log_likelihood(model.model, model.guide, x, num_particles=K, batch_size=100, seed=0,
                                  diagnostics=False, progress=False)
    assert_close(m["log_likelihood"], result.mean, atol=1e-4, rtol=0)
    assert_close(m["log_likelihood_stderr"], result.stderr, atol=1e-5, rtol=1e-3)
    assert 0 < m["log_likelihood_mc_stderr"] < m["log_likelihood_stderr"]
    assert m["elbo"] <= m["log_likelihood"] + 3 * m["log_likelihood_mc_stderr"]


def test_evaluate_a_semi_supervised_run(run_copy: Path, run_cli) -> None:
    code, out, err = run_cli(["evaluate", run_copy, "--num-particles", K, "--no-diagnostics", "--no-progress"])
    assert code == 0, err
    evaluation = json.loads((run_copy / "evaluation.json").read_text())
    m = _test_metrics(run_copy)
    assert evaluation["accuracy"] == m["accuracy"]  # the same datapoints, the same classifier
    assert_close(evaluation["log_likelihood"], m["log_likelihood"], atol=1e-4, rtol=0)  # the same seed and K
    assert evaluation["model"].startswith("SSVAE")
    assert f"accuracy of argmax q(y|x): {m['accuracy']:.4f}" in out


def test_evaluate_refuses_ais_on_a_semi_supervised_run(run_copy: Path, run_cli) -> None:
    code, out, err = run_cli(["evaluate", run_copy, "--ais-steps", 5, "--no-progress"])
    assert code == 2 and out == ""
    assert err.startswith("pyro-vae: error: --ais-steps 5") and "semi-supervised" in err and err.count("\n") == 1
    assert not (run_copy / "evaluation.json").exists()


def test_sample_reconstruct_and_plot_a_semi_supervised_run(run_copy: Path, run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli(["sample", run_copy, "--num-samples", 20, "--out", tmp_path / "s.png"])
    assert code == 0 and (tmp_path / "s.png").is_file(), err
    code, _, err = run_cli(["reconstruct", run_copy, "--num", 8, "--out", tmp_path / "r.png"])
    assert code == 0 and (tmp_path / "r.png").is_file(), err
    code, out, err = run_cli(["plot", run_copy, "--num-particles", 4, "--num", 40, "--out", tmp_path / "plots"])
    assert code == 0, err
    for name in ("training", "reconstructions", "samples", "latent_space", "k_curve"):
        assert (tmp_path / "plots" / f"{name}.png").is_file(), name
    assert not (tmp_path / "plots" / "traversal.png").exists()  # the decoder also takes the label


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the timings (which differ from run to run)."""
    timed = ("seconds", "images_per_second")
    return [{k: v for k, v in json.loads(line).items() if k not in timed}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_a_semi_supervised_run_as_if_never_stopped(trained: tuple[Path, str, str], run_copy: Path,
                                                                    run_cli, tmp_path: Path) -> None:
    """A run of EPOCHS epochs resumed to EPOCHS + 1 (its model/ and test metrics gone, as after a kill in the last
    epoch) equals a run of EPOCHS + 1 epochs never stopped: the same labelled and unlabelled datapoints from the
    seed, the same weights, records and test metrics."""
    (run_copy / "test_metrics.json").unlink()
    shutil.rmtree(run_copy / "model")
    code, out, err = run_cli(["train", "--out", run_copy, "--resume", "--epochs", EPOCHS + 1, "--no-progress"])
    assert code == 0, err
    whole = tmp_path / "whole"
    code, _, err = run_cli([*RUN[:7], EPOCHS + 1, *RUN[8:], "--out", whole])
    assert code == 0, err
    assert _records(run_copy) == _records(whole) and _records(run_copy)[:EPOCHS] == _records(trained[0])
    resumed, never_stopped = pyro_vae.load(run_copy), pyro_vae.load(whole)
    for (name, a), (_, b) in zip(resumed.state_dict().items(), never_stopped.state_dict().items()):
        assert torch.equal(a, b), name
    assert _test_metrics(run_copy) == _test_metrics(whole) and _test_metrics(run_copy)["epochs"] == EPOCHS + 1
    assert read_config(run_copy)["training"]["epochs"] == EPOCHS + 1
    code, out, err = run_cli(["train", "--out", run_copy, "--resume", "--no-progress"])
    assert code == 0 and "nothing to train" in out, err


@pytest.mark.parametrize("argv, message", [
    (["--labels", 60], "--labels 60 differs from the run's 50"),
    (["--num-unlabelled", 200], "--num-unlabelled 200 differs from the run's 300"),
    (["--labelled-passes", 2], "--labelled-passes 2 differs from the run's 1"),
    (["--objective", "mean-field"], "does not take --objective mean-field: the label is summed exactly"),
    (["--two-stage"], "semi-supervised run in"),
])
def test_a_resumed_semi_supervised_run_keeps_its_data(run_copy: Path, run_cli, argv, message) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    code, _, err = run_cli(["train", "--out", run_copy, "--resume", *argv, "--epochs", EPOCHS + 1, "--no-progress"])
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()} == before


def test_semi_supervised_options_are_refused_on_resuming_another_run(run_cli, tmp_path: Path) -> None:
    run = tmp_path / "vae"
    code, _, err = run_cli(["train", "--epochs", 1, *TINY, "--out", run])
    assert code == 0, err
    for argv, flag in ((["--semi-supervised"], "--semi-supervised"), (["--labels", 50], "--labels")):
        code, _, err = run_cli(["train", "--out", run, "--resume", *argv, "--epochs", 2, "--no-progress"])
        assert code == 2 and f"trains a VAE, not a semi-supervised VAE: {flag} does not apply" in err, err
    assert len(_records(run)) == 1


SS = ["--semi-supervised", "--labels", LABELS]


@pytest.mark.parametrize("argv, message", [
    (["--labels", "50"], "--labels applies to semi-supervised runs"),
    (["--num-unlabelled", "50"], "--num-unlabelled applies to semi-supervised runs"),
    (["--semi-supervised"], "--semi-supervised needs --labels N"),
    (["--semi-supervised", "--labels", "55"], "--labels 55 is not a multiple of the 10 classes"),
    (["--semi-supervised", "--labels", "0"], "--labels must be >= 1"),
    (["--semi-supervised", "--labels", "2000"], "--labels 2000 asks for 200 labelled datapoints of each class"),
    ([*SS, "--num-unlabelled", "5000"], "--num-unlabelled 5000 is more than the 1150 datapoints"),
    ([*SS, "--labelled-passes", "0"], "--labelled-passes must be >= 1"),
    ([*SS, "--test-particles", "0"], "--test-particles must be >= 1"),
    ([*SS, "--aux-loss-multiplier", "-1"], "--aux-loss-multiplier must be >= 0"),
    ([*SS, "--two-stage"], "does not take --two-stage"),
    ([*SS, "--layers", "32,8"], "does not take --layers 32,8"),
    ([*SS, "--prior", "mixture"], "does not take --prior mixture"),
    ([*SS, "--flow", "iaf"], "does not take --flow iaf"),
    ([*SS, "--encoder", "conv"], "does not take --encoder conv"),
    ([*SS, "--decoder", "conv"], "does not take --decoder conv"),
    ([*SS, "--objective", "mean-field"], "does not take --objective mean-field: the label is summed exactly in "
                                         "elbo, iwae and iwae-dreg"),
    ([*SS, "--likelihood", "normal"], "does not take --likelihood normal: the semi-supervised VAE's decoder is "
                                      "Bernoulli"),
    ([*SS, "--dataset", "ring"], "--semi-supervised needs a data set of images with class labels"),
    ([*SS, "--dataset", "binarized-mnist"], "choose --dataset digits, mnist, fashion-mnist"),
])
def test_bad_semi_supervised_options_are_refused_before_anything_is_written(argv, message, run_cli,
                                                                            tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run_cli(["train", *argv, "--epochs", 1, *TINY, "--out", out_dir])
    assert code == 2, (out, err)
    assert err.startswith("pyro-vae: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out_dir.exists()


def test_semi_supervised_options_from_a_config_file(run_cli, tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"semi_supervised": True, "labels": 15}))
    code, _, err = run_cli(["train", "--config", config, "--out", tmp_path / "run", *TINY])
    assert code == 2 and "--labels 15 is not a multiple of the 10 classes" in err, err
    assert not (tmp_path / "run").exists()


def test_balanced_split() -> None:
    y = torch.arange(100) % 4
    labelled, unlabelled = balanced_split(y, 12, 4, seed=3)
    assert torch.bincount(y[labelled], minlength=4).tolist() == [3, 3, 3, 3]
    assert sorted(torch.cat([labelled, unlabelled]).tolist()) == list(range(100))
    assert torch.equal(labelled, balanced_split(y, 12, 4, seed=3)[0])
    assert not torch.equal(labelled, balanced_split(y, 12, 4, seed=4)[0])
    with pytest.raises(ValueError, match="positive multiple of the 4 classes"):
        balanced_split(y, 10, 4, seed=0)
    with pytest.raises(ValueError, match="class 0 has only 25"):
        balanced_split(y, 104, 4, seed=0)


def test_semi_supervised_run_on_mnist(data_root: Path, run_cli, tmp_path: Path) -> None:
    """MNIST (its labels from the IDX files): the training split without the validation images, a tiny model."""
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--semi-supervised", "--dataset", "mnist", "--data-root", data_root,
                              "--labels", 20, "--num-unlabelled", 200, "--epochs", 1, "--test-particles", 2,
                              "--hidden-dims", 16, "--latent-dim", 2, "--no-progress", "--out", run])
    assert code == 0, err
    assert "data: mnist train-without-valid (50000, 1, 28, 28), valid 10000, test 10000" in out
    m = _test_metrics(run)
    assert m["num_datapoints"] == 10000 and 0 <= m["accuracy"] <= 1 and m["labels"] == 20
    assert m["log_likelihood"] < 0


def test_an_unfinished_semi_supervised_run_is_read_from_its_checkpoint(run_copy: Path, run_cli) -> None:
    """A run stopped during training has no model/: the commands read its last checkpoint, as a VAE run's; with no
    checkpoint either (stopped in its first epoch) they say so, without a traceback."""
    shutil.rmtree(run_copy / "model")
    code, _, err = run_cli(["sample", run_copy, "--out", run_copy / "s.png"])
    assert code == 0 and (run_copy / "s.png").is_file(), err
    (run_copy / "checkpoint.pt").unlink()
    code, out, err = run_cli(["sample", run_copy, "--out", run_copy / "t.png"])
    assert code == 2 and out == "" and "did not finish a single epoch" in err and "--resume" in err, err
    assert not (run_copy / "t.png").exists()


def test_a_semi_supervised_run_trains_with_iwae_dreg(run_cli, tmp_path: Path) -> None:
    """--objective iwae-dreg (the label summed inside every weight, DReG for the guide of z) trains and is recorded."""
    run = tmp_path / "run"
    code, out, err = run_cli(["train", *SS, "--num-unlabelled", 100, "--epochs", 1, "--objective", "iwae-dreg",
                              "--num-particles", 2, "--test-particles", 5, *TINY, "--out", run])
    assert code == 0, err
    training = read_config(run)["training"]
    assert training["objective"] == "iwae-dreg" and training["num_particles"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["loss_unlabelled"] > 0
    assert _test_metrics(run)["log_likelihood"] < 0

"""Run kinds as components (``pyro_vae.pipeline.kinds``): typed settings that refuse a wrong name or type where it is
given; a new kind is one recipe and one registry line, and trains, evaluates and plots through the command line;
run folders written by version 0.2.0 (before the recipes) still load, resume and evaluate."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import pyro_vae
from pyro_vae import datasets
from pyro_vae.pipeline import KINDS, RunSettings, evaluate_run, register_kind, run_settings, train_run
from pyro_vae.pipeline.kinds import VAEKind
from pyro_vae.saving import MODEL_CLASSES, register_model_class

OLD_RUNS = Path(__file__).parent / "data" / "runs-0.2.0"


def _quiet(*args, **kwargs):
    pass


# ------------------------------------------------------------------------------------------------ typed settings
@pytest.mark.parametrize("options, message", [
    ({"epoch": 3}, "unknown run option 'epoch' (did you mean 'epochs'?)"),
    ({"latnt_dim": 3}, "did you mean 'latent_dim'?"),
    ({"epochs": "3"}, "--epochs must be >= 1 (a whole number), got '3'"),
    ({"dataset": 3}, "unknown data set 3"),
    ({"activation": 3}, "--activation must be a name (a string), got 3"),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"hidden_dims": "16,x"}, "--hidden-dims must be comma-separated sizes"),
    ({"kind": "Toy"}, "unknown run kind 'Toy'"),
])
def test_a_wrong_name_or_type_fails_where_it_is_given(options, message):
    with pytest.raises(ValueError) as info:
        run_settings(options, "x")
    assert message in str(info.value)
    if "kind" not in options and "dataset" not in options:  # the same from the dataclass (no defaults, no kinds)
        with pytest.raises(ValueError, match=message.split(" (")[0].replace("'", ".")):
            RunSettings.from_options(options)


@pytest.mark.parametrize("options, flag", [
    ({"layers": "8,2;4,1"}, "--layers"),
    ({"two_stage": True}, "--two-stage"),
    ({"semi_supervised": True, "labels": 50}, "--semi-supervised"),
])
def test_a_one_process_kind_is_refused_under_torchrun(monkeypatch, options, flag):
    """The kinds whose trainer runs in one process refuse a torchrun launch before anything is read, naming the
    option; a plain VAE run is not refused."""
    import pyro_vae.distributed

    monkeypatch.setattr(pyro_vae.distributed, "launched", lambda: True)
    with pytest.raises(ValueError, match=f"^{flag} runs take one process"):
        run_settings({"dataset": "digits", **options}, "x")
    s, _ = run_settings({"dataset": "digits"}, "x")
    assert s.kind == "VAE"


def test_settings_are_typed_frozen_and_read_as_the_old_dict():
    s, _ = run_settings({"dataset": "digits", "hidden_dims": "16,8", "epochs": 2.0, "layers": "8,2;4,1"}, "x")
    assert s.kind == "HierarchicalVAE" and s.hidden_dims == [16, 8] and s.layers == [[8, 2], [4, 1]]
    assert s.epochs == 2 and isinstance(s.epochs, int) and s["epochs"] == 2 and s.get("nothing", 7) == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="--lr must be > 0"):
        s.replace(lr=-1.0)  # a changed copy is checked again


def test_a_yaml_file_and_the_command_line_give_the_same_settings(tmp_path, run_cli):
    pytest.importorskip("yaml")
    (tmp_path / "run.yaml").write_text("dataset: digits\nhidden_dims: [16]\nlatent_dim: 2\nepochs: 1\n")
    for out, argv in (("a", ["--config", tmp_path / "run.yaml"]),
                      ("b", ["--hidden-dims", "16", "--latent-dim", 2, "--epochs", 1])):
        code, _, err = run_cli(["train", *argv, "--out", tmp_path / out, "--no-progress", "--batch-size", 500])
        assert code == 0, err
    a, b = (json.loads((tmp_path / o / "config.json").read_text()) for o in "ab")
    assert a == b
    (tmp_path / "bad.yaml").write_text("epoch: 1\n")
    code, _, err = run_cli(["train", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "c"])
    assert code == 2 and "unknown option 'epoch'" in err and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------ a new kind
class TinyVAE(pyro_vae.VAE):
    """A VAE of one hidden layer of 16 units (a model class of the toy kind's own)."""


class TinyKind(VAEKind):
    """The toy kind: a recipe (only how its model is built differs from a plain run) and a registry line."""

    name = "TinyVAE"

    def build(self, s, data, out):
        return TinyVAE(datasets.event_shape(s.dataset), latent_dim=2, hidden_dims=(16,))


@pytest.fixture
def tiny_kind(monkeypatch):
    monkeypatch.setitem(MODEL_CLASSES, "TinyVAE", TinyVAE)
    monkeypatch.setattr("pyro_vae.pipeline.registry.KINDS", dict(KINDS))  # the registration is undone afterwards
    monkeypatch.setattr("pyro_vae.pipeline.settings.KINDS", pyro_vae.pipeline.registry.KINDS)
    register_model_class(TinyVAE)
    register_kind(TinyKind)
    yield
    assert "TinyVAE" not in KINDS


def test_a_new_kind_is_one_recipe_and_trains_evaluates_and_plots_through_the_cli(tiny_kind, tmp_path, run_cli):
    run = tmp_path / "tiny"
    code, out, err = run_cli(["train", "--kind", "TinyVAE", "--epochs", 2, "--batch-size", 400, "--out", run,
                              "--no-progress"])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["class"] == "TinyVAE" and "test ELBO" in out
    model = pyro_vae.load(run)
    assert type(model) is TinyVAE and model.config["hidden_dims"] == [16]
    code, out, err = run_cli(["evaluate", run, "--num-particles", 4, "--num-datapoints", 10, "--device", "cpu",
                              "--no-progress"])
    assert code == 0, err
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["model"] == "TinyVAE" and evaluation["epochs"] == 2
    code, out, err = run_cli(["plot", run, "--num-particles", 4, "--num-datapoints", 10, "--out", tmp_path / "figs"])
    assert code == 0, err
    assert (tmp_path / "figs" / "training.png").is_file() and (tmp_path / "figs" / "k_curve.png").is_file()
    code, _, err = run_cli(["train", "--out", run, "--resume", "--epochs", 3, "--no-progress"])  # resumes as its kind
    assert code == 0, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_kind_is_refused_by_a_name_it_does_not_have(tmp_path, run_cli):
    code, _, err = run_cli(["train", "--kind", "TinyVAE", "--out", tmp_path / "r"])
    assert code == 2 and "unknown run kind 'TinyVAE'" in err and not (tmp_path / "r").exists()
    code, _, err = run_cli(["train", "--kind", "VAE", "--two-stage", "--out", tmp_path / "r"])
    assert code == 2 and "--two-stage selects a TwoStageVAE run" in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ old run folders
@pytest.mark.parametrize("name, epochs", [("vae", 3), ("two", 2), ("ss", 2)])
def test_a_run_folder_of_version_0_2_0_loads_resumes_and_evaluates(tmp_path, name, epochs):
    """Folders written by ``pyro-vae train`` of version 0.2.0 (tests/data/runs-0.2.0: a VAE run resumed once, a
    two-stage and a semi-supervised run, all on digits)."""
    run = Path(shutil.copytree(OLD_RUNS / name, tmp_path / name))
    old = json.loads((run / "config.json").read_text())
    model = pyro_vae.load(run)
    x = datasets.binarize(datasets.load("digits", "test")[:5], torch.Generator().manual_seed(0))
    assert torch.isfinite(model.reconstruct(x)).all()
    s, _ = run_settings({}, run, resume=True)
    assert s.kind == old.get("class", "VAE") and s.epochs == epochs and s.model_config == old["vae"]
    trained = train_run({"epochs": epochs + 1}, run, resume=True, progress=False, say=_quiet)
    assert trained.test_metrics["epochs"] == epochs + 1
    new = json.loads((run / "config.json").read_text())
    assert new["vae"] == old["vae"] and new["training"]["epochs"] == epochs + 1
    assert all(new["training"][k] == v for k, v in old["training"].items() if k != "epochs")
    if name == "ss":  # the options added since are written with what the run trained with then
        assert {k: new["training"][k] for k in ("aux_step", "loss_scale", "adam_beta1", "init_std")} == \
            {"aux_step": "joint", "loss_scale": "mean", "adam_beta1": 0.9, "init_std": None}
    evaluation = evaluate_run(run, num_particles=4, num=10, device="cpu", progress=False, diagnostics=False)
    assert evaluation["epochs"] == epochs + 1 and evaluation["num_datapoints"] == 10

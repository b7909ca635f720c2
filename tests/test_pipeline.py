"""The run pipeline (``pyro_vae.pipeline``): what ``pyro-vae train`` and ``evaluate`` do, called from code; every
bad option refused before anything is written; evaluations that no longer match the run are said so."""

import json
import os

import pytest
import torch

import pyro_vae
from pyro_vae.pipeline import evaluate_run, resolve_threads, run_settings, train_run
from pyro_vae.threads import free_cores

TINY = {"dataset": "digits", "latent_dim": 2, "hidden_dims": "16", "epochs": 1, "batch_size": 200}


def _quiet(*args, **kwargs):
    pass


def test_a_notebook_gets_what_the_cli_writes(tmp_path):
    run = train_run(TINY, tmp_path / "r", progress=False, say=_quiet)
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "test_metrics.json", "samples.png", "training.png"):
        assert (tmp_path / "r" / name).is_file(), name
    saved = json.loads((tmp_path / "r" / "test_metrics.json").read_text())
    assert saved["elbo"] == pytest.approx(run.test_metrics["elbo"]) and saved["epochs"] == 1
    assert saved["num_datapoints"] == run.test_metrics["num_datapoints"] > 0
    again = pyro_vae.load(tmp_path / "r")
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(again.reconstruct(x), run.model.reconstruct(x))


def test_a_second_evaluation_of_another_setting_says_it_replaces_one_and_training_on_marks_it_stale(tmp_path):
    out = tmp_path / "r"
    train_run(TINY, out, progress=False, say=_quiet)
    first = evaluate_run(out, num_particles=4, num=20, device="cpu", progress=False, diagnostics=False)
    assert first["replaced"] is None and first["epochs"] == 1 and first["num_datapoints"] == 20
    same = evaluate_run(out, num_particles=4, num=20, device="cpu", progress=False, diagnostics=False)
    assert same["replaced"] is None
    other = evaluate_run(out, num_particles=4, num=10, device="cpu", progress=False, diagnostics=False)
    assert "num_datapoints 20 -> 10" in other["replaced"]
    said = []
    train_run({"epochs": 2}, out, resume=True, progress=False, say=lambda *a, **k: said.append(a[0]))
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert "epoch 2" in evaluation["stale"] and any("stale" in line for line in said)


def test_resuming_a_finished_run_without_more_epochs_says_there_is_nothing_to_train(tmp_path):
    out = tmp_path / "r"
    train_run(TINY, out, progress=False, say=_quiet)
    said = []
    train_run({}, out, resume=True, progress=False, say=lambda *a, **k: said.append(a[0]))
    assert any("nothing to train" in line for line in said)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("bad,message", [
    ({"lr": float("inf")}, "--lr must be > 0 and finite"),
    ({"lr": 0}, "--lr must be > 0"),
    ({"epochs": 2.5}, "--epochs must be >= 1"),
    ({"prior": "flow", "prior_components": 5}, "--prior-components applies to the mixture and vamp priors"),
    ({"num_threads": 0}, "--num-threads must be a positive integer"),
    ({"two_stage": True, "layers": "8,2"}, "either --two-stage or --layers"),
    ({"stage2_codes": "medians"}, "--stage2-codes must be one of"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        train_run({**TINY, **bad}, tmp_path / "r", progress=False, say=_quiet)
    assert not (tmp_path / "r").exists()


def test_a_damaged_checkpoint_is_named_on_resume(tmp_path):
    out = tmp_path / "r"
    train_run(TINY, out, progress=False, say=_quiet)
    for damaged in ({}, [1, 2], {"pair": [1]}):
        torch.save(damaged, out / "checkpoint.pt")
        with pytest.raises(ValueError, match=r"checkpoint\.pt (cannot be resumed|holds no model weights)"):
            train_run({"epochs": 2}, out, resume=True, progress=False, say=_quiet)


def test_a_checkpoint_with_a_bad_epoch_or_history_is_named_before_anything_is_written(tmp_path):
    out = tmp_path / "r"
    train_run(TINY, out, progress=False, say=_quiet)
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    config = (out / "config.json").read_text()
    for key, value, message in (("epoch", "four", "'epoch' entry is 'four'"),
                                ("history", ["{bad json"], "history entry 1 is not a JSON record"),
                                ("optimizer", None, "'optimizer' entry is damaged")):
        torch.save({**good, key: value}, out / "checkpoint.pt")
        (out / "config.json").write_text(config.replace('"epochs": 1', '"epochs": 1 '))  # a mark: rewritten or not
        with pytest.raises(ValueError, match=message):
            train_run({"epochs": 2}, out, resume=True, progress=False, say=_quiet)
        assert (out / "config.json").read_text().endswith(config[-20:]) and '"epochs": 1 ' in (
            out / "config.json").read_text()


def test_hierarchical_and_two_stage_runs_get_the_same_outputs_as_a_plain_run(tmp_path):
    said = []
    train_run({**TINY, "layers": "16,4;8,2"}, tmp_path / "h", progress=False, say=lambda *a, **k: said.append(a[0]))
    assert any(line.startswith("data: digits") for line in said)
    assert (tmp_path / "h" / "training.png").is_file() and (tmp_path / "h" / "samples.png").is_file()
    run = train_run({**TINY, "two_stage": True, "stage2_epochs": 1}, tmp_path / "t", progress=False, say=_quiet)
    assert (tmp_path / "t" / "training.png").is_file() and run.test_metrics["gamma"] > 0
    evaluation = evaluate_run(tmp_path / "t", num_particles=4, num=10, device="cpu", progress=False,
                              diagnostics=False)
    assert evaluation["model"].startswith("stage 1 of the two-stage VAE")


def test_threads_default_to_the_free_cores(monkeypatch):
    monkeypatch.setattr("pyro_vae.threads.free_cores", lambda: 5)
    assert resolve_threads("auto", "digits") == 1
    assert resolve_threads("auto", "mnist") == resolve_threads(None, "mnist") == 5
    assert resolve_threads(3, "mnist") == 3
    monkeypatch.undo()
    assert 1 <= free_cores() <= (os.cpu_count() or 1)


def test_settings_of_a_new_run_take_the_data_sets_defaults():
    s, out = run_settings({"dataset": "mnist"}, None)
    assert s["latent_dim"] == 50 and s["hidden_dims"] == [200, 200] and str(out).startswith("runs/mnist-")
    s, _ = run_settings({"objective": "iwae"}, "x")
    assert s["num_particles"] == 5 and s["lr"] == 3e-3 and s["binarize"] == "auto"


def test_fit_uses_the_free_cores_by_default_and_restores_torchs_setting(monkeypatch, digits):
    """fit(num_threads="auto") trains with threads.free_cores() threads, a number sets them, None leaves torch's;
    torch's setting is the caller's again afterwards; a bad value is refused before any work."""
    import pyro_vae.threads as threads

    seen = []
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    before = torch.get_num_threads()
    for value, expected in (("auto", 2), (3, 3), (None, before)):
        vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,))
        pyro_vae.fit(vae, torch.bernoulli(digits[:50]), epochs=1, batch_size=50, progress=False, num_threads=value,
                     on_epoch_end=lambda record: seen.append(torch.get_num_threads()))
        assert seen[-1] == expected and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads must be a positive integer or 'auto'"):
        pyro_vae.fit(pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,)), digits[:10], epochs=1, batch_size=5,
                     num_threads=0)

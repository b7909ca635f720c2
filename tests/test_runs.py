"""The run folder kept safe: nothing written through links (a folder named through one is followed), one writer
per run folder, checksums on weights, a real disk-full error, tampered configs refused before they allocate, the
umask (each a fault found by trying the project as a careless or hostile user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import pyro_vae
from pyro_vae import infer
from pyro_vae.io import RunLock, tensor_checksum
from pyro_vae.train import CHECKPOINT_NAME, load_checkpoint


def test_figures_and_models_are_never_written_through_a_link(tmp_path, run_cli, copy_run):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    copy_run(run)
    victim = outside / "precious.png"
    victim.write_bytes(b"keep me")
    (run / "samples.png").unlink()
    (run / "samples.png").symlink_to(victim)
    log_victim = outside / "precious.log"  # an appended log is no exception
    log_victim.write_text("keep me too\n")
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(log_victim)
    code, _, err = run_cli(["train", "--out", run, "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, err
    assert victim.read_bytes() == b"keep me" and not (run / "samples.png").is_symlink()
    assert log_victim.read_text() == "keep me too\n" and not (run / "train.log").is_symlink()
    assert "epoch 2/2" in (run / "train.log").read_text()
    # a model folder that is a link is refused, not written into
    target = outside / "model"
    target.mkdir()
    import shutil

    shutil.rmtree(run / "model")
    (run / "model").symlink_to(target, target_is_directory=True)
    code, _, err = run_cli(["train", "--out", run, "--resume", "--epochs", "3", "--no-progress"])
    assert code == 2 and "symbolic link" in err and not any(target.iterdir())


def test_a_run_folder_named_through_a_link_is_used_where_it_points(tmp_path, run_cli, copy_run):
    """``runs/latest -> runs/2026-...`` is the user's own choice: sample, evaluate and train --resume follow it
    once and write inside the real folder (they refused it), while links inside the folder stay refused."""
    run, latest = tmp_path / "real", tmp_path / "latest"
    copy_run(run)
    latest.symlink_to(run, target_is_directory=True)
    code, out, err = run_cli(["sample", latest])
    assert code == 0, err
    assert (run / "samples-sample.png").is_file() and str(run) in out
    code, _, err = run_cli(["train", "--out", latest, "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 2 and latest.is_symlink()
    config = tmp_path / "run.yaml"  # the same link given as 'out' in a config file
    config.write_text(f"out: {latest}\nepochs: 3\n")
    code, _, err = run_cli(["train", "--config", config, "--resume", "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 3
    dangling = tmp_path / "dangling"  # a link to nothing: said so (it was "[Errno 17] File exists")
    dangling.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    code, _, err = run_cli(["train", "--epochs", 1, "--out", dangling, "--no-progress"])
    assert code == 2 and "which does not exist" in err


def test_a_second_writer_is_refused_before_it_writes(tmp_path, run_cli, small_vae):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pyro_vae.io import RunLock; "
                               f"RunLock({str(run)!r}).__enter__(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(["train", "--epochs", "1", "--out", run, "--no-progress"])
        assert code == 2 and "another process" in err
        assert not (run / "config.json").exists()
        with pytest.raises(RuntimeError, match="another process"):
            pyro_vae.fit(small_vae(), pyro_vae.datasets.load("digits")[:100], epochs=1, batch_size=50, binarize=True,
                         checkpoint_dir=run, progress=False)
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run), RunLock(run):  # re-entrant within one process
        pass


def test_a_real_disk_full_error_is_an_oserror_and_keeps_the_checkpoint(tmp_path, digits, monkeypatch, small_vae):
    vae = small_vae()
    pyro_vae.fit(vae, digits[:100], epochs=1, batch_size=50, binarize=True, checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed; unexpected pos 5120 vs 4096")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="disk is probably full"):
        pyro_vae.fit(vae, digits[:100], epochs=2, batch_size=50, binarize=True, checkpoint_dir=tmp_path,
                     resume=True, progress=False)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before

    def bug(*args, **kwargs):  # any other RuntimeError is not a full disk, and is not called one
        raise RuntimeError("Tried to serialize object of an unsupported type")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(RuntimeError, match="unsupported type") as raised:
        pyro_vae.fit(vae, digits[:100], epochs=2, batch_size=50, binarize=True, checkpoint_dir=tmp_path,
                     resume=True, progress=False)
    assert not isinstance(raised.value, OSError)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_flipped_weights_are_refused(tmp_path, digits, small_vae):
    vae = small_vae()
    pyro_vae.fit(vae, digits[:100], epochs=1, batch_size=50, binarize=True, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    key = next(iter(state["pair"]["module"]))
    state["pair"]["module"][key].view(-1)[0] += 1e-3  # one changed weight, the old checksum kept
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME)
    folder = vae.save(tmp_path / "model")
    weights = torch.load(folder / "weights.pt", weights_only=True)
    weights[key].view(-1)[0] += 1e-3
    torch.save(weights, folder / "weights.pt")
    with pytest.raises(ValueError, match="checksum"):
        pyro_vae.load(folder)
    assert tensor_checksum({"a": torch.zeros(2)}) != tensor_checksum({"a": torch.zeros(3)})


def test_a_tampered_run_config_cannot_allocate(tmp_path, digits, run_cli, copy_run):
    run = tmp_path / "run"
    copy_run(run)
    import shutil

    shutil.rmtree(run / "model")  # the loader falls back on config.json + checkpoint.pt
    config = json.loads((run / "config.json").read_text())
    config["vae"]["latent_dim"] = 10**9
    (run / "config.json").write_text(json.dumps(config))
    t0 = time.perf_counter()
    code, _, err = run_cli(["sample", run, "--out", tmp_path / "s.png"])
    assert code == 2 and "do not fit" in err and time.perf_counter() - t0 < 10
    # train --resume built the model from config.json first (a traceback after 570 MB for latent_dim 1e5)
    before = (run / "checkpoint.pt").read_bytes()
    t0 = time.perf_counter()
    code, _, err = run_cli(["train", "--out", run, "--resume", "--epochs", "2", "--no-progress"])
    assert code == 2 and "do not fit" in err and "Traceback" not in err and time.perf_counter() - t0 < 10
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_tampered_config_cannot_allocate_on_resume_of_a_layers_or_two_stage_run(tmp_path, run_cli, copy_run):
    for kind, key in (("layers", "layers"), ("two-stage", "latent_dim")):  # train --layers 32,8;16,4 / --two-stage
        run = copy_run(tmp_path / kind, kind)
        config = json.loads((run / "config.json").read_text())
        config["vae"][key] = [[100000, 4], [16, 2]] if key == "layers" else 10**6
        (run / "config.json").write_text(json.dumps(config))
        t0 = time.perf_counter()
        code, _, err = run_cli(["train", "--out", run, "--resume", "--epochs", "2", "--no-progress"])
        assert code == 2 and "do not fit" in err and time.perf_counter() - t0 < 10, err


def test_files_respect_the_umask(tmp_path, digits, small_vae):
    old = os.umask(0o022)
    try:
        pyro_vae.fit(small_vae(), digits[:100], epochs=1, batch_size=50, binarize=True, checkpoint_dir=tmp_path,
                     progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / CHECKPOINT_NAME).stat().st_mode & 0o777 == 0o644


def test_evaluate_refuses_a_read_only_run_folder_before_computing(tmp_path, monkeypatch, run_cli, copy_run):
    """The tests run as root, for whom no folder is read-only: the check itself (``os.access``) is made to say
    so, and the estimator must not be reached."""
    from pyro_vae import cli

    run = tmp_path / "run"
    copy_run(run)
    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if (str(p) == str(run) and mode == os.W_OK)
                        else real_access(p, mode))

    def never(*a, **k):
        raise AssertionError("log p(x) was computed for a folder it cannot write to")

    monkeypatch.setattr(infer, "log_likelihood", never)
    code, _, err = run_cli(["evaluate", run, "--num-particles", 5])
    assert code == 2 and "not writable" in err and not (run / "evaluation.json").exists()


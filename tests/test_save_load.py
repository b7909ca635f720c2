"""``VAE.save`` / ``VAE.load``, the run folder's ``model/``, and ``pyro-vae train --config / --tensorboard``."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import VAE
from pyro_vae.cli import load_run


def test_save_load_round_trip(tmp_path: Path) -> None:
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=(16, 8), activation="relu", likelihood="normal",
              likelihood_options={"scale": 0.2})
    with torch.no_grad():  # weights that differ from any fresh initialisation
        for p in vae.parameters():
            p.add_(torch.randn_like(p))
    folder = vae.save(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["vae.json", "weights.pt"]
    meta = json.loads((folder / "vae.json").read_text())
    assert meta["class"] == "VAE" and meta["config"]["hidden_dims"] == [16, 8]
    # the weights file is a plain state dict that torch.load(weights_only=True) accepts
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert set(state) == set(vae.state_dict())
    again = VAE.load(folder)
    assert again.config == vae.config and not again.training
    for (name, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(again.reconstruct(x), vae.reconstruct(x))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x.flatten(-3)).chunk(2, -1)
        return loc, log_scale.exp()


def test_custom_modules_are_passed_again(tmp_path: Path) -> None:
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,), encoder=_Encoder())
    vae.save(tmp_path / "v")
    with pytest.raises(ValueError, match="custom encoder"):
        VAE.load(tmp_path / "v")
    again = VAE.load(tmp_path / "v", encoder=_Encoder())
    torch.testing.assert_close(again.encoder.net.weight, vae.encoder.net.weight)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved VAE"):
        VAE.load(tmp_path / "missing")
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
    folder = vae.save(tmp_path / "v")
    (folder / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        VAE.load(folder)
    VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,)).save(tmp_path / "w")
    (tmp_path / "w" / "vae.json").write_text((folder / "vae.json").read_text())  # config of another shape
    with pytest.raises(ValueError, match="do not fit"):
        VAE.load(tmp_path / "w")
    (folder / "vae.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saved pyro-vae VAE"):
        VAE.load(folder)
    (folder / "vae.json").unlink()
    with pytest.raises(FileNotFoundError, match="vae.json"):
        VAE.load(folder)


def test_train_writes_model_folder_and_load_run_reads_it(tmp_path: Path, run_cli) -> None:
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--dataset", "digits", "--epochs", "2", "--hidden-dims", "16",
                              "--out", str(run), "--no-progress"])
    assert code == 0, err
    assert (run / "model" / "vae.json").is_file() and (run / "model" / "weights.pt").is_file()
    vae, config = load_run(run)
    saved = VAE.load(run / "model")
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(vae.reconstruct(x), saved.reconstruct(x))
    assert config["model_args"]["hidden_dims"] == [16]
    # metrics.jsonl: training and validation ELBO, rate and distortion for every epoch
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for part in ("train", "val"):
            elbo, rate, distortion = (record[f"{part}_{k}"] for k in ("elbo", "rate", "distortion"))
            assert elbo == pytest.approx(-(rate + distortion), rel=1e-4) and rate > 0


def test_config_file_and_flags_override_it(tmp_path: Path, run_cli) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: digits\nlatent-dim: 3\nhidden_dims: [16, 8]\nepochs: 5\nbinarize: false\n"
                   f"likelihood: continuous_bernoulli\nout: {tmp_path / 'from-file'}\n")
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", str(cfg), "--epochs", "1", "--out", str(run), "--no-progress"])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model_args"]["latent_dim"] == 3 and config["model_args"]["hidden_dims"] == [16, 8]
    assert config["training"]["epochs"] == 1  # the flag won over the file's 5
    assert config["training"]["binarize"] is False
    assert not (tmp_path / "from-file").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("text, message", [("latent_dims: 3\n", "unknown option 'latent_dims'"),
                                           ("- 1\n- 2\n", "mapping"), ("a: [1,\n", "not valid YAML")])
def test_config_file_errors(tmp_path: Path, text: str, message: str, run_cli) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, err = run_cli(["train", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert code == 2 and message in err and "Traceback" not in err
    code, _, err = run_cli(["train", "--config", str(tmp_path / "missing.yaml")])
    assert code == 2 and "no such file" in err


def test_config_file_is_read_safely(tmp_path: Path, run_cli) -> None:
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("dataset: !!python/object/apply:os.system ['echo pwned']\n")
    code, _, err = run_cli(["train", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert code == 2 and "not valid YAML" in err


def test_tensorboard_logs_every_epoch(tmp_path: Path, run_cli) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "2", "--hidden-dims", "16", "--out", str(run),
                            "--no-progress", "--tensorboard"])
    assert code == 0, err
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "validation/elbo", "validation/rate", "validation/distortion"} <= tags
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = acc.Scalars("validation/elbo")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([h["val_elbo"] for h in history], rel=1e-6)


def test_tensorboard_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "r"),
                            "--no-progress", "--tensorboard"])
    assert code == 2 and "pip install 'pyro-vae[tensorboard]'" in err
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_malicious_saved_model_runs_no_code(tmp_path, small_vae):
    folder = small_vae().save(tmp_path / "model")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "weights.pt", "wb") as f:
        pickle.dump({"encoder.net.0.weight": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        pyro_vae.VAE.load(folder)
    assert not marker.exists()

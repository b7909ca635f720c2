"""PyTorch Lightning (:class:`pyro_vae.lightning.VAEModule`) and the loggers of ``fit`` (CSV, MLflow).

The module's loss and gradient are ``fit``'s on a batch; its validation metrics are exact on the linear-Gaussian
model with the exact posterior as guide; checkpoints restore; a user's own Pyro pair trains; DDP on 2 CPU
processes averages to the global batch's gradient whatever the sizes of the shards (slow).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from distributed_worker import DeltaPair
from lingauss import LinearGaussian
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae
from pyro_vae.infer.objectives import get_objective
from pyro_vae.train import CSVLogger, TrainStep
from pyro_vae.train.parallel import Parallel
from pyro_vae.train.validation import evaluate_elbo

pl = pytest.importorskip("lightning.pytorch")
from pyro_vae.lightning import VAEModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return pyro_vae.datasets.load("digits")


def small_vae(**kw):
    return pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), **kw)


def trainer(**kw):
    """A quiet CPU trainer (no logger, checkpoints, bar or summary unless asked)."""
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**options, **kw})


def loader(x, batch_size, **kw):
    """A DataLoader with its own generator (it draws no number from torch's global one)."""
    return DataLoader(TensorDataset(x), batch_size=batch_size, generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("objective,num_particles", [("elbo", 1), ("mean-field", 2), ("iwae", 5), ("iwae-dreg", 5)])
def test_training_step_is_fits_loss_and_gradient(digits, objective, num_particles, device):
    """The same draws give the same loss and the same gradient as fit's TrainStep, for every objective (bit for bit
    on the CPU)."""
    exact = dict(rtol=0, atol=0) if device.type == "cpu" else {}
    x = pyro_vae.datasets.binarize(digits[:40]).to(device)
    vae = small_vae().to(device)
    reference = copy.deepcopy(vae)
    module = VAEModule(vae, objective=objective, num_particles=num_particles)
    pyro.set_rng_seed(3)
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached: Lightning skips the logging
        loss = module.training_step([x], 0)
    loss.backward()

    params = list(reference.parameters())
    step = TrainStep(reference, get_objective(objective), torch.optim.Adam(params), params,
                     num_particles=num_particles, max_plate_nesting=1, clip_norm=None,
                     parallel=Parallel(False, device))
    pyro.set_rng_seed(3)
    expected = step.loss((x,)) / x.shape[0]
    expected.backward()
    assert_close(loss, expected, **exact)
    for (name, p), q in zip(vae.named_parameters(), params):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert_close(p.grad, q.grad, msg=name, **exact)


def test_trains_and_validates_on_the_device(digits, device):
    """One epoch and an IWAE validation with Lightning's accelerator for the device (the GPU when there is one)."""
    module = VAEModule(small_vae(), binarize=True, iwae_particles=50)
    seen = set()

    class Where(pl.Callback):  # where the steps ran (Lightning moves the module back to the CPU after fit)
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.add(next(pl_module.pair.parameters()).device.type)

    run = trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", callbacks=[Where()])
    run.fit(module, loader(digits[:200], 50), loader(digits[1000:1100], 50))
    assert seen == {device.type}
    metrics = {k: float(v) for k, v in run.callback_metrics.items()}
    assert set(metrics) >= {"train_loss", "val_elbo", "val_iwae", "val_iwae_stderr", "val_iwae_mc_stderr"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert -64 * math.log(2) - 5 < metrics["val_elbo"] < metrics["val_iwae"] < 0


def test_a_conditional_model_takes_x_and_y_batches():
    """Batches ``(x, y)`` of a TensorDataset reach ``model(x, y)``: the loss is TrainStep's on ``(x, y)``, and the
    validation scores ``log p(x | y)``."""
    x, labels = pyro_vae.datasets.load("digits", return_labels=True)
    x, y = pyro_vae.datasets.binarize(x[:60]), torch.nn.functional.one_hot(labels[:60], 10).float()
    vae = small_vae(condition_shape=(10,))
    module = VAEModule(vae, objective="iwae", num_particles=3, iwae_particles=20)
    pyro.set_rng_seed(1)
    with pytest.warns(UserWarning, match="self.log"):
        loss = module.training_step((x, y), 0)
    step = TrainStep(vae, get_objective("iwae"), torch.optim.Adam(vae.parameters()), list(vae.parameters()),
                     num_particles=3, max_plate_nesting=1, clip_norm=None, parallel=Parallel(False, x.device))
    pyro.set_rng_seed(1)
    assert_close(loss, step.loss((x, y)) / 60, rtol=0, atol=0)
    valid = DataLoader(TensorDataset(x, y), batch_size=25)
    [metrics] = trainer().validate(module, valid, verbose=False)
    expected = evaluate_elbo(vae, x, condition=y)  # another draw: equal within the spread over datapoints
    assert metrics["val_elbo"] == pytest.approx(expected["elbo"], abs=6 * metrics["val_iwae_stderr"])
    assert metrics["val_iwae"] > metrics["val_elbo"] - 3 * metrics["val_iwae_stderr"]


def test_lightning_steps_are_fits_steps():
    """Two epochs of one batch under Lightning and under fit (Adam, the same options) end at the same weights:
    a point-mass guide makes the loss deterministic, so fit's shuffling changes nothing but the summation order."""
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pair = DeltaPair(3).double()
    other = copy.deepcopy(pair)
    history = pyro_vae.fit(other, x, epochs=2, batch_size=16, lr=0.05, betas=(0.8, 0.99), eps=1e-6, progress=False,
                           seed=0)
    module = VAEModule(pair, lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    run = trainer(max_epochs=2)
    run.fit(module, loader(x, 16))
    for (name, p), q in zip(pair.named_parameters(), other.parameters()):
        assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)
    assert run.global_step == 2
    assert run.callback_metrics["train_loss"].item() == pytest.approx(history[-1]["loss"], rel=1e-6)


class ExactPair(nn.Module):
    """The linear-Gaussian model with the exact posterior as guide (every estimator is ``log p(x)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lg = LinearGaussian(dim=4, latent_dim=2)
        self.model, self.guide = self.lg.model, self.lg.guide


def test_validation_logs_exact_elbo_and_iwae_with_its_errors():
    """With the exact posterior as guide the ELBO and the IWAE bound are log p(x) for every draw: the logged means
    are the closed-form mean (over two batches of different sizes), the Monte Carlo error is zero and the
    standard error is the one over datapoints."""
    pair = ExactPair()
    x = pair.lg.data(50, seed=1)
    exact = pair.lg.exact(x)
    module = VAEModule(pair, iwae_every=1, iwae_particles=20)
    [metrics] = trainer().validate(module, loader(x, 30), verbose=False)
    mean, stderr = exact.mean().item(), (exact.std() / math.sqrt(len(exact))).item()
    assert metrics["val_elbo"] == pytest.approx(mean, rel=1e-6)
    assert metrics["val_iwae"] == pytest.approx(mean, rel=1e-6)
    assert metrics["val_iwae_stderr"] == pytest.approx(stderr, rel=1e-5)
    assert metrics["val_iwae_mc_stderr"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["val_rate"] - metrics["val_distortion"] != pytest.approx(mean)  # rate + distortion = -ELBO
    assert metrics["val_rate"] + metrics["val_distortion"] == pytest.approx(-mean, rel=1e-5)


def test_iwae_is_logged_every_n_epochs_and_bounds_the_elbo(digits, tmp_path):
    """iwae_every=2: the ELBO after every epoch, the IWAE estimate after every second one (Lightning's CSV logger
    shows what was logged when)."""
    from lightning.pytorch.loggers import CSVLogger as LightningCSV

    module = VAEModule(small_vae(), binarize=True, iwae_every=2, iwae_particles=200)
    logger = LightningCSV(tmp_path, name="run", version=0)
    trainer(max_epochs=4, logger=logger).fit(module, loader(digits[:500], 50, shuffle=True),
                                             loader(digits[1000:1200], 100))
    with open(tmp_path / "run" / "version_0" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_elbo"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [bool(r["val_iwae"]) for r in rows] == [False, True, False, True]
    assert all(bool(r["val_iwae_mc_stderr"]) == bool(r["val_iwae"]) for r in rows)
    last = {k: float(v) for k, v in rows[-1].items() if v}
    # the same datapoints: IWAE_200 above the one-sample ELBO (a gap of about a nat, its noise a tenth of that)
    assert last["val_iwae"] > last["val_elbo"]
    assert 0 < last["val_iwae_mc_stderr"] < last["val_iwae_stderr"]


def test_checkpoints_save_and_restore(digits, tmp_path):
    data = loader(digits[:200], 50)
    module = VAEModule(small_vae(), objective="iwae", num_particles=3, binarize=True, lr=3e-3)
    first = trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path)
    first.fit(module, data)
    [path] = list(tmp_path.rglob("*.ckpt"))
    restored = VAEModule.load_from_checkpoint(path, vae_or_pair=small_vae())
    assert (restored.objective, restored.num_particles, restored.lr, restored.binarize) == ("iwae", 3, 3e-3, True)
    for (name, p), q in zip(module.pair.state_dict().items(), restored.pair.state_dict().values()):
        assert_close(p, q, rtol=0, atol=0, msg=name)
    # resuming continues from the saved step with the saved optimizer state
    fresh = VAEModule(small_vae(), objective="iwae", num_particles=3, binarize=True, lr=3e-3)
    second = trainer(max_epochs=2)
    second.fit(fresh, data, ckpt_path=path)
    assert second.global_step == 8 and second.current_epoch == 2
    adam = second.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 8 for s in adam.values())


class TutorialVAE(nn.Module):
    """A user's own pair written as in Pyro's VAE tutorial: ``pyro.module``, ``pyro.plate``, ``pyro.sample``."""

    def __init__(self, latent_dim: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, 64))
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Softplus(),
                                     nn.Linear(hidden, 2 * latent_dim))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(z).unflatten(-1, (1, 8, 8))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("latent", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


def test_a_users_own_pyro_pair_trains(digits):
    pair = TutorialVAE()
    module = VAEModule(pair, objective="iwae", num_particles=5, binarize=True, lr=3e-3, iwae_every=0)
    valid = loader(digits[1000:1300], 300)
    [before] = trainer().validate(module, valid, verbose=False)
    trainer(max_epochs=5).fit(module, loader(digits[:1000], 50, shuffle=True))
    [after] = trainer().validate(module, valid, verbose=False)
    # 64 pixels of log 2 each at the start (44.4 nats); a few epochs gain well over 5 nats (about 10 in trials)
    assert after["val_elbo"] > before["val_elbo"] + 5
    assert "val_iwae" not in after  # iwae_every=0: never
    module.iwae_every = 7  # Trainer.validate estimates log p(x) whatever the epoch
    assert "val_iwae" in trainer().validate(module, valid, verbose=False)[0]


class ParamPair(TutorialVAE):
    """A pair with a ``pyro.param`` site outside the module: Lightning would not train it."""

    def model(self, x: torch.Tensor) -> None:
        pyro.param("temperature", lambda: torch.ones(()))
        super().model(x)


def test_what_lightning_cannot_train_is_refused(digits):
    with pytest.raises(TypeError, match="nn.Module"):
        VAEModule(LinearGaussian())
    with pytest.raises(ValueError, match="unknown objective"):
        VAEModule(small_vae(), objective="elbow")
    with pytest.raises(ValueError, match="beta"):
        VAEModule(small_vae(), objective="iwae", beta=0.5)
    with pytest.raises(ValueError, match="temperature"):
        trainer(max_steps=1).fit(VAEModule(ParamPair(), binarize=True), loader(digits[:20], 10))


def test_importing_the_package_never_imports_lightning():
    code = ("import sys, pyro_vae, pyro_vae.train, pyro_vae.infer; pyro_vae.VAE; "
            "assert 'lightning' not in sys.modules and 'mlflow' not in sys.modules, 'imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_averages_to_the_global_batch(tmp_path):
    """Trainer(devices=2, accelerator="cpu", strategy="ddp"): rank 0 holds 3 datapoints of the global batch of 8,
    rank 1 the other 5. The averaged gradient is the global batch's mean loss's (not the mean of the two shards'
    means), the ranks end with the same weights, and the validation sums over both shards."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "lightning_ddp_worker.py"), "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    from lightning_ddp_worker import data

    from pyro_vae.infer.objectives import objective_loss

    x = data()
    pair = DeltaPair(3).double()
    pair.load_state_dict(ranks[0]["start"])
    loss = objective_loss("elbo", pair.model, pair.guide, x) / x.shape[0]
    grads = dict(zip([n for n, _ in pair.named_parameters()], torch.autograd.grad(loss, list(pair.parameters()))))
    for r in ranks:
        for name, g in grads.items():
            assert_close(r["grads"][name], g, msg=name)
        for name, w in ranks[0]["final"].items():
            assert_close(r["final"][name], w, rtol=0, atol=0, msg=name)
    pair.load_state_dict(ranks[0]["final"])
    expected = evaluate_elbo(pair, x)
    for r in ranks:
        assert r["metrics"]["val_elbo"] == pytest.approx(expected["elbo"], rel=1e-6)
        assert r["metrics"]["val_iwae"] == pytest.approx(expected["elbo"], rel=1e-6)  # a point mass: IWAE = ELBO
        assert r["metrics"]["val_iwae_mc_stderr"] == 0.0


def test_csv_logger_writes_every_epoch_and_continues_a_resumed_run(digits, tmp_path):
    path = tmp_path / "logs" / "metrics.csv"
    common = dict(batch_size=100, binarize=True, progress=False, seed=0, val_data=digits[1000:1100],
                  checkpoint_dir=tmp_path / "run")
    history = pyro_vae.fit(small_vae(), digits[:300], epochs=1, callbacks=[CSVLogger(path)], **common)
    history = pyro_vae.fit(small_vae(), digits[:300], epochs=3, resume=True, callbacks=[CSVLogger(path, append=True)],
                           **common)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, record in zip(rows, history):
        assert float(row["loss"]) == record["loss"] and float(row["val_elbo"]) == record["val_elbo"]
    # without append a new run starts the file afresh; a metric that appears later adds a column
    logger = CSVLogger(path)
    logger.on_epoch_end({"epoch": 1, "loss": 2.5, "nan_events": []})
    logger.on_epoch_end({"epoch": 2, "loss": 2.0, "val_iwae": -1.5})
    assert path.read_text() == "epoch,loss,val_iwae\n1,2.5,\n2,2.0,-1.5\n"


@pytest.mark.parametrize("store", ["folder", "file"])
def test_mlflow_logger_records_the_history_in_a_local_store(digits, tmp_path, monkeypatch, store):
    """A folder holds a local SQLite store; ``file:`` MLflow's older file store (which MLflow 3 writes only with
    ``MLFLOW_ALLOW_FILE_STORE=true``). Read back through MLflow's client: every epoch's numbers, the parameters."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from pyro_vae.train import MLflowLogger

    if store == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    else:
        uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    logger = MLflowLogger(tmp_path / "mlruns" if store == "folder" else uri, experiment="digits", run_name="small",
                          params={"objective": "elbo", "lr": 1e-3})
    history = pyro_vae.fit(small_vae(), digits[:200], epochs=2, batch_size=100, binarize=True, progress=False,
                           val_data=digits[1000:1100], callbacks=[logger])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "small"
    assert run.data.params == {"objective": "elbo", "lr": "0.001"}
    for key in ("loss", "val_elbo", "val_rate"):
        logged = client.get_metric_history(logger.run_id, key)
        assert sorted((m.step, m.value) for m in logged) == [(h["epoch"], h[key]) for h in history]
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
    # a resumed training continues the run it is given
    again = MLflowLogger(tmp_path / "mlruns" if store == "folder" else uri, experiment="digits", run_id=logger.run_id)
    again.on_epoch_end({"epoch": 3, "loss": 1.25})
    again.on_train_end([])
    assert sorted(m.step for m in client.get_metric_history(logger.run_id, "loss")) == [1, 2, 3]
    assert len(client.search_runs([experiment.experiment_id])) == 1

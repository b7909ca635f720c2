"""FitConfig and TrainState: the options checked on creation, the state kept, written and resumed; the NaN guard's
replay through the real step; one RNG helper; the renamed options; a two-stage model refused by ``fit``."""

from __future__ import annotations

import dataclasses
import random
import warnings

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae.infer.objectives import get_objective
from pyro_vae.rng import preserved_rng, rng_state, set_rng_state
from pyro_vae.train import FitConfig, StepCheck, TrainStep, run_fit
from pyro_vae.train.parallel import Parallel
from pyro_vae.train.state import TrainState, load_checkpoint


def _digits(n: int = 200) -> torch.Tensor:
    return pyro_vae.datasets.load("digits", "train")[:n]


def _vae() -> pyro_vae.VAE:
    return pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))


@pytest.mark.parametrize("options, match", [
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"epochs": 1.5}, "epochs must be an integer >= 1"),
    ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ({"lr": float("nan")}, "lr must be a finite number > 0"),
    ({"beta": -1.0}, "beta must be a finite number >= 0"),
    ({"clip_norm": 0}, "clip_norm must be a finite number > 0"),
    ({"on_nan": "ignore"}, "unknown on_nan 'ignore'"),
    ({"nan_check_every": 0}, "nan_check_every must be an integer >= 1"),
    ({"lr_schedule": "linear"}, "unknown lr_schedule 'linear'"),
    ({"objective": "iwae", "beta": 0.5}, "do not apply to the 'iwae' objective"),
    ({"resume": True}, "resume=True needs a checkpoint_dir"),
    ({"max_rollbacks": -1}, "max_rollbacks must be an integer >= 0"),
])
def test_fit_config_refuses_what_fit_refuses_with_the_same_message(options, match):
    settings = {"epochs": 1, "batch_size": 10, **options}
    with pytest.raises(ValueError, match=match):
        FitConfig(**settings)
    with pytest.raises(ValueError, match=match):  # fit refuses it before any work, through the config
        pyro_vae.fit(_vae(), _digits(), progress=False, **settings)


def test_fit_config_is_frozen_and_normalised():
    config = FitConfig(epochs=2.0, batch_size=100, betas=[0.5, 0.9], extra={"dataset": "digits"})
    assert config.epochs == 2 and isinstance(config.epochs, int) and config.betas == (0.5, 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert config.run_config()["dataset"] == "digits" and config.run_config()["epochs"] == 2
    with pytest.raises(ValueError, match="epochs must be"):
        dataclasses.replace(config, epochs=0)


def test_run_fit_with_a_config_is_fit():
    data = _digits()
    pyro.set_rng_seed(1)
    a = _vae()
    history_a = pyro_vae.fit(a, data, epochs=2, batch_size=50, seed=4, progress=False, binarize=True)
    pyro.set_rng_seed(1)
    b = _vae()
    history_b = run_fit(b, data, FitConfig(epochs=2, batch_size=50, seed=4, progress=False, binarize=True))
    assert [h["loss"] for h in history_a] == [h["loss"] for h in history_b]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_fast_path_is_deprecated_for_direct_terms():
    data = _digits(100)
    pyro.set_rng_seed(2)
    a = _vae()
    with pytest.warns(DeprecationWarning, match="direct_terms"):
        history_a = pyro_vae.fit(a, data, epochs=1, batch_size=50, seed=1, progress=False, binarize=True,
                                 fast_path=False)
    pyro.set_rng_seed(2)
    b = _vae()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        history_b = pyro_vae.fit(b, data, epochs=1, batch_size=50, seed=1, progress=False, binarize=True,
                                 direct_terms=False)
    assert history_a[0]["loss"] == history_b[0]["loss"]
    params = list(b.parameters())
    optimizer = torch.optim.Adam(params)
    with pytest.warns(DeprecationWarning, match="direct_terms"):
        step = TrainStep(b, get_objective("elbo"), optimizer, params, num_particles=1, max_plate_nesting=1,
                         clip_norm=None, parallel=Parallel(False, torch.device("cpu")), fast_path=True)
    assert step.model == b.model  # the bound method: the model class's own producer is used


def test_fit_refuses_a_two_stage_model():
    from pyro_vae.models import TwoStageVAE

    tsv = TwoStageVAE((1, 8, 8), latent_dim=2, hidden_dims=(16,), stage2_hidden_dims=(16,))
    before = {k: v.clone() for k, v in tsv.state_dict().items()}
    with pytest.raises(TypeError, match=r"holds two.*\.fit\(data.*fit_two_stage"):
        pyro_vae.fit(tsv, _digits(), epochs=1, batch_size=50, progress=False)
    assert all(torch.equal(before[k], v) for k, v in tsv.state_dict().items())


class _Recorder(StepCheck):
    def __init__(self, params):
        self.params, self.calls = params, []

    def loss(self, loss):
        self.calls.append(("loss", loss.item()))

    def gradients(self, params):
        assert params is self.params and all(p.grad is not None for p in params)
        self.calls.append(("gradients", [p.grad.clone() for p in params]))

    def updated(self, params):
        self.calls.append(("updated", [p.detach().clone() for p in params]))


def test_the_check_hooks_see_the_step_that_trains():
    """A checked step is the training step: the same loss, gradients and update as an unchecked one."""
    vae = _vae()
    x = _digits(20).round()

    def run(check):
        pyro.set_rng_seed(0)
        model = _vae()
        model.load_state_dict(vae.state_dict())
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=0.1)
        step = TrainStep(model, get_objective("elbo"), opt, params, num_particles=1, max_plate_nesting=1,
                         clip_norm=0.5, parallel=Parallel(False, torch.device("cpu")))
        loss = step((x,), 20.0, check=check(params) if check else None)
        return loss, [p.detach().clone() for p in params], check

    loss, after, _ = run(None)
    recorder = []
    loss_c, after_c, _ = run(lambda params: recorder.append(_Recorder(params)) or recorder[-1])
    calls = recorder[0].calls
    assert [c[0] for c in calls] == ["loss", "gradients", "updated"]
    assert torch.equal(loss, loss_c) and calls[0][1] == pytest.approx(loss.item() / 20.0, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(after, after_c))
    assert all(torch.equal(a, b) for a, b in zip(after, calls[2][1]))
    # the hook saw the gradients before clipping: their norm exceeds the clip
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in calls[1][1]])) > 0.5


def test_nan_replay_names_the_gradient_through_the_real_step():
    """A parameter whose gradient alone is NaN (the loss stays finite): the replay names it."""

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def model(self, x):
            # sqrt at 0 has an infinite derivative: on the batch holding the marker the gradient of w is NaN
            w = torch.sqrt(self.w * 0.0) if bool(x.max() > 100) else self.w
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", pdist.Normal(torch.zeros_like(x[:, 0]), 1.0))
                pyro.sample("x", pdist.Normal(z + w, 1.0), obs=x[:, 0].clamp(max=5.0))

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", pdist.Normal(torch.zeros_like(x[:, 0]), 1.0))

    x = torch.randn(40, 1)
    x[17] = 1000.0
    with pytest.raises(FloatingPointError, match=r"step \d of 4: the gradient of parameter\(s\) w is non-finite"):
        pyro_vae.fit(Pair(), x, epochs=1, batch_size=10, progress=False, device="cpu", nan_check_every=1,
                     max_plate_nesting=1)


def test_train_state_snapshot_restore_and_checkpoint(tmp_path):
    pyro.set_rng_seed(0)
    vae = _vae()
    params = list(vae.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    state = TrainState(vae, optimizer, scheduler, torch.Generator().manual_seed(5),
                       Parallel(False, torch.device("cpu")), 7)
    snap = state.snapshot()
    weights = [p.detach().clone() for p in params]
    shuffle = torch.randperm(10, generator=state.shuffle)
    draw = torch.rand(3)
    for p in params:  # a step changes everything a snapshot keeps
        p.grad = torch.ones_like(p)
    optimizer.step()
    state.restore(snap)
    assert all(torch.equal(a, p) for a, p in zip(weights, params))
    assert torch.equal(torch.randperm(10, generator=state.shuffle), shuffle) and torch.equal(torch.rand(3), draw)
    assert not optimizer.state  # Adam's moments are back to none
    state.history.append({"epoch": 1, "loss": 1.0})
    path = tmp_path / "checkpoint.pt"
    state.checkpoint(path, {"lr": 0.01})
    saved = load_checkpoint(path)
    # the format today's runs write and older code resumes: these keys, nothing renamed
    assert set(saved) == {"epoch", "pair", "optimizer", "scheduler", "shuffle_rng", "rng_ranks", "base_seed",
                          "world_size", "history", "config", "rng", "pair_sha256"}
    assert saved["epoch"] == 1 and saved["base_seed"] == 7
    resumed = TrainState(_vae(), torch.optim.Adam(params, lr=0.01), scheduler, torch.Generator(),
                         Parallel(False, torch.device("cpu")), None)
    resumed.resume(path, 0.01, lambda e, n: 1.0, 3)
    assert resumed.epoch == 1 and resumed.history == [{"epoch": 1, "loss": 1.0}]
    for (name, a), b in zip(vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_without_rng_ranks_resumes(tmp_path):
    """Checkpoints of older versions hold one ``rng`` and no ``rng_ranks``: they resume, streams continued."""
    data = _digits(100)
    pyro.set_rng_seed(0)
    vae = _vae()
    pyro_vae.fit(vae, data, epochs=1, batch_size=50, seed=2, progress=False, binarize=True, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    old = torch.load(path, weights_only=True)
    del old["rng_ranks"], old["world_size"], old["base_seed"]
    torch.save(old, path)
    history = pyro_vae.fit(vae, data, epochs=2, batch_size=50, seed=2, progress=False, binarize=True,
                           checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in history] == [1, 2]


def test_preserved_rng_puts_every_generator_back():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with pytest.raises(RuntimeError):
        with preserved_rng():
            torch.rand(5), np.random.rand(5), random.random()
            raise RuntimeError("restored also on an error")
    got = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    state = rng_state()
    first = torch.rand(2), np.random.rand(2), random.random()
    set_rng_state(state)
    again = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]

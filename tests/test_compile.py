"""The compiled training step, ``fit(..., compile=True)`` (``pyro_vae.train.compiled``): the same training as the eager
step on the same draws (loss and every parameter, KL warm-up, a learning-rate schedule and clipping included), no
recompilation for a schedule, checkpoints and resume across ``compile`` on and off, the NaN guard's rollback, the
fallback of a user's pair and the refusals.

The identity tests run in float64: the compiled kernels sum in another order than torch's eager ones, so each
value differs by a few float64 ulps (about 1e-16 relatively), and 20 Adam steps keep the parameters within 1e-12
of each other (measured: 1e-16); the faults these tests are meant to catch (a skipped clipping, a stale learning rate
or rate weight) move the parameters by 1e-4 or more. Compiling takes seconds (tens on a busy machine): the tests
share one architecture, so that one process compiles it once.
"""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import pyro_vae
from pyro_vae.train import Callback
from pyro_vae.train.compiled import CompiledStep

#: float64 identity (see the module's docstring)
TOL = dict(rtol=0.0, atol=1e-12)
#: 20 steps: 2 epochs of 10 batches of 20; a warm-up (beta 1/4, then 1/2: two values of the tensor), the learning
#: rate halved in epoch 2, and a clipping norm the gradients exceed
FIT = dict(epochs=2, batch_size=20, lr=1e-2, seed=1, progress=False, binarize=True, clip_norm=1.0, kl_warmup_epochs=4,
           lr_schedule=lambda epoch, epochs: 0.5**epoch, num_threads=1)


def _vae(device, decoder=None):
    """The tests' VAE, the same initial weights every time."""
    torch.manual_seed(0)
    return pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), decoder=decoder or "mlp").to(device,
                                                                                                 torch.float64)


def _fit(data, device, compile, vae=None, **kw):
    """``fit`` with ``compile``; a compiled fit that fell back to the eager step fails here (its warning an error),
    so no comparison below compares the eager step with itself."""
    vae = vae if vae is not None else _vae(device)
    with warnings.catch_warnings():
        if compile:
            warnings.filterwarnings("error", message=r"compile=True", category=UserWarning)
        history = pyro_vae.fit(vae, data.to(device, torch.float64), compile=compile, **{**FIT, **kw})
    return vae, history


def _assert_same(a, b, ha, hb):
    torch.testing.assert_close([h["loss"] for h in hb], [h["loss"] for h in ha], **TOL)
    assert [h["lr"] for h in hb] == [h["lr"] for h in ha] and [h["beta"] for h in hb] == [h["beta"] for h in ha]
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **TOL, msg=lambda m, name=name: f"parameter {name}: {m}")


def test_compiled_step_equals_the_eager_step(digits, device):
    data = digits[:200]
    eager, he = _fit(data, device, False)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    compiled, hc = _fit(data, device, True)
    assert [h["lr"] for h in he] == [1e-2, 5e-3] and [h["beta"] for h in he] == [0.25, 0.5]
    _assert_same(eager, compiled, he, hc)
    # at most: the loss, the step size and the update; the halved learning rate and the second warm-up value compile
    # nothing new, and nothing breaks a graph
    assert counters["stats"]["unique_graphs"] - graphs <= 3
    assert sum(counters["graph_break"].values()) == breaks


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["iwae", "iwae-dreg", "mean-field", "hierarchical", "iaf"])
def test_every_objective_and_library_model_compiles_to_the_same_training(digits, variant):
    """The other objectives (DReG's gradient hooks included), a hierarchical VAE and a flow guide (its graph breaks
    where the flow cannot be traced: the same numbers, in several graphs)."""
    from pyro_vae.models import HierarchicalVAE

    def make():
        torch.manual_seed(0)
        if variant == "hierarchical":
            return HierarchicalVAE((1, 8, 8), layers=((16, 8), (8, 4))).double()
        return pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), guide_flow="iaf" if variant == "iaf" else None
                            ).double()

    kw = dict(kl_warmup_epochs=0)
    if variant.startswith("iwae"):
        kw.update(objective=variant, num_particles=5)
    elif variant == "mean-field":
        kw.update(objective="mean-field")
    runs = [_fit(digits[:200], "cpu", compile, vae=make(), **kw) for compile in (False, True)]
    _assert_same(*[r[0] for r in runs], *[r[1] for r in runs])


@pytest.mark.slow
def test_a_checkpoint_resumes_with_compile_switched(digits, tmp_path):
    data = digits[:200]
    eager, he = _fit(data, "cpu", False)
    resumed = _vae("cpu")
    _fit(data, "cpu", True, vae=resumed, epochs=1, checkpoint_dir=tmp_path)  # epoch 1 compiled, checkpointed
    _, hr = _fit(data, "cpu", False, vae=resumed, checkpoint_dir=tmp_path, resume=True)  # epoch 2 eager
    _assert_same(eager, resumed, he, hr)
    again = _vae("cpu")
    _fit(data, "cpu", False, vae=again, epochs=1, checkpoint_dir=tmp_path / "b")  # and the other way round
    _, ha = _fit(data, "cpu", True, vae=again, checkpoint_dir=tmp_path / "b", resume=True)
    _assert_same(eager, again, he, ha)


class _Switch(nn.Module):
    """A decoder that returns NaN while its ``armed`` buffer is 1 (a tensor: the compiled graph reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 64), nn.Unflatten(-1, (1, 8, 8)))
        self.register_buffer("armed", torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return torch.where(self.armed > 0, torch.full_like(out, float("nan")), out)


class _FireOnce(Callback):
    """Arm the switch after step 3 of epoch 2 (so step 4 fails), disarm it after the failing step: a glitch."""

    def __init__(self, switch: _Switch) -> None:
        self.switch, self.fired = switch, False

    def on_step_end(self, epoch, step, steps, loss, batch_size):
        if self.switch.armed.item() > 0:
            self.switch.armed.fill_(0.0)
        elif epoch == 1 and step == 2 and not self.fired:
            self.fired = True
            self.switch.armed.fill_(1.0)


@pytest.mark.slow
def test_nan_rollback_with_the_compiled_step(digits):
    runs = []
    for compile in (False, True):
        torch.manual_seed(0)
        switch = _Switch()
        vae = _vae("cpu", decoder=switch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the rollback's own warning
            runs.append(_fit(digits[:200], "cpu", compile, vae=vae, epochs=3, on_nan="rollback", nan_check_every=2,
                             kl_warmup_epochs=2, callbacks=[_FireOnce(switch)]))  # beta 1/2, then 1: a 2nd graph
    (eager, he), (compiled, hc) = runs
    events = hc[1]["nan_events"]
    assert len(events) == 1 and events[0]["step"] == 4 and "did not happen again" in events[0]["site"]
    assert [h["lr"] for h in hc] == [1e-2, 2.5e-3, 1.25e-3]  # the schedule's halving, then the rollback's
    _assert_same(eager, compiled, he, hc)


def test_a_users_pair_falls_back_with_a_warning():
    def model(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, scale).to_event(1))

    class Pair:
        pass

    pair = Pair()
    pair.model, pair.guide = model, guide
    with pytest.warns(UserWarning, match="terms are traced.*eager step") as caught:
        history = pyro_vae.fit(pair, torch.randn(40, 2), epochs=2, batch_size=10, progress=False, seed=0,
                               compile=True)
    assert len([w for w in caught if "compile=True" in str(w.message)]) == 1  # one line, once
    assert len(history) == 2


def test_compile_refusals(digits, small_vae):
    with pytest.raises(ValueError, match="not supported with several processes"):
        pyro_vae.fit(small_vae(), digits[:100], epochs=1, batch_size=10, compile=True, distributed=True)
    with pytest.raises(TypeError, match="compile must be True or False"):
        pyro_vae.fit(small_vae(), digits[:100], epochs=1, batch_size=10, compile="yes")


def test_compile_off_builds_the_eager_step(digits, small_vae, monkeypatch):
    """``compile=False`` (the default) never touches the compiled step."""
    monkeypatch.setattr(CompiledStep, "__init__", lambda *a, **k: pytest.fail("CompiledStep built"))
    pyro_vae.fit(small_vae(), digits[:40], epochs=1, batch_size=20, progress=False, binarize=True)


def test_train_compile_reaches_fit_and_is_not_kept(run_cli, tmp_path, monkeypatch):
    """``pyro-vae train --compile`` passes ``compile=True`` to fit; a resumed run compiles only when told again."""
    import pyro_vae.train

    real, given = pyro_vae.train.fit, []

    def spy(*args, **kw):
        given.append(kw["compile"])
        return real(*args, **{**kw, "compile": False})  # the option's route is tested here, not the compiling

    monkeypatch.setattr(pyro_vae.train, "fit", spy)
    out = str(tmp_path / "run")
    common = ["train", "--dataset", "digits", "--hidden-dims", "16", "--no-progress", "--out", out]
    status, _, err = run_cli([*common, "--epochs", "1", "--compile"])
    assert status == 0, err
    status, _, err = run_cli([*common, "--epochs", "2", "--resume"])
    assert status == 0, err
    assert given == [True, False]


def test_train_compile_refused_for_another_trainer():
    from pyro_vae.pipeline import run_settings

    assert run_settings({"dataset": "digits", "compile": True})[0].compile is True
    with pytest.raises(ValueError, match="--compile compiles the training step of pyro_vae.fit.*SSVAE"):
        run_settings({"dataset": "digits", "semi_supervised": True, "labels": 100, "compile": True})


@pytest.mark.slow
def test_compile_speed_benchmark_runs():
    """``benchmarks/compile_speed.py --smoke-test`` times both and estimates the schedule (no timing asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "compile_speed.py"), "--smoke-test"],
                          capture_output=True, text=True, timeout=600, cwd=root / "benchmarks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.splitlines()[0])
    assert record["batch_size"] == 20 and record["compile_seconds"] > 0
    assert len(record["seconds"]["eager"]) == len(record["seconds"]["compiled"]) == 2

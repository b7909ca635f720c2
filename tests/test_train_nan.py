"""The NaN guard of fit (``pyro_vae.train.nan``): bad options refused, a NaN or inf reported with its epoch, step
and site (or parameter), and ``on_nan="rollback"``: back to the last good state with a lower learning rate.

The faults tried and survived are listed in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae.train import CHECKPOINT_NAME, load_checkpoint


def params_of(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


# ------------------------------------------------------------------------------------------ fit: bad options
@pytest.mark.parametrize("kw, message", [(dict(on_nan="ignore"), "on_nan"), (dict(nan_check_every=0), "nan_check")])
def test_fit_refuses_bad_nan_options(kw, message, tmp_path, digits, small_vae):
    with pytest.raises(ValueError, match=message):
        pyro_vae.fit(small_vae(), torch.bernoulli(digits[:50]), epochs=1, batch_size=10, progress=False,
                     checkpoint_dir=tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()




# ------------------------------------------------------------------------------------------ NaN / inf in training
def _normal_data(n=200, bad=None):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    if bad is not None:
        x[bad, 0] = 1e30  # finite, but its squared error overflows float32: log p(x | z) = -inf
    return x


def test_nan_is_reported_with_epoch_step_and_site(tmp_path):
    seed, batch, bad = 4, 20, 137
    order = torch.randperm(200, generator=torch.Generator().manual_seed(seed))
    step = int((order == bad).nonzero()) // batch + 1
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(16,), likelihood="normal")
    start = params_of(vae)
    with pytest.raises(FloatingPointError) as info:
        pyro_vae.fit(vae, _normal_data(bad=bad), epochs=2, batch_size=batch, seed=seed, progress=False,
                     nan_check_every=3, checkpoint_dir=tmp_path)
    message = str(info.value)
    assert f"epoch 1, step {step} of 10" in message, message
    assert "observed sample site 'x'" in message and "-inf" in message and "on_nan='rollback'" in message
    assert all(torch.equal(v, params_of(vae)[k]) for k, v in start.items())  # back at the last good state
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_nan_in_a_gradient_names_the_parameter():
    class Pair(nn.Module):
        """log p(x | z) is finite, but d/d(w) of sqrt(w) at w = 0 is inf."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, 0.0]))

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z * self.w.sqrt(), 1.0).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 of 2: the gradient of parameter\(s\) w is"):
        pyro_vae.fit(Pair(), torch.randn(20, 2), epochs=1, batch_size=10, progress=False, seed=0)


class _TransientFault(nn.Module):
    """A decoder that returns NaN once, on its ``fire_at``-th call (a glitch that does not come back)."""

    def __init__(self, net: nn.Module, fire_at: int):
        super().__init__()
        self.net, self.calls, self.fire_at = net, 0, fire_at

    def forward(self, z):
        self.calls += 1
        out = self.net(z)
        return out * float("nan") if self.calls == self.fire_at else out


def test_rollback_lowers_the_learning_rate_and_goes_on(tmp_path, digits):
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 64), nn.Unflatten(-1, (1, 8, 8)))
    decoder = _TransientFault(net, fire_at=2 * 6 + 4)  # epoch 3 (6 steps per epoch), step 4
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), decoder=decoder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = pyro_vae.fit(vae, digits[:300], epochs=5, batch_size=50, lr=1e-2, binarize=True, seed=0,
                            progress=False, on_nan="rollback", nan_check_every=2, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(h["loss"]) for h in hist)
    events = hist[2]["nan_events"]
    assert len(events) == 1 and events[0]["step"] == 4 and "did not happen again" in events[0]["site"]
    assert [h["lr"] for h in hist] == [1e-2, 1e-2, 5e-3, 5e-3, 5e-3]
    assert all("nan_events" not in h for i, h in enumerate(hist) if i != 2)
    assert any("epoch 3, step 4 of 6" in str(w.message) for w in caught)
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)  # the lowered rate is saved: a resumed run keeps it
    assert state["scheduler"]["base_lrs"] == [5e-3]
    assert json.loads(state["history"][2])["nan_events"][0]["step"] == 4


class _UnconstrainedNoise:
    """A hand-written pair whose noise scale is an unconstrained ``pyro.param``: too large a step makes it negative."""

    def model(self, x):
        noise = pyro.param("noise", torch.tensor(1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, noise).to_event(1), obs=x)

    def guide(self, x):
        w = pyro.param("w", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(w * x, 0.01).to_event(1))


def test_rollback_survives_a_real_divergence():
    x = 0.05 * torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(epochs=4, batch_size=50, lr=0.6, seed=0, progress=False)
    with pytest.raises(FloatingPointError, match="epoch 1, step 3 of 8: the log_prob of the observed sample site 'x'"):
        pyro_vae.fit(_UnconstrainedNoise(), x, **kw)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hist = pyro_vae.fit(_UnconstrainedNoise(), x, on_nan="rollback", **kw)
    events = [e for h in hist for e in h.get("nan_events", [])]
    assert len(events) >= 2 and all("site 'x'" in e["site"] for e in events)
    assert [e["lr"] for e in events] == [0.6 * 0.5 ** (i + 1) for i in range(len(events))]
    assert all(math.isfinite(h["loss"]) for h in hist) and hist[-1]["loss"] < hist[0]["loss"]
    assert 0 < pyro.param("noise").item() < 1


def test_rollback_gives_up_on_a_fault_that_comes_back():
    vae = pyro_vae.VAE((4,), latent_dim=2, hidden_dims=(16,), likelihood="normal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError, match="site 'x'.*Gave up after 2 rollbacks"):
            pyro_vae.fit(vae, _normal_data(n=100, bad=3), epochs=1, batch_size=25, seed=0, progress=False,
                         on_nan="rollback", max_rollbacks=2)

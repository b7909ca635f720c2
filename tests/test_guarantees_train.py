"""Behaviours of :func:`pyro_vae.fit` and of run folders that users rely on (issue 24): beta and KL warm-up on the
mean-field loss, conditions kept with their data through shuffling, a new learning rate on resume, the random
state of a NaN replay and rollback, the last partial batch's gradient, the checksum of an unfinished run.

Most use :class:`FixedPair`: its observation does not depend on ``z``, so with ``objective="mean-field"`` the loss
of a datapoint is the deterministic ``-log N(x; theta, I) + KL(N(m, s^2) || N(0, I))`` and its gradient is known
in closed form; ``lr=1e-30`` keeps the weights fixed (in float64) where a test needs the loss of the same weights.
"""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from guarantees_worker import DIM, FixedPair, Grads, data
from torch import nn
from torch.testing import assert_close

import pyro_vae
from pyro_vae.runs import load_run


def _data(n=10, seed=0):
    return data(n, seed)


# ------------------------------------------------------------------------ 2 and 12. beta and KL warm-up
@pytest.mark.parametrize("beta,warmup,epochs", [(0.8, 4, 6), (2.0, 1, 2), (0.5, 3, 3)])
def test_rate_weight_follows_the_documented_warmup_and_weighs_the_mean_field_kl(beta, warmup, epochs):
    """Epoch ``e`` (0-based) weighs the rate by ``beta * min(1, (e + 1) / kl_warmup_epochs)``: ``beta / warm-up``
    in the first epoch, ``beta`` from the last warm-up epoch on; the mean-field loss per datapoint is then exactly
    ``distortion + beta_e * KL`` (closed form)."""
    pair, x = FixedPair(), _data()
    distortion, rate = pair.distortion_and_rate(x)
    history = pyro_vae.fit(pair, x, epochs=epochs, batch_size=4, lr=1e-30, objective="mean-field", beta=beta,
                           kl_warmup_epochs=warmup, seed=0, progress=False, device="cpu")
    weights = [beta * min(1.0, (e + 1) / warmup) for e in range(epochs)]
    assert [h["beta"] for h in history] == pytest.approx(weights, rel=1e-15, abs=0)
    assert history[0]["beta"] == pytest.approx(beta / warmup) and history[-1]["beta"] == beta
    for h, w in zip(history, weights):  # (fit sums the epoch's loss in float32)
        assert h["loss"] == pytest.approx(distortion + w * rate, rel=1e-6)


# ------------------------------------------------------------------------ 11. conditions through shuffling
def test_each_condition_stays_with_its_datapoint_through_shuffling():
    pair = FixedPair()
    x = _data(12)
    y = 10.0 * x + 3.0  # y_n is a function of x_n: any mix-up shows
    pyro_vae.fit(pair, x, condition=y, epochs=3, batch_size=5, lr=1e-3, objective="mean-field", seed=1,
                 progress=False, device="cpu")
    steps = [(bx, by) for bx, by in pair.seen if by is not None and bx.shape[0] <= 5]
    assert len(steps) == 3 * 3
    for bx, by in steps:
        assert_close(by, 10.0 * bx + 3.0)
    visited = torch.cat([bx for bx, _ in steps[:3]])
    assert not torch.equal(visited, x)  # the first epoch's order was shuffled
    assert_close(visited[visited[:, 0].argsort()], x[x[:, 0].argsort()])  # every datapoint once per epoch


# ------------------------------------------------------------------------ 13. a new lr on resume
def _cosine(epoch, epochs):
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@pytest.mark.parametrize("schedule", ["cosine", "custom"])
def test_a_new_lr_on_resume_takes_the_schedules_factor_of_the_resumed_epoch(tmp_path, schedule):
    factor = _cosine if schedule == "cosine" else (lambda e, n: 0.3**e)
    lr_schedule = "cosine" if schedule == "cosine" else factor
    x = _data()

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise StopIteration

    kw = dict(epochs=5, batch_size=5, objective="mean-field", seed=0, progress=False, device="cpu",
              checkpoint_dir=tmp_path, lr_schedule=lr_schedule)
    first = pyro_vae.fit(FixedPair(), x, lr=1e-2, on_epoch_end=stop_after_two, **kw)
    assert [h["lr"] for h in first] == pytest.approx([1e-2 * factor(e, 5) for e in range(2)], rel=1e-12)
    pair = FixedPair()
    resumed = pyro_vae.fit(pair, x, lr=4e-3, resume=True, **kw)
    assert [h["lr"] for h in resumed] == pytest.approx(
        [1e-2 * factor(e, 5) for e in range(2)] + [4e-3 * factor(e, 5) for e in range(2, 5)], rel=1e-12)


# ------------------------------------------------------------------------ 14. NaN replay and rollback
class NanOnce(nn.Module):
    """``x ~ N(z, 1)``, guide ``z ~ N(m, 1)``; records the guide's noise ``z - m`` of every call, and makes the
    log-likelihood NaN on the guide calls listed in ``nan_calls`` (counted from the first training step)."""

    def __init__(self, nan_calls):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(DIM, dtype=torch.float64))
        self.noise, self.nan_calls, self.counting = [], set(nan_calls), False

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.m.expand_as(x), 1.0).to_event(1))
        if self.counting:
            self.noise.append((z - self.m).detach().reshape(-1, DIM).clone())

    def model(self, x):
        bad = self.counting and len(self.noise) - 1 in self.nan_calls
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(DIM), 1.0).to_event(1))
            loc = z * math.nan if bad else z
            pyro.sample("x", dist.Normal(loc, 1.0, validate_args=False).to_event(1), obs=x)


def test_nan_replay_and_rollback_use_the_same_draws():
    """Epoch of 4 steps; the loss of step 2 (the third guide call) is NaN. The guard then replays steps 0..2 (guide
    calls 3, 4, 5; NaN again at 5), traces step 2 once more to name the site (call 6), rolls back and retrains the
    epoch (calls 7..10, finite). Every replay must draw what the first pass drew."""
    x = _data(8)
    pair = NanOnce(nan_calls={2, 5, 6})
    with pytest.warns(RuntimeWarning, match="rolled back"):
        history = _fit_counting(pair, x)
    noise = pair.noise
    assert len(noise) == 11, len(noise)
    first, replay, traced, retrain = noise[0:3], noise[3:6], noise[6], noise[7:11]
    for a, b in zip(first, replay):
        assert torch.equal(a, b)  # the replay draws what the failing pass drew
    assert torch.equal(traced, first[2])  # the site-naming trace too
    for a, b in zip(first, retrain[:3]):
        assert torch.equal(a, b)  # and the rolled-back epoch starts from the same random state
    assert not torch.equal(retrain[0], retrain[1])  # (the draws are random, not constant)
    (event,) = history[0]["nan_events"]
    assert event["step"] == 3 and "'x'" in event["site"]


def _fit_counting(pair, x):
    original = pair.guide

    def guide(x_batch):  # count the guide's calls from the first training step on (setup traces excluded)
        if not pair.counting and torch.is_grad_enabled():
            pair.counting = True
        return original(x_batch)

    pair.guide = guide
    return pyro_vae.fit(pair, x, epochs=1, batch_size=2, lr=1e-3, seed=0, progress=False, device="cpu",
                        on_nan="rollback", nan_check_every=1)


# ------------------------------------------------------------------------ 15. the last partial batch
@pytest.mark.parametrize("n,batch_size", [(10, 4), (7, 3), (5, 5)])
def test_last_partial_batch_gradient_is_its_mean_over_its_true_size(n, batch_size):
    """The gradient of ``theta`` for a batch ``B`` is ``-(mean_{n in B} x_n - theta)`` (the loss is a mean per
    datapoint of the batch), also for the last, shorter batch."""
    pair, x = FixedPair(), _data(n)
    grads = Grads(pair)
    pyro_vae.fit(pair, x, epochs=2, batch_size=batch_size, lr=1e-30, objective="mean-field", seed=0,
                 progress=False, device="cpu", callbacks=[grads])
    batches = [bx for bx, _ in pair.seen if bx.shape[0] <= batch_size]
    steps = 2 * math.ceil(n / batch_size)
    assert len(batches) == len(grads.grads) == steps
    assert batches[steps // 2 - 1].shape[0] == n - batch_size * (steps // 2 - 1)  # the short one
    theta = pair.theta.detach()
    for bx, g in zip(batches, grads.grads):
        assert_close(g, -(bx.mean(0) - theta), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------ 16. load_run checks the checkpoint
def test_load_run_of_an_unfinished_run_verifies_the_checkpoint_checksum(tmp_path):
    vae = pyro_vae.VAE((6,), latent_dim=2, hidden_dims=(8,), likelihood="normal")
    data = torch.rand(20, 6)
    pyro_vae.fit(vae, data, epochs=1, batch_size=10, progress=False, device="cpu", checkpoint_dir=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vae": vae.config, "dataset": "toy"}))
    loaded, _ = load_run(tmp_path)  # an unfinished run: no model/ folder, the checkpoint's weights
    x = torch.rand(3, 6)
    assert_close(loaded.reconstruct(x), vae.reconstruct(x))
    ckpt = tmp_path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    weights = state["pair"]["module"]
    name = next(k for k in weights if k.startswith("decoder"))
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3  # one changed weight, the stored checksum kept
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="checksum"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="checksum"):
        pyro_vae.load(tmp_path)  # the same run folder through the one loader

"""No host synchronisation per training step: every training loop of the library reads its device's values
(``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``) a fixed number of times per epoch, not once per
step. Counted by wrapping those methods of ``torch.Tensor``: doubling the steps of an epoch must not change the
count (on a GPU each such read waits for the device to finish its queue)."""

from __future__ import annotations

import os
import sys

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.models.semi_supervised import SSVAE
from pyro_vae.train import fit_semi_supervised

OPTIM = os.path.dirname(torch.optim.__file__)
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of the reads of a tensor's value by the host."""
    count = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            # torch's Adam keeps its step counter on the host (unless capturable): reading it waits for nothing
            if not sys._getframe(1).f_code.co_filename.startswith(OPTIM):
                count["n"] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


def _reads(host_reads, train) -> int:
    before = host_reads["n"]
    train()
    return host_reads["n"] - before


class _Pair(torch.nn.Module):
    """A user's own pair (pyro.module, plate, sample): the traced path."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(64, 4), torch.nn.Linear(2, 64)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.enc(x).chunk(2, -1)
            pyro.sample("z", pyro.distributions.Normal(loc, log_scale.exp()).to_event(1))


@pytest.mark.parametrize("pair", ["library", "user"])
def test_fit_reads_the_device_a_fixed_number_of_times_per_epoch(host_reads, digits, pair):
    x = torch.bernoulli(digits[:160].flatten(1))

    def train(n: int) -> None:
        vae = pyro_vae.VAE((64,), latent_dim=2, hidden_dims=(8,)) if pair == "library" else _Pair()
        pyro_vae.fit(vae, x[:n], epochs=1, batch_size=10, progress=False, nan_check_every=1000, seed=0)

    train(20)  # first steps validate distributions: not counted
    assert _reads(host_reads, lambda: train(80)) == _reads(host_reads, lambda: train(160))


def test_fit_semi_supervised_reads_the_device_once_per_epoch(host_reads, digits):
    x = torch.bernoulli(digits[:200])
    y = torch.arange(200) % 3

    def train(n: int) -> None:
        ssvae = SSVAE((1, 8, 8), num_classes=3, latent_dim=2, hidden_dims=(8,))
        fit_semi_supervised(ssvae, x[:30], y[:30], x[30:30 + n], epochs=1, batch_size=10, progress=False, seed=0)

    train(20)
    assert _reads(host_reads, lambda: train(80)) == _reads(host_reads, lambda: train(160))

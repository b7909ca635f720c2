"""Small pairs written the way Pyro's example programs are written (in our own words, not their code), for
tests/test_pyro_programs.py; run under ``torchrun`` it trains the deep-Markov-style pair over the processes.

- :class:`MaskedCVAE`: a conditional pair that picks its observed pixels by boolean-mask indexing (``x[mask]``),
  which does not broadcast over a leading particle dimension (Pyro's CVAE does the same);
  :class:`BroadcastCVAE` is the same model written with ``index_select`` along the last dimension, which does.
- :class:`SequencePair`: a deep-Markov-style pair: a ``pyro.markov`` loop over ``T`` steps, per-step masks for
  sequences of different lengths, four arguments (the padded batch, its reversed copy as a ``PackedSequence``,
  the mask, the lengths), a plate named ``"sequences"``, and the KL annealed by ``poutine.scale``.
- :class:`LabelPair`: an M2-style pair, a size-less ``pyro.plate("data")`` and a discrete label summed by
  ``config_enumerate(expand=True)`` in the guide.

``python -m torch.distributed.run --nproc_per_node=2 tests/pyro_programs.py --out DIR`` trains the sequence pair
for two epochs on every rank and saves ``rank<R>.pt`` (history and parameters).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PLATE = "sequences"


# ------------------------------------------------------------------------------------------------ CVAE-style pairs
class MaskedCVAE(nn.Module):
    """The first ``d_in`` features of a row are the condition, the rest the target: the model observes the target
    pixels it selects with a boolean mask of the data's shape."""

    def __init__(self, dim: int = 12, d_in: int = 4, latent: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.dim, self.d_in, self.latent = dim, d_in, latent
        self.prior_net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.post_net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent + d_in, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def _prior(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.prior_net(cond).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3

    def _logits(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, cond.expand(*z.shape[:-1], cond.shape[-1])], -1))

    def _target(self, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        is_target = torch.zeros_like(x, dtype=torch.bool)
        is_target[:, self.d_in:] = True
        n = x.shape[0]
        return logits[is_target].view(n, -1), x[is_target].view(n, -1)  # (N, D - d_in): no particle dimension

    def model(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self._prior(cond)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            logits, target = self._target(self._logits(z, cond), x)
            pyro.sample("target", dist.Bernoulli(logits=logits).to_event(1), obs=target)

    def guide(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.post_net(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


class BroadcastCVAE(MaskedCVAE):
    """:class:`MaskedCVAE` with the target selected along the last dimension: it broadcasts over particles."""

    def _target(self, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[..., self.d_in:], x[..., self.d_in:]


# --------------------------------------------------------------------------------------- deep-Markov-style pair
def reverse_steps(seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each padded sequence ``(N, T, D)`` reversed over its own first ``length`` steps (padding stays last)."""
    t = seqs.shape[1]
    steps = torch.arange(t).unsqueeze(0)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return seqs.gather(1, index.unsqueeze(-1).expand_as(seqs))


class Sequences(torch.utils.data.Dataset):
    """Binary sequences of different lengths, one datapoint a ``(T_n, D)`` tensor."""

    def __init__(self, num: int = 48, max_len: int = 6, dim: int = 5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(2, max_len + 1, (num,), generator=g)
        base = (torch.rand(dim, generator=g) > 0.5).float()
        self.items = []
        for n in range(num):  # a pattern that drifts step by step, with noise: something to learn
            steps = [(base + torch.arange(dim) * 0 + s) % 2 for s in range(int(lengths[n]))]
            seq = torch.stack(steps)
            flip = torch.rand(seq.shape, generator=g) < 0.1
            self.items.append(torch.where(flip, 1 - seq, seq))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


def collate_sequences(items: list[torch.Tensor]) -> tuple:
    """A batch's four arguments: the padded batch ``(N, T, D)``, its reversed copy packed for the guide's RNN (in
    the batch's order: ``enforce_sorted=False``), the mask ``(N, T)`` and the lengths ``(N,)``."""
    lengths = torch.tensor([len(s) for s in items])
    batch = nn.utils.rnn.pad_sequence(items, batch_first=True)
    mask = (torch.arange(batch.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).float()
    packed = pack_padded_sequence(reverse_steps(batch, lengths), lengths, batch_first=True, enforce_sorted=False)
    return batch, packed, mask, lengths


class SequencePair(nn.Module):
    """A latent Markov chain ``z_t | z_{t-1}`` emitting ``x_t``; the guide reads the sequence backwards with an RNN.
    The KL of every step is annealed by ``poutine.scale(scale=self.annealing)``, in the model and the guide."""

    def __init__(self, dim: int = 5, latent: int = 3, hidden: int = 8, annealing: float = 0.2) -> None:
        super().__init__()
        self.latent, self.hidden, self.annealing = latent, hidden, annealing
        self.trans = nn.Linear(latent, 2 * latent)
        self.emit = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.rnn = nn.RNN(dim, hidden, batch_first=True)
        self.combine = nn.Linear(latent, hidden)
        self.to_q = nn.Linear(hidden, 2 * latent)
        self.z_0 = nn.Parameter(torch.zeros(latent))
        self.z_q_0 = nn.Parameter(torch.zeros(latent))

    def model(self, batch: torch.Tensor, packed: nn.utils.rnn.PackedSequence, mask: torch.Tensor,
              lengths: torch.Tensor) -> None:
        pyro.module("seq", self)
        n, steps, _ = batch.shape
        z_prev = self.z_0.expand(n, self.latent)
        with pyro.plate(PLATE, n):
            for t in pyro.markov(range(steps)):
                loc, raw = self.trans(z_prev).chunk(2, -1)
                with poutine.scale(scale=self.annealing):
                    z = pyro.sample(f"z_{t + 1}", dist.Normal(z_prev + loc, nn.functional.softplus(raw) + 1e-3)
                                    .mask(mask[:, t:t + 1]).to_event(1))
                pyro.sample(f"x_{t + 1}", dist.Bernoulli(logits=self.emit(z)).mask(mask[:, t:t + 1]).to_event(1),
                            obs=batch[:, t])
                z_prev = z

    def guide(self, batch: torch.Tensor, packed: nn.utils.rnn.PackedSequence, mask: torch.Tensor,
              lengths: torch.Tensor) -> None:
        pyro.module("seq", self)
        n, steps, _ = batch.shape
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        h = reverse_steps(out, lengths)  # h_t summarises x_t .. x_T
        z_prev = self.z_q_0.expand(n, self.latent)
        with pyro.plate(PLATE, n):
            for t in pyro.markov(range(steps)):
                loc, raw = self.to_q(torch.tanh(self.combine(z_prev)) + h[:, t]).chunk(2, -1)
                with poutine.scale(scale=self.annealing):
                    z = pyro.sample(f"z_{t + 1}", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3)
                                    .mask(mask[:, t:t + 1]).to_event(1))
                z_prev = z


# ------------------------------------------------------------------------------------------------ M2-style pair
class LabelPair(nn.Module):
    """``y ~ Cat(1/C)``, ``z ~ N(0, I)``, ``x ~ Bernoulli(f(z, y))``; the guide ``q(y | x) q(z | x, y)``, ``y``
    summed by ``config_enumerate(expand=True)``. The plates have no size (taken from the distributions)."""

    def __init__(self, dim: int = 8, classes: int = 3, latent: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.classes, self.latent = classes, latent
        self.dec_z, self.dec_y = nn.Linear(latent, hidden), nn.Linear(classes, hidden)
        self.dec = nn.Linear(hidden, dim)
        self.enc_y = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, classes))
        self.enc_x, self.enc_yz = nn.Linear(dim, hidden), nn.Linear(classes, hidden)
        self.enc_z = nn.Linear(hidden, 2 * latent)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("m2", self)
        n = x.shape[0]
        with pyro.plate("data"):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(n, self.classes)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(n, self.latent), 1.0).to_event(1))
            logits = self.dec(torch.tanh(self.dec_z(z) + self.dec_y(y)))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def _guide(self, x: torch.Tensor) -> None:
        pyro.module("m2", self)
        with pyro.plate("data"):
            y = pyro.sample("y", dist.OneHotCategorical(logits=self.enc_y(x)))
            loc, raw = self.enc_z(torch.tanh(self.enc_x(x) + self.enc_yz(y))).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    @property
    def guide(self):  # noqa: ANN201 - the enumerated guide, as Pyro's M2 example builds it
        return pyro.infer.config_enumerate(self._guide, "parallel", expand=True)


# --------------------------------------------------------------------------------------- the 2-process training
def main() -> None:
    import pyro_vae

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pair = SequencePair()
    history = pyro_vae.fit(pair, Sequences(48), epochs=2, batch_size=16, collate_fn=collate_sequences,
                           data_plate=PLATE, seed=1, progress=False, device="cpu", num_threads=1)
    rank = int(__import__("os").environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"history": history, "params": {k: v.detach().clone() for k, v in pair.state_dict().items()}},
               args.out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()

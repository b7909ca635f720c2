"""Training speed of whole ``pyro_vae.fit`` calls against plain PyTorch, on dynamically binarized MNIST.

Three implementations train the one-layer network of Burda, Grosse & Salakhutdinov (2016), 784-200-200-50
with tanh units, a Bernoulli likelihood and a diagonal Gaussian guide whose scale is ``exp`` of the encoder's
output, on the single-sample ELBO with Adam (lr 1e-3, betas (0.9, 0.999), eps 1e-8) and the same batch size:

(a) ``library``: ``pyro_vae.VAE(...)`` trained by ``pyro_vae.fit(..., binarize=True, progress=False)`` (the
    engine's ``elbo`` objective on the terms the VAE produces itself);
(b) ``user_pair``: a user's own Pyro ``model``/``guide`` of the same network (``UserPair``: ``pyro.module``,
    ``pyro.plate``, ``pyro.sample`` of ``dist.Normal`` and ``dist.Bernoulli``, no ``pyro_vae.VAE``), trained by the same
    ``pyro_vae.fit`` call (the engine's traced path);
(c) ``reference``: the same layers (``nn.Linear`` default initialisation, built in the same order from the
    same seed) and a hand-written ``reference_fit``: a new Adam, a fresh ``torch.bernoulli`` draw of each
    batch, one reparameterized sample ``z = z_loc + z_scale * eps`` and the loss ``-mean_n [log p(x_n | z_n) +
    log p(z_n) - log q(z_n | x_n)]`` with ``log p(x | z) = -binary_cross_entropy_with_logits(...).sum()``:
    the same Monte Carlo estimator, with the same gradient.

Each timing is a **whole call**, setup included: ``fit`` (checks, device placement, optimizer, the NaN
guard's snapshot, the epoch, the record) against ``reference_fit`` (optimizer, the epoch). The three take turns
in short rounds, so that they see the same background load: each epoch draws one permutation of the training
set and cuts it into ``--rounds`` slices (whole batches); for each slice each implementation makes one call of
one epoch over it, the order rotating between rounds. The weights carry over between calls (the same
modules), the Adam state does not (on every side). Afterwards all are scored on the same binarized test set.

Output: one JSON line per implementation and batch size, then one line per batch size and implementation with
the ratio of images per second (implementation / reference): ``ratio``, the median of the per-round ratios
(robust to bursts of outside load), with their quartiles, and ``ratio_of_totals``. ``--write-docs`` records
the result in ``docs/benchmarks.md``.

``--whole-calls`` measures what a user's script pays instead: whole ``fit`` calls of ``--call-epochs`` epochs
over the whole training set (setup included), with default arguments (the headline: what a user gets) and with
the references' thread count, taking turns with hand-written loops of the same epochs (with torch's default Adam,
and with the fused Adam that ``fit`` uses) at each of ``--threads``, wall and CPU time per call, and the load
average after each round (:func:`run_whole_calls`).

Usage::

    python benchmarks/train_mnist.py --smoke-test
    python benchmarks/train_mnist.py --batch-size 20,100,1000 --train-size 20000 --epochs 2 --write-docs
    python benchmarks/train_mnist.py --whole-calls --train-size 10000 --call-epochs 2 --repeats 7 --threads 2,1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import pyro
import torch
import torch.nn.functional as F
from common import (  # run as ``python benchmarks/train_mnist.py``: benchmarks/ is on the path
    REPO_ROOT,
    command_line,
    machine_info,
    machine_markdown,
    markdown_table,
    print_json,
    update_section,
    utc_date,
)
from torch import nn
from torch.distributions import Normal

import pyro_vae  # after common, which makes the repository importable without installing it

BENCHMARK = "train_mnist"
INPUT_DIM = 784
HIDDEN_DIMS = (200, 200)
LATENT_DIM = 50
LR = 1e-3
EVAL_BATCH = 1000


class ReferenceVAE(nn.Module):
    """The same network as ``pyro_vae.VAE((784,), 50, (200, 200), "tanh", "bernoulli")``, in plain PyTorch.

    The layers are created in the same order as the library's (encoder, then decoder), so the same seed gives
    the same initial weights.
    """

    def __init__(self, input_dim: int = INPUT_DIM, hidden_dims: tuple[int, ...] = HIDDEN_DIMS,
                 latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = self._mlp([input_dim, *hidden_dims, 2 * latent_dim])
        self.decoder = self._mlp([latent_dim, *reversed(hidden_dims), input_dim])

    @staticmethod
    def _mlp(sizes: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Single-sample ELBO of each datapoint. :param x: ``(N, 784)`` in {0, 1}. :returns: ``(N,)``."""
        z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
        z_scale = z_log_scale.exp()
        eps = torch.randn(z_loc.shape, generator=generator, device=z_loc.device, dtype=z_loc.dtype)
        z = z_loc + z_scale * eps  # reparameterized, as Normal.rsample
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_pz = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
        log_qz = Normal(z_loc, z_scale).log_prob(z).sum(-1)
        return log_px + log_pz - log_qz


class UserPair(ReferenceVAE):
    """A user's own Pyro model/guide pair of the same network (the layers of :class:`ReferenceVAE`, so the same
    seed gives the same initial weights): what a user writes without ``pyro_vae.VAE``."""

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)  # as Pyro's own VAE example registers its networks
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", pyro.distributions.Normal(z_loc, z_log_scale.exp()).to_event(1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epoch(ref: ReferenceVAE, optimizer: torch.optim.Optimizer, data: torch.Tensor, batch_size: int,
                    shuffle: torch.Generator, noise: torch.Generator | None,
                    elbo: Callable[[torch.Tensor], torch.Tensor] | None = None, rank: int = 0,
                    world: int = 1) -> tuple[float, float]:
    """One epoch of the reference loop (the same span ``fit`` times). :returns: ``(seconds, mean loss)``.

    ``elbo`` (default ``ref.elbo`` drawing from ``noise``) scores a batch; with ``world > 1`` (a
    ``DistributedDataParallel`` run, see ``benchmarks/distributed.py``) rank ``rank`` takes datapoints ``rank,
    rank + world, ...`` of each batch and divides its summed loss by the batch's size over ``world``, as ``fit``
    does; the mean loss is then this rank's."""
    elbo = elbo if elbo is not None else (lambda x: ref.elbo(x, noise))
    n = data.shape[0]
    device = data.device
    _sync(device)
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=shuffle).to(device)
    total = torch.zeros((), device=device)
    for step in range(math.ceil(n / batch_size)):
        index = order[step * batch_size:(step + 1) * batch_size]
        x = torch.bernoulli(data[index[rank::world]], generator=noise)
        loss_sum = -elbo(x).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / (index.numel() / world)).backward()
        optimizer.step()
        total += loss_sum.detach()
    _sync(device)
    seconds = time.perf_counter() - t0
    return seconds, (total * world / n).item()


def reference_fit(ref: ReferenceVAE, data: torch.Tensor, batch_size: int, shuffle: torch.Generator,
                  noise: torch.Generator | None, epochs: int = 1, fused: bool = False) -> float:
    """A hand-written ``fit``: a new Adam (as every ``fit`` call makes; torch's default implementation, or with
    ``fused`` the one-kernel Adam that ``fit`` uses where torch has it), then the epochs.

    :returns: the mean loss per datapoint of the last epoch."""
    ref.train()
    optimizer = torch.optim.Adam(ref.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if fused
                                                                                           else {}))
    for _ in range(epochs):
        _, loss = reference_epoch(ref, optimizer, data, batch_size, shuffle, noise)
    ref.eval()
    return loss


@torch.no_grad()
def _summary(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


@torch.no_grad()
def library_test_elbo(vae: Any, test: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean and standard error of the single-sample ELBO with ``pyro_vae.infer.elbo``."""
    pyro.set_rng_seed(seed)
    vae.eval()
    values = torch.cat([pyro_vae.infer.elbo(vae.model, vae.guide, test[i:i + EVAL_BATCH], num_particles=1)
                        for i in range(0, test.shape[0], EVAL_BATCH)])
    assert values.shape == (test.shape[0],)
    return _summary(values)


@torch.no_grad()
def reference_test_elbo(ref: ReferenceVAE, test: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean and standard error of the reference's single-sample ELBO."""
    g = torch.Generator(device=test.device).manual_seed(seed)
    values = torch.cat([ref.elbo(test[i:i + EVAL_BATCH], g) for i in range(0, test.shape[0], EVAL_BATCH)])
    return _summary(values)


def check_same_estimator(train: torch.Tensor, batch_size: int, seed: int) -> dict[str, float]:
    """Check that both sides compute the same loss and gradient when they draw the same random numbers.

    Builds both networks from the same seed, evaluates the library's ``"elbo"`` objective (what ``fit`` uses)
    and the reference loss on one binarized batch with the same ``eps``, and compares.

    :returns: ``{"loss_difference": ..., "max_grad_difference": ...}`` (absolute; 0 means bit-identical).
    """
    from pyro_vae.infer.objectives import objective_loss

    device = train.device
    torch.manual_seed(seed)
    vae = pyro_vae.VAE((INPUT_DIM,), latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS).to(device)
    torch.manual_seed(seed)
    ref = ReferenceVAE().to(device)
    x = torch.bernoulli(train[:batch_size], generator=torch.Generator(device=device).manual_seed(seed))
    pyro.set_rng_seed(seed + 7)
    loss_lib = objective_loss("elbo", vae.model, vae.guide, x, num_particles=1) / x.shape[0]
    loss_lib.backward()
    loss_ref = -ref.elbo(x, torch.Generator(device=device).manual_seed(seed + 7)).mean()
    loss_ref.backward()
    lib_params, ref_params = list(vae.parameters()), list(ref.parameters())
    assert [p.shape for p in lib_params] == [p.shape for p in ref_params], "the two networks differ"
    return {
        "loss_difference": abs(loss_lib.item() - loss_ref.item()),
        "max_grad_difference": max((a.grad - b.grad).abs().max().item() for a, b in zip(lib_params, ref_params)),
    }


def epoch_slices(n: int, batch_size: int, rounds: int) -> list[tuple[int, int]]:
    """Cut ``n`` positions into at most ``rounds`` consecutive slices whose boundaries fall on whole batches."""
    steps = math.ceil(n / batch_size)
    c = max(1, min(int(rounds), steps))
    bounds = [min(n, batch_size * round(i * steps / c)) for i in range(c)] + [n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


IMPLS = ("library", "user_pair", "reference")


def run_batch_size(batch_size: int, train: torch.Tensor, test: torch.Tensor, epochs: int, seed: int,
                   device: torch.device, rounds: int) -> dict[str, Any]:
    """Train the three implementations for ``epochs`` epochs, taking turns in rounds of whole calls, and score them.

    Each epoch draws one permutation of the training set and cuts it into ``rounds`` slices; for each slice each
    implementation makes one whole call of one epoch over it (``pyro_vae.fit`` for the library's VAE and for the
    user's pair, ``reference_fit`` for the reference), the order rotating between rounds. The calls of a round
    see the same images and are timed seconds apart, under the same load.
    """
    n = train.shape[0]
    pyro.clear_param_store()
    models: dict[str, Any] = {}
    torch.manual_seed(seed)
    models["library"] = pyro_vae.VAE((INPUT_DIM,), latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS,
                                     activation="tanh", likelihood="bernoulli").to(device)
    torch.manual_seed(seed)
    models["user_pair"] = UserPair().to(device)
    torch.manual_seed(seed)
    models["reference"] = ReferenceVAE().to(device)
    epoch_order = torch.Generator().manual_seed(seed + 3)
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    losses: dict[str, list[tuple[float, int]]] = {impl: [] for impl in IMPLS}
    calls = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=epoch_order).to(device)
        for a, b in epoch_slices(n, batch_size, rounds):
            part = train[perm[a:b]]  # the round's images, gathered outside the timed span
            bs = min(batch_size, b - a)
            order = IMPLS[calls % 3:] + IMPLS[:calls % 3]
            calls += 1
            for impl in order:
                _sync(device)
                t0 = time.perf_counter()
                if impl == "reference":
                    loss = reference_fit(models[impl], part, bs, shuffle, noise)
                else:
                    history = pyro_vae.fit(models[impl], part, epochs=1, batch_size=bs, lr=LR, objective="elbo",
                                           num_particles=1, device=device, seed=seed + calls, progress=False,
                                           binarize=True)
                    loss = history[-1]["loss"]
                _sync(device)
                times[impl].append(time.perf_counter() - t0)
                losses[impl].append((loss, b - a))
    elbos = {"library": library_test_elbo(models["library"], test, seed + 2),
             "user_pair": library_test_elbo(models["user_pair"], test, seed + 2),
             "reference": reference_test_elbo(models["reference"], test, seed + 2)}
    rounds_per_epoch = len(times["reference"]) // epochs
    result: dict[str, Any] = {"batch_size": batch_size, "impls": {}, "ratios": {}}
    for impl in IMPLS:
        last = losses[impl][-rounds_per_epoch:]
        result["impls"][impl] = {
            "benchmark": BENCHMARK, "impl": impl, "batch_size": batch_size, "epochs": epochs,
            "images_per_second": epochs * n / sum(times[impl]),
            "images_per_second_median_round": statistics.median(k / t for (_, k), t in zip(losses[impl], times[impl])),
            "test_elbo": elbos[impl][0], "test_elbo_stderr": elbos[impl][1],
            "device": str(device), "train_size": n, "test_size": test.shape[0],
            "seconds": sum(times[impl]), "last_epoch_train_loss": sum(v * k for v, k in last) / sum(k for _, k in last),
        }
    result["same_estimator"] = check_same_estimator(train, batch_size, seed)
    for impl in ("library", "user_pair"):
        paired = sorted(r / p for p, r in zip(times[impl], times["reference"]))  # images/s ratio per round
        q1, median, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        result["ratios"][impl] = {
            "benchmark": BENCHMARK, "metric": "images_per_second_ratio", "numerator": impl,
            "denominator": "reference", "batch_size": batch_size, "epochs": epochs, "device": str(device),
            "ratio": median, "ratio_quartiles": [q1, q3], "rounds": len(paired),
            "ratio_of_totals": (result["impls"][impl]["images_per_second"]
                                / result["impls"]["reference"]["images_per_second"]),
            "ratio_min_max": [paired[0], paired[-1]],
        }
    return result


#: whole-call implementations: ``fit`` with default arguments (what a user gets: ``num_threads="auto"``), ``fit`` at the
#: references' thread count (``num_threads=T``), and the two hand-written loops at ``T`` threads
WHOLE_IMPLS = ("library", "user_pair", "library@T", "user_pair@T", "reference", "reference_fused")
#: (numerator, what its row is called) in the order of the table: the default arguments first, the headline
WHOLE_ROWS = (("library", "defaults"), ("user_pair", "defaults"), ("library@T", "T threads"),
              ("user_pair@T", "T threads"))


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _whole_call(impl: str, model: Any, train: torch.Tensor, batch_size: int, epochs: int, seed: int,
                device: torch.device, shuffle: torch.Generator, noise: torch.Generator | None, threads: int) -> int:
    """One whole call of ``impl``: ``fit`` with default arguments, ``fit(num_threads=threads)``, or a reference.

    :returns: the most torch threads the call trained with (seen at the end of each of its epochs)."""
    if impl.startswith("reference"):
        reference_fit(model, train, batch_size, shuffle, noise, epochs, impl.endswith("fused"))
        return torch.get_num_threads()
    used: list[int] = []
    extra = {"num_threads": threads} if impl.endswith("@T") else {}  # no num_threads: the default, "auto"
    pyro_vae.fit(model, train, epochs=epochs, batch_size=batch_size, device=device, seed=seed, progress=False,
                 binarize=True, on_epoch_end=lambda record: used.append(torch.get_num_threads()), **extra)
    return max(used)


def run_whole_calls(batch_size: int, train: torch.Tensor, call_epochs: list[int], repeats: int, seed: int,
                    device: torch.device, threads: int | None = None) -> list[dict[str, Any]]:
    """Whole calls, setup included: ``fit(model, train, epochs=E)`` against ``reference_fit(..., epochs=E)``.

    The references run with ``threads`` torch threads (default: torch's setting). For each ``E`` in
    ``call_epochs``, ``repeats`` rounds; in each round every implementation of :data:`WHOLE_IMPLS` makes one call
    over the whole training set (a new optimizer each call, the weights carried over), the order rotating between
    rounds: ``fit`` with default arguments (the headline: what a user gets, its threads chosen by
    ``num_threads="auto"``) and with ``num_threads=threads`` (like for like), for the library VAE and a user's
    own pair; ``reference``, a hand-written loop with torch's default Adam (what a user writes), and
    ``reference_fused``, the same loop with the fused Adam that ``fit`` uses where torch has it. Each call's wall
    time and CPU time (``time.process_time``: this process alone, less moved by other processes than wall time)
    are kept, with the load average after each round and the threads each ``fit`` call used.

    :returns: one record per ``E`` and ``fit`` implementation: the median ratio of images per second to each
        reference (per round, wall and CPU), their quartiles, the load averages seen.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    threads = torch.get_num_threads()
    pyro.clear_param_store()
    models: dict[str, Any] = {}
    for impl in WHOLE_IMPLS:
        torch.manual_seed(seed)
        base = impl.split("@")[0]
        models[impl] = (pyro_vae.VAE((INPUT_DIM,), latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS) if base == "library"
                        else UserPair() if base == "user_pair" else ReferenceVAE()).to(device)
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    for impl in WHOLE_IMPLS:  # warm-up: a process's first call pays one-time costs (lazy imports, first kernels)
        _whole_call(impl, models[impl], train[:2 * batch_size], batch_size, 1, seed, device, shuffle, noise, threads)
    out = []
    calls = 0
    for epochs in call_epochs:
        wall: dict[str, list[float]] = {impl: [] for impl in WHOLE_IMPLS}
        cpu: dict[str, list[float]] = {impl: [] for impl in WHOLE_IMPLS}
        used: dict[str, list[int]] = {impl: [] for impl in WHOLE_IMPLS}
        loads = []
        for _ in range(repeats):
            order = WHOLE_IMPLS[calls % len(WHOLE_IMPLS):] + WHOLE_IMPLS[:calls % len(WHOLE_IMPLS)]
            calls += 1
            for impl in order:
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                n = _whole_call(impl, models[impl], train, batch_size, epochs, seed + calls, device, shuffle, noise,
                                threads)
                _sync(device)
                wall[impl].append(time.perf_counter() - t0)
                cpu[impl].append(time.process_time() - c0)
                used[impl].append(n)
            loads.append(_load())
        for impl, label in WHOLE_ROWS:
            record: dict[str, Any] = {"benchmark": BENCHMARK, "metric": "whole_call_ratio",
                                      "numerator": impl.split("@")[0], "fit_arguments": label,
                                      "batch_size": batch_size, "call_epochs": epochs, "rounds": repeats,
                                      "train_size": train.shape[0], "threads": threads,
                                      "fit_threads": sorted(set(used[impl])),
                                      "device": str(device), "load_average_per_round": loads,
                                      "seconds_per_call": statistics.median(wall[impl]),
                                      "cpu_seconds_per_call": statistics.median(cpu[impl])}
            for ref in ("reference", "reference_fused"):
                for clock, times in (("wall", wall), ("cpu", cpu)):
                    ratios = sorted(r / t for t, r in zip(times[impl], times[ref]))
                    q1, median, q3 = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
                                      else ratios * 3)
                    record[f"ratio_{clock}_vs_{ref}"] = median
                    record[f"ratio_{clock}_vs_{ref}_quartiles"] = [q1, q3]
            out.append(record)
    return out


def whole_calls_markdown(records: list[dict[str, Any]]) -> str:
    """The whole-call records as a table (printed, and with ``--write-docs`` written to docs/benchmarks.md): the
    default arguments first (the headline), then ``fit`` at the references' thread count."""
    rows = []
    for r in records:
        loads = [v[0] for v in r["load_average_per_round"] if v]
        default = r["fit_arguments"] == "defaults"
        label = "defaults (`auto`: " + ",".join(map(str, r["fit_threads"])) + ")" if default else \
            f"`num_threads={r['threads']}`"
        bold = (lambda v: f"**{v:.3f}**") if default else (lambda v: f"{v:.3f}")
        rows.append([r["threads"], r["batch_size"], r["call_epochs"], r["numerator"], label,
                     f"{bold(r['ratio_wall_vs_reference'])} ({r['ratio_wall_vs_reference_quartiles'][0]:.3f} to "
                     f"{r['ratio_wall_vs_reference_quartiles'][1]:.3f}) / CPU {r['ratio_cpu_vs_reference']:.3f}",
                     f"{bold(r['ratio_wall_vs_reference_fused'])} "
                     f"({r['ratio_wall_vs_reference_fused_quartiles'][0]:.3f} to "
                     f"{r['ratio_wall_vs_reference_fused_quartiles'][1]:.3f}) / CPU "
                     f"{r['ratio_cpu_vs_reference_fused']:.3f}",
                     f"{r['seconds_per_call']:.2f} s", f"{min(loads):.1f} to {max(loads):.1f}" if loads else "?"])
    return markdown_table(["reference threads", "batch", "epochs a call", "trained by fit", "fit's arguments",
                           "vs reference (torch's Adam), wall (quartiles) / CPU",
                           "vs reference with fused Adam, wall (quartiles) / CPU", "a call (wall)",
                           "load average (1 min)"], rows)


def docs_section(results: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace,
                 command: str, date: str, total_seconds: float) -> str:
    rows = []
    for r in results:
        ref = r["impls"]["reference"]
        for impl, label in (("library", "`pyro_vae.VAE`"), ("user_pair", "a user's own Pyro pair")):
            lib, ratio = r["impls"][impl], r["ratios"][impl]
            q1, q3 = ratio["ratio_quartiles"]
            rows.append([
                r["batch_size"], label, f"**{ratio['ratio']:.3f}** ({q1:.3f} to {q3:.3f})",
                f"{ratio['ratio_of_totals']:.3f}",
                f"{lib['images_per_second_median_round']:,.0f} / {ref['images_per_second_median_round']:,.0f}",
                f"{lib['test_elbo']:.2f} ± {lib['test_elbo_stderr']:.2f}",
                f"{ref['test_elbo']:.2f} ± {ref['test_elbo_stderr']:.2f}",
            ])
    table = markdown_table(
        ["batch size", "trained by `pyro_vae.fit`", "ratio (quartiles)", "ratio of totals",
         "images/s (it / reference, median rounds)", "its test ELBO", "reference test ELBO"], rows)
    n_train = results[0]["impls"]["library"]["train_size"]
    rounds = results[0]["ratios"]["library"]["rounds"]
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    try:
        end_load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        end_load = "unknown"
    loss_diff = max(r["same_estimator"]["loss_difference"] for r in results)
    grad_diff = max(r["same_estimator"]["max_grad_difference"] for r in results)
    where = info.get("device") or "cpu"
    device = "" if where == "cpu" else f" ({where.split(':')[0]})"
    return f"""## train_mnist: whole `pyro_vae.fit` calls against plain PyTorch{device}

Script: [`benchmarks/train_mnist.py`](../benchmarks/train_mnist.py). Three implementations train the IWAE
paper's one-layer network (784-200-200-50, tanh, Bernoulli likelihood, diagonal Gaussian guide) on dynamically
binarized MNIST ({n_train:,} training images, a fresh Bernoulli draw per batch) for {epochs} with the
single-sample ELBO and Adam (lr 1e-3): `pyro_vae.VAE` trained by `pyro_vae.fit`, a user's own Pyro
model/guide pair of the same network (`UserPair`: `pyro.module`, `pyro.plate`, `pyro.sample`, no
`pyro_vae.VAE`) trained by the same `pyro_vae.fit`, and a hand-written PyTorch `reference_fit` with the same
layers, initial weights, batch size and Monte Carlo estimator, and torch's default Adam (`fit` uses the fused
Adam where torch has it: the same algorithm, one kernel; `--whole-calls` also times a reference with it). In
one process, the three take turns on the same slices of each epoch ({rounds // args.epochs} rounds per epoch,
{rounds} in all, the order rotating); each timing is a
**whole call**, setup included (for `fit`: its checks, the optimizer, the NaN guard's snapshot, the epoch and
its record; for the reference: its optimizer and the epoch).
"Ratio" is the implementation's images per second divided by the reference's (1.0 = no overhead), the median
(with quartiles) of the {rounds} per-round ratios; the ratio of the total times is shown for comparison. The
test ELBO (nats, mean ± standard error over the {results[0]["impls"]["library"]["test_size"]:,} test images,
one `z` sample each) uses one fixed-seed binarization of the test set, shared by all.

- date: {date}
- command: `{command}`
{machine_markdown(info)}
- load average when it ended (1, 5, 15 min): {end_load}
- total run time: {total_seconds:.0f} s

{table}

The absolute images/s describe the machine and its load (above) and say little; the ratio is the number to
read (on a GPU the first round also holds CUDA's start-up: read the median of the rounds). Given the same random
numbers, the library's objective and the reference compute the same loss and gradient (checked in this run on
one batch: the losses differ by {loss_diff:.1e} nats and the gradients by at most {grad_diff:.1e}); in training
the three draw different random numbers, so their test ELBOs differ by training noise.
"""


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list of integers, got {text!r}")
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sizes


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.smoke_test:
        args.epochs, args.train_size, args.test_size, args.rounds = 1, 1000, 1000, 2
        args.call_epochs, args.repeats = [1], 2
    torch.set_num_threads(args.threads[0])
    device = pyro_vae.train.resolve_device(args.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    info = machine_info(threads=torch.get_num_threads(), device=device)

    root = args.data_root or os.environ.get("PYRO_VAE_DATA")
    if root is None and (REPO_ROOT.parent / "shared" / "data").is_dir():
        root = REPO_ROOT.parent / "shared" / "data"  # where the project's checks find the data (DESIGN.md)
    train = pyro_vae.datasets.load("mnist", "train", root=root).flatten(1)
    test = pyro_vae.datasets.load("mnist", "test", root=root).flatten(1)
    if args.train_size:
        if not 1 <= args.train_size <= train.shape[0]:
            raise SystemExit(f"--train-size must be between 1 and {train.shape[0]}, got {args.train_size}")
        train = train[:args.train_size]
    if args.test_size is not None:
        test = test[:args.test_size]
    too_big = [b for b in args.batch_size if b > train.shape[0]]
    if too_big:
        raise SystemExit(f"batch size(s) {too_big} exceed the {train.shape[0]} training images")
    train = train.to(device).contiguous()
    # one fixed binarization of the test set, the same tensor for both implementations
    test = torch.bernoulli(test, generator=torch.Generator().manual_seed(12345)).to(device)

    if args.whole_calls:
        records = []
        for threads in args.threads:
            for batch_size in args.batch_size:
                for r in run_whole_calls(batch_size, train, args.call_epochs, args.repeats, args.seed, device,
                                         threads):
                    print_json(r)
                    records.append(r)
        table = whole_calls_markdown(records)
        print(table)
        if args.write_docs and not args.smoke_test:
            body = ("## train_mnist, whole calls: what a user's `fit` call costs, setup included\n\n"
                    f"`{command_line()}` ({utc_date()}). Whole `pyro_vae.fit` calls of the library VAE and of a "
                    "user's own Pyro pair (784-200-200-50, dynamically binarized MNIST) against hand-written "
                    "PyTorch loops of the same network (torch's default Adam, and the fused Adam `fit` uses) at "
                    "each thread count, taking turns. The headline (bold) is `fit` with **default arguments**, "
                    "what a user gets (`num_threads=\"auto\"`: the free cores, counting other processes only); "
                    "the rows `num_threads=T` give `fit` the references' thread count. Each cell is the median "
                    "ratio of images per second over the rounds by wall time (quartiles), then by CPU time, with "
                    "the load average of the rounds. The first call of a fresh process also pays about 2 s of "
                    "imports torch makes at its first optimizer, alike for every side (a warm-up call, untimed).\n\n"
                    f"{machine_markdown(machine_info(args.threads[0], device))}\n\n{table}\n")
            name = "train_mnist-whole-calls" + ("" if device.type == "cpu" else f"-{device.type}")
            print(f"wrote the {name} section of {update_section(name, body)}", file=sys.stderr)
        return records

    t_start = time.perf_counter()
    results = []
    for batch_size in args.batch_size:
        r = run_batch_size(batch_size, train, test, args.epochs, args.seed, device, args.rounds)
        for impl in IMPLS:
            print_json(r["impls"][impl])
        results.append(r)
    for r in results:
        for impl in ("library", "user_pair"):
            print_json(r["ratios"][impl])
    total = time.perf_counter() - t_start

    if args.write_docs:
        if args.smoke_test:
            print("--smoke-test: not writing docs/benchmarks.md", file=sys.stderr)
        else:
            name = BENCHMARK if device.type == "cpu" else f"{BENCHMARK}-{device.type}"  # one section per device
            path = update_section(name, docs_section(results, info, args, command_line(), utc_date(), total))
            print(f"wrote the {name} section of {path}", file=sys.stderr)
    return results


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6, help="epochs per implementation and batch size (default 6)")
    p.add_argument("--batch-size", type=parse_batch_sizes, default=[100],
                   help="batch size, or a comma list such as 20,100,1000 (default 100)")
    p.add_argument("--rounds", type=int, default=1,
                   help="slices of each epoch that the three implementations take turns on, one whole fit call "
                        "each (default 1: each call is a whole epoch)")
    p.add_argument("--train-size", type=int, default=20000,
                   help="use the first N training images (default 20,000; 0 for all)")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test images (default all 10,000)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=parse_batch_sizes, default=[2],
                   help="torch.set_num_threads (default 2); with --whole-calls a comma list, each timed in turn "
                        "(e.g. 2,1)")
    p.add_argument("--data-root", default=None,
                   help="folder holding mnist/ (default $PYRO_VAE_DATA, else ../shared/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--whole-calls", action="store_true",
                   help="time whole fit calls of --call-epochs epochs over the whole training set (setup included) "
                        "against hand-written loops, taking turns, with CPU and wall ratios and the load average "
                        "(printed, not written to docs)")
    p.add_argument("--call-epochs", type=parse_batch_sizes, default=[1, 2],
                   help="with --whole-calls: epochs per call, a comma list (default 1,2)")
    p.add_argument("--repeats", type=int, default=5, help="with --whole-calls: rounds per epochs value (default 5)")
    p.add_argument("--smoke-test", action="store_true", help="1,000 images, 1 epoch: checks that it runs")
    p.add_argument("--write-docs", action="store_true", help="update this benchmark's section of docs/benchmarks.md")
    return p


if __name__ == "__main__":
    main(make_parser().parse_args())

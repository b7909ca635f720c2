"""What the modules around the engine promise and no test pinned before (issue 34): the run folder's files and
links, which weights ``load`` returns, the training metrics' split and random stream, the semi-supervised data and
losses, the SUMO series on fixed draws, the PCA of the latent space, Lightning's divisor under DDP, the threads of a
``torchrun`` node, the chunking budget of scalar data, the callbacks after a stop, masks on the enumerated path, the
binarized MNIST checksum, and stops while a checkpoint is written. Each test was checked against a one-line fault
(``docs/reliability.md``, section "Faults planted in the outer modules")."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import math
import os
import random
import signal
import time
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

import pyro_vae
from pyro_vae import SSVAE, VAE, datasets, infer
from pyro_vae.io import atomic_write
from pyro_vae.runs import read_config, read_metrics
from pyro_vae.threads import free_cores as _real_free_cores  # before conftest's autouse fixture replaces it
from pyro_vae.train import CallbackList, EpochFunction, TrainingMetrics, evaluate_elbo, fit, fit_semi_supervised
from pyro_vae.train import semi_supervised as semi_supervised_module
from pyro_vae.train.callbacks import Callback
from pyro_vae.train.state import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

sumo_module = importlib.import_module("pyro_vae.infer.sumo")  # the module (pyro_vae.infer.sumo is the function)

# ---- item 1, 2: saved weights and the run folder's links


def test_save_model_replaces_a_link_at_weights_pt_and_a_failed_save_keeps_the_previous_weights(tmp_path, small_vae,
                                                                                                monkeypatch):
    folder, victim = tmp_path / "model", tmp_path / "outside.pt"
    vae = small_vae()
    vae.save(folder)
    victim.write_bytes(b"not pyro-vae's")
    (folder / "weights.pt").unlink()
    (folder / "weights.pt").symlink_to(victim)
    vae.save(folder)
    assert victim.read_bytes() == b"not pyro-vae's" and not (folder / "weights.pt").is_symlink()
    first = VAE.load(folder).state_dict()

    def half_a_file(obj, f, *args, **kwargs):  # a full disk half-way through the weights
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f) as handle:
            handle.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_a_file)
    with pytest.raises(OSError):
        small_vae().save(folder)
    monkeypatch.undo()
    again = VAE.load(folder).state_dict()
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert sorted(p.name for p in folder.iterdir()) == ["vae.json", "weights.pt"]  # no temporary left


def test_atomic_write_refuses_a_folder_that_is_a_link(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    with pytest.raises(ValueError, match="is a symbolic link"):
        atomic_write(link / "metrics.jsonl", lambda f: f.write("{}\n"), binary=False)
    assert list(real.iterdir()) == []


# ---- item 3, 4: which weights load returns; the training metrics' split


def _checkpoint_with_other_weights(run):
    """Rewrite the run's checkpoint with one tensor changed (a later epoch than ``model/``): ``(name, tensor)``."""
    path = run / CHECKPOINT_NAME
    state = load_checkpoint(path)
    module = state["pair"]["module"]
    name = next(iter(module))
    module[name] = module[name] + 1.0
    save_checkpoint(state, [json.loads(h) for h in state["history"]], path)
    return name, module[name]


def test_load_returns_the_newest_weights_of_a_run(tmp_path, copy_run):
    """A resumed run stopped mid-way holds the ``model/`` of its first training and a newer checkpoint: ``load``
    returns the checkpoint's weights; a finished run (``model/`` written after the checkpoint) returns ``model/``."""
    run = copy_run(tmp_path / "run")
    trained = pyro_vae.load(run / "model").state_dict()
    name, newer = _checkpoint_with_other_weights(run)
    now = time.time()
    os.utime(run / "model", (now - 100, now - 100))
    os.utime(run / CHECKPOINT_NAME, (now, now))
    assert_close(pyro_vae.load(run).state_dict()[name], newer)
    assert not torch.equal(newer, trained[name])
    os.utime(run / "model", (now + 100, now + 100))
    assert_close(pyro_vae.load(run).state_dict()[name], trained[name])


def test_training_metrics_are_measured_on_the_training_split(tmp_path, copy_run):
    """``train_elbo``, ``train_rate``, ``train_distortion`` of the last epoch are the ELBO of the first 2000 datapoints
    of the training split (the seed is the epoch), recomputed from the saved model; not the validation split's."""
    from pyro_vae.pipeline.settings import TRAIN_METRICS_SIZE

    run = copy_run(tmp_path / "run")
    config, record = read_config(run), read_metrics(run)[-1]
    x = datasets.load(config["dataset"], config["splits"]["train"])[:TRAIN_METRICS_SIZE]
    model = pyro_vae.load(run)
    pyro.set_rng_seed(int(record["epoch"]))
    again = evaluate_elbo(model, x, binarize=bool(config["training"]["binarize"]))
    got = torch.tensor([record[f"train_{k}"] for k in ("elbo", "rate", "distortion")], dtype=torch.float64)
    assert_close(got, torch.tensor([again[k] for k in ("elbo", "rate", "distortion")], dtype=torch.float64))


# ---- item 6, 9, 10: the semi-supervised data, reconstructions and losses


def test_num_unlabelled_draws_at_random_from_the_seed():
    from pyro_vae.pipeline import RunSettings
    from pyro_vae.pipeline.kinds.semi_supervised import _label_split
    from pyro_vae.train import balanced_split

    y = torch.arange(500) % 10
    s = RunSettings(kind="SSVAE", labels=20, num_unlabelled=30, seed=3, dataset="digits")
    labelled, unlabelled = _label_split(y, s, 10, "train")
    rest = balanced_split(y, 20, 10, 3)[1]
    assert unlabelled.shape == (30,) and len(set(unlabelled.tolist())) == 30
    assert set(unlabelled.tolist()) <= set(rest.tolist())  # unlabelled datapoints only
    assert not torch.equal(unlabelled.sort().values, rest[:30])  # not the first 30 of the split
    g = torch.Generator().manual_seed(3)
    assert torch.equal(unlabelled, rest[torch.randperm(rest.numel(), generator=g)[:30]])
    assert torch.equal(_label_split(y, s, 10, "train")[1], unlabelled)  # the same seed, the same draw


def test_ssvae_reconstruct_decodes_as_the_model_does():
    """``reconstruct(x, y)`` is the mean of the model's ``p(x | y, z)`` at ``z`` = the mean of ``q(z | x, y)``: the
    decoder gets ``[z, y]`` in training's order (``latent_dim == num_classes``, so the other order has the same
    width and would run)."""
    ssvae = SSVAE((1, 4, 4), num_classes=3, latent_dim=3, hidden_dims=(8,)).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64).round()
    y = torch.tensor([0, 1, 2, 1, 0])
    z_loc, _ = ssvae.encode(x, y)
    conditioned = pyro.poutine.condition(ssvae.model, data={"z": z_loc})
    trace = pyro.poutine.trace(conditioned).get_trace(x, y)
    assert_close(ssvae.reconstruct(x, y), trace.nodes["x"]["fn"].mean)


def test_semi_supervised_losses_are_per_labelled_visit(monkeypatch):
    """A loss of 2 nats per datapoint on every batch reads 2.0 in the record, whatever ``labelled_passes``."""
    def two_nats(batch, num_particles):  # a constant, differentiable (zero gradients)
        x, model = batch
        return 2.0 * x.shape[0] + 0.0 * sum(p.sum() for p in model.__self__.parameters())

    monkeypatch.setattr(semi_supervised_module, "terms_producer", lambda model, guide, *args, **kw: (args[0], model))
    monkeypatch.setattr(semi_supervised_module, "get_objective", lambda name: two_nats)
    g = torch.Generator().manual_seed(0)
    x, u = torch.rand(6, 1, 4, 4, generator=g), torch.rand(10, 1, 4, 4, generator=g)
    for passes in (1, 3):
        ssvae = SSVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden_dims=(8,))
        (record,) = fit_semi_supervised(ssvae, x, torch.tensor([0, 1, 2, 0, 1, 2]), u, epochs=1, batch_size=4,
                                        labelled_passes=passes, progress=False, seed=0)
        assert (record["loss_labelled"], record["loss_unlabelled"]) == (2.0, 2.0), passes


# ---- item 7: the latent space's PCA


def test_pca_centres_each_dimension():
    """Points on a line that misses the origin (per-dimension means 3, -7, 5): one component holds all the variance
    and projects each point on its offset along the line; a 2-D cloud against the eigenvectors of its covariance."""
    from pyro_vae.plots import pca

    t = torch.linspace(-2.0, 3.0, 11, dtype=torch.float64)
    u = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64) / 3.0
    z = torch.tensor([3.0, -7.0, 5.0], dtype=torch.float64) + t[:, None] * u
    xy, ratio = pca(z, 2)
    assert_close(ratio, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(xy[:, 0].abs(), (t - t.mean()).abs())
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(200, 2, generator=g, dtype=torch.float64) @ torch.tensor([[2.0, 0.0], [1.0, 0.5]],
                                                                              dtype=torch.float64) + 10.0
    values, vectors = torch.linalg.eigh(torch.cov(cloud.T))
    xy, ratio = pca(cloud, 2)
    assert_close(ratio, values.flip(0) / values.sum())
    assert_close(xy.abs(), ((cloud - cloud.mean(0)) @ vectors.flip(1)).abs())


# ---- item 8: the SUMO series on fixed draws


def test_sumo_series_on_fixed_draws_keeps_its_last_term(monkeypatch):
    """SUMO of fixed log weights and fixed series lengths (one of them beyond ``alpha``, in the geometric tail),
    against the sum written term by term: ``IWAE_m + sum_{j <= K} Delta_{m+j-1} / P(K >= j)``."""
    m, alpha, decay = 2, 3, 0.5
    lengths = torch.tensor([[1, 3, 2], [4, 1, 2]])
    r, n = lengths.shape
    longest = int(lengths.max())
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(r * (m + longest), n, generator=g, dtype=torch.float64)
    served = [0]

    def produce(k):
        served[0] += k
        return SimpleNamespace(log_weights=log_w[served[0] - k:served[0]])

    monkeypatch.setattr(sumo_module, "terms_producer", lambda *args, **kwargs: produce)
    monkeypatch.setattr(sumo_module, "sample_series_length", lambda shape, alpha, decay, device=None: lengths)
    result = infer.sumo(lambda x: None, lambda x: None, torch.zeros(n, 1), num_particles_min=m, num_repeats=r,
                        alpha=alpha, decay=decay, chunk_size=1)
    draws = log_w.reshape(r, m + longest, n)

    def iwae(i, d, k):
        return float(torch.logsumexp(draws[i, :k, d], 0)) - math.log(k)

    def tail(j):
        return 1.0 / j if j < alpha else (1.0 - decay) ** (j - alpha) / alpha

    expected = torch.tensor([[iwae(i, d, m) + sum((iwae(i, d, m + j) - iwae(i, d, m + j - 1)) / tail(j)
                                                  for j in range(1, int(lengths[i, d]) + 1))
                              for d in range(n)] for i in range(r)], dtype=torch.float64)
    assert_close(result.samples, expected)
    assert_close(result.values, expected.mean(0))


# ---- item 11, 12, 13: Lightning under DDP, threads under torchrun, chunks of scalar data


def test_lightning_loss_under_ddp_averages_to_the_global_batch_gradient(small_vae):
    """Two ranks' shards (3 and 5 datapoints): the mean of their gradients (what DDP does) is the gradient of the
    mean loss of the global batch of 8, as one process computes it. Checked with a fake trainer and a deterministic
    loss, without launching processes."""
    pytest.importorskip("lightning")
    from pyro_vae.lightning import VAEModule

    module = VAEModule(small_vae())
    module.log = lambda *args, **kwargs: None
    weight = next(module.parameters())
    module.loss = lambda args: (args[0].flatten(1).sum(1) ** 2).sum() * weight.sum()  # a sum over datapoints
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=g).round()

    def gradient(batch, world, total):
        module._trainer = SimpleNamespace(world_size=world, strategy=SimpleNamespace(
            reduce=lambda t, reduce_op: t.new_tensor(float(total))))
        weight.grad = None
        module.training_step(batch, 0).backward()
        return weight.grad.clone()

    single = gradient(x, 1, 8)
    ddp = (gradient(x[:3], 2, 8) + gradient(x[3:], 2, 8)) / 2
    assert_close(ddp, single)
    assert_close(single, torch.full_like(weight, float((x.flatten(1).sum(1) ** 2).mean())))


def test_free_cores_shares_a_nodes_cores_among_its_torchrun_processes(monkeypatch):
    """16 cores, an idle machine: 16 for one process, 4 for each of the 4 processes of a torchrun node
    (``LOCAL_WORLD_SIZE``), and the load is shared out of what is left."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr("pyro_vae.threads.other_demand", lambda: 0.0)  # no other process wants a core
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _real_free_cores() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert _real_free_cores() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert _real_free_cores() == 1


def test_chunks_of_scalar_datapoints_count_each_datapoint():
    """A batch of N scalars, shape ``(N,)``, counts as N datapoints of ``MIN_VALUES_PER_DATAPOINT`` values each."""
    from pyro_vae.infer.chunking import MIN_VALUES_PER_DATAPOINT, PARTICLE_VALUES_BUDGET, particles_per_chunk

    n = 1000
    expected = PARTICLE_VALUES_BUDGET // (n * MIN_VALUES_PER_DATAPOINT)
    assert particles_per_chunk(10_000, torch.zeros(n)) == expected == 65
    assert particles_per_chunk(10_000, torch.zeros(n, 1)) == expected


# ---- item 14, 15: callbacks


class _Stop(Callback):
    def on_epoch_end(self, record):
        raise StopIteration


def test_every_callback_sees_the_epoch_that_stopped_training(digits, small_vae):
    seen = []
    callbacks = CallbackList([_Stop(), EpochFunction(seen.append)])
    assert callbacks.on_epoch_end({"epoch": 1}) is True and seen == [{"epoch": 1}]
    seen.clear()
    history = fit(small_vae(), digits[:64], epochs=5, batch_size=32, binarize=True, progress=False,
                  seed=0, callbacks=[_Stop(), EpochFunction(seen.append)])
    assert len(history) == 1 and [r["epoch"] for r in seen] == [1]


def test_training_metrics_leave_the_random_streams_alone(digits, small_vae):
    """``TrainingMetrics`` seeds its own draws with the epoch, then puts every global generator back: what is drawn
    after it is what would have been drawn without it."""
    metrics = TrainingMetrics(small_vae(), digits[:50], binarize=True)
    pyro.set_rng_seed(123)
    without = torch.rand(3), np.random.rand(3), random.random()
    pyro.set_rng_seed(123)
    record = {"epoch": 7}
    metrics.on_epoch_metrics(record)
    assert {"train_elbo", "train_rate", "train_distortion"} <= record.keys()
    after = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(after[0], without[0]) and np.array_equal(after[1], without[1]) and after[2] == without[2]


# ---- item 16: masks on the enumerated path


def test_a_masked_latent_site_is_left_out_when_guide_sites_are_enumerated():
    """``y ~ Categorical(pi)`` enumerated in the guide, ``x | y ~ N(b_y, 1)``, and a latent ``z`` that ``x`` does not
    depend on, masked out of datapoints 0 and 2: there every particle's weight is ``sum_y p(y) p(x | y) = p(x)``, so
    the IWAE bound equals ``log p(x)`` exactly; datapoints 1 and 3 keep ``z``'s terms (not exact)."""
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    b = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    mask = torch.tensor([False, True, False, True])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(pi))
            with pyro.poutine.mask(mask=mask):
                pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(b[y], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(torch.full((x.shape[0], 3), 1 / 3, dtype=torch.float64)),
                        infer={"enumerate": "parallel"})
            with pyro.poutine.mask(mask=mask):
                pyro.sample("z", dist.Normal(torch.ones_like(x), 0.5))

    x = torch.tensor([0.3, -1.0, 2.5, 1.0], dtype=torch.float64)
    log_px = torch.logsumexp(pi.log() + dist.Normal(b, 1.0).log_prob(x[:, None]), -1)
    bound = infer.iwae_bound(model, guide, x, num_particles=5, max_plate_nesting=1)
    assert_close(bound[~mask], log_px[~mask])
    assert (bound[mask] - log_px[mask]).abs().min() > 1e-3


# ---- item 17: the binarized MNIST file's checksum


def test_binarized_mnist_npz_is_checked_against_its_sha256(tmp_path):
    folder = tmp_path / "binarized-mnist"
    folder.mkdir()
    arrays = {s: np.zeros((5, 784), dtype=np.uint8) for s in ("train", "valid", "test")}
    np.savez(folder / "binarized_mnist.npz", **arrays)  # well formed, and not the real file
    with pytest.raises(datasets.DataChecksumError, match="binarized_mnist.npz"):
        datasets.load("binarized-mnist", "test", root=tmp_path)


# ---- item 19, 20: a checkpoint that is a folder; a stop while a checkpoint is written


def _files(run):
    return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in sorted(run.rglob("*"))}


def test_resume_refuses_a_checkpoint_that_is_a_folder_before_writing(tmp_path, copy_run, run_cli):
    run = copy_run(tmp_path / "run")
    (run / CHECKPOINT_NAME).unlink()
    (run / CHECKPOINT_NAME).mkdir()
    before = _files(run)
    code, out, err = run_cli(["train", "--out", run, "--resume", "--epochs", 2, "--no-progress"])
    assert code == 2 and f"{run / CHECKPOINT_NAME} is a folder" in err and err.count("\n") == 1, err
    assert _files(run) == before and out == ""


def test_sigterm_while_the_checkpoint_is_written_is_a_stop_and_the_run_resumes(tmp_path, monkeypatch, run_cli):
    """SIGTERM lands inside ``torch.save`` of epoch 2's checkpoint (a file object that sends it on its third
    write): exit 143 with the stop's message, epoch 1's checkpoint intact, no temporary left, and ``--resume``
    continues to the end."""
    out = tmp_path / "run"
    real_save = torch.save

    class Terminating:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "pair" in obj:
            f = Terminating(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    argv = ["train", "--epochs", 3, "--latent-dim", 2, "--hidden-dims", 16, "--out", out, "--no-progress"]
    code, _, err = run_cli(argv)
    assert code == 143 and "terminated by SIGTERM" in err and "disk" not in err, err
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 1 and len(read_metrics(out)) == 1
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()
    code, _, err = run_cli([*argv, "--resume"])
    assert code == 0, err
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 3 and len(read_metrics(out)) == 3

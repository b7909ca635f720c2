"""Pairs written as Pyro's example programs are (tests/pyro_programs.py), through fit and the estimators unchanged:
a model that does not broadcast over particles (boolean-mask indexing), a deep-Markov-style pair (four arguments, a
PackedSequence, per-step masks, a plate not named "data", KL annealing by poutine.scale), an M2-style pair (a
size-less plate, config_enumerate(expand=True)), and bad input refused before any work."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro_programs import PLATE, BroadcastCVAE, LabelPair, MaskedCVAE, SequencePair, Sequences, collate_sequences
from torch.testing import assert_close

import pyro_vae
from pyro_vae import infer
from pyro_vae.infer.objectives import objective_loss

HERE = Path(__file__).parent


def _cvae_data(n: int = 20, dim: int = 12, d_in: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = (torch.rand(n, dim) > 0.5).float()
    return x, x[:, :d_in].clone()


# ----------------------------------------------------------------------------------- not vectorized over particles
def test_masked_cvae_fails_with_vectorized_particles_naming_the_option():
    pair = MaskedCVAE()
    x, cond = _cvae_data()
    with pytest.raises(IndexError, match="vectorize_particles=False") as info:
        infer.iwae_bound(pair.model, pair.guide, x, cond, num_particles=10)
    assert "does not match the shape of the indexed tensor" in str(info.value)
    with pytest.raises(IndexError, match="vectorize_particles=False"):
        infer.log_likelihood(pair.model, pair.guide, x, num_particles=10, condition=cond, progress=False)


def test_masked_cvae_log_likelihood_at_k100_with_one_option_equals_the_broadcasting_pair():
    x, cond = _cvae_data()
    masked = MaskedCVAE()
    same = BroadcastCVAE()
    same.load_state_dict(masked.state_dict())
    kw = dict(num_particles=100, condition=cond, progress=False, seed=3)
    one_by_one = infer.log_likelihood(masked.model, masked.guide, x, vectorize_particles=False, **kw)
    # the same model written to broadcast, one particle at a time with the same seed: the same draws, the same values
    reference = infer.log_likelihood(same.model, same.guide, x, vectorize_particles=False, **kw)
    assert_close(one_by_one.values, reference.values)
    # and drawn in one vectorized pass (other draws): equal within Monte Carlo error
    vectorized = infer.log_likelihood(same.model, same.guide, x, **kw)
    err = math.sqrt(one_by_one.mean_mc_stderr ** 2 + vectorized.mean_mc_stderr ** 2)
    assert abs(one_by_one.mean - vectorized.mean) < 5 * err + 1e-3
    assert bool((one_by_one.values >= one_by_one.elbo - 1e-5).all())
    assert one_by_one.quantity == "log p(target | y)" and "log p(target | y)" in one_by_one.summary()


def test_masked_cvae_trains_with_iwae_one_particle_pass_at_a_time():
    x, cond = _cvae_data(40)
    history = pyro_vae.fit(MaskedCVAE(), x, condition=cond, epochs=2, batch_size=10, objective="iwae",
                           num_particles=4, vectorize_particles=False, progress=False, device="cpu")
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)


def test_estimator_outputs_are_detached():
    pair = BroadcastCVAE()
    x, cond = _cvae_data()
    for value in (infer.elbo(pair.model, pair.guide, x, cond), infer.iwae_bound(pair.model, pair.guide, x, cond,
                                                                                  num_particles=3),
                  infer.log_importance_weights(pair.model, pair.guide, x, cond, num_particles=3)):
        assert not value.requires_grad
    loss = objective_loss("elbo", pair.model, pair.guide, x, cond)  # the objectives stay differentiable
    assert loss.requires_grad


# -------------------------------------------------------------------------------------------- deep-Markov-style pair
def _sequence_batch(n: int = 12) -> tuple:
    data = Sequences(n)
    return collate_sequences([data[i] for i in range(n)])


def test_sequence_pair_loss_equals_pyros_trace_elbo_with_the_annealing():
    pair = SequencePair(annealing=0.2)
    args = _sequence_batch()
    pyro.set_rng_seed(7)
    ours = objective_loss("elbo", pair.model, pair.guide, *args, data_plate=PLATE, max_plate_nesting=1)
    pyro.set_rng_seed(7)
    pyros = Trace_ELBO(max_plate_nesting=1).differentiable_loss(pair.model, pair.guide, *args)
    assert_close(ours, pyros, rtol=1e-5, atol=1e-4)
    pair.annealing = 1.0  # the annealing matters: without it the loss differs
    pyro.set_rng_seed(7)
    unannealed = objective_loss("elbo", pair.model, pair.guide, *args, data_plate=PLATE, max_plate_nesting=1)
    assert abs(float(unannealed) - float(ours)) > 1e-2


def test_sequence_pair_fit_trains_it_and_iwae_refuses_the_scale():
    pair = SequencePair()
    data = Sequences(48)
    history = pyro_vae.fit(pair, data, epochs=12, batch_size=16, collate_fn=collate_sequences, data_plate=PLATE,
                           lr=1e-2, seed=0, progress=False, device="cpu")
    assert history[-1]["loss"] < history[0]["loss"] - 0.5, [h["loss"] for h in history]
    with pytest.raises(ValueError, match=r"'z_1'.*beta= / kl_warmup_epochs="):
        pyro_vae.fit(SequencePair(), data, epochs=1, batch_size=16, collate_fn=collate_sequences, data_plate=PLATE,
                     objective="iwae", num_particles=3, progress=False, device="cpu")


@pytest.mark.cuda
def test_a_datasets_epoch_order_stays_on_the_cpu(monkeypatch):
    """On a GPU, a Dataset's batches are read by Python indices: the epoch's order stays on the CPU, so building a
    batch reads no index back from the device (a host synchronisation each step)."""
    if not torch.cuda.is_available():
        pytest.skip("the order of a Dataset on a GPU: needs CUDA")
    from pyro_vae.infer.batches import BatchedArgs

    devices, take = [], BatchedArgs.take
    monkeypatch.setattr(BatchedArgs, "take", lambda self, index: (
        devices.append(index.device.type if torch.is_tensor(index) else "cpu"), take(self, index))[1])
    pyro_vae.fit(SequencePair().cuda(), Sequences(48), epochs=1, batch_size=16, collate_fn=collate_sequences,
                 data_plate=PLATE, seed=0, progress=False, device="cuda")
    assert devices and set(devices) == {"cpu"}


def test_sequence_pair_log_likelihood_iwae_above_elbo_for_every_sequence_and_warns_about_the_scale():
    pair = SequencePair()
    data = Sequences(20)
    with pytest.warns(UserWarning, match="leave out the poutine.scale"):
        result = infer.log_likelihood(pair.model, pair.guide, data, num_particles=50, batch_size=8,
                                      collate_fn=collate_sequences, data_plate=PLATE, progress=False, seed=0)
    assert result.values.shape == (20,)
    assert bool((result.values >= result.elbo - 1e-4).all())
    assert result.quantity.startswith("log p(x_1, x_2")
    # each sequence's estimate does not depend on the batch it was scored in (its arguments stay together)
    alone = infer.log_likelihood(pair.model, pair.guide, data, num_particles=50, batch_size=20,
                                 collate_fn=collate_sequences, data_plate=PLATE, progress=False, seed=0)
    assert abs(alone.mean - result.mean) < 5 * math.hypot(alone.mean_mc_stderr, result.mean_mc_stderr) + 1e-3


def test_tuple_of_tensors_is_the_models_positional_arguments():
    x, cond = _cvae_data(30)
    history = pyro_vae.fit(BroadcastCVAE(), (x, cond), epochs=2, batch_size=10, progress=False, device="cpu",
                           val_data=(x[:10], cond[:10]))
    assert len(history) == 2 and "val_elbo" in history[-1]
    pair = BroadcastCVAE()
    a = infer.log_likelihood(pair.model, pair.guide, (x, cond), num_particles=20, progress=False, seed=1)
    b = infer.log_likelihood(pair.model, pair.guide, x, condition=cond, num_particles=20, progress=False, seed=1)
    assert_close(a.values, b.values)


@pytest.mark.slow
def test_sequence_pair_trains_over_two_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE / "pyro_programs.py"), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 2
    for name, value in ranks[0]["params"].items():  # every rank took the same steps
        assert_close(value, ranks[1]["params"][name])
    assert all(math.isfinite(h["loss"]) for h in ranks[0]["history"])


# ------------------------------------------------------------------------------------------------- M2-style pair
def test_label_pair_elbo_equals_trace_enum_elbo_within_monte_carlo_error():
    pair = LabelPair()
    x = (torch.rand(16, 8) > 0.5).float()
    k = 2000
    with torch.no_grad():
        terms = infer.importance_terms(pair.model, pair.guide, x, num_particles=k, max_plate_nesting=1)
        per_particle = terms.elbo_integrand.sum(1)  # (K,): the batch's ELBO, one value per particle
        ours = float(per_particle.mean())
        stderr = float(per_particle.std() / math.sqrt(k))
        pyros = -float(TraceEnum_ELBO(max_plate_nesting=1, num_particles=k, vectorize_particles=True)
                       .loss(pair.model, pair.guide, x))
    assert abs(ours - pyros) < 5 * math.sqrt(2) * stderr, (ours, pyros, stderr)
    assert_close(infer.elbo(pair.model, pair.guide, x, num_particles=k).sum(), torch.tensor(ours), atol=10 * stderr,
                 rtol=0)


# ------------------------------------------------------------------------------------ bad input, before any work
def _unchanged(pair: torch.nn.Module, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in pair.state_dict().items())


def test_arguments_of_different_lengths_are_refused_before_any_work():
    pair = BroadcastCVAE()
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    x, cond = _cvae_data(30)
    with pytest.raises(ValueError, match=r"different numbers of datapoints \(argument 0: 30, argument 1: 29\)"):
        pyro_vae.fit(pair, (x, cond[:29]), epochs=1, batch_size=10, progress=False, device="cpu")
    with pytest.raises(ValueError, match="different numbers of datapoints"):
        infer.log_likelihood(pair.model, pair.guide, (x, cond[:29]), num_particles=5, progress=False)
    assert _unchanged(pair, before)


def test_a_collate_that_drops_a_datapoint_is_refused_before_any_work():
    pair = SequencePair()
    before = {k: v.clone() for k, v in pair.state_dict().items()}

    def dropping(items):
        return collate_sequences(items[:-1])

    with pytest.raises(ValueError, match="collate_fn returned argument 0 with 15 datapoints for a batch of 16"):
        pyro_vae.fit(pair, Sequences(48), epochs=1, batch_size=16, collate_fn=dropping, data_plate=PLATE,
                     progress=False, device="cpu")
    with pytest.raises(ValueError, match="collate_fn returned argument"):
        infer.log_likelihood(pair.model, pair.guide, Sequences(20), collate_fn=dropping, data_plate=PLATE,
                             num_particles=5, progress=False)
    assert _unchanged(pair, before)


def test_a_datasets_first_batch_is_checked_as_tensor_data_is(tmp_path, small_vae):
    """A Dataset whose first batch holds NaN, or values outside [0, 1] under binarize=True, is refused before any
    work (nothing written), as the same tensor is."""
    x = torch.rand(32, 1, 8, 8)
    stack = lambda items: torch.stack([item for (item,) in items])  # noqa: E731
    for bad, binarize, match in ((float("nan"), False, "NaN or inf"), (3.0, True, r"in \[0, 1\]")):
        data = x.clone()
        data[1, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=match):
            pyro_vae.fit(small_vae(), torch.utils.data.TensorDataset(data), epochs=1, batch_size=8, collate_fn=stack,
                         binarize=binarize, progress=False, checkpoint_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()
    history = pyro_vae.fit(small_vae(), torch.utils.data.TensorDataset(x), epochs=1, batch_size=8, collate_fn=stack,
                           binarize=True, progress=False)
    assert len(history) == 1


def test_a_data_plate_that_names_no_plate_is_refused_before_any_work():
    pair = SequencePair()
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    with pytest.raises(ValueError, match=r"data_plate='data' names no plate.*data_plate='sequences'"):
        pyro_vae.fit(pair, Sequences(48), epochs=1, batch_size=16, collate_fn=collate_sequences, progress=False,
                     device="cpu")
    with pytest.raises(ValueError, match=r"data_plate='batch' names no plate"):
        infer.log_likelihood(pair.model, pair.guide, Sequences(20), collate_fn=collate_sequences,
                             data_plate="batch", num_particles=5, progress=False)
    vae = pyro_vae.VAE((8,), latent_dim=2, hidden_dims=(8,))
    with pytest.raises(ValueError, match="data_plate='sequences' names no plate"):
        pyro_vae.fit(vae, torch.rand(20, 8).round(), epochs=1, batch_size=10, data_plate=PLATE, progress=False,
                     device="cpu")
    assert _unchanged(pair, before)


def test_log_likelihood_traces_a_model_class_with_direct_terms_only_when_it_needs_to(monkeypatch):
    """A validation step calls log_likelihood every batch: a model class's direct terms with the default data plate
    and a given plate nesting take no extra trace; a user's own pair is traced once a call, its plate checked."""
    from pyro_vae.infer import evaluate

    traced = []
    original = evaluate.plate_layout

    def counted(*args, **kwargs):
        traced.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "plate_layout", counted)
    torch.manual_seed(0)
    vae, x = pyro_vae.VAE((6,), latent_dim=2, hidden_dims=(4,)), torch.rand(8, 6).round()
    infer.log_likelihood(vae.model, vae.guide, x, num_particles=3, batch_size=4, max_plate_nesting=1, progress=False)
    assert traced == []
    infer.log_likelihood(vae.model, vae.guide, x, num_particles=3, batch_size=4, progress=False)
    assert traced == [1]
    with pytest.raises(ValueError, match="names no plate"):
        infer.log_likelihood(vae.model, vae.guide, x, num_particles=3, batch_size=4, max_plate_nesting=1,
                             data_plate="rows", progress=False)

"""The shared pieces of infer/: AIS options, AIS over a data set, the results' summary base, latent_usage's
arguments, the whole-number check (pyro_vae.checks) and the data sets' specs."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from lingauss import LinearGaussian
from torch.testing import assert_close

import pyro_vae
from pyro_vae import datasets, infer
from pyro_vae.checks import whole_number
from pyro_vae.infer import AISOptions


# ------------------------------------------------------------------------------------------------ AIS options
def test_ais_options_are_checked_on_creation():
    opts = AISOptions(num_chains=4.0, num_steps=np.int64(10))
    assert (opts.num_chains, opts.num_steps) == (4, 10) and isinstance(opts.num_steps, int)
    assert opts.groups == 4 and AISOptions(num_chains=2).groups == 2 and AISOptions(num_groups=3).groups == 3
    for bad in ({"num_chains": 0}, {"num_steps": 2.5}, {"num_leapfrog": True}, {"num_groups": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AISOptions(**bad)
    with pytest.raises(ValueError, match="proposal"):
        AISOptions(proposal="posterior")
    with pytest.raises(ValueError, match="schedule"):
        AISOptions(schedule="cosine")
    with pytest.raises(ValueError, match="target_accept"):
        AISOptions(target_accept=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_chains = 8


def test_ais_takes_an_options_object_or_the_old_keywords_alike():
    lg = LinearGaussian(shift=0.3, mean_field=True)
    x = lg.data(5)
    by_keywords = infer.ais(lg.model, lg.guide, x, num_chains=3, num_steps=6, num_leapfrog=2, seed=1)
    opts = AISOptions(num_chains=3, num_steps=6, num_leapfrog=2)
    by_object = infer.ais(lg.model, lg.guide, x, options=opts, seed=1)
    assert_close(by_object.log_weights, by_keywords.log_weights, rtol=0, atol=0)
    # a keyword overrides the object's field
    overridden = infer.ais(lg.model, lg.guide, x, options=AISOptions(num_chains=9, num_steps=6, num_leapfrog=2),
                           num_chains=3, seed=1)
    assert_close(overridden.log_weights, by_keywords.log_weights, rtol=0, atol=0)
    with pytest.raises(TypeError, match="AISOptions"):
        infer.ais(lg.model, lg.guide, x, options={"num_chains": 3})
    a = infer.bdmc(lg.model, lg.guide, x, options=opts, seed=2)
    b = infer.bdmc(lg.model, lg.guide, x, num_chains=3, num_steps=6, num_leapfrog=2, seed=2)
    assert_close(a.lower, b.lower, rtol=0, atol=0)
    assert_close(a.upper, b.upper, rtol=0, atol=0)


def test_ais_over_a_data_set_is_its_own_function_and_log_likelihood_ais_calls_it():
    lg = LinearGaussian(shift=0.3, mean_field=True)
    x = lg.data(7)
    opts = {"num_chains": 3, "num_steps": 5, "num_leapfrog": 2}
    r = infer.ais_log_likelihood(lg.model, lg.guide, x, batch_size=3, seed=4, **opts)
    assert isinstance(r, infer.AISResult) and r.values.shape == (7,) and r.log_weights.shape == (3, 7)
    same = infer.log_likelihood(lg.model, lg.guide, x, method="ais", batch_size=3, seed=4, **opts)
    assert_close(same.log_weights, r.log_weights, rtol=0, atol=0)
    by_object = infer.ais_log_likelihood(lg.model, lg.guide, x, batch_size=3, seed=4, options=AISOptions(**opts))
    assert_close(by_object.log_weights, r.log_weights, rtol=0, atol=0)
    # batch b is seeded with derive_seed(seed, b): the first batch alone is the first three datapoints
    first = infer.ais(lg.model, lg.guide, x[:3], seed=pyro_vae.distributed.derive_seed(4, 0), **opts)
    assert_close(first.log_weights, r.log_weights[:, :3], rtol=0, atol=0)
    with pytest.raises(TypeError, match="num_particles_typo"):
        infer.ais_log_likelihood(lg.model, lg.guide, x, num_particles_typo=3)
    with pytest.raises(TypeError, match="method='iwae'"):
        infer.log_likelihood(lg.model, lg.guide, x, num_chains=3, progress=False)


# ------------------------------------------------------------------------------------------ results' summary
def test_every_result_summarises_its_values_through_one_base():
    values = torch.tensor([-1.0, -2.0, -4.0, -3.5])
    mc = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = values.numel()
    expected_mean, expected_se = float(values.double().mean()), float(values.double().std() / math.sqrt(n))
    expected_mc = float(mc.double().pow(2).sum().sqrt() / n)
    ll = infer.LogLikelihoodResult(values=values, elbo=values - 1, rate=values.abs(), distortion=values.abs(),
                                   ess=torch.ones(n), khat=None, mc_stderr=mc)
    ais = infer.AISResult(log_weights=values.unsqueeze(0), mc_stderr=mc, acceptance_rate=torch.ones(n),
                          step_size=torch.ones(n))
    kde = infer.KDEResult(values=values, bandwidth=0.1)
    for r in (ll, ais, kde):
        assert isinstance(r, infer.PerDatapointSummary)
        assert r.mean == pytest.approx(expected_mean) and r.stderr == pytest.approx(expected_se)
    assert ll.mean_mc_stderr == pytest.approx(expected_mc) and ais.mean_mc_stderr == pytest.approx(expected_mc)
    assert math.isnan(kde.mean_mc_stderr)
    assert math.isnan(infer.KDEResult(values=values[:1], bandwidth=0.1).stderr)


# ------------------------------------------------------------------------------------------- latent_usage
def test_latent_usage_takes_a_conditional_vaes_y_and_batches_it_with_the_data():
    x = datasets.load("digits", "test", num_samples=30).round()
    y = torch.nn.functional.one_hot(torch.arange(30) % 4, 4).float()
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,), condition_shape=(4,))
    usage = infer.latent_usage(vae.model, vae.guide, x, y, batch_size=7, num_mi_datapoints=20, seed=0)["z"]
    assert usage["dimensions"] == 3 and len(usage["kl_per_dim"]) == 3
    assert 0.0 <= usage["mutual_information"] <= math.log(20) + 1e-6
    # the KL per dimension is deterministic (posterior means, analytic KL): batching y with x gives the same numbers
    whole = infer.latent_usage(vae.model, vae.guide, x, y, batch_size=30, num_mi_datapoints=20, seed=0)["z"]
    assert whole["kl_per_dim"] == pytest.approx(usage["kl_per_dim"], rel=1e-5)
    assert whole["mean_variance"] == pytest.approx(usage["mean_variance"], rel=1e-5)
    with pytest.raises(ValueError, match="y"):
        infer.latent_usage(vae.model, vae.guide, x)  # a conditional VAE without its y


# ---------------------------------------------------------------------------------------- the whole-number check
@pytest.mark.parametrize("value", [3, 3.0, np.int64(3), np.float32(3.0), torch.tensor(3)])
def test_whole_number_accepts_whole_values(value):
    assert whole_number(value, "n") == 3 and type(whole_number(value, "n")) is int


@pytest.mark.parametrize("value", [2.5, True, False, "3", None, float("nan"), float("inf"), 0, -1, [3]])
def test_whole_number_refuses_the_rest_naming_the_option(value):
    with pytest.raises(ValueError, match="num_things must be an integer >= 1"):
        whole_number(value, "num_things")


def test_whole_number_range():
    assert whole_number(0, "n", low=0) == 0
    with pytest.raises(ValueError, match="between 10 and 20"):
        whole_number(21, "n", low=10, high=20)


# ---------------------------------------------------------------------------------------- the data sets' specs
def test_each_data_set_is_one_spec_and_the_public_tables_are_read_from_it():
    assert set(datasets.SPECS) == set(datasets.SPLITS) == set(datasets.DATASETS)
    for name, spec in datasets.SPECS.items():
        assert spec.name == name and datasets.event_shape(name) == spec.event_shape
        assert datasets.SPLITS[name] == {s: split.size for s, split in spec.splits.items()}
        assert (spec.read is None) != (spec.draw is None)  # read from sources, or drawn
        for split in spec.splits.values():  # every range lies inside its source array
            for source, start, stop in split.parts:
                assert source in spec.sources and 0 <= start < stop
                assert spec.sources[source] is None or stop <= spec.sources[source]
        assert all(datasets._SHA256[(name, f)] == sha for f, sha in spec.files.items())
    assert datasets.SPECS["binarized-mnist"].binary and not datasets.SPECS["mnist"].binary
    assert datasets.SPLITS["digits"] == {"train": 1500, "valid": 300, "test": 297, "train-without-valid": 1200}
    with pytest.raises(ValueError, match="do not hold"):
        datasets.SplitSpec(10, (("train", 0, 5),))


def test_digits_splits_are_the_specs_ranges():
    everything = torch.cat([datasets.load("digits", "train"), datasets.load("digits", "test")])
    assert everything.shape[0] == 1797
    assert torch.equal(datasets.load("digits", "valid"), everything[1200:1500])
    assert torch.equal(datasets.load("digits", "train-without-valid"), everything[:1200])

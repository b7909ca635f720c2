"""Comparisons that say what they compare (issue 23): ``compare(a, b)`` labels ``A - B`` with the estimates' names
and says when the Monte Carlo part was left out; a summary's K-curve ends at the headline K."""

from __future__ import annotations

import math

import pytest
import torch
from lingauss import LinearGaussian

from pyro_vae import infer


@pytest.fixture(scope="module")
def pair():
    lg = LinearGaussian(shift=0.3, mean_field=True)
    return lg, lg.data(12, seed=3)


def test_compare_names_the_direction_and_what_was_left_out(pair) -> None:
    lg, x = pair
    iwae = infer.log_likelihood(lg.model, lg.guide, x, num_particles=200, seed=0, progress=False, diagnostics=False)
    ais = infer.ais(lg.model, lg.guide, x, num_chains=8, num_steps=10, seed=0)
    c = infer.compare(ais, iwae)
    assert c.names == ("AIS", "IWAE_200")
    torch.testing.assert_close(c.difference, ais.values.double() - iwae.values.double())  # AIS - IWAE, as labelled
    assert c.summary().startswith(f"AIS - IWAE_200: {c.mean:.3f} ± ")
    assert math.isfinite(c.mc_stderr) and "Monte Carlo part" in c.summary() and "left out" not in c.summary()
    # the README's call: a plain tensor carries no Monte Carlo error, and the summary says it was left out
    plain = infer.compare(ais, iwae.values, names=("AIS", "IWAE"))
    assert plain.mean == c.mean and math.isnan(plain.mc_stderr)
    assert plain.summary().startswith("AIS - IWAE: ")
    assert "Monte Carlo part left out: IWAE came as a plain tensor" in plain.summary()
    # two tensors: no Monte Carlo error on either side, nothing to say; default names
    both = infer.compare(ais.values, iwae.values)
    assert both.summary().startswith("a - b: ") and "Monte Carlo" not in both.summary()
    # reversed order, reversed sign and label
    back = infer.compare(iwae, ais)
    assert back.names == ("IWAE_200", "AIS") and back.mean == pytest.approx(-c.mean)


def test_the_k_curve_ends_at_the_headline_k(pair) -> None:
    lg, x = pair
    res = infer.log_likelihood(lg.model, lg.guide, x, num_particles=30, seed=0, progress=False, diagnostics=False)
    assert sorted(res.curve) == [1, 5, 30]  # default k 1, 5, 50, ...: 50 > K left out, K itself added
    torch.testing.assert_close(res.curve[30], res.values)
    curve_line = next(line for line in res.summary().splitlines() if line.startswith("K-curve"))
    assert curve_line.rsplit(", ", 1)[-1].startswith("K=30: ")
    own = infer.log_likelihood(lg.model, lg.guide, x, num_particles=30, seed=0, progress=False, diagnostics=False,
                               k_values=(2, 10))
    assert sorted(own.curve) == [2, 10, 30]

"""Figures that say what they show (issue 23): Gaussian grids on the data's scale, decoder means named as such,
training and gamma curves of two-stage and hierarchical runs, the layer of a hierarchy named, and the run's test
data defined once (``pyro_vae.runs.run_test_data``)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import VAE, HierarchicalVAE, datasets
from pyro_vae.plots import (
    image_grid,
    image_panels,
    latent_space,
    latent_traversal,
    plot_run,
    save_samples,
    training_curves,
)
from pyro_vae.runs import run_test_data


def _mosaic(fig) -> np.ndarray:
    return np.asarray(fig.axes[0].images[0].get_array())


def test_a_gaussian_grid_is_drawn_on_the_data_scale_not_rescaled() -> None:
    """Decoder means of a Gaussian likelihood leave [0, 1] a little: a 0 pixel stays black (it turned grey under
    the old min-max rescaling), values outside are clipped."""
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 0.8
    x[0, 0, 3, 3], x[1, 0, 0, 0] = 1.3, -0.2
    fig = image_grid(x, nrow=4)
    grid = _mosaic(fig)
    assert grid[1 + 7, 1 + 0] == 0.0  # image 0, pixel (7, 0): background 0, black
    assert grid[1 + 3, 1 + 3] == 1.0 and grid[1 + 0, 1 + 9 + 0] == 0.0  # clipped, not rescaled
    assert grid[1 + 2, 1 + 2] == pytest.approx(0.8)
    rescaled = image_grid(x, nrow=4, value_range=None, title="means")
    assert _mosaic(rescaled)[1 + 7, 1 + 0] == pytest.approx(0.2 / 1.5)
    assert "rescaled from [-0.2, 1.3]" in rescaled.axes[0].get_title().replace("\n", " ")
    with pytest.raises(ValueError, match="value_range"):
        image_grid(x, value_range=(1.0, 1.0))


def test_samples_say_they_are_decoder_means() -> None:
    fig = save_samples(VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,)), None, num_samples=8, nrow=4)
    title = fig.axes[0].get_title()
    assert "decoder means" in title and "samples from the model" in title
    assert "samples from the model" in save_samples(VAE((2,), latent_dim=2, hidden_dims=(8,), likelihood="normal"),
                                                    None, num_samples=20).axes[0].get_title()


def test_training_curves_draw_gamma_on_a_log_scale() -> None:
    history = [{"epoch": e, "loss": 60.0 - e, "val_elbo": -61.0 + e, "gamma": 0.5**e} for e in (1, 2, 3)]
    fig = training_curves(history, title="stage 1")
    gamma = fig.axes[-1]
    assert gamma.get_ylabel() == "decoder variance gamma" and gamma.get_yscale() == "log"
    np.testing.assert_allclose(gamma.lines[0].get_ydata(), [0.5, 0.25, 0.125])
    assert fig._suptitle.get_text() == "stage 1"


def test_the_layer_of_a_hierarchy_is_named() -> None:
    vae = HierarchicalVAE((1, 8, 8), layers=((16, 4), (8, 2)))
    x = torch.rand(30, 1, 8, 8)
    fig = latent_traversal(vae, None, n=5, x=x)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows and all(r.startswith("h1[") for r in rows), rows
    assert ax.get_ylabel() == "dimension of layer h1" and "layer h1" in ax.get_title()
    space = latent_space(vae, x).axes[0]
    assert "layer h1" in space.get_title()
    two = HierarchicalVAE((1, 8, 8), layers=((16, 2), (8, 2)))
    assert latent_space(two, x).axes[0].get_xlabel() == "h1[1]"
    # a VAE keeps z
    plain = latent_traversal(VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,)), None, n=5)
    assert [t.get_text() for t in plain.axes[0].get_yticklabels()] == ["z1", "z2", "z3"]


def test_run_test_data_is_one_definition() -> None:
    config = {"dataset": "digits", "training": {"binarize": True}}
    x, labels = run_test_data(config, num=40, seed=3, labels=True)
    expected = datasets.binarize(datasets.load("digits", "test")[:40], torch.Generator().manual_seed(3))
    assert torch.equal(x, expected) and labels.shape == (40,)
    again, none = run_test_data(config, num=40, seed=3)
    assert torch.equal(again, x) and none is None
    grey, _ = run_test_data({"dataset": "digits", "splits": {"test": "valid"}}, num=10)
    assert torch.equal(grey, datasets.load("digits", "valid")[:10])


def _train(*argv: str) -> None:
    from pyro_vae.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--dataset", "digits", "--no-progress", *argv]) == 0


def test_plot_draws_training_and_gamma_curves_of_a_two_stage_run(tmp_path: Path) -> None:
    run = tmp_path / "ts"
    _train("--two-stage", "--epochs", "2", "--stage2-epochs", "1", "--latent-dim", "4", "--hidden-dims", "32",
           "--out", str(run))
    written = plot_run(run, tmp_path / "figs", num_particles=5, num=20)
    assert Path(written["training.png"]).is_file() and Path(written["training_stage2.png"]).is_file()
    assert Path(written["training.png"]).name == "training.png"


def test_plot_draws_training_curves_of_a_hierarchical_run(tmp_path: Path) -> None:
    run = tmp_path / "h"
    _train("--layers", "16,4;8,2", "--epochs", "2", "--out", str(run))
    written = plot_run(run, tmp_path / "figs", num_particles=5, num=20)
    assert Path(written["training.png"]).is_file() and Path(written["traversal.png"]).is_file()


def test_composite_panels_have_readable_titles(tmp_path: Path) -> None:
    """docs/results.md shows composite figures scaled to the page (about 740 px): their titles were about 5 px
    high there (five panels in one row, 10-point titles). Now at most three panels a row and 14-point titles."""
    import matplotlib.image

    panels = {f"model {i}": torch.rand(64, 1, 28, 28) for i in range(5)}
    fig = image_panels(panels, tmp_path / "p.png", dpi=80)
    width_px = fig.get_figwidth() * 80
    assert len(fig.axes) == 5 and width_px <= 12 * 80
    for ax in fig.axes:
        size_px = ax.title.get_fontsize() * 80 / 72 * min(1.0, 740 / width_px)  # as shown on the page
        assert size_px >= 10, size_px
    assert matplotlib.image.imread(tmp_path / "p.png").shape[1] == int(width_px)
    with pytest.raises(ValueError, match="panel"):
        image_panels({})

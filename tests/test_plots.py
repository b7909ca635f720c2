"""Tests of ``pyro_vae.plots``: every figure is rendered with Agg and its pixels are checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.plots import image_grid, is_image_shape, save_reconstructions, save_samples, training_curves

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return matplotlib.image.imread(path)


def assert_png_matches(fig, path: Path) -> np.ndarray:
    """The PNG exists, has the figure's size in pixels and is not one flat colour."""
    img = read_png(path)
    width, height = fig.get_size_inches() * fig.dpi
    assert img.shape[:2] == (round(height), round(width))
    assert img[..., :3].std() > 0.05, "the figure is (almost) one colour"
    return img


def test_is_image_shape() -> None:
    assert is_image_shape((1, 28, 28)) and is_image_shape((3, 32, 32)) and is_image_shape((8, 8))
    assert is_image_shape((784,))
    assert not is_image_shape((2,)) and not is_image_shape((4,)) and not is_image_shape((5, 8, 8))


@pytest.mark.parametrize("shape, image_shape", [((16, 1, 8, 8), None), ((16, 8, 8), None), ((16, 64), (1, 8, 8)),
                                                ((16, 784), None), ((16, 3, 8, 8), None)])
def test_image_grid_shapes(tmp_path: Path, shape: tuple[int, ...], image_shape: tuple[int, ...] | None) -> None:
    images = torch.rand(shape)
    path = tmp_path / "grid.png"
    fig = image_grid(images, nrow=4, path=path, title="random", image_shape=image_shape)
    assert_png_matches(fig, path)
    mosaic = fig.axes[0].images[0].get_array()
    side = 28 if shape[-1] == 784 else 8
    assert mosaic.shape[:2] == (4 * (side + 1) + 1, 4 * (side + 1) + 1)


def test_image_grid_places_each_image(tmp_path: Path) -> None:
    # image i is constant with grey value i / 5: the mosaic must hold it at row i // 3, column i % 3
    images = torch.arange(6.0).div(5).view(6, 1, 1, 1).expand(6, 1, 4, 4)
    fig = image_grid(images, nrow=3, path=tmp_path / "g.png")
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    for i in range(6):
        r, c = divmod(i, 3)
        cell = mosaic[1 + r * 5:1 + r * 5 + 4, 1 + c * 5:1 + c * 5 + 4]
        np.testing.assert_allclose(cell, i / 5, atol=1e-6)
    img = read_png(tmp_path / "g.png")[..., :3]
    assert img.min() < 0.05 and img.max() > 0.95  # black (image 0) and white (image 5) both rendered


def test_image_grid_rescales_other_ranges() -> None:
    fig = image_grid(torch.linspace(-3, 5, 4 * 64).view(4, 1, 8, 8))
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.min() == 0.0 and mosaic.max() == 1.0


@pytest.mark.parametrize("images, kwargs", [(torch.rand(4, 5, 8, 8), {}), (torch.rand(4, 10), {}),
                                            (torch.rand(0, 1, 8, 8), {}), (torch.rand(4, 1, 8, 8), {"nrow": 0})])
def test_image_grid_rejects_bad_input(images: torch.Tensor, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        image_grid(images, **kwargs)


def test_save_samples_images(tmp_path: Path) -> None:
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
    path = tmp_path / "sub" / "samples.png"
    fig = save_samples(vae, path, num_samples=12, nrow=4)
    assert_png_matches(fig, path)
    assert np.asarray(fig.axes[0].images[0].get_array()).shape[:2] == (3 * 9 + 1, 4 * 9 + 1)


def test_save_samples_scatter_for_2d_data(tmp_path: Path) -> None:
    vae = VAE((2,), latent_dim=2, hidden_dims=(16,), likelihood="normal")
    data = torch.randn(50, 2)
    path = tmp_path / "ring.png"
    fig = save_samples(vae, path, num_samples=200, data=data)
    assert_png_matches(fig, path)
    ax = fig.axes[0]
    assert not ax.images and [len(c.get_offsets()) for c in ax.collections] == [50, 200]


class _Inverter:
    """A stand-in VAE whose reconstruction is ``1 - x``."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x


def test_save_reconstructions_layout(tmp_path: Path) -> None:
    # 10 black originals, nrow 4: rows 1, 3, 5 black (originals), rows 2, 4, 6 white (reconstructions)
    x = torch.zeros(10, 1, 6, 6)
    path = tmp_path / "recon.png"
    fig = save_reconstructions(_Inverter(), x, path, n=10, nrow=4)
    assert_png_matches(fig, path)
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape[:2] == (6 * 7 + 1, 4 * 7 + 1)
    for row in range(6):
        band = mosaic[1 + row * 7:1 + row * 7 + 6, 1:1 + 6]  # first column of images
        np.testing.assert_allclose(band, 0.0 if row % 2 == 0 else 1.0)
    # the last pair of rows holds 2 images and padding: padding is grey, not a fake image
    np.testing.assert_allclose(mosaic[1 + 4 * 7:1 + 4 * 7 + 6, 1 + 2 * 7:1 + 2 * 7 + 6], 0.5)


def test_save_reconstructions_with_a_vae(tmp_path: Path) -> None:
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
    x = torch.rand(8, 1, 8, 8).round()
    fig = save_reconstructions(vae, x, tmp_path / "r.png", n=4)
    assert_png_matches(fig, tmp_path / "r.png")
    with pytest.raises(ValueError):
        save_reconstructions(vae, x, None, n=0)


def test_save_reconstructions_scatter(tmp_path: Path) -> None:
    vae = VAE((2,), latent_dim=2, hidden_dims=(16,), likelihood="normal")
    fig = save_reconstructions(vae, torch.randn(20, 2), tmp_path / "r.png")
    assert_png_matches(fig, tmp_path / "r.png")
    assert len(fig.axes[0].lines) == 20


def test_training_curves(tmp_path: Path) -> None:
    history = [{"epoch": e, "loss": 100 / e, "val_elbo": -100 / e - 1, "val_rate": 3 + e / 10,
                "val_distortion": 90 / e} for e in range(1, 11)]
    path = tmp_path / "training.png"
    fig = training_curves(history, path)
    assert_png_matches(fig, path)
    assert len(fig.axes) == 3
    assert [line.get_label() for line in fig.axes[2].lines] == ["rate", "distortion"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [h["val_elbo"] for h in history])


def test_training_curves_without_validation(tmp_path: Path) -> None:
    fig = training_curves([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}], tmp_path / "t.png")
    assert len(fig.axes) == 1
    with pytest.raises(ValueError):
        training_curves([], None)
    with pytest.raises(ValueError):
        training_curves([{"epoch": 1, "lr": 0.1}], None)


def test_matplotlib_is_imported_lazily() -> None:
    code = "import sys, pyro_vae, pyro_vae.plots, pyro_vae.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_pyplot_state() -> None:
    image_grid(torch.rand(4, 1, 8, 8))
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []

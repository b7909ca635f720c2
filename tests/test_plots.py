"""Tests of ``pyro_vae.plots``: every figure is rendered with Agg and its pixels are checked."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.plots import (
    gap_histogram,
    image_grid,
    is_image_shape,
    k_curve,
    khat_plot,
    latent_space,
    latent_traversal,
    pca,
    save_reconstructions,
    save_samples,
    training_curves,
)

REPO = Path(__file__).resolve().parents[1]


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
    assert [ax.get_ylabel() for ax in fig.axes] == ["ELBO (nats)", "rate (nats)", "distortion (nats)"]
    elbo_ax = fig.axes[0]
    assert [line.get_label() for line in elbo_ax.lines] == ["training (minus the loss)", "validation"]
    np.testing.assert_allclose(elbo_ax.lines[0].get_ydata(), [-h["loss"] for h in history])
    np.testing.assert_allclose(elbo_ax.lines[1].get_ydata(), [h["val_elbo"] for h in history])
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), [h["val_distortion"] for h in history])


def test_training_curves_train_and_validation_parts(tmp_path: Path) -> None:
    history = [{"epoch": e, "loss": 5.0, "train_elbo": -4.0 - e, "train_rate": 1.0 * e, "train_distortion": 3.0,
                "val_elbo": -5.0, "val_rate": 2.0, "val_distortion": 3.5} for e in range(1, 4)]
    fig = training_curves(history, tmp_path / "t.png")
    for ax in fig.axes:
        assert [line.get_label() for line in ax.lines] == ["training", "validation"]
        fig.canvas.draw()  # three epochs: the ticks are 1, 2, 3, never 1.5 or 2.5
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [-5.0, -6.0, -7.0])  # train_elbo, not -loss
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [1.0, 2.0, 3.0])


def test_training_curves_without_validation(tmp_path: Path) -> None:
    fig = training_curves([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}], tmp_path / "t.png")
    assert len(fig.axes) == 1
    with pytest.raises(ValueError):
        training_curves([], None)
    with pytest.raises(ValueError):
        training_curves([{"epoch": 1, "lr": 0.1}], None)


class _LinearCodes:
    """A stand-in VAE: ``z_loc(x)`` is the first ``latent_dim`` pixels times fixed scales; ``decode`` draws
    an 8x8 image whose grey value is ``Phi(z_1)`` in the left half and ``Phi(z_2)`` in the right half."""

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim
        self.scales = torch.arange(1.0, latent_dim + 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x.reshape(x.shape[0], -1)[:, : self.latent_dim] * self.scales
        return z, torch.ones_like(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        phi = torch.distributions.Normal(0.0, 1.0).cdf(z)
        img = torch.empty(z.shape[0], 1, 8, 8)
        img[..., :4] = phi[:, 0].view(-1, 1, 1, 1)
        img[..., 4:] = phi[:, 1 if self.latent_dim > 1 else 0].view(-1, 1, 1, 1)
        return img


def _scatter_points(ax) -> np.ndarray:
    return np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections])


def test_latent_space_2d_draws_the_codes_by_label(tmp_path: Path) -> None:
    x = torch.randn(60, 1, 8, 8)
    labels = torch.arange(60) % 3
    fig = latent_space(_LinearCodes(2), x, labels, tmp_path / "z.png")
    assert_png_matches(fig, tmp_path / "z.png")
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # one colour per class
    colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
    assert len(colours) == 3
    z = x.reshape(60, -1)[:, :2] * torch.tensor([1.0, 2.0])
    for c, collection in enumerate(ax.collections):
        np.testing.assert_allclose(collection.get_offsets(), z[labels == c].numpy(), rtol=1e-5)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]


def test_latent_space_projects_larger_latents_with_pca(tmp_path: Path) -> None:
    # codes that vary along one direction much more than along the others: PCA's first axis finds it
    direction = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0]) / 5
    t = torch.linspace(-2, 2, 50)
    codes = t[:, None] * direction * 10 + 0.01 * torch.randn(50, 5)

    class Codes:
        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return codes[x[:, 0].long()], torch.ones(x.shape[0], 5)

    fig = latent_space(Codes(), torch.arange(50.0)[:, None], None, tmp_path / "p.png")
    assert_png_matches(fig, tmp_path / "p.png")
    pts = _scatter_points(fig.axes[0])
    assert abs(np.corrcoef(pts[:, 0], t.numpy())[0, 1]) > 0.999
    assert "principal component 1 (99" in fig.axes[0].get_xlabel() or "(100%" in fig.axes[0].get_xlabel()
    proj, ratio = pca(codes, 2)
    np.testing.assert_allclose(np.abs(pts), np.abs(proj.numpy()), rtol=1e-4, atol=1e-6)
    assert ratio[0] > 0.99


def test_latent_traversal_2d_manifold_grid(tmp_path: Path) -> None:
    fig = latent_traversal(_LinearCodes(2), tmp_path / "m.png", n=5)
    assert_png_matches(fig, tmp_path / "m.png")
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape[:2] == (5 * 9 + 1, 5 * 9 + 1)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1", "z2")
    z = [f"{v:.2g}" for v in torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(5.0) + 0.5) / 5).tolist()]
    assert [t.get_text() for t in ax.get_xticklabels()] == [z[0], "", z[2], "", z[4]]
    assert [t.get_text() for t in ax.get_yticklabels()] == [z[4], "", z[2], "", z[0]]  # z_2 grows upwards
    u = (np.arange(5) + 0.5) / 5  # Phi(z) of the grid: z_1 grows to the right, z_2 grows upwards
    for r in range(5):
        for c in range(5):
            cell = mosaic[1 + r * 9:1 + r * 9 + 8, 1 + c * 9:1 + c * 9 + 8]
            np.testing.assert_allclose(cell[:, :4], u[c], atol=1e-5)
            np.testing.assert_allclose(cell[:, 4:], u[4 - r], atol=1e-5)


def test_latent_traversal_rows_are_the_most_active_dimensions(tmp_path: Path) -> None:
    class Probe(_LinearCodes):
        def decode(self, z: torch.Tensor) -> torch.Tensor:  # image = the value of dimension 3, through Phi
            return torch.distributions.Normal(0.0, 1.0).cdf(z[:, 3]).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)

    vae = Probe(6)  # z_loc = pixel * (1..6): dimension 6 varies most, then 5, 4, ...
    x = torch.randn(200, 1, 8, 8)
    fig = latent_traversal(vae, tmp_path / "t.png", n=4, x=x, max_dims=3)
    assert_png_matches(fig, tmp_path / "t.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z6", "z5", "z4"]  # each row names its dimension
    np.testing.assert_allclose(ax.get_yticks(), [1 + r * 9 + 3.5 for r in range(3)])  # at the row centres
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-3", "", "1", "3"]
    assert ax.get_ylabel() == "latent dimension" and ax.get_xlabel() == "value of the dimension"
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape[:2] == (3 * 9 + 1, 4 * 9 + 1)
    row3 = [mosaic[1 + 2 * 9 + 3, 1 + c * 9 + 3] for c in range(4)]  # row of dimension 4 (index 3): varies
    assert np.all(np.diff(row3) > 0.1)
    row1 = [mosaic[1 + 3, 1 + c * 9 + 3] for c in range(4)]  # dimension 6 leaves dimension 4 at its mean
    np.testing.assert_allclose(row1, row1[0], atol=1e-6)
    with pytest.raises(ValueError):
        latent_traversal(vae, None, n=1)


class _FakeResult:
    def __init__(self, n: int = 200) -> None:
        g = torch.Generator().manual_seed(0)
        self.elbo = -100 + torch.randn(n, generator=g, dtype=torch.float64)
        self.values = self.elbo + torch.rand(n, generator=g, dtype=torch.float64) * 2
        self.curve = {1: self.elbo, 5: self.elbo + 0.5, 50: self.elbo + 1.0}
        self.khat = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        self.num_particles = 50


def test_k_curve_gap_histogram_and_khat(tmp_path: Path) -> None:
    result = _FakeResult()
    fig = k_curve(result, tmp_path / "k.png")
    assert_png_matches(fig, tmp_path / "k.png")
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [1, 5, 50])
    mean = float(result.elbo.mean())
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), [mean, mean + 0.5, mean + 1.0])
    fig = gap_histogram(result, tmp_path / "g.png")
    assert_png_matches(fig, tmp_path / "g.png")
    assert sum(p.get_height() for p in fig.axes[0].patches) == 200
    fig = khat_plot(result, tmp_path / "h.png")
    img = assert_png_matches(fig, tmp_path / "h.png")
    red = (img[..., 0] > 0.7) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)
    assert red.sum() > 50  # the points above 0.7 and the threshold line are drawn in red
    assert "60 of 200 datapoints above 0.7" in fig.axes[0].get_title()
    result.khat = None
    with pytest.raises(ValueError):
        khat_plot(result)


def test_matplotlib_is_imported_lazily() -> None:
    code = "import sys, pyro_vae, pyro_vae.plots, pyro_vae.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_pyplot_state() -> None:
    image_grid(torch.rand(4, 1, 8, 8))
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_pyro_vae_plot_draws_every_figure_of_a_run(tmp_path: Path) -> None:
    import contextlib
    import io

    from pyro_vae.cli import main
    from pyro_vae.plots import RUN_FIGURES

    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--dataset", "digits", "--epochs", "3", "--hidden-dims", "32", "--out", str(run),
                     "--no-progress"]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["plot", str(run), "--out", str(tmp_path / "figs"), "--num-particles", "20", "--num", "60"])
    assert code == 0
    assert out.getvalue().count("wrote ") == len(RUN_FIGURES)
    for name in RUN_FIGURES:
        img = read_png(tmp_path / "figs" / name)
        assert min(img.shape[:2]) > 100, name
        assert img[..., :3].std() > 0.05, f"{name} is (almost) one colour"
    # the latent space is coloured by label: several distinct hues among its pixels
    img = read_png(tmp_path / "figs" / "latent_space.png")[..., :3]
    saturated = img[(img.max(-1) - img.min(-1)) > 0.3]
    assert len(np.unique(np.round(saturated, 1), axis=0)) >= 5
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["plot", str(run), "--num-particles", "1"]) == 2
    assert "num_particles" in err.getvalue()


def test_k_curve_ends_at_the_evaluated_k_with_errors_paired_with_it(tmp_path: Path) -> None:
    """The curve's last point is the K that was evaluated (200, not in the curve's nested K), and each error bar is
    the standard error of that point's difference to it over the same datapoints, far smaller here than the
    per-K spread over datapoints (10 nats), which overlapped while the gaps were tiny."""
    n = 400
    g = torch.Generator().manual_seed(1)
    top = -100 + 10 * torch.randn(n, generator=g, dtype=torch.float64)  # datapoints differ by ~10 nats
    noise = {k: 0.05 * torch.randn(n, generator=g, dtype=torch.float64) for k in (1, 5, 50)}
    result = _FakeResult(n)
    result.values, result.num_particles = top, 200
    result.curve = {k: top - gap + noise[k] for k, gap in ((1, 1.0), (5, 0.5), (50, 0.2))}
    result.elbo = result.curve[1]
    fig = k_curve(result, tmp_path / "k.png")
    ax = fig.axes[0]
    container = ax.containers[0]
    xs = np.asarray(container.lines[0].get_xdata(), float)
    np.testing.assert_allclose(xs, [1, 5, 50, 200])
    segments = container.lines[2][0].get_segments()
    half = np.array([abs(seg[1][1] - seg[0][1]) / 2 for seg in segments])
    paired = [float((result.curve[k] - top).std() / math.sqrt(n)) for k in (1, 5, 50)] + [0.0]
    np.testing.assert_allclose(half, paired, rtol=1e-6, atol=1e-12)
    assert max(half) < 0.01 < float(top.std() / math.sqrt(n)) / 10
    assert any("errors paired with K=200" in t.get_text() for t in ax.get_legend().get_texts())


def test_plot_writes_every_figure_in_the_format_and_resolution_asked_with_a_caption(tmp_path, run_cli):
    run = tmp_path / "run"
    assert run_cli(["train", "--epochs", "2", "--out", run, "--no-progress"])[0] == 0
    code, out, err = run_cli(["plot", run, "--out", tmp_path / "svg", "--format", "svg", "--num", "20",
                              "--num-particles", "10"])
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "svg").iterdir())
    assert files and all(name.endswith(".svg") for name in files) and "training.svg" in files
    text = (tmp_path / "svg" / "training.svg").read_text()
    assert "digits" in text and "run run" in text  # the caption names the run and the data set
    code, _, _ = run_cli(["plot", run, "--out", tmp_path / "lo", "--dpi", "50", "--num", "20",
                          "--num-particles", "10"])
    code, _, _ = run_cli(["plot", run, "--out", tmp_path / "hi", "--dpi", "200", "--num", "20",
                          "--num-particles", "10"])
    import matplotlib.image

    low = matplotlib.image.imread(tmp_path / "lo" / "training.png")
    high = matplotlib.image.imread(tmp_path / "hi" / "training.png")
    assert high.shape[0] == pytest.approx(4 * low.shape[0], rel=0.05)
    assert run_cli(["plot", run, "--dpi", "0"])[0] == 2


def test_khat_diagnostics_and_their_figure_run_with_warnings_as_errors(tmp_path):
    """arviz.plot_khat's deprecation failed under ``-W error``; the figure is drawn by hand and the k-hat path
    raises no warning at all (run in a fresh interpreter: pytest's own warning filters do not apply there)."""
    code = ("import pyro_vae; from pyro_vae import infer, datasets; from pyro_vae.plots import khat_plot; "
            "v = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,)); "
            "x = datasets.binarize(datasets.load('digits')[:20]); "
            "r = infer.log_likelihood(v.model, v.guide, x, num_particles=50, progress=False); "
            f"khat_plot(r, {str(tmp_path / 'k.png')!r}); khat_plot(infer.to_inference_data(v.model, v.guide, x, "
            "num_particles=50)); print(sum(r.khat_bands().values()))")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MPLBACKEND="Agg"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "20" and (tmp_path / "k.png").is_file()

"""Matplotlib figures: image grids, samples, reconstructions and training curves.

matplotlib is imported inside the functions, so ``import pyro_vae`` never needs it. The figures are built
with :class:`matplotlib.figure.Figure` directly, not through :mod:`matplotlib.pyplot`: nothing here selects
a backend, opens a window or registers figures with pyplot's global state (no figure piles up in a long
training script, and it works on a machine without a display). ``savefig`` renders PNG files with Agg.
A returned figure shows in a Jupyter notebook as it is; to show it in a pyplot window use
``plt.figure(...)`` yourself or save it.

Data whose datapoints are not images (for example the 2-D ``ring`` toy set) are drawn as scatter plots.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.figure import Figure

__all__ = ["gap_histogram", "image_grid", "is_image_shape", "k_curve", "khat_plot", "save_samples",
           "save_reconstructions", "training_curves"]

#: pixels of padding between the images of a grid (drawn in the background colour)
_PAD = 1


def _figure(figsize: tuple[float, float]) -> Figure:
    """A new figure that belongs to no pyplot state (the Agg canvas renders it on ``savefig``)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str] | None, dpi: int = 100) -> None:
    if path is not None:
        parent = os.path.dirname(os.fspath(path))
        if parent:
            os.makedirs(parent, exist_ok=True)
        fig.savefig(path, dpi=dpi)


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether datapoints of this shape are drawn as images.

    :param shape: the shape of one datapoint (without the batch dimension).
    :returns: True for ``(C, H, W)`` with ``C`` in {1, 3}, for ``(H, W)``, and for a flat ``(D,)`` whose ``D``
        is a square of at least 16 (e.g. 784 for flattened MNIST); False otherwise (e.g. ``(2,)``).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape[0] in (1, 3)
    if len(shape) == 2:
        return True
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        return shape[0] >= 16 and side * side == shape[0]
    return False


def _as_images(images: torch.Tensor, image_shape: Sequence[int] | None) -> torch.Tensor:
    """Bring ``images`` to ``(N, C, H, W)`` on the CPU, in float."""
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if image_shape is not None:
        x = x.reshape(x.shape[0], *image_shape)
    if x.dim() == 2:  # (N, D) with a square D
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"cannot draw datapoints of shape ({x.shape[1]},) as images: pass image_shape=(C, H, W)")
        x = x.reshape(x.shape[0], 1, side, side)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in {{1, 3}}, (N, H, W), or (N, D) with "
                         f"image_shape; got {tuple(images.shape)}")
    if x.shape[0] == 0:
        raise ValueError("image_grid needs at least one image")
    return x


def _mosaic(x: torch.Tensor, nrow: int, background: float) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` into one ``(rows * (H + pad) + pad, nrow * (W + pad) + pad, C)`` array."""
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    out = torch.full((c, rows * (h + _PAD) + _PAD, nrow * (w + _PAD) + _PAD), background)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = _PAD + r * (h + _PAD), _PAD + col * (w + _PAD)
        out[:, top:top + h, left:left + w] = x[i]
    return out.permute(1, 2, 0)


def image_grid(
    images: torch.Tensor,
    nrow: int = 8,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """Draw a batch of images as one grid, ``nrow`` images per row.

    Grey values in ``[0, 1]`` are drawn black on white as they are (``0`` black); other ranges are scaled to
    the batch's minimum and maximum.

    :param images: ``(N, C, H, W)`` with ``C`` in {1, 3}, ``(N, H, W)``, or ``(N, D)`` (with ``image_shape``,
        or a square ``D``).
    :param nrow: images per row of the grid.
    :param path: if given, save the figure there as PNG (any format matplotlib knows, by the suffix).
    :param title: a title above the grid.
    :param image_shape: the shape ``(C, H, W)`` or ``(H, W)`` of one image when ``images`` is flat.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if int(nrow) < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    x = _as_images(images, image_shape)
    nrow = min(int(nrow), x.shape[0])
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    grid = _mosaic(x.clamp(0, 1), nrow, background=0.5)
    rows = math.ceil(x.shape[0] / nrow)
    cell = min(0.35 + 0.015 * max(x.shape[2], x.shape[3]), 1.5)  # inches per image: 8x8 ~0.5, 28x28 ~0.8
    fig = _figure((max(nrow * cell, 3.0), max(rows * cell, 1.0) + (0.35 if title else 0.0)))
    ax = fig.add_subplot()
    if grid.shape[2] == 1:
        ax.imshow(grid[..., 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize="medium")
    _save(fig, path)
    return fig


def _module_device(vae: Any) -> torch.device:
    anchor = getattr(vae, "_anchor", None)
    if torch.is_tensor(anchor):
        return anchor.device
    params = getattr(vae, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _scatter(points: Sequence[tuple[torch.Tensor, dict[str, Any]]], path: str | os.PathLike[str] | None,
             title: str | None) -> Figure:
    fig = _figure((4.5, 4.5))
    ax = fig.add_subplot()
    for pts, style in points:
        pts = pts.detach().to("cpu", torch.float32).reshape(pts.shape[0], -1)
        y = pts[:, 1] if pts.shape[1] > 1 else torch.zeros(pts.shape[0])
        ax.scatter(pts[:, 0].numpy(), y.numpy(), **style)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$" if points[0][0].reshape(points[0][0].shape[0], -1).shape[1] > 1 else "")
    if any("label" in style for _, style in points):
        ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    _save(fig, path)
    return fig


def save_samples(
    vae: Any,
    path: str | os.PathLike[str] | None,
    num_samples: int = 64,
    nrow: int = 8,
    data: torch.Tensor | None = None,
    title: str | None = "samples from the model",
) -> Figure:
    """Draw ``z`` from the prior, decode it and plot the result.

    Image data: a grid of the means of ``p(x | z)`` (the usual picture of VAE samples). Other data (e.g. the
    2-D ``ring`` set): a scatter plot of the first two coordinates of draws ``x ~ p(x | z)``, over the points
    of ``data`` when given.

    :param vae: anything with ``.sample(num_samples, mean=...)`` returning ``(num_samples, *input_shape)``,
        e.g. a :class:`pyro_vae.VAE`.
    :param path: where to save the PNG (None: only return the figure).
    :param num_samples: how many samples to draw.
    :param nrow: images per row of the grid.
    :param data: optional data ``(N, D)`` drawn behind the samples of a scatter plot.
    :param title: the figure's title.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    was_training = getattr(vae, "training", False)
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        with torch.no_grad():
            probe = vae.sample(1)
            if is_image_shape(probe.shape[1:]):
                samples = vae.sample(int(num_samples))
                return image_grid(samples, nrow=nrow, path=path, title=title)
            samples = vae.sample(int(num_samples), mean=False)
    finally:
        if was_training and hasattr(vae, "train"):
            vae.train()
    layers: list[tuple[torch.Tensor, dict[str, Any]]] = []
    if data is not None:
        layers.append((data, {"s": 4, "alpha": 0.3, "color": "tab:gray", "label": "data"}))
    layers.append((samples, {"s": 4, "alpha": 0.6, "color": "tab:blue", "label": "samples"}))
    return _scatter(layers, path, title)


def save_reconstructions(
    vae: Any,
    x: torch.Tensor,
    path: str | os.PathLike[str] | None,
    n: int = 32,
    nrow: int = 8,
    title: str | None = None,
) -> Figure:
    """Plot datapoints and their reconstructions ``E[x | z = z_loc(x)]``.

    Images: the originals fill rows 1, 3, 5, ... of the grid and the reconstruction of each is drawn directly
    below it. Other data: a scatter plot of both, each original joined to its reconstruction by a line.

    :param vae: anything with ``.reconstruct(x)``, e.g. a :class:`pyro_vae.VAE`.
    :param x: datapoints ``(N, *input_shape)``; the first ``n`` are drawn.
    :param path: where to save the PNG (None: only return the figure).
    :param n: how many datapoints.
    :param nrow: images per row of the grid.
    :param title: the figure's title (default: a short description of the layout).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    x = x[: int(n)]
    was_training = getattr(vae, "training", False)
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        with torch.no_grad():
            recon = vae.reconstruct(x.to(_module_device(vae))).cpu()
    finally:
        if was_training and hasattr(vae, "train"):
            vae.train()
    x = x.detach().cpu()
    if is_image_shape(x.shape[1:]):
        nrow = min(int(nrow), x.shape[0])
        rows = []
        for start in range(0, x.shape[0], nrow):
            orig, rec = x[start:start + nrow], recon[start:start + nrow]
            if orig.shape[0] < nrow:  # pad the last pair of rows so that each reconstruction is below its original
                fill = torch.full((nrow - orig.shape[0], *x.shape[1:]), 0.5)
                orig, rec = torch.cat([orig, fill]), torch.cat([rec, fill])
            rows += [orig, rec]
        title = "data (odd rows), reconstructions" if title is None else title
        return image_grid(torch.cat(rows), nrow=nrow, path=path, title=title,
                          image_shape=x.shape[1:] if x.dim() == 2 else None)
    fig = _scatter([(x, {"s": 8, "color": "tab:gray", "label": "data"}),
                    (recon, {"s": 8, "color": "tab:blue", "label": "reconstruction"})], None,
                   "data and reconstructions" if title is None else title)
    ax = fig.axes[0]
    xf, rf = x.reshape(x.shape[0], -1), recon.reshape(recon.shape[0], -1)
    if xf.shape[1] > 1:
        for a, b in zip(xf, rf):
            ax.plot([a[0].item(), b[0].item()], [a[1].item(), b[1].item()], color="tab:blue", lw=0.5, alpha=0.5)
    _save(fig, path)
    return fig


def training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str] | None = None) -> Figure:
    """Plot the metrics that :func:`pyro_vae.fit` records per epoch.

    Panels, each only when its metrics are present: the training loss (negative bound per datapoint); the
    validation ELBO; the validation rate ``E_q[log q(z | x) - log p(z)]`` and distortion ``-E_q[log p(x | z)]``.

    :param history: one dict per epoch with ``epoch`` and some of ``loss``, ``val_elbo``, ``val_rate``,
        ``val_distortion`` (the list :func:`pyro_vae.fit` returns, or the lines of ``metrics.jsonl``).
    :param path: where to save the PNG (None: only return the figure).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    history = list(history)
    if not history:
        raise ValueError("training_curves needs a non-empty history (one dict per epoch)")
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]

    def series(key: str) -> list[float] | None:
        if not any(key in h for h in history):
            return None
        return [float(h[key]) if key in h and h[key] is not None else math.nan for h in history]

    panels: list[tuple[str, list[tuple[str, list[float]]]]] = []
    loss = series("loss")
    if loss is not None:
        panels.append(("training loss (nats)", [("loss", loss)]))
    val_elbo = series("val_elbo")
    if val_elbo is not None:
        panels.append(("validation ELBO (nats)", [("ELBO", val_elbo)]))
    parts = [(name, s) for name, s in (("rate", series("val_rate")), ("distortion", series("val_distortion")))
             if s is not None]
    if parts:
        panels.append(("validation rate and distortion (nats)", parts))
    if not panels:
        raise ValueError("the history holds none of loss, val_elbo, val_rate, val_distortion")
    fig = _figure((4.0 * len(panels), 3.2))
    for i, (ylabel, lines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, values in lines:
            ax.plot(epochs, values, marker="." if len(epochs) <= 30 else None, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    _save(fig, path)
    return fig


def k_curve(result: Any, path: str | os.PathLike[str] | None = None) -> Figure:
    """ELBO and IWAE_K against K (log axis) with standard-error bars, from a ``LogLikelihoodResult``.

    :param result: what :func:`pyro_vae.infer.log_likelihood` returns (its ``curve``: ``{k: (N,) tensor}``).
    :param path: where to save the PNG (None: only return the figure).
    """
    ks = sorted(result.curve)
    if not ks:
        raise ValueError("the result holds no K-curve")
    means = [float(result.curve[k].double().mean()) for k in ks]
    errs = [float(result.curve[k].double().std() / math.sqrt(result.curve[k].numel())) for k in ks]
    fig = _figure((4.8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3, label="IWAE bound $\\mathcal{L}_K$")
    ax.axhline(means[0] if ks[0] == 1 else float(result.elbo.double().mean()), color="tab:gray", ls="--",
               label="ELBO ($K=1$)")
    ax.set_xscale("log")
    ax.set_xlabel("number of particles K")
    ax.set_ylabel("nats per datapoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    return fig


def gap_histogram(result: Any, path: str | os.PathLike[str] | None = None, bins: int = 50) -> Figure:
    """Histogram of the per-datapoint gap ``IWAE_K - ELBO`` (how much importance weighting gains per datapoint)."""
    gap = (result.values - result.elbo).double().numpy()
    fig = _figure((4.8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(gap, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(float(gap.mean()), color="k", ls="--", label=f"mean {gap.mean():.3f}")
    ax.set_xlabel(f"IWAE$_{{{result.num_particles}}}$ - ELBO (nats)")
    ax.set_ylabel("datapoints")
    ax.legend(fontsize="small")
    _save(fig, path)
    return fig


def khat_plot(result: Any, path: str | os.PathLike[str] | None = None) -> Figure:
    """Pareto k-hat per datapoint with the 0.7 reliability threshold (PSIS, through ArviZ)."""
    if result.khat is None:
        raise ValueError("the result has no Pareto k-hat (log_likelihood(..., diagnostics=False))")
    khat = result.khat.numpy()
    fig = _figure((4.8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(range(len(khat)), khat, s=4, c=["tab:red" if k > 0.7 else "tab:blue" for k in khat])
    ax.axhline(0.7, color="tab:red", ls="--", label="0.7: unreliable above")
    ax.set_xlabel("datapoint")
    ax.set_ylabel("Pareto $\\hat{k}$")
    ax.legend(fontsize="small")
    _save(fig, path)
    return fig

"""Figure primitives, tensors, models and histories in, a figure out, no run folder read: image grids, samples,
reconstructions, training curves, the latent space, the K-curve (users reach them as :mod:`pyro_vae.plots`).

matplotlib is imported inside the functions, so ``import pyro_vae`` never needs it. The figures are built
with :class:`matplotlib.figure.Figure` directly, not through :mod:`matplotlib.pyplot`: nothing here selects
a backend, opens a window or registers figures with pyplot's global state (no figure piles up in a long
training script, and it works on a machine without a display). ``savefig`` renders PNG files with Agg.
A returned figure shows in a Jupyter notebook as it is; to show it in a pyplot window use
``plt.figure(...)`` yourself or save it.

Data whose datapoints are not images (for example the 2-D ``ring`` toy set) are drawn as scatter plots.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.figure import Figure

__all__ = ["gap_histogram", "image_grid", "image_panels", "is_image_shape", "k_curve", "khat_plot", "latent_space",
           "latent_traversal", "model_device", "pca", "save_options", "save_reconstructions", "save_samples",
           "training_curves", "k_curves", "paired_differences", "khat_histogram", "figure_bytes"]

#: pixels of padding between the images of a grid (drawn in the background colour)
_PAD = 1


def _figure(figsize: tuple[float, float]) -> Figure:
    """A new figure that belongs to no pyplot state (the Agg canvas renders it on ``savefig``)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


#: what every figure saved now is asked for (:func:`save_options`): a resolution and a caption
_SAVE_OPTIONS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("pyro_vae_save_options", default={})


def _save(fig: Figure, path: str | os.PathLike[str] | None, dpi: int | None = None) -> None:
    """Write the figure atomically (a temporary file renamed over ``path``: never through a symbolic link), in the
    format of ``path``'s extension (png, pdf, svg)."""
    if path is not None:
        from .io import atomic_write

        options = _SAVE_OPTIONS.get()
        if options.get("caption"):
            fig.text(0.995, 0.005, options["caption"], ha="right", va="bottom", fontsize="x-small", color="0.4")
        parent = os.path.dirname(os.fspath(path))
        if parent:
            os.makedirs(parent, exist_ok=True)
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
        dpi = dpi if dpi is not None else options.get("dpi", 100)
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt))


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int | None = None) -> bytes:
    """A figure rendered to the bytes of a ``fmt`` file (``png`` or ``svg``), e.g. to inline in an HTML page."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi if dpi is not None else _SAVE_OPTIONS.get().get("dpi", 100))
    return buffer.getvalue()


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
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    row_axis: str | None = None,
    col_axis: str | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Figure:
    """Draw a batch of images as one grid, ``nrow`` images per row.

    Grey values are drawn on the data's scale, ``value_range[0]`` black and ``value_range[1]`` white; values
    outside it (a Gaussian decoder's means may leave ``[0, 1]``) are clipped to it, so the background of a digit
    stays black instead of turning grey as under a rescaling. ``value_range=None`` rescales the batch's minimum
    and maximum to black and white instead, and the title says from what range.

    :param images: ``(N, C, H, W)`` with ``C`` in {1, 3}, ``(N, H, W)``, or ``(N, D)`` (with ``image_shape``,
        or a square ``D``).
    :param nrow: images per row of the grid.
    :param path: if given, save the figure there as PNG (any format matplotlib knows, by the suffix).
    :param title: a title above the grid.
    :param image_shape: the shape ``(C, H, W)`` or ``(H, W)`` of one image when ``images`` is flat.
    :param row_labels: a label left of each row (``""`` for none).
    :param col_labels: a label under each column (``""`` for none).
    :param row_axis: what the row labels are (a y-axis title).
    :param col_axis: what the column labels are (an x-axis title).
    :param value_range: ``(black, white)``: the data's range (default ``(0, 1)``, the range of every data set of
        :mod:`pyro_vae.datasets` that is drawn as images); None: the batch's own minimum and maximum.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if int(nrow) < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    x = _as_images(images, image_shape)
    nrow = min(int(nrow), x.shape[0])
    rows = math.ceil(x.shape[0] / nrow)
    for labels, count, what in ((row_labels, rows, "row_labels"), (col_labels, nrow, "col_labels")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{what} needs one label per {what[:3]} ({count}), got {len(labels)}")
    if value_range is None:
        lo, hi = x.min().item(), x.max().item()
        title = f"{title} " if title else ""
        title += f"(grey levels rescaled from [{lo:.3g}, {hi:.3g}])"
    else:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be (black, white) with black < white, got {value_range}")
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    grid = _mosaic(x.clamp(0, 1), nrow, background=0.5)
    cell = min(0.35 + 0.015 * max(x.shape[2], x.shape[3]), 1.5)  # inches per image: 8x8 ~0.5, 28x28 ~0.8
    labelled = row_labels is not None or col_labels is not None
    width = max(nrow * cell, 3.0) + (0.6 if labelled else 0.0)
    if title:  # wrapped to the figure's width (about 12 characters an inch at the title's size)
        import textwrap

        title = "\n".join(textwrap.fill(line, max(20, int(width * 12))) for line in title.splitlines())
    fig = _figure((width, max(rows * cell, 1.0) + (0.35 + 0.2 * title.count("\n") if title else 0.0)
                   + (0.45 if labelled else 0.0)))
    ax = fig.add_subplot()
    if grid.shape[2] == 1:
        ax.imshow(grid[..., 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), interpolation="nearest")
    if labelled:  # ticks at the image centres, no frame
        for spine in ax.spines.values():
            spine.set_visible(False)
        h, w = x.shape[2], x.shape[3]
        ax.set_yticks([_PAD + r * (h + _PAD) + h / 2 - 0.5 for r in range(rows)], row_labels or [""] * rows)
        ax.set_xticks([_PAD + c * (w + _PAD) + w / 2 - 0.5 for c in range(nrow)], col_labels or [""] * nrow)
        ax.tick_params(length=0, labelsize="small")
        if row_axis:
            ax.set_ylabel(row_axis)
        if col_axis:
            ax.set_xlabel(col_axis)
    else:
        ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize="medium")
    _save(fig, path)
    return fig


def image_panels(
    panels: dict[str, torch.Tensor],
    path: str | os.PathLike[str] | None = None,
    ncols: int = 3,
    nrow: int = 8,
    dpi: int | None = None,
) -> Figure:
    """Several image grids side by side, each under its title (e.g. test images and the samples of each model).

    Composite figures are shown scaled down to a page's width: at most ``ncols`` panels a row and titles in a
    large font keep the titles readable there (about 12 px on a 740 px column for the default 3 columns).
    Grey levels are drawn on the data's scale ``[0, 1]``, values outside clipped, as in :func:`image_grid`.

    :param panels: ``{title: images}``, each ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, D)`` with a square ``D``;
        the first ``nrow * nrow`` images of each are drawn. A title may hold a line break.
    :param path: where to save the figure (None: only return it).
    :param ncols: panels per row.
    :param nrow: images per row of each panel.
    :param dpi: the resolution of the saved file.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if not panels or int(ncols) < 1 or int(nrow) < 1:
        raise ValueError(f"image_panels needs at least one panel, ncols >= 1 and nrow >= 1, got {len(panels)} "
                         f"panels, ncols={ncols}, nrow={nrow}")
    ncols = min(int(ncols), len(panels))
    rows = math.ceil(len(panels) / ncols)
    lines = max(title.count("\n") + 1 for title in panels)
    fig = _figure((4.0 * ncols, (4.0 + 0.3 * lines) * rows))
    for i, (title, images) in enumerate(panels.items()):
        x = _as_images(images, None)[: int(nrow) ** 2].clamp(0, 1)
        grid = _mosaic(x, min(int(nrow), x.shape[0]), background=0.5)
        ax = fig.add_subplot(rows, ncols, i + 1)
        ax.imshow(grid[..., 0].numpy() if grid.shape[2] == 1 else grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(title, fontsize="x-large")
        ax.set_axis_off()
    _save(fig, path, dpi)
    return fig


def model_device(vae: Any) -> torch.device:
    """The device of a model's weights (its anchor buffer, else its first parameter; the CPU for none)."""
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
    title: str | None = None,
) -> Figure:
    """Draw ``z`` from the prior, decode it and plot the result.

    Image data: a grid of the means of ``p(x | z)`` (the usual picture of VAE samples; the default title says
    that these are decoder means, not draws of ``x``). Other data (e.g. the 2-D ``ring`` set): a scatter plot of
    the first two coordinates of draws ``x ~ p(x | z)``, over the points of ``data`` when given.

    :param vae: anything with ``.sample(num_samples, mean=...)`` returning ``(num_samples, *input_shape)``,
        e.g. a :class:`pyro_vae.VAE`.
    :param path: where to save the PNG (None: only return the figure).
    :param num_samples: how many samples to draw.
    :param nrow: images per row of the grid.
    :param data: optional data ``(N, D)`` drawn behind the samples of a scatter plot.
    :param title: the figure's title (default: what is shown, decoder means or draws of ``x``).
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
                return image_grid(samples, nrow=nrow, path=path, title=title if title is not None else
                                  "samples from the model:\ndecoder means E[x|z], z ~ p(z)")
            samples = vae.sample(int(num_samples), mean=False)
    finally:
        if was_training and hasattr(vae, "train"):
            vae.train()
    layers: list[tuple[torch.Tensor, dict[str, Any]]] = []
    if data is not None:
        layers.append((data, {"s": 4, "alpha": 0.3, "color": "tab:gray", "label": "data"}))
    layers.append((samples, {"s": 4, "alpha": 0.6, "color": "tab:blue", "label": "samples"}))
    return _scatter(layers, path, title if title is not None else "samples from the model: x ~ p(x|z), z ~ p(z)")


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
            recon = vae.reconstruct(x.to(model_device(vae))).cpu()
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


def training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str] | None = None,
                    title: str | None = None) -> Figure:
    """Plot the metrics that :func:`pyro_vae.fit` records per epoch, training and validation side by side.

    Panels, each only when its metrics are present: the ELBO (training: ``train_elbo`` when recorded, else
    minus the training loss, i.e. the bound averaged over the epoch's batches; validation: ``val_elbo``); the
    rate ``E_q[log q(z | x) - log p(z)]`` (``train_rate``, ``val_rate``); the distortion ``-E_q[log p(x | z)]``
    (``train_distortion``, ``val_distortion``), all in nats per datapoint; the decoder variance ``gamma``
    of a two-stage run's stage 1 (on a log scale: Dai & Wipf's ``gamma -> 0``); and a semi-supervised run's
    classifier accuracy on the validation data (``val_accuracy``).

    :param history: one dict per epoch with ``epoch`` and some of ``loss``, ``train_elbo``, ``train_rate``,
        ``train_distortion``, ``val_elbo``, ``val_rate``, ``val_distortion`` (the list :func:`pyro_vae.fit`
        returns, or the lines of ``metrics.jsonl``).
    :param path: where to save the PNG (None: only return the figure).
    :param title: a title above the panels.
    :returns: the :class:`matplotlib.figure.Figure`, one axes per panel.
    """
    from matplotlib.ticker import MaxNLocator

    history = list(history)
    if not history:
        raise ValueError("training_curves needs a non-empty history (one dict per epoch)")
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]

    def series(key: str, sign: float = 1.0) -> list[float] | None:
        if not any(h.get(key) is not None for h in history):
            return None
        return [sign * float(h[key]) if h.get(key) is not None else math.nan for h in history]

    train_elbo = series("train_elbo")
    train_label = "training"
    if train_elbo is None:
        train_elbo, train_label = series("loss", -1.0), "training (minus the loss)"
    panels: list[tuple[str, list[tuple[str, list[float]]]]] = []
    for ylabel, train, val in (("ELBO (nats)", train_elbo, series("val_elbo")),
                               ("rate (nats)", series("train_rate"), series("val_rate")),
                               ("distortion (nats)", series("train_distortion"), series("val_distortion"))):
        lines = [(name, s) for name, s in ((train_label if ylabel.startswith("ELBO") else "training", train),
                                           ("validation", val)) if s is not None]
        if lines:
            panels.append((ylabel, lines))
    gamma = series("gamma")
    if gamma is not None:
        panels.append(("decoder variance gamma", [("stage 1", gamma)]))
    accuracy = series("val_accuracy")
    if accuracy is not None:
        panels.append(("accuracy of argmax q(y|x)", [("validation", accuracy)]))
    if not panels:
        raise ValueError("the history holds none of loss, train_elbo, val_elbo, val_rate, val_distortion")
    fig = _figure((3.6 * len(panels), 3.2))
    for i, (ylabel, lines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, values in lines:
            ax.plot(epochs, values, marker="." if len(epochs) <= 30 else None, label=name,
                    color="tab:blue" if name.startswith("training") else "tab:orange")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(ylabel)
        if ylabel.startswith("decoder variance"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def _code_means(vae: Any, x: torch.Tensor) -> torch.Tensor:
    """The posterior mean of the code that ``vae.decode`` takes: ``z_loc`` of a VAE, ``h_1``'s of a hierarchy
    (whose ``encode`` returns ``[(loc_1, scale_1), ...]``)."""
    loc = vae.encode(x)[0]
    return loc[0] if isinstance(loc, tuple) else loc


def _code_dim(vae: Any) -> int:
    """The dimension of what ``vae.decode`` takes (``latent_dims[0]`` for a hierarchy)."""
    return int(getattr(vae, "latent_dims", [vae.latent_dim])[0])


def _code_name(vae: Any) -> str | None:
    """The latent layer that ``vae.decode`` takes, for a hierarchy (``"h1"``, the layer next to ``x``); None for
    a model with one latent ``z``."""
    names = getattr(vae, "site_names", None)
    return str(names[0]) if isinstance(names, (list, tuple)) and len(names) > 1 else None


def _dim_label(layer: str | None, j: int) -> str:
    """Dimension ``j`` (from 0) of the code, counted from 1 in the label: ``z3`` of a VAE, ``h1[3]`` of layer h1."""
    return f"z{j + 1}" if layer is None else f"{layer}[{j + 1}]"


@torch.no_grad()
def _encode_means(vae: Any, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``z_loc`` of every datapoint, ``(N, latent_dim)`` on the CPU."""
    device = model_device(vae)
    was_training = getattr(vae, "training", False)
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        parts = [_code_means(vae, x[i:i + batch_size].to(device)).reshape(min(batch_size, x.shape[0] - i), -1).cpu()
                 for i in range(0, x.shape[0], batch_size)]
    finally:
        if was_training and hasattr(vae, "train"):
            vae.train()
    return torch.cat(parts).double()


def pca(z: torch.Tensor, num_components: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points on their leading principal components (an SVD of the centred data).

    :param z: ``(N, D)``.
    :param num_components: how many components (at most ``D``).
    :returns: ``(projection (N, num_components), explained variance ratio (num_components,))``.
    """
    z = torch.as_tensor(z).double()
    centred = z - z.mean(0)
    _, svals, vh = torch.linalg.svd(centred, full_matrices=False)
    var = svals**2
    ratio = var / var.sum().clamp_min(1e-300)
    return centred @ vh[:num_components].T, ratio[:num_components]


def latent_space(
    vae: Any,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter the posterior means ``z_loc(x)`` of the data, coloured by label.

    A 2-D latent space is drawn directly; a larger one is projected on its first two principal components
    (:func:`pca`, the axes say how much of the variance each holds); a 1-D one is drawn against the label.

    :param vae: anything with ``.encode(x) -> (z_loc, z_scale)``, e.g. a :class:`pyro_vae.VAE`.
    :param x: datapoints ``(N, *input_shape)``.
    :param labels: optional integer labels ``(N,)`` (one colour per class, with a legend).
    :param path: where to save the PNG (None: only return the figure).
    :param title: the figure's title.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    z = _encode_means(vae, x)
    d, layer = z.shape[1], _code_name(vae)
    first, second = ("$z_1$", "$z_2$") if layer is None else (_dim_label(layer, 0), _dim_label(layer, 1))
    if d == 1:
        xy = torch.stack([z[:, 0], torch.zeros(len(z)) if labels is None else torch.as_tensor(labels).double()], 1)
        xlabel, ylabel = first, "label" if labels is not None else ""
    elif d == 2:
        xy, xlabel, ylabel = z, first, second
    else:
        xy, ratio = pca(z, 2)
        xlabel = f"principal component 1 ({100 * ratio[0]:.0f}% of the variance)"
        ylabel = f"principal component 2 ({100 * ratio[1]:.0f}%)"
    fig = _figure((5.2, 4.6))
    ax = fig.add_subplot()
    xy = xy.numpy()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, color="tab:blue")
    else:
        lab = torch.as_tensor(labels).cpu().numpy()
        classes = sorted(set(lab.tolist()))
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        from matplotlib import colormaps

        colours = colormaps[cmap]
        for i, c in enumerate(classes):
            sel = lab == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.7, color=colours(i % colours.N), label=str(c))
        ax.legend(title="label", fontsize="small", markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    where = "" if layer is None else f" in layer {layer} (next to x)"
    ax.set_title(title if title is not None else
                 f"posterior means{where} of {len(xy)} datapoints" + ("" if d <= 2 else f" (PCA of {d} dimensions)"),
                 fontsize="medium")
    _save(fig, path)
    return fig


@torch.no_grad()
def latent_traversal(
    vae: Any,
    path: str | os.PathLike[str] | None = None,
    n: int = 15,
    x: torch.Tensor | None = None,
    max_dims: int = 10,
    span: float = 3.0,
    title: str | None = None,
) -> Figure:
    """Decode a grid of latent points: the learned manifold for a 2-D latent space, traversals otherwise.

    - 2-D latents: an ``n x n`` grid of :math:`z = (\\Phi^{-1}(u_1), \\Phi^{-1}(u_2))` for ``u`` on an even grid
      of ``(0, 1)`` (Kingma & Welling's figure 4): equal prior mass between neighbouring images.
    - Other latent sizes: one row per latent dimension, varying it from ``-span`` to ``span`` with the others
      at the mean of ``z_loc(x)`` (at 0 without ``x``); with ``x`` the rows are the ``max_dims`` dimensions
      whose ``z_loc`` varies most over the data (the active ones), otherwise the first ``max_dims``.

    Each row is labelled with its dimension (``z1``, ``z2``, ... counted from 1; ``h1[1]``, ``h1[2]``, ... for the
    bottom layer ``h1`` of a hierarchical VAE, the layer ``decode`` takes) and the columns
    with the values.

    :param vae: anything with ``.latent_dim`` and ``.decode(z)`` returning images (a :class:`pyro_vae.VAE`).
    :param path: where to save the PNG (None: only return the figure).
    :param n: images per row.
    :param x: optional data ``(N, *input_shape)`` that choose the rows and the fixed values (latents > 2).
    :param max_dims: at most this many rows (latents > 2).
    :param span: the traversal range in prior standard deviations (latents > 2).
    :param title: the figure's title.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if int(n) < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    n, d, layer = int(n), _code_dim(vae), _code_name(vae)
    of_layer = "" if layer is None else f" of layer {layer}"
    device = model_device(vae)
    if d == 2:
        u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
        g = torch.distributions.Normal(0.0, 1.0).icdf(u)
        # rows from top to bottom: z_2 decreasing; columns: z_1 increasing
        z = torch.stack(torch.meshgrid(g, g.flip(0), indexing="xy"), -1).reshape(-1, 2)
        rows = n
        default_title = f"decoded 2-D latent grid{of_layer} (normal quantiles)"
        ticks = [f"{round(v, 6):.2g}" if i in (0, n // 2, n - 1) else "" for i, v in enumerate(g.tolist())]
        labels = {"row_labels": ticks[::-1], "col_labels": ticks, "row_axis": _dim_label(layer, 1),
                  "col_axis": _dim_label(layer, 0)}
    else:
        base = torch.zeros(d, dtype=torch.float64)
        dims = list(range(min(d, int(max_dims))))
        if x is not None:
            z_loc = _encode_means(vae, x)
            base = z_loc.mean(0)
            dims = z_loc.var(0).argsort(descending=True)[: int(max_dims)].tolist()
        values = torch.linspace(-span, span, n, dtype=torch.float64)
        z = base.repeat(len(dims), n, 1)
        for r, j in enumerate(dims):
            z[r, :, j] = values
        z = z.reshape(-1, d)
        rows = len(dims)
        default_title = f"latent traversals{of_layer} from {-span:g} to {span:g}, the others fixed"
        ends = (0, n // 2, n - 1)
        labels = {"row_labels": [_dim_label(layer, j) for j in dims],
                  "col_labels": [f"{round(v, 6):g}" if i in ends else "" for i, v in enumerate(values.tolist())],
                  "row_axis": "latent dimension" if layer is None else f"dimension of layer {layer}",
                  "col_axis": "value of the dimension"}
    was_training = getattr(vae, "training", False)
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        images = vae.decode(z.to(device=device, dtype=torch.float32)).cpu()
    finally:
        if was_training and hasattr(vae, "train"):
            vae.train()
    if not is_image_shape(images.shape[1:]):
        raise ValueError(f"latent_traversal draws images; the model decodes datapoints of shape "
                         f"{tuple(images.shape[1:])}")
    assert images.shape[0] == rows * n
    return image_grid(images, nrow=n, path=path, title=title if title is not None else default_title, **labels)


def _paired_curve(result: Any) -> tuple[list[int], list[float], list[float]]:
    """A result's K-curve as ``(ks, means, errors)``, the errors paired: of each point's difference to the largest
    K over the same datapoints (the points share their datapoints, so unpaired errors overlap while the paired gaps
    are tiny)."""
    curve = dict(result.curve)
    if getattr(result, "values", None) is not None and getattr(result, "num_particles", None):
        curve.setdefault(int(result.num_particles), result.values)  # the K that was actually evaluated
    ks = sorted(curve)
    if not ks:
        raise ValueError("the result holds no K-curve")
    top = curve[ks[-1]].double()
    means = [float(curve[k].double().mean()) for k in ks]
    errs = [float((curve[k].double() - top).std() / math.sqrt(top.numel())) if k != ks[-1] else 0.0 for k in ks]
    return ks, means, errs


def k_curve(result: Any, path: str | os.PathLike[str] | None = None) -> Figure:
    """ELBO and IWAE_K against K (log axis) with standard-error bars, from a ``LogLikelihoodResult``.

    :param result: what :func:`pyro_vae.infer.log_likelihood` returns (its ``curve``: ``{k: (N,) tensor}``).
    :param path: where to save the PNG (None: only return the figure).
    """
    ks, means, errs = _paired_curve(result)
    fig = _figure((4.8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3,
                label=f"IWAE bound $\\mathcal{{L}}_K$ (errors paired with K={ks[-1]})")
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
    """Pareto :math:`\\hat k` per datapoint, in the bands Pyro's ``psis_diagnostic`` reads: good (below 0.5),
    usable with care (below the sample-size threshold ``min(1 - 1/log10 K, 0.7)``), unreliable (above it).

    :param result: a ``LogLikelihoodResult`` with ``khat``, an :class:`arviz.InferenceData` from
        :func:`pyro_vae.infer.to_inference_data`, or a ``(N,)`` array of k-hat values (threshold 0.7).
    :param path: where to save the PNG (None: only return the figure).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    import numpy as np

    threshold = 0.7
    if hasattr(result, "sample_stats"):
        from .infer.arviz import psis_khat

        khat = psis_khat(result).values
    elif hasattr(result, "khat"):
        if result.khat is None:
            raise ValueError("the result has no Pareto k-hat (log_likelihood(..., diagnostics=False))")
        khat = result.khat.double().numpy()
        threshold = float(getattr(result, "khat_threshold", threshold))
    else:
        khat = np.asarray(torch.as_tensor(result).double())
    khat = np.asarray(khat, dtype=np.float64).reshape(-1)
    fig = _figure((5.6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    bad = khat >= threshold
    care = (khat >= 0.5) & ~bad
    size = 6 if len(khat) <= 2000 else 2
    index = np.arange(len(khat))
    for mask, colour, label in ((~(bad | care), "tab:blue", f"good (< {min(0.5, threshold):.2g})"),
                                (care, "tab:orange", f"usable with care (< {threshold:.2f})"),
                                (bad, "tab:red", "unreliable")):
        ax.scatter(index[mask], khat[mask], s=size, color=colour, label=f"{label}: {int(mask.sum())}")
    ax.axhline(0.5, color="tab:orange", ls=":", lw=1)
    ax.axhline(threshold, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("datapoint")
    ax.set_ylabel("Pareto $\\hat{k}$")
    ax.grid(alpha=0.3)
    ax.set_title(f"PSIS diagnostic: {int(bad.sum())} of {len(khat)} datapoints above {threshold:.2g}",
                 fontsize="medium")
    ax.legend(fontsize="small", loc="upper right")
    _save(fig, path)
    return fig


def k_curves(results: dict[str, Any], path: str | os.PathLike[str] | None = None,
             title: str | None = None) -> Figure:
    """Several models' IWAE bound against K on one axes (log axis), each with its errors paired with its own largest
    K (as :func:`k_curve`): the curves of the runs of a comparison, measured on the same datapoints.

    :param results: ``{name: result}``, each what :func:`pyro_vae.infer.log_likelihood` returns (its ``curve``).
    :param path: where to save the figure (None: only return it).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if not results:
        raise ValueError("k_curves needs at least one result")
    fig = _figure((5.6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, result in results.items():
        ks, means, errs = _paired_curve(result)
        ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("number of particles K")
    ax.set_ylabel("IWAE bound $\\mathcal{L}_K$ (nats per datapoint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title if title is not None else "the bound against K (errors paired with each run's largest K)",
                 fontsize="medium")
    _save(fig, path)
    return fig


def paired_differences(differences: Sequence[dict[str, Any]], path: str | os.PathLike[str] | None = None,
                       confidence: float = 0.95, title: str | None = None) -> Figure:
    """Paired differences of estimates over the same datapoints, each a point with its error bar (the normal
    interval of ``confidence`` from the paired standard error), beside a line at zero.

    :param differences: each ``{"label": str, "mean": float, "stderr": float}`` (what
        :class:`pyro_vae.infer.Comparison` holds: ``mean`` and ``stderr``), drawn top to bottom.
    :param path: where to save the figure (None: only return it).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    if not differences:
        raise ValueError("paired_differences needs at least one difference")
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + float(confidence) / 2)))
    n = len(differences)
    fig = _figure((6.0, 1.3 + 0.6 * n))
    ax = fig.add_subplot(1, 1, 1)
    rows = list(range(n))[::-1]
    ax.errorbar([d["mean"] for d in differences], rows, xerr=[z * d["stderr"] for d in differences], fmt="o",
                capsize=4, color="tab:blue")
    ax.axvline(0.0, color="tab:gray", ls="--", lw=1)
    ax.set_yticks(rows)
    ax.set_yticklabels([d["label"] for d in differences], fontsize="small")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"paired difference, nats per datapoint ({100 * confidence:.0f}% interval)", fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    if title:
        ax.set_title(title, fontsize="medium")
    _save(fig, path)
    return fig


def khat_histogram(khat: Any, path: str | os.PathLike[str] | None = None, threshold: float = 0.7,
                   bins: int = 40) -> Figure:
    """Histogram of the datapoints' Pareto :math:`\\hat k` with the lines at 0.5 and ``threshold`` (above it an
    importance-sampling estimate is unreliable).

    :param khat: ``(N,)`` k-hat values (a tensor or an array).
    :param path: where to save the figure (None: only return it).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    import numpy as np

    values = torch.as_tensor(khat).double().reshape(-1).numpy()
    finite = values[np.isfinite(values)]
    fig = _figure((4.8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    if finite.size:
        ax.hist(finite, bins=bins, color="tab:blue", alpha=0.8)
    if finite.size < values.size:  # ArviZ's k-hat is infinite where the weights' tail could not be fitted
        ax.set_title(f"{values.size - finite.size} datapoints with an infinite k-hat (counted above "
                     f"{threshold:.2g}, not drawn)", fontsize="small")
    ax.axvline(0.5, color="tab:orange", ls=":", lw=1, label="0.5")
    above = int((values > threshold).sum())
    ax.axvline(threshold, color="tab:red", ls="--", lw=1, label=f"{threshold:.2g}: {above} of {len(values)} above")
    ax.set_xlabel("Pareto $\\hat{k}$")
    ax.set_ylabel("datapoints")
    ax.legend(fontsize="small")
    _save(fig, path)
    return fig


@contextlib.contextmanager
def save_options(*, dpi: int | None = None, caption: str | None = None) -> Iterator[None]:
    """Every figure saved inside the block gets this resolution and a caption in its corner (what
    :func:`pyro_vae.pipeline.plot_run` asks of the figures of a run: its name and data set)."""
    token = _SAVE_OPTIONS.set({k: v for k, v in {"dpi": dpi, "caption": caption}.items() if v is not None})
    try:
        yield
    finally:
        _SAVE_OPTIONS.reset(token)

"""The figures of a run folder: :func:`plot_run` is what ``pyro-vae plot`` does. It reads a run (its model, its
test data, its metrics) and draws with the figure primitives of :mod:`pyro_vae.plots`, which take tensors and
histories and know nothing of run folders; the run's kind says which training curves it has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checks import whole_number
from ..drawing import (
    gap_histogram,
    is_image_shape,
    k_curve,
    khat_plot,
    latent_space,
    latent_traversal,
    model_device,
    save_options,
    save_reconstructions,
    save_samples,
    training_curves,
)
from ..runs import load_run, read_config, run_test_data
from .registry import get_kind

__all__ = ["RUN_FIGURES", "plot_run"]

#: the files :func:`plot_run` writes, in order
RUN_FIGURES = ("training.png", "reconstructions.png", "samples.png", "latent_space.png", "traversal.png",
               "k_curve.png", "gaps.png", "khat.png")


def plot_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    num_particles: int = 1000,
    num: int = 500,
    data_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    fmt: str = "png",
    dpi: int = 100,
) -> dict[str, str]:
    """Draw every figure of a run folder written by ``pyro-vae train`` (what ``pyro-vae plot`` does).

    Every figure carries a caption with the run folder's name and the data set, and is written in ``fmt``
    (``png``, ``pdf`` or ``svg``) at ``dpi`` dots per inch.

    Writes into ``out`` (default: the run folder): ``training.png`` (:func:`~pyro_vae.plots.training_curves` of
    ``metrics.jsonl``; a kind with several trainings draws each: a two-stage run's stage 1, with its decoder variance
    gamma per epoch, and stage 2 in ``training_stage2.png``), ``reconstructions.png``, ``samples.png``,
    ``latent_space.png`` (coloured by label when the data set has labels), ``traversal.png`` (image data, a model
    whose ``decode`` takes the code alone), and from an importance-sampling estimate with ``num_particles``
    particles on the first ``num`` test datapoints ``k_curve.png``, ``gaps.png`` and ``khat.png``. The test data are
    :func:`pyro_vae.runs.run_test_data` of the run (binarized with ``seed``, as ``pyro-vae evaluate`` binarizes
    them).

    :returns: ``{figure name: path}`` of the files written.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"unknown figure format {fmt!r}; choose png, pdf or svg")
    dpi = whole_number(dpi, "dpi", low=10, high=1200)
    if int(num_particles) < 2:
        raise ValueError(f"num_particles must be >= 2 (the k-hat needs several), got {num_particles}")
    if int(num) < 2:
        raise ValueError(f"num must be >= 2, got {num}")
    vae, config = load_run(run_dir, device=device)  # a missing or damaged run is refused before any folder is made
    kind = get_kind(read_config(run_dir).get("class", "VAE"))
    out_dir.mkdir(parents=True, exist_ok=True)
    x, labels = run_test_data(config, num=int(num), data_root=data_root, seed=int(seed), labels=True)
    written: dict[str, str] = {}

    def done(name: str) -> Path:
        path = out_dir / (os.path.splitext(name)[0] + "." + fmt)
        written[name] = str(path)
        return path

    with save_options(dpi=int(dpi), caption=f"run {run_dir.resolve().name} · {config['dataset']}"):
        for name, (history, title) in kind.histories(run_dir).items():
            if history:
                training_curves(history, done(name), title=title)
        _draw_run(vae, kind.measured(vae), x, labels, done, num_particles, seed, progress)
    return written


def _draw_run(vae: Any, measured: Any, x: torch.Tensor, labels: Any, done: Any, num_particles: int, seed: int,
              progress: bool) -> None:
    from ..infer import log_likelihood

    torch.manual_seed(int(seed))
    save_reconstructions(vae, x, done("reconstructions.png"), n=min(32, x.shape[0]))
    reference = x if not is_image_shape(x.shape[1:]) else None
    save_samples(vae, done("samples.png"), num_samples=64 if reference is None else 1000, data=reference)
    latent_space(vae, x, labels, done("latent_space.png"))
    if is_image_shape(x.shape[1:]) and hasattr(vae, "decode"):  # (a semi-supervised decoder also takes the label)
        latent_traversal(vae, done("traversal.png"), x=x)
    result = log_likelihood(measured.model, measured.guide, x.to(model_device(vae)), num_particles=int(num_particles),
                            seed=int(seed), progress=progress)
    k_curve(result, done("k_curve.png"))
    gap_histogram(result, done("gaps.png"))
    khat_plot(result, done("khat.png"))

"""Every figure by one name: the primitives of :mod:`pyro_vae.drawing` (tensors, models and histories in, a figure
out) and the figures of a run folder, :func:`plot_run` and :data:`RUN_FIGURES` of :mod:`pyro_vae.pipeline.figures`.

A façade for users and scripts (``from pyro_vae.plots import image_grid, plot_run``); it sits above the run
pipeline, so the library's own modules import :mod:`pyro_vae.drawing` instead.
"""

from __future__ import annotations

from .drawing import *  # noqa: F403
from .drawing import __all__ as _drawing_names
from .pipeline.figures import RUN_FIGURES, plot_run

__all__ = [*_drawing_names, "RUN_FIGURES", "plot_run"]

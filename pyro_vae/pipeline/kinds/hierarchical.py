"""The recipe of a hierarchical run (``pyro-vae train --layers 200,200,100;100,100,50``): a
:class:`~pyro_vae.HierarchicalVAE` of several stochastic layers (Burda et al. 2016's two-layer model), trained as a
plain VAE run is; one process only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import datasets
from ..registry import register_kind
from ..settings import RunSettings
from .base import RunData
from .vae import VAEKind

__all__ = ["HierarchicalKind"]


@register_kind
class HierarchicalKind(VAEKind):
    """A :class:`~pyro_vae.HierarchicalVAE` run, selected by ``layers``."""

    name = "HierarchicalVAE"
    single_process = True
    selected_by = "layers"
    fresh_folder = True

    def check(self, s: RunSettings) -> None:
        if s.layers is None and s.model_config is None:
            raise ValueError("a hierarchical run needs --layers, e.g. 200,200,100;100,100,50 (per layer the hidden "
                             "sizes then the latent size, bottom first)")

    def build(self, s: RunSettings, data: RunData, out: Path) -> Any:
        from ...models import HierarchicalVAE

        return HierarchicalVAE(datasets.event_shape(s.dataset), layers=s.layers, activation=s.activation,
                               likelihood=s.likelihood)

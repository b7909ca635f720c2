"""The run kinds, one recipe a file, each registered by name (:mod:`pyro_vae.pipeline.registry`):

=====================  ==========================================================================================
module                 the kind
=====================  ==========================================================================================
``base``               :class:`RunKind`: the steps every recipe has, and what a plain run does at each
``vae``                ``VAE``: a :class:`~pyro_vae.VAE` (priors, flows, conditions, networks)
``hierarchical``       ``HierarchicalVAE``: several stochastic layers (``--layers``)
``two_stage``          ``TwoStageVAE``: Dai & Wipf's two stages (``--two-stage``)
``semi_supervised``    ``SSVAE``: Kingma et al.'s M2 (``--semi-supervised --labels N``)
=====================  ==========================================================================================

A kind of your own is one more file like these: a :class:`RunKind` subclass under ``@register_kind``.
"""

# registered in this order: with several kinds' flags given, the last one is chosen and refuses the others' flags
from .base import RunContext, RunData, RunKind  # noqa: I001
from .vae import VAEKind
from .hierarchical import HierarchicalKind
from .two_stage import TwoStageKind
from .semi_supervised import SEMI_SUPERVISED_CLASSES, SEMI_SUPERVISED_DEFAULTS, SemiSupervisedKind

__all__ = ["RunKind", "RunData", "RunContext", "VAEKind", "HierarchicalKind", "TwoStageKind", "SemiSupervisedKind",
           "SEMI_SUPERVISED_CLASSES", "SEMI_SUPERVISED_DEFAULTS"]

"""Model/guide pairs, one class a module, each built from components and never holding an objective:

=====================  ==========================================================================================
module                 its job
=====================  ==========================================================================================
``vae``                :class:`VAE`: prior + guide + decoder + likelihood (flows, conditional VAE as arguments)
``hierarchical``       :class:`HierarchicalVAE`: a stack of stochastic layers (Burda et al. 2016)
``two_stage``          :class:`TwoStageVAE`: Dai & Wipf's two stages
``semi_supervised``    :class:`SSVAE`: Kingma et al.'s M2, the label observed or summed exactly
``config``             each class's settings as a frozen dataclass, checked on creation (what is saved)
=====================  ==========================================================================================

A class may also produce its importance terms directly (``importance_terms``, proven equal to the traced terms)
by setting ``_direct_terms_for = (cls.model, cls.guide)``; see :mod:`pyro_vae.infer.weights`. The components live
below: :mod:`pyro_vae.priors`, :mod:`pyro_vae.guides`, :mod:`pyro_vae.nets`, :mod:`pyro_vae.likelihoods`; saving
and loading in :mod:`pyro_vae.saving`.
"""

from ..nets import init_output_bias
from ..saving import (
           MODEL_CLASSES,
           SAVE_CONFIG,
           SAVE_FORMAT,
           SAVE_WEIGHTS,
           Saveable,
           build_checked,
           load_model,
           save_model,
)
from .config import HierarchicalConfig, TwoStageConfig, VAEConfig
from .hierarchical import HierarchicalVAE
from .semi_supervised import SSVAE
from .two_stage import TwoStageVAE
from .vae import VAE

__all__ = ["VAE", "HierarchicalVAE", "TwoStageVAE", "SSVAE", "VAEConfig", "HierarchicalConfig", "TwoStageConfig",
           "Saveable", "init_output_bias", "save_model", "load_model", "build_checked", "MODEL_CLASSES", "SAVE_CONFIG",
           "SAVE_WEIGHTS", "SAVE_FORMAT"]

"""pyro-vae: variational autoencoders as Pyro programs, with honest ``log p(x)`` estimates.

The public names: :class:`VAE`, :class:`HierarchicalVAE`, :class:`TwoStageVAE`, :func:`fit`, and the modules
:mod:`pyro_vae.datasets`, :mod:`pyro_vae.infer` and
:mod:`pyro_vae.distributed` (for ``torchrun``). Importing the package changes no global Pyro or torch setting.
"""

from . import datasets, distributed, infer, likelihoods, nets
from .models import VAE, HierarchicalVAE, TwoStageVAE
from .train import fit

__version__ = "0.1.0"

__all__ = ["VAE", "HierarchicalVAE", "TwoStageVAE", "__version__", "datasets", "distributed", "fit", "infer",
           "likelihoods", "nets"]

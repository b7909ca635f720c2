"""pyro-vae: variational autoencoders as Pyro programs, with honest ``log p(x)`` estimates.

The public names: :class:`VAE`, :class:`HierarchicalVAE`, :class:`TwoStageVAE`, :func:`fit`, :func:`load`, and the
modules :mod:`pyro_vae.datasets`, :mod:`pyro_vae.infer`, :mod:`pyro_vae.priors` and :mod:`pyro_vae.distributed`
(for ``torchrun``). Importing the package changes no global Pyro or torch setting. A map of the modules, and
where each kind of change goes, is in ``docs/architecture.md``.
"""

from . import datasets, distributed, infer, likelihoods, nets, priors
from ._version import __version__
from .models import VAE, HierarchicalVAE, TwoStageVAE
from .runs import load
from .train import fit

__all__ = ["VAE", "HierarchicalVAE", "TwoStageVAE", "__version__", "datasets", "distributed", "fit", "infer",
           "likelihoods", "load", "nets", "priors"]

"""pyro-vae: variational autoencoders as Pyro programs, with honest ``log p(x)`` estimates.

The public names: :class:`VAE`, :func:`fit`, and the modules :mod:`pyro_vae.datasets` and
:mod:`pyro_vae.infer`. Importing the package changes no global Pyro or torch setting.
"""

from . import datasets, infer, likelihoods, nets
from .models import VAE
from .train import fit

__version__ = "0.1.0"

__all__ = ["VAE", "__version__", "datasets", "fit", "infer", "likelihoods", "nets"]

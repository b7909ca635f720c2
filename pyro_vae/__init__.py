"""pyro-vae: variational autoencoders as Pyro programs, with honest ``log p(x)`` estimates."""

__version__ = "0.1.0"

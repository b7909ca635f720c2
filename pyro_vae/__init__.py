"""pyro-vae: variational autoencoders as Pyro programs, with honest ``log p(x)`` estimates.

The public names: :class:`VAE`, :class:`HierarchicalVAE`, :class:`TwoStageVAE`, :class:`SSVAE` (semi-supervised,
with :func:`fit_semi_supervised`), :func:`fit`, :func:`load`, :func:`report` (one HTML page of a run or a
comparison), and the
modules :mod:`pyro_vae.datasets`, :mod:`pyro_vae.infer`, :mod:`pyro_vae.priors` and :mod:`pyro_vae.distributed`
(for ``torchrun``). Importing the package changes no global Pyro or torch setting. A map of the modules, and
where each kind of change goes, is in ``docs/architecture.md``.
"""

from ._version import __version__

# the names are imported when first used (PEP 562), so that ``pyro-vae --help`` imports neither torch nor Pyro
_LAZY = {"VAE": ".models", "HierarchicalVAE": ".models", "TwoStageVAE": ".models", "load": ".runs", "fit": ".train",
         "SSVAE": ".models", "fit_semi_supervised": ".train", "report": ".pipeline.reports"}
_MODULES = ("datasets", "distributed", "infer", "likelihoods", "nets", "priors", "models", "train", "runs", "plots",
            "drawing", "io", "cli")


def __getattr__(name: str):  # noqa: ANN202 - module attribute hook
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_MODULES))


__all__ = ["VAE", "HierarchicalVAE", "TwoStageVAE", "SSVAE", "__version__", "datasets", "distributed", "fit", "infer",
           "fit_semi_supervised", "likelihoods", "load", "nets", "priors", "report"]

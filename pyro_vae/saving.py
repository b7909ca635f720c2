"""One saved-model format for every model class: a folder with ``vae.json`` (a format tag, the class name, the
class's checked settings and the library version, the weights' checksum) and ``weights.pt`` (the ``state_dict``,
read back with ``torch.load(weights_only=True)``, so loading runs no pickled code); both written atomically.

:func:`save_model` and :func:`load_model` read and write it; :func:`build_checked` builds a class from a saved
configuration only after checking, on the ``meta`` device, that it fits the saved weights; a model class joins the
format with :func:`register_model_class` (its name is what ``vae.json`` records) and :class:`Saveable`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_save, atomic_write, load_tensors, refuse_link, tensor_checksum
from .priors import PRIORS

__all__ = ["SAVE_CONFIG", "SAVE_WEIGHTS", "SAVE_FORMAT", "MODEL_CLASSES", "Saveable", "register_model_class",
           "save_model", "load_model", "build_checked"]

#: the files of a folder written by :meth:`VAE.save`, and its format tag
SAVE_CONFIG, SAVE_WEIGHTS, SAVE_FORMAT = "vae.json", "weights.pt", "pyro-vae/1"


class Saveable:
    """Saving and loading, one format for every model class: a folder with ``vae.json`` (the format tag, the class
    name, the constructor's :attr:`config` and the library version) and ``weights.pt`` (the ``state_dict``,
    read back with ``torch.load(weights_only=True)``, so loading runs no pickled code); both written atomically.
    :func:`pyro_vae.load` reads any of them."""

    config: dict[str, Any]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the configuration and the weights into the folder ``path`` (see :func:`save_model`).

        :returns: the folder, as a :class:`~pathlib.Path`.
        """
        return save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu", **overrides: Any) -> Any:
        """Rebuild a model written by :meth:`save`, in eval mode (see :func:`load_model`).

        :param path: the folder :meth:`save` wrote.
        :param map_location: the device to put the model on (``"cpu"``, ``"cuda"``, a :class:`torch.device`).
        :param overrides: constructor arguments that replace the saved ones; a VAE built with a user's
            ``encoder``/``decoder`` module or ``Likelihood`` instance is loaded by passing a fresh instance
            again, e.g. ``VAE.load(path, encoder=MyEncoder())``.
        :raises FileNotFoundError: if the folder or one of its files is missing.
        :raises ValueError: if the files are not what :meth:`save` writes, the saved class is not this one, or the
            weights do not fit.

        Example::

            >>> import tempfile, torch, pyro_vae
            >>> vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
            >>> folder = vae.save(tempfile.mkdtemp() + "/vae")
            >>> again = pyro_vae.VAE.load(folder)
            >>> x = torch.rand(3, 1, 8, 8)
            >>> torch.equal(vae.reconstruct(x), again.reconstruct(x))
            True
        """
        return load_model(path, map_location=map_location, expected=cls, **overrides)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Build the model that :attr:`config` describes (untrained)."""
        for key in ("encoder", "decoder", "prior"):
            known = ("mlp", "conv") if key != "prior" else tuple(PRIORS)
            if isinstance(config.get(key), str) and config[key] not in known:
                raise ValueError(f"the saved model used a custom {key} ({config[key]}); pass a fresh instance: "
                                 f"{cls.__name__}.load(path, {key}=...)")
        return cls(**config)


#: the classes a saved folder may hold, by the name ``vae.json`` records (filled by :func:`register_model_class`:
#: the library's classes register when :mod:`pyro_vae.models` is imported, as ``pyro_vae.load`` does)
MODEL_CLASSES: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Class decorator: ``cls`` may be saved and loaded by name (``pyro_vae.load`` then rebuilds it).

    :returns: ``cls``.
    """
    MODEL_CLASSES[cls.__name__] = cls
    return cls

def save_model(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (a :class:`VAE`, :class:`HierarchicalVAE` or :class:`TwoStageVAE`) into the folder ``path``
    (created if needed): ``vae.json`` and ``weights.pt``, both atomically.

    :returns: the folder.
    """
    from ._version import __version__

    path = refuse_link(Path(path))
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"format": SAVE_FORMAT, "class": type(model).__name__, "config": model.config,
            "pyro_vae_version": __version__, "weights_sha256": tensor_checksum(weights)}
    try:
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ValueError(f"the model's configuration cannot be written as JSON ({e}); likelihood_options and "
                         "prior_options must hold plain numbers") from e
    atomic_save(weights, path / SAVE_WEIGHTS)
    atomic_write(path / SAVE_CONFIG, lambda f: f.write(text), binary=False)
    return path


def _check_shapes(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: Path | str) -> None:
    """Refuse ``state`` unless its tensors have exactly the names and shapes of ``module``'s (built on the ``meta``
    device, it costs no memory). ``what`` names the model and ``source`` the folder in the message."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if expected != saved:
        diff = sorted(set(expected.items()) ^ set(saved.items()))[:3]
        raise ValueError(f"the weights in {source} do not fit the {what} its configuration describes "
                         f"(first differences, name and shape: {diff}); a file was changed or they come from "
                         "different models")


def _meta_skeleton(cls: Any, config: dict[str, Any], source: Path | str) -> Any:
    """``cls`` built from ``config`` on the ``meta`` device (shapes, no memory), or None for a model that cannot
    be built there.

    :raises ValueError: when ``config`` does not describe a ``cls``.
    """
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the configuration in {source} does not describe a {cls.__name__} ({e})") from e
    except Exception:  # a module that cannot be built on the meta device: its shapes are checked after building
        return None


def build_checked(cls: Any, config: dict[str, Any], state: dict[str, torch.Tensor] | None, source: Path | str,
                  parts: dict[str, dict[str, torch.Tensor]] | None = None) -> Any:
    """Build ``cls`` from ``config`` after checking, on the ``meta`` device (no memory), that its parameters have
    the shapes of the saved weights ``state``: a tampered config cannot make the loader allocate what the weights
    do not hold. ``parts`` holds weights of sub-modules by attribute name (a two-stage run's ``stage1`` and
    ``stage2`` checkpoints), checked the same way; ``state`` may then be None. ``source`` names the folder in
    messages."""
    skeleton = _meta_skeleton(cls, config, source)
    if skeleton is not None:
        for part, weights in {**({"": state} if state is not None else {}), **(parts or {})}.items():
            _check_shapes(getattr(skeleton, part) if part else skeleton, weights,
                          f"{cls.__name__}{' ' + part if part else ''}", source)
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the configuration in {source} does not describe a {cls.__name__} ({e})") from e


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", expected: type | None = None,
               **overrides: Any) -> Any:
    """Rebuild a model written by :func:`save_model`, in eval mode.

    :param path: the folder.
    :param map_location: the device to put the model on.
    :param expected: refuse a folder that holds another class (``VAE.load`` passes ``VAE``).
    :param overrides: constructor arguments replacing the saved ones (a fresh custom encoder, say).
    :raises FileNotFoundError: if the folder or one of its files is missing.
    :raises ValueError: if the files are not what :func:`save_model` writes, or the weights do not fit.
    """
    path = Path(path)
    config_file, weights_file = path / SAVE_CONFIG, path / SAVE_WEIGHTS
    what = "model" if expected is None else expected.__name__
    if not path.is_dir():
        raise FileNotFoundError(f"no saved {what} at {path}: model.save(path) writes a folder with {SAVE_CONFIG} "
                                f"and {SAVE_WEIGHTS}")
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{path} is not a saved model: it has no {f.name} (model.save(path) writes it)")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SAVE_FORMAT or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{config_file} is not a saved pyro-vae {what} (expected format {SAVE_FORMAT!r})")
    cls = MODEL_CLASSES.get(meta.get("class", "VAE"))
    if cls is None:
        raise ValueError(f"{config_file} holds an unknown model class {meta.get('class')!r}; known: "
                         f"{sorted(MODEL_CLASSES)} (a class of your own registers with "
                         "pyro_vae.saving.register_model_class once its module is imported)")
    if expected is not None and not issubclass(cls, expected):
        raise ValueError(f"{path} holds a {cls.__name__}, not a {expected.__name__}: use pyro_vae.load(path)")
    if expected is not None and issubclass(expected, cls):
        cls = expected  # a subclass loading its own folder
    state = load_tensors(weights_file, "weights file")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{weights_file} does not hold a state dict of tensors")
    model = build_checked(cls, {**meta["config"], **overrides}, state, path)  # shapes first: the clearer message
    expected = meta.get("weights_sha256")
    if expected is not None and tensor_checksum(state) != expected:
        raise ValueError(f"{weights_file} is damaged: it does not match the checksum in {config_file} (a changed or "
                         "flipped byte); restore the folder from a copy")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the weights in {weights_file} do not fit the model of {config_file}: {e}") from e
    model.to(map_location)
    model.eval()
    return model

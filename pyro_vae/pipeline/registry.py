"""The registry of run kinds: each kind of run (a plain VAE, a hierarchical, a two-stage or a semi-supervised one,
or one of your own) is one recipe object registered here by name, the name a run's ``config.json`` stores as
``"class"`` and ``pyro-vae train --kind NAME`` selects. The recipes themselves live in
:mod:`pyro_vae.pipeline.kinds` (one file each); this module only holds the table, so the settings can look a kind
up without importing any recipe.

Adding a kind is one file: a subclass of :class:`~pyro_vae.pipeline.kinds.base.RunKind` decorated with
:func:`register_kind` (and its model class registered with :func:`pyro_vae.saving.register_model_class`, so a run
folder loads). Nothing else changes.
"""

from __future__ import annotations

import difflib
from typing import Any

__all__ = ["KINDS", "register_kind", "get_kind", "kind_names"]

#: the registered recipes by name, in the order they were registered
KINDS: dict[str, Any] = {}


def register_kind(cls: type) -> type:
    """Class decorator: register one instance of the recipe ``cls`` under ``cls.name``.

    :returns: ``cls``.
    :raises ValueError: when another recipe already holds the name.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a run kind needs a name (a non-empty string class attribute), {cls.__name__} has {name!r}")
    if name in KINDS and type(KINDS[name]) is not cls:
        raise ValueError(f"the run kind {name!r} is already registered (by {type(KINDS[name]).__name__})")
    KINDS[name] = cls()
    return cls


def get_kind(name: str) -> Any:
    """The recipe registered as ``name``.

    :raises ValueError: naming the known kinds (and the closest one) for an unknown name.
    """
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown run kind {name!r}{hint}; known: {', '.join(KINDS)} (a kind of your own registers "
                         "with pyro_vae.pipeline.register_kind once its module is imported)") from None


def kind_names() -> list[str]:
    """The registered kinds' names."""
    return list(KINDS)

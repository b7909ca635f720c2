"""Each model class's settings as a frozen dataclass, checked on creation: a bad size, name or combination is refused
here, with a message, before any network is built; ``to_dict()`` is what :func:`pyro_vae.saving.save_model` writes
(``vae.json``) and the class's ``config``.

A user's own module (an encoder, a decoder, a likelihood or a prior instance) is recorded by its class name; loading
such a model needs a fresh instance passed again (``VAE.load(path, encoder=MyEncoder())``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..guides import GUIDE_FLOWS

__all__ = ["sizes", "name_of", "VAEConfig", "HierarchicalConfig", "TwoStageConfig"]


def sizes(values: Any, name: str) -> tuple[int, ...]:
    """Whole positive sizes: an int, or a sequence (list, tuple, range, numpy array, tensor) of values equal to whole
    numbers >= 1; 2.7 or 16.5 is refused, not truncated.

    :returns: the sizes as a tuple of ints.
    :raises ValueError: naming ``name`` and the offending value.
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or getattr(values, "ndim", 1) == 0:
        values = (values,)  # one size (also a 0-d tensor or numpy scalar)
    values = tuple(values)
    out = []
    for v in values:
        try:
            whole = int(v)
            ok = not isinstance(v, bool) and whole == v and whole >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}" if len(values) == 1 else
                             f"{name} must be whole numbers >= 1, got {v!r} in {list(values)}")
        out.append(whole)
    return tuple(out)


def _shape(values: Any, name: str) -> tuple[int, ...]:
    if hasattr(values, "__len__") and len(values) == 0:
        raise ValueError(f"{name} must name at least one dimension, e.g. (784,) or (1, 28, 28); got {tuple(values)}")
    return sizes(values, name)


def name_of(component: Any) -> str:
    """A component's name in a saved configuration: the name it was given, or a user's instance's class name."""
    return component if isinstance(component, str) else type(component).__name__


def _options(options: Any, name: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"{name} must be a dict of keyword options, got {type(options).__name__}")
    return dict(options)


class _Config:
    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (tuples as lists), as saved."""
        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class VAEConfig(_Config):
    """The settings of a :class:`pyro_vae.VAE` (its constructor's arguments, components by name)."""

    input_shape: tuple[int, ...]
    latent_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    encoder: str = "mlp"
    decoder: str = "mlp"
    likelihood_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    prior: str = "normal"
    prior_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    guide_flow: str | None = None
    num_flows: int = 2
    condition_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "input_shape", _shape(self.input_shape, "input_shape"))
        (latent_dim,) = sizes(self.latent_dim, "latent_dim")
        put(self, "latent_dim", latent_dim)
        hidden = self.hidden_dims
        empty = hasattr(hidden, "__len__") and len(hidden) == 0
        put(self, "hidden_dims", () if empty else sizes(hidden, "hidden_dims"))
        put(self, "likelihood_options", _options(self.likelihood_options, "likelihood_options"))
        put(self, "prior_options", _options(self.prior_options, "prior_options"))
        if self.guide_flow not in GUIDE_FLOWS:
            raise ValueError(f"unknown guide_flow {self.guide_flow!r}; choose one of {list(GUIDE_FLOWS)}")
        if self.guide_flow is not None:  # without a flow the number is unused (0 was accepted and saved so)
            (num_flows,) = sizes(self.num_flows, "num_flows")
            put(self, "num_flows", num_flows)
        else:
            put(self, "num_flows", int(self.num_flows))
        if self.condition_shape is not None:
            put(self, "condition_shape", _shape(self.condition_shape, "condition_shape"))
            if self.encoder != "mlp" or self.decoder != "mlp":
                raise ValueError("a conditional VAE (condition_shape) takes the MLP encoder and decoder, which see y "
                                 "joined to their input; pass encoder='mlp', decoder='mlp'")
            if self.prior == "vamp":
                raise ValueError("the VampPrior's pseudo-inputs have no condition: use another prior with "
                                 "condition_shape")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["condition_shape"] is None:  # written only for a conditional VAE (older files lack the key)
            del out["condition_shape"]
        return out


@dataclasses.dataclass(frozen=True)
class HierarchicalConfig(_Config):
    """The settings of a :class:`pyro_vae.HierarchicalVAE`."""

    input_shape: tuple[int, ...]
    layers: tuple[tuple[int, ...], ...] = ((200, 200, 100), (100, 100, 50))
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    likelihood_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    prior: str = "normal"
    prior_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "input_shape", _shape(self.input_shape, "input_shape"))
        try:
            layers = tuple(sizes(layer, "layers") for layer in self.layers)
        except TypeError:
            layers = ()
        if not layers:
            raise ValueError(f"layers must be a non-empty list of (*hidden_dims, latent_dim) tuples of positive "
                             f"sizes, got {self.layers!r}")
        put(self, "layers", layers)
        put(self, "likelihood_options", _options(self.likelihood_options, "likelihood_options"))
        put(self, "prior_options", _options(self.prior_options, "prior_options"))
        if self.prior == "vamp":
            raise ValueError("the VampPrior needs the guide of the top layer from x in one step; a HierarchicalVAE's "
                             "top layer is reached through the stack: use 'normal', 'mixture' or 'flow'")


@dataclasses.dataclass(frozen=True)
class TwoStageConfig(_Config):
    """The settings of a :class:`pyro_vae.TwoStageVAE` (stored once: stage 1's and stage 2's VAEs are built
    from them)."""

    input_shape: tuple[int, ...]
    latent_dim: int = 16
    hidden_dims: tuple[int, ...] = (512, 512)
    stage2_hidden_dims: tuple[int, ...] = (512, 512)
    activation: str = "relu"
    encoder: str = "mlp"
    decoder: str = "mlp"
    stage1_likelihood: str = "normal-gamma"
    stage2_likelihood: str = "normal-gamma"
    stage2_gamma: float = 0.01

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "input_shape", _shape(self.input_shape, "input_shape"))
        (latent_dim,) = sizes(self.latent_dim, "latent_dim")
        put(self, "latent_dim", latent_dim)
        put(self, "hidden_dims", sizes(self.hidden_dims, "hidden_dims"))
        put(self, "stage2_hidden_dims", sizes(self.stage2_hidden_dims, "stage2_hidden_dims"))
        gamma = self.stage2_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"stage2_gamma must be a finite number > 0, got {gamma!r}")
        put(self, "stage2_gamma", float(gamma))

    @classmethod
    def from_saved(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The constructor's arguments from a saved configuration; also one of version 0.1 (only ``stage1`` and
        ``stage2``, each a VAE's config) and one that repeats them beside its own settings."""
        c = dict(config)
        s1, s2 = c.pop("stage1", None), c.pop("stage2", None)
        if "input_shape" not in c and isinstance(s1, dict) and isinstance(s2, dict):
            c = {"input_shape": s1["input_shape"], "latent_dim": s1["latent_dim"], "hidden_dims": s1["hidden_dims"],
                 "stage2_hidden_dims": s2["hidden_dims"], "activation": s1["activation"], "encoder": s1["encoder"],
                 "decoder": s1["decoder"], "stage1_likelihood": s1["likelihood"],
                 "stage2_likelihood": s2["likelihood"]}
        return c


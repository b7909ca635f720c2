"""Checks of option values shared across the package (a leaf module: it imports nothing from pyro_vae).

:func:`whole_number` is the one check of an integer option: a float, tensor or numpy value equal to a whole
number is accepted, a fraction (``2.7``), a boolean or a non-number is refused with a message naming the
option, never truncated.
"""

from __future__ import annotations

from typing import Any

__all__ = ["whole_number"]


def whole_number(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number in ``[low, high]``, else a :class:`ValueError`.

    :param value: an ``int``, or a float, 0-d tensor or numpy scalar equal to one; ``True``/``False`` are refused.
    :param name: the option's name, for the message.
    :param low: the smallest value allowed.
    :param high: the largest value allowed (None: no upper limit).
    :returns: ``int(value)``.
    :raises ValueError: for a fraction, a boolean, a non-number or a value out of range.
    """
    try:
        whole = int(value)
        ok = not isinstance(value, bool) and whole == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok and whole >= low and (high is None or whole <= high):
        return whole
    bounds = f">= {low}" if high is None else f"between {low} and {high}"
    raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")

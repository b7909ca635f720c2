"""The package version (a leaf: every module may import it)."""

__version__ = "0.2.0"

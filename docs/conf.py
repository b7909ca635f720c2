"""Sphinx configuration of the pyro-vae documentation (``make -C docs html``; warnings are errors in CI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_vae  # noqa: E402

project = "pyro-vae"
author = "the pyro-vae developers"
copyright = "2026, the pyro-vae developers"
release = version = pyro_vae.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax bundled into _static: the math renders without a network
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]

# markdown: $...$ and $$...$$ math, ::: fences, heading anchors for cross-page links
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
nitpicky = False

html_theme = "furo"  # maintained, readable code blocks that scroll instead of overflowing
html_static_path = ["_static"]
html_css_files = ["custom.css"]  # long code lines wrap instead of being cut off
html_title = f"pyro-vae {release}"

doctest_global_setup = """
import torch, pyro
pyro.set_rng_seed(0)
"""


# ---------------------------------------------------------------------------------------------------------------
# docs/results.md is written by another script and may not exist yet: list it in index.rst's last toctree when it does
OPTIONAL_PAGES = ("results",)


def _add_optional_pages(app, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    present = "".join(f"   {name}\n" for name in OPTIONAL_PAGES if (Path(app.srcdir) / f"{name}.md").is_file())
    source[0] = source[0].replace("   benchmarks\n", "   benchmarks\n" + present, 1)


def setup(app) -> None:
    app.connect("source-read", _add_optional_pages)

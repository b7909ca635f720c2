"""The documentation pages as a reader meets them (issue 23): commands quote the project's data folder, not a
path of the machine they ran on; math is typeset; long code lines wrap instead of being cut off."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [REPO / "README.md"]


def test_no_page_quotes_an_absolute_data_path_of_another_machine() -> None:
    for page in PAGES:
        text = page.read_text()
        # (a cluster's shared folder in the SLURM template of distributed.md is meant to be absolute)
        bad = re.findall(r"(?<![\w.])/(?:work|home|root|tmp)/\S+", text)
        assert not bad, f"{page.name} quotes {bad[:3]}: write ../shared/data"
    assert "PYRO_VAE_DATA=../shared/data" in (DOCS / "results.md").read_text()


def test_the_learning_rate_schedule_is_math() -> None:
    text = (DOCS / "results.md").read_text()
    assert "$3^i$" in text and "$10^{-3} \\cdot 10^{-i/7}$" in text
    assert "3^*i*" not in text and "10^(" not in text


def test_long_code_lines_wrap() -> None:
    import importlib
    import sys

    sys.path.insert(0, str(DOCS))
    try:
        conf = importlib.import_module("conf")
    finally:
        sys.path.remove(str(DOCS))
    assert "_static" in conf.html_static_path and "custom.css" in conf.html_css_files
    css = (DOCS / "_static" / "custom.css").read_text()
    assert re.search(r"div\.highlight pre[^{]*\{[^}]*white-space:\s*pre-wrap", css)

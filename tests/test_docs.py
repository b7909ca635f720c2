"""The documentation: docstring examples run as doctests, every example and figure is in the docs, the pages are
all reachable.

The Sphinx build itself (``make -C docs html``, warnings as errors) runs in CI (``.ci/run``) before the tests,
which check the pages it built (the ``slow`` test below builds them itself when run without CI's build).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import pyro_vae

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def _modules() -> list[str]:
    names = ["pyro_vae"]
    for info in pkgutil.walk_packages(pyro_vae.__path__, "pyro_vae."):
        names.append(info.name)
    return sorted(names)


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module) if t.examples]
    return tests


DOCTESTS = _doctests()


def test_there_are_docstring_examples() -> None:
    names = {t.name for t in DOCTESTS}
    assert "pyro_vae.models.vae.VAE" in names and "pyro_vae.saving.Saveable.load" in names
    assert "pyro_vae.runs.load" in names
    assert "pyro_vae.infer.arviz.to_inference_data" in names


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test: doctest.DocTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyro

    monkeypatch.chdir(tmp_path)
    pyro.set_rng_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append, clear_globs=True)
    assert runner.failures == 0, "".join(out)


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def test_every_example_is_in_the_docs_with_its_output() -> None:
    page = _page("examples.md")
    for script in EXAMPLES:
        assert f"../examples/{script.name}" in page, f"docs/examples.md does not show examples/{script.name}"
        output = DOCS / "examples" / f"{script.stem}.txt"
        assert f"examples/{script.stem}.txt" in page, f"docs/examples.md does not include {output.name}"
        assert output.is_file() and output.read_text().strip(), (
            f"{output} is missing or empty: run python docs/run_examples.py")
        assert "Traceback" not in output.read_text()


def test_every_plot_figure_of_both_runs_is_in_the_docs() -> None:
    from pyro_vae.plots import RUN_FIGURES

    page = _page("figures.md")
    for run in ("digits", "mnist"):
        for name in RUN_FIGURES:
            path = DOCS / "figures" / run / name
            assert path.is_file(), f"{path} is missing: run bash docs/make_figures.sh"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"figures/{run}/{name}" in page, f"docs/figures.md does not show {run}/{name}"
    for ref in re.findall(r"\]\((figures/[^)]+\.png)\)", page):
        assert (DOCS / ref).is_file(), f"docs/figures.md shows {ref}, which does not exist"


def _conf():
    sys.path.insert(0, str(DOCS))
    try:
        return importlib.import_module("conf")
    finally:
        sys.path.remove(str(DOCS))


def test_every_page_is_in_a_toctree() -> None:
    conf = _conf()
    index = _page("index.rst")
    for page in sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("*.rst")):
        if page.stem == "index":
            continue
        assert re.search(rf"^\s+{re.escape(page.stem)}$", index, re.MULTILINE) or page.stem in conf.OPTIONAL_PAGES, (
            f"{page.name} is in no toctree of index.rst")


def test_every_module_is_in_the_api_reference() -> None:
    api = _page("api.rst")
    for name in _modules():
        if name in ("pyro_vae", "pyro_vae.infer", "pyro_vae._version") or name.endswith("__main__"):
            continue
        assert f".. automodule:: {name}\n" in api, f"docs/api.rst has no '.. automodule:: {name}'"


def test_theory_page_covers_the_issue() -> None:
    theory = _page("theory.md")
    for heading in ("The evidence lower bound, derived twice", "The reparameterization trick",
                    "why it tightens with K", "Dai & Wipf", "two-stage VAE"):
        assert heading in theory
    assert theory.count("$$") >= 20  # the math is there, not only words




@pytest.mark.slow
def test_the_built_html_renders_math_without_a_network(tmp_path: Path) -> None:
    """MathJax is bundled (sphinx-mathjax-offline): no page of the built documentation loads it from a CDN.

    CI builds the documentation once (``make -C docs html`` in ``.ci/run``) and names the build in
    ``PYRO_VAE_DOCS_HTML``: this test then reads that build; without it, it builds the pages itself."""
    html = Path(os.environ["PYRO_VAE_DOCS_HTML"]) if os.environ.get("PYRO_VAE_DOCS_HTML") else tmp_path / "html"
    if not os.environ.get("PYRO_VAE_DOCS_HTML"):
        pytest.importorskip("sphinx")
        pytest.importorskip("sphinx-mathjax-offline")
        import subprocess

        proc = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(DOCS), str(html)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    pages = list(html.glob("*.html"))
    assert pages and (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    for page in pages:
        text = page.read_text()
        assert "cdn.jsdelivr" not in text and "cdnjs" not in text, page.name
    assert "_static/mathjax/tex-chtml.js" in (html / "theory.html").read_text()


def test_reliability_counts_are_the_rows_of_the_table_and_every_row_names_a_test() -> None:
    """docs/reliability.md's counts for issue 15 were once wrong (26 said, a different number listed)."""
    import re

    text = (DOCS / "reliability.md").read_text()
    section = text[text.index("### Found by trying the project"):text.index("## 2.")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| kind")]
    tried, refused, survived = map(int, re.search(r"Counts: (\d+) inputs or faults\s+tried; (\d+) now refused.*?"
                                                  r"(\d+) survived", section, re.S).groups())
    assert len(rows) == tried == refused + survived
    last_cells = [row.rstrip(" |").rsplit("|", 1)[-1].strip() for row in rows]
    untested = [row[:60] for row, cell in zip(rows, last_cells) if "test_" not in cell and cell != "same"]
    assert not untested, untested  # each row names its test ("same": the test of the row above)


def test_docstring_fields_start_their_own_line():
    """``:returns:`` or ``:raises`` after other text on a line is not a field: Sphinx printed it as text and the
    return shape vanished from the API page (16 docstrings did so)."""
    import re
    from pathlib import Path

    bad = []
    for path in sorted((Path(__file__).resolve().parents[1] / "pyro_vae").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\S.*\s:(returns|raises)\b", line) and not line.lstrip().startswith(('"""', ":")):
                bad.append(f"{path.name}:{number}")
            elif re.search(r":param [^:]+:.*\s:(returns|raises)\b", line):
                bad.append(f"{path.name}:{number}")
    assert not bad, bad

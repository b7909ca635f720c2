"""Every example as a new user first runs it: ``--smoke-test`` with no data folder (no ``--data-root``, no
``PYRO_VAE_DATA``; ``tests/conftest.py`` sets the variable for the other tests, so it is removed here).

An example that reads data files ends with one line saying how to point at them (exit status 2, no traceback);
one on scikit-learn's digits or a toy set runs to the end. New scripts are picked up by the glob.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
#: examples whose smoke test reads MNIST files, and those that need none (digits, the ring toy set)
NEEDS_FILES = {"vae", "cvae"}
NEEDS_NONE = {"custom_model", "elbo_vs_iwae", "sandwich", "train_ddp"}


def _run(script: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYRO_VAE_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(script), "--smoke-test", *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_lists_name_existing_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert NEEDS_FILES | NEEDS_NONE <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_takes_data_root(script: Path) -> None:
    assert '"--data-root"' in script.read_text(), f"{script.name} has no --data-root option"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_smoke_test_without_a_data_folder(script: Path, tmp_path: Path) -> None:
    proc = _run(script, tmp_path)
    if script.stem in NEEDS_NONE or (script.stem not in NEEDS_FILES and proc.returncode == 0):
        assert proc.returncode == 0, f"{script.name} --smoke-test failed without data:\n{proc.stderr[-3000:]}"
        assert proc.stdout.strip()
        # nothing lands in the current folder itself: outputs go under runs/ (ignored by git) or --out
        assert {p.name for p in tmp_path.iterdir()} <= {"runs"}, sorted(p.name for p in tmp_path.iterdir())
        if script.stem == "elbo_vs_iwae":  # it wrote into the current folder before (without --out)
            written = {p.name for p in (tmp_path / "runs" / "elbo_vs_iwae-smoke").iterdir()}
            assert written == {"k_curve.png", "gaps.png", "elbo_vs_iwae.json"}
        return
    assert proc.returncode == 2, f"{script.name}: status {proc.returncode}\n{proc.stderr[-3000:]}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith(f"{script.name}: error: ")
    assert "--data-root" in lines[0] and "PYRO_VAE_DATA" in lines[0]


def test_a_data_root_without_the_files_names_the_missing_file(tmp_path: Path) -> None:
    """``--data-root`` pointing at an empty folder: the missing file and the folder are named, still no traceback."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(REPO / "examples" / "cvae.py", tmp_path, "--data-root", str(empty))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "mnist" in proc.stderr and str(empty) in proc.stderr


def test_cvae_cites_sohn_et_al() -> None:
    text = (REPO / "examples" / "cvae.py").read_text()
    assert "Sohn" in text and "2015" in text and "seed notes" not in text

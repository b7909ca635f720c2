"""Every script in ``examples/`` runs with ``--smoke-test`` (so that none can rot).

New scripts are picked up by the glob. The MNIST examples read the real files in ``../shared/data`` (or
``$PYRO_VAE_DATA``); without them the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
DATA = Path(os.environ["PYRO_VAE_DATA"]) if os.environ.get("PYRO_VAE_DATA") else REPO.parent / "shared" / "data"


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"vae.py", "custom_model.py"}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_smoke_test(script: Path, tmp_path: Path) -> None:
    if not DATA.is_dir():
        pytest.skip(f"the data folder {DATA} is missing (set PYRO_VAE_DATA to the folder of shared/data)")
    env = dict(os.environ)
    env["PYRO_VAE_DATA"] = str(DATA)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    # the smoke tests use tiny nets: one thread each keeps them fast when other processes share the cores
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, str(script), "--smoke-test"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script.name} --smoke-test failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script.name} printed nothing"

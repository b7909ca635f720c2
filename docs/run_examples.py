"""Run every script in ``examples/`` with ``--smoke-test`` and store its output in ``docs/examples/<name>.txt``.

Usage: ``python docs/run_examples.py`` (reads the MNIST files from ``$PYRO_VAE_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("PYRO_VAE_DATA", str(REPO.parent / "shared" / "data"))
    out_dir = REPO / "docs" / "examples"
    out_dir.mkdir(exist_ok=True)
    status = 0
    for script in sorted((REPO / "examples").glob("*.py")):
        with tempfile.TemporaryDirectory() as cwd:
            proc = subprocess.run([sys.executable, str(script), "--smoke-test"], cwd=cwd, env=env,
                                  capture_output=True, text=True)
        text = proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr
        (out_dir / f"{script.stem}.txt").write_text(text)
        print(f"{script.name}: exit {proc.returncode}, {len(text.splitlines())} lines")
        status |= proc.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())

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


@pytest.mark.slow  # four runs of the script, each importing torch and Pyro afresh
def test_ddp_example_takes_the_cli_spellings(tmp_path: Path) -> None:
    """examples/train_ddp.py spells its options as ``pyro-vae train`` does: ``--hidden-dims 64,32``, ``--out`` and
    ``--resume``; a second run into a folder with a checkpoint needs ``--resume``, which continues it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
               OMP_NUM_THREADS="1", PYRO_VAE_DATA=str(DATA))
    script = str(REPO / "examples" / "train_ddp.py")
    out = tmp_path / "run"
    common = ["--dataset", "digits", "--hidden-dims", "64,32", "--latent-dim", "4", "--num-particles", "5",
              "--device", "cpu", "--out", str(out)]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, *common, *extra], env=env, capture_output=True, text=True,
                              timeout=300)

    first = run("--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 epochs on digits" in first.stdout
    import torch

    weights = torch.load(out / "checkpoint.pt", weights_only=False)["pair"]["module"]
    assert tuple(weights["encoder.net.0.weight"].shape) == (64, 64)  # 8x8 digits -> 64 -> 32 -> 2 x 4
    assert tuple(weights["encoder.net.2.weight"].shape) == (32, 64)
    again = run("--epochs", "2")
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = run("--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 epochs on digits" in resumed.stdout
    # the older spelling --checkpoint-dir still means "--out DIR --resume" (restart scripts kept working)
    old = subprocess.run([sys.executable, script, *common[:-2], "--checkpoint-dir", str(out), "--epochs", "3"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert old.returncode == 0 and "3 epochs on digits" in old.stdout, old.stderr[-2000:]
    bad = subprocess.run([sys.executable, script, "--hidden-dims", "64,x"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "comma-separated" in bad.stderr

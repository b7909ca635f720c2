"""Shared fixtures: seeding and a clean param store for every test, a device fixture, the data folder; the helpers
many test files use (``run_cli``, ``digits``, ``small_vae``); and trained run folders made once per session, which
tests copy (``copy_run``) instead of each training its own."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pytest
import torch

DATA_ROOT = Path(os.environ.get("PYRO_VAE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
if DATA_ROOT.is_dir():
    os.environ.setdefault("PYRO_VAE_DATA", str(DATA_ROOT))  # the data sets' loaders (and subprocesses) find it
# the scripts, examples and commands that tests start run one intra-op thread, as the tests themselves do (see
# _one_thread): on a busy machine two threads per process made them several times slower. Set it to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One intra-op thread: the suite's models are tiny, so one thread is as fast on an idle machine and far faster
    on a busy one (two threads fighting another process for the cores collapse). ``fit``'s default
    (``num_threads="auto"``, the free cores) sees one free core too, so no result depends on the machine's load.
    A test may set its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("pyro_vae.threads.free_cores", lambda: 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(request.param)


@pytest.fixture(scope="session")
def benchmark_module() -> Callable[[str], Any]:
    """``load(name)``: a script of ``benchmarks/`` imported as a module (its folder on the path while it loads, as
    ``python benchmarks/NAME.py`` has it, so its own imports of ``common`` and the other scripts work)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str) -> Any:
        sys.path.insert(0, str(bench))
        try:
            spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(bench))
        return module
    return load


@pytest.fixture
def data_root():
    if not (DATA_ROOT / "mnist").is_dir():
        pytest.skip(f"data folder {DATA_ROOT} not found (set PYRO_VAE_DATA)")
    return DATA_ROOT


def _run_cli(argv: list) -> tuple[int, str, str]:
    """``pyro_vae.cli.main(argv)`` (arguments made strings) with stdout and stderr captured:
    ``(exit status, stdout, stderr)``."""
    from pyro_vae.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def run_cli() -> Callable[[list], tuple[int, str, str]]:
    """The command line called in this process: ``run_cli(argv) -> (exit status, stdout, stderr)``."""
    return _run_cli


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    """scikit-learn's digits, ``(1797, 1, 8, 8)`` in [0, 1], loaded once (tests only read it)."""
    import pyro_vae

    return pyro_vae.datasets.load("digits")


@pytest.fixture(scope="session")
def small_vae() -> Callable[..., torch.nn.Module]:
    """``small_vae(**kw)``: a new small VAE for the 8x8 digits (latent 4, one hidden layer of 32)."""
    import pyro_vae

    def make(**kw):
        return pyro_vae.VAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), **kw)

    return make


# the run folders `pyro-vae train` writes, one per kind of model, trained once per session; copy_run copies one
TRAINED_RUNS = {
    "vae": ["--epochs", "1"],
    "layers": ["--layers", "32,8;16,4", "--epochs", "1"],
    "two-stage": ["--two-stage", "--epochs", "1", "--stage2-epochs", "1"],
}


@pytest.fixture(scope="session")
def _trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"trained-{kind}") / "run"
            states = random.getstate(), np.random.get_state()
            with torch.random.fork_rng():  # the session's run leaves the random state of the test that asked alone
                code, _, err = _run_cli(["train", *TRAINED_RUNS[kind], "--out", folder, "--no-progress"])
            random.setstate(states[0])
            np.random.set_state(states[1])
            assert code == 0, err
            made[kind] = folder
        return made[kind]

    return get


@pytest.fixture
def copy_run(_trained_runs: Callable[[str], Path]) -> Callable[..., Path]:
    """``copy_run(dest, kind="vae")``: a copy at ``dest`` of the run folder of ``pyro-vae train --no-progress`` with
    the options ``TRAINED_RUNS[kind]`` (digits, 1 epoch), trained once per session; returns ``dest``."""

    def copy(dest: Path, kind: str = "vae") -> Path:
        shutil.copytree(_trained_runs(kind), dest, symlinks=True)
        return dest

    return copy

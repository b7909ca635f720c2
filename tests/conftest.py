"""Shared fixtures: seeding and a clean param store for every test, a device fixture, the data folder."""

import os
from pathlib import Path

import pyro
import pytest
import torch

DATA_ROOT = Path(os.environ.get("PYRO_VAE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
if DATA_ROOT.is_dir():
    os.environ.setdefault("PYRO_VAE_DATA", str(DATA_ROOT))  # the data sets' loaders (and subprocesses) find it


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(request.param)


@pytest.fixture
def data_root():
    if not (DATA_ROOT / "mnist").is_dir():
        pytest.skip(f"data folder {DATA_ROOT} not found (set PYRO_VAE_DATA)")
    return DATA_ROOT

"""Device discipline without a GPU: every model, trained and evaluated end to end in float64.

A tensor made inside a model, guide, prior, flow or estimator that does not take its dtype and device from its
input (``torch.zeros(n)``, ``torch.tensor(0.5)``, a float32 buffer) breaks on CUDA exactly as it breaks here in
float64: it mixes with the float64 data and either raises (a matmul of float32 and float64) or silently returns
float32 values. So each configuration is built, cast with ``.double()``, given float64 digits, trained by ``fit``
and scored by every estimator, and every output must be float64 and finite. With CUDA (the ``device`` fixture's
``cuda`` case, skipped here) the same runs on the GPU, every output on it.

Type promotion would hide most such tensors (float32 + float64 is float64; on CUDA a CPU tensor + a CUDA tensor
raises), so every test runs under :class:`MixedDtypes`, a ``TorchFunctionMode`` that records each torch call
mixing floating tensors of different dtypes (0-d tensors aside: those mix across devices too) and fails the test
with the call and the line of the library that made it.
"""

import math
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import pyro_vae
from pyro_vae import infer
from pyro_vae.datasets import load

CONFIGS = [
    {},
    {"prior": "mixture", "prior_options": {"num_components": 3}},
    {"prior": "vamp", "prior_options": {"num_components": 3}},
    {"prior": "flow", "prior_options": {"num_flows": 1}},
    {"guide_flow": "iaf", "num_flows": 1},
    {"guide_flow": "spline", "num_flows": 1},
    {"likelihood": "normal"},
]


#: Pyro's own files that make float32 tensors on the input's device (so not a CUDA failure): the rational
#: spline's masks (``(inputs <= yc).float()``) and the autoregressive inverse's start
#: (``torch.zeros(x_size, device=y.device)``, pyro 1.9.2 ``affine_autoregressive.py``); not the library's to fix
UPSTREAM = ("pyro/distributions/transforms/spline.py", "pyro/distributions/transforms/affine_autoregressive.py",
            "pyro/nn/auto_reg_nn.py")


class MixedDtypes(TorchFunctionMode):
    """Record every torch call whose floating tensor arguments (of one dimension or more) differ in dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtypes = {t.dtype for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0}
        if len(dtypes) > 1:
            stack = traceback.extract_stack()[:-1]
            ours = [f for f in stack if "/pyro_vae/" in f.filename]
            pyro_frames = [f for f in stack if "/pyro/" in f.filename]
            upstream = pyro_frames and any(pyro_frames[-1].filename.endswith(u) for u in UPSTREAM)
            if ours and not upstream:  # calls with no frame of the library are the test's own (.double())
                inner = [f for f in stack if "/torch/" not in f.filename][-1]
                self.calls.append(f"{getattr(func, '__name__', func)} of {sorted(map(str, dtypes))} at "
                                  f"{ours[-1].filename}:{ours[-1].lineno} (innermost {inner.filename}:{inner.lineno})")
        return func(*args, **kwargs)


@pytest.fixture(autouse=True)
def no_mixed_dtypes():
    mode = MixedDtypes()
    with mode:
        yield
    assert not mode.calls, "tensors of another dtype met the float64 model's:\n" + "\n".join(sorted(set(mode.calls)))


@pytest.fixture(scope="module")
def digits64() -> torch.Tensor:
    return load("digits", "train", num_samples=40).double().round()


def _assert_float64(name: str, *tensors: torch.Tensor, device: torch.device | None = None) -> None:
    for t in tensors:
        assert t.dtype == torch.float64, f"{name}: {t.dtype}"
        assert device is None or t.device.type == device.type, f"{name}: on {t.device}, not {device}"
        assert bool(torch.isfinite(t).all()), f"{name}: non-finite values"


def _check_model(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> None:
    """fit, then every estimator; all outputs float64, finite and on ``device`` (``log_likelihood`` and AIS over a
    data set return theirs on the CPU by design), the parameters still float64."""
    model.to(device)
    x = x.to(device)
    history = pyro_vae.fit(model, x, epochs=1, batch_size=20, seed=0, progress=False, device=device)
    assert math.isfinite(history[-1]["loss"])
    assert all(p.dtype == torch.float64 for p in model.parameters())
    batch = x[:6]
    _assert_float64("log_importance_weights",
                    infer.log_importance_weights(model.model, model.guide, batch, num_particles=3), device=device)
    _assert_float64("elbo", infer.elbo(model.model, model.guide, batch, num_particles=2), device=device)
    _assert_float64("iwae_bound", infer.iwae_bound(model.model, model.guide, batch, num_particles=7, chunk_size=3),
                    device=device)
    res = infer.log_likelihood(model.model, model.guide, x[:10], num_particles=8, batch_size=5, progress=False,
                               diagnostics=False)
    _assert_float64("log_likelihood", res.values, res.elbo, res.rate, res.distortion, res.ess)
    a = infer.ais(model.model, model.guide, batch, num_chains=2, num_steps=3, num_leapfrog=2, seed=0)
    _assert_float64("ais", a.values, a.log_weights, a.step_size, a.acceptance_rate, device=device)
    b = infer.bdmc(model.model, model.guide, batch, num_chains=2, num_steps=3, num_leapfrog=2, seed=0)
    _assert_float64("bdmc", b.lower, b.upper, b.x, device=device)
    al = infer.ais_log_likelihood(model.model, model.guide, x[:6], batch_size=3, num_chains=2, num_steps=2,
                                  num_leapfrog=1, seed=0)
    assert al.values.shape == (6,) and al.values.dtype == torch.float64
    log_w, log_lik, draws = infer.importance_draws(model.model, model.guide, batch, 4)
    _assert_float64("importance_draws", log_w, log_lik, *draws.values(), device=device)
    usage = infer.latent_usage(model.model, model.guide, x[:12], batch_size=6, num_mi_datapoints=8, seed=0)
    assert all(math.isfinite(u["mutual_information"] or 0.0) for u in usage.values())


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()
                                                                      if k in ("prior", "guide_flow", "likelihood"))
                         or "default")
def test_vae_in_float64_end_to_end(options: dict, digits64: torch.Tensor, device: torch.device) -> None:
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,), **options).double()
    _check_model(vae, digits64, device)
    _assert_float64("sample", vae.sample(3), device=device)
    _assert_float64("reconstruct", vae.reconstruct(digits64[:3].to(device)), device=device)


def test_hierarchical_vae_in_float64_end_to_end(digits64: torch.Tensor, device: torch.device) -> None:
    vae = pyro_vae.HierarchicalVAE((1, 8, 8), layers=((8, 4), (4, 2))).double()
    _check_model(vae, digits64, device)
    _assert_float64("sample", vae.sample(3), device=device)


def test_conditional_vae_in_float64(digits64: torch.Tensor, device: torch.device) -> None:
    digits64 = digits64.to(device)
    y = torch.nn.functional.one_hot(torch.arange(digits64.shape[0], device=device) % 3, 3).double()
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,), condition_shape=(3,)).double().to(device)
    pyro_vae.fit(vae, digits64, epochs=1, batch_size=20, seed=0, progress=False, device=device, condition=y)
    res = infer.log_likelihood(vae.model, vae.guide, digits64[:8], num_particles=4, batch_size=4, progress=False,
                               diagnostics=False, condition=y[:8])
    _assert_float64("log_likelihood(condition=y)", res.values)
    usage = infer.latent_usage(vae.model, vae.guide, digits64[:8], y[:8], batch_size=4, num_mi_datapoints=8)
    assert usage["z"]["dimensions"] == 2


def test_float32_data_meet_a_float64_model_with_a_clear_error(digits64: torch.Tensor) -> None:
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,)).double()
    with pytest.raises(TypeError, match="float32"):
        infer.iwae_bound(vae.model, vae.guide, digits64[:4].float(), num_particles=2)


def test_a_float32_dataset_is_scored_in_a_float64_models_dtype(digits64: torch.Tensor) -> None:
    """log_likelihood casts a Dataset's batches to the model's dtype, as it casts a tensor's: the same estimate."""
    vae = pyro_vae.VAE((1, 8, 8), latent_dim=2, hidden_dims=(8,)).double()
    data = digits64[:6]
    as_tensor = infer.log_likelihood(vae.model, vae.guide, data.float(), num_particles=4, batch_size=3, seed=0,
                                     progress=False, diagnostics=False)
    as_dataset = infer.log_likelihood(vae.model, vae.guide, torch.utils.data.TensorDataset(data.float()),
                                      collate_fn=lambda items: torch.stack([x for (x,) in items]), num_particles=4,
                                      batch_size=3, seed=0, progress=False, diagnostics=False)
    _assert_float64("log_likelihood(Dataset)", as_dataset.values)
    assert torch.equal(as_dataset.values, as_tensor.values)

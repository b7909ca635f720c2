"""Where a training step's time goes: a user's own Pyro pair through the engine, against hand-written PyTorch.

One batch of binarized MNIST through the IWAE paper's one-layer network (784-200-200-50, tanh), timed in
microseconds per call (the minimum over repeats, the variants taking turns): the forward loss alone, and
forward plus backward, for

- ``reference``: the hand-written loss of ``benchmarks/train_mnist.py`` (``ReferenceVAE.elbo``);
- ``engine``: ``objectives.elbo`` on ``terms_producer`` of a user's pair (``UserPair``), distributions not
  validated (what ``fit`` does after its first step);
- ``engine, validated``: the same with Pyro's argument validation on (what every step cost before);
- ``Trace_ELBO``: Pyro's ``Trace_ELBO().differentiable_loss`` of the same pair, validation off (the path
  ``fit`` took for user pairs before the engine);
- ``library VAE``: ``objectives.elbo`` on ``pyro_vae.VAE``'s own producer of its terms;
- ``Pyro floor``: the least any engine on Pyro's primitives can do with the user's pair: the guide and then the
  model run under one bare handler that records the sites and replays the guide's values, and the sum of the
  sites' ``log_prob`` (:func:`floor_loss`). Its distance to ``reference`` is what Pyro's own machinery (the
  plates, the messages of ``pyro.module``/``pyro.sample``, the distribution objects) costs a step, whatever the
  engine; its distance to ``engine`` is the engine's own share.

Then ``cProfile``'s top functions of the engine's forward pass, and its time summed by layer (torch's kernels,
torch's Python, Pyro's handlers, the engine, the user's code). ``--write-docs`` records it in
``docs/benchmarks.md``.

Usage::

    python benchmarks/profile_step.py --smoke-test
    python benchmarks/profile_step.py --batch-size 100 --write-docs
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import timeit
from typing import Any, Callable

import pyro
import torch
from common import REPO_ROOT, command_line, machine_info, machine_markdown, markdown_table, update_section, utc_date
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from train_mnist import HIDDEN_DIMS, INPUT_DIM, LATENT_DIM, ReferenceVAE, UserPair

import pyro_vae
from pyro_vae.infer.objectives import elbo
from pyro_vae.infer.weights import terms_producer

BENCHMARK = "profile_step"


class _Floor(Messenger):
    """The barest handler a Pyro engine needs: record the sample sites, replay the given latent values."""

    def __init__(self, replay: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.sites: list[dict] = []
        self.replay = replay

    def _pyro_sample(self, msg: dict) -> None:
        if self.replay is not None and not msg["is_observed"] and msg["name"] in self.replay:
            msg["value"] = self.replay[msg["name"]]
            msg["done"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        if not site_is_subsample(msg):
            self.sites.append(msg)


def floor_loss(model: Callable, guide: Callable, x: torch.Tensor) -> torch.Tensor:
    """The single-particle ELBO loss of a pair with nothing but Pyro's primitives and one bare handler (no checks,
    no per-datapoint terms, no scales, masks or enumeration): a lower bound on any engine's cost."""
    with _Floor() as g:
        guide(x)
    with _Floor({s["name"]: s["value"] for s in g.sites if not s["is_observed"]}) as m:
        model(x)
    log_p = sum(s["fn"].log_prob(s["value"]).sum() for s in m.sites)
    log_q = sum(s["fn"].log_prob(s["value"]).sum() for s in g.sites)
    return log_q - log_p


def variants(x: torch.Tensor, seed: int) -> dict[str, tuple[Callable[[], torch.Tensor], list[torch.Tensor], bool]]:
    """name -> (loss function, its parameters, validate)."""
    torch.manual_seed(seed)
    ref = ReferenceVAE()
    torch.manual_seed(seed)
    pair = UserPair()
    torch.manual_seed(seed)
    vae = pyro_vae.VAE((INPUT_DIM,), latent_dim=LATENT_DIM, hidden_dims=HIDDEN_DIMS)
    engine = lambda: elbo(terms_producer(pair.model, pair.guide, x, max_plate_nesting=1))  # noqa: E731
    trace_elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    return {
        "reference": (lambda: -ref.elbo(x).sum(), list(ref.parameters()), False),
        "engine": (engine, list(pair.parameters()), False),
        "engine, validated": (engine, list(pair.parameters()), True),
        "Trace_ELBO": (lambda: trace_elbo.differentiable_loss(pair.model, pair.guide, x), list(pair.parameters()),
                       False),
        "library VAE": (lambda: elbo(terms_producer(vae.model, vae.guide, x)), list(vae.parameters()), False),
        "Pyro floor": (lambda: floor_loss(pair.model, pair.guide, x), list(pair.parameters()), False),
    }


def time_all(x: torch.Tensor, repeats: int, number: int, seed: int) -> dict[str, dict[str, float]]:
    cases = variants(x, seed)
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "forward+backward": [], "step": []}
                                                for name in cases}
    # the update of fit (torch's fused Adam), one optimizer per variant: what a whole training step costs
    optimizers = {name: torch.optim.Adam(params, lr=1e-4, fused=True) for name, (_, params, _) in cases.items()}

    def fwd_bwd(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> None:
        torch.autograd.grad(fn(), params)

    def step(fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        fn().backward()
        optimizer.step()

    for _ in range(repeats):
        for name, (fn, params, validate) in cases.items():
            with pyro.validation_enabled(validate):
                with torch.no_grad():
                    times[name]["forward"].append(timeit.timeit(fn, number=number) / number)
                times[name]["forward+backward"].append(
                    timeit.timeit(lambda: fwd_bwd(fn, params), number=number) / number)
                times[name]["step"].append(timeit.timeit(lambda: step(fn, optimizers[name]), number=number) / number)
    return {name: {k: 1e6 * min(v) for k, v in t.items()} for name, t in times.items()}


def _profiled_engine(x: torch.Tensor, calls: int, seed: int) -> cProfile.Profile:
    """``calls`` forward passes of the engine (no gradient, after 10 untimed ones) under cProfile."""
    fn, _, _ = variants(x, seed)["engine"]
    with pyro.validation_enabled(False), torch.no_grad():
        for _ in range(10):
            fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
    return prof


def profile_engine(x: torch.Tensor, calls: int, seed: int, top: int = 15) -> str:
    prof = _profiled_engine(x, calls, seed)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    places = ((str(sys.prefix), "<venv>"), (str(REPO_ROOT), "<repo>"), (str(sys.base_prefix), "<python>"))

    def anonymous(line: str) -> str:  # no path of this machine on the page
        for path, name in places:
            line = line.replace(path, name)
        return line
    return "\n".join(anonymous(line) for line in lines[start:start + top + 1])


def _owner(filename: str) -> str:
    """Which layer a profiled function belongs to."""
    if filename == "~":
        return "torch kernels and builtins"
    for part, name in (("/pyro_vae/", "pyro_vae (the engine)"), ("/pyro/", "Pyro (handlers, primitives, plates)"),
                       ("/torch/", "torch Python (nn.Module calls, distributions)"),
                       ("train_mnist", "the user's model and guide")):
        if part in filename:
            return name
    return "Python standard library"


def profile_by_layer(x: torch.Tensor, calls: int, seed: int) -> dict[str, float]:
    """The engine's forward pass (no gradient) under cProfile, its own time summed by layer: the share of each.

    :returns: layer -> fraction of the profiled time (the profiler inflates Python calls: shares, not times)."""
    stats = pstats.Stats(_profiled_engine(x, calls, seed)).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    shares: dict[str, float] = {}
    for (filename, _, _), v in stats.items():
        shares[_owner(filename)] = shares.get(_owner(filename), 0.0) + v[2] / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke_test:
        args.repeats, args.number, args.calls = 2, 2, 10
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    x = torch.bernoulli(torch.rand(args.batch_size, INPUT_DIM, generator=torch.Generator().manual_seed(args.seed)))
    timings = time_all(x, args.repeats, args.number, args.seed)
    for name, t in timings.items():
        print(f"{name:18s} forward {t['forward']:8.0f} us   forward+backward {t['forward+backward']:8.0f} us   "
              f"step {t['step']:8.0f} us   speed {timings['reference']['step'] / t['step']:.3f}x the reference")
    profile = profile_engine(x, args.calls, args.seed)
    print(profile)
    for layer, share in profile_by_layer(x, args.calls, args.seed).items():
        print(f"{100 * share:5.1f}%  {layer}")
    if args.write_docs and not args.smoke_test:
        ref = timings["reference"]
        rows = [[name, f"{t['forward']:,.0f}", f"{t['forward'] - ref['forward']:+,.0f}",
                 f"{t['forward+backward']:,.0f}", f"{t['forward+backward'] - ref['forward+backward']:+,.0f}",
                 f"{t['step']:,.0f}", f"{ref['step'] / t['step']:.3f}"]
                for name, t in timings.items()]
        table = markdown_table(["variant", "forward (µs)", "over reference", "forward + backward (µs)",
                                "over reference", "step with fused Adam (µs)", "speed against the reference"], rows)
        info = machine_info(threads=torch.get_num_threads(), device="cpu")
        floor, engine_t = timings["Pyro floor"]["step"], timings["engine"]["step"]
        floor_speed, engine_speed = ref["step"] / floor, ref["step"] / engine_t
        floor_cost, engine_cost = floor - ref["step"], engine_t - floor
        body = f"""## profile_step: where a training step's time goes

Script: [`benchmarks/profile_step.py`](../benchmarks/profile_step.py). One batch of {args.batch_size} binarized
MNIST images through the 784-200-200-50 tanh network, the minimum over {args.repeats} repeats of {args.number}
calls each, the variants taking turns. `engine` is a user's own Pyro pair through the library's engine
(the guide and the model each run once under a recording handler, no Pyro `Trace`), distributions not validated
(what `fit` does after its first step); `engine, validated` the same with Pyro's argument validation (what
every step cost before); `Trace_ELBO` is Pyro's own ELBO of the same pair (the path user pairs took before);
`library VAE` is `pyro_vae.VAE` producing its own terms.

- date: {utc_date()}
- command: `{command_line()}`
{machine_markdown(info)}

{table}

The last columns time a whole step (the loss, its gradient and torch's fused Adam, as `fit` updates) and give
the reference's step time over each variant's. `Pyro floor` runs the user's pair with nothing but one bare
handler (record the sites, replay the guide's values) and sums the sites' `log_prob`: the least any engine
that runs the user's program through Pyro's primitives can do (a test checks it computes the engine's loss and
gradients for the same draws). Here it reaches {floor_speed:.3f}x the reference's speed, so Pyro's own
machinery costs a step {floor_cost:,.0f} µs whatever the engine does; the engine reaches {engine_speed:.3f}x,
{abs(engine_cost):,.0f} µs a step {"slower" if engine_cost > 0 else "faster"} than the floor (its own share: the
per-datapoint terms, the checks of scales, masks and enumeration; differences of a few percent between two
variants are within this shared machine's noise).

What the profile said, and what was done about it: validation (checking every pixel against the Bernoulli
support and every parameter against its constraint, each step) cost the most, so `fit` validates the first step
only; building Pyro `Trace` objects and replaying through `poutine.trace`/`poutine.replay` came next, so the
engine records sites with a minimal handler; one particle is drawn without a particle plate (no broadcasting
of every site). What remains is Pyro's own per-site machinery (`apply_stack`, the plates' subsample sites,
distribution objects): the top of the profile of the engine's forward pass ({args.calls} calls, no gradient):

```
{profile}
```
"""
        path = update_section(BENCHMARK, body)
        print(f"wrote the {BENCHMARK} section of {path}", file=sys.stderr)
    return timings


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=30, help="timing repeats, the variants taking turns")
    p.add_argument("--number", type=int, default=20, help="calls per timing")
    p.add_argument("--calls", type=int, default=1000, help="calls under cProfile")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true")
    p.add_argument("--write-docs", action="store_true")
    return p


if __name__ == "__main__":
    main(make_parser().parse_args())

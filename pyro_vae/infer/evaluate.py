"""``log p(x)`` of a data set, with the diagnostics that say how far to trust it.

:func:`log_likelihood` draws ``K`` particles per datapoint (in chunks, under ``torch.no_grad()``) and returns
per datapoint:

- the IWAE estimate :math:`\\hat{\\mathcal{L}}_K(x) = \\log \\frac{1}{K} \\sum_k w_k`, a stochastic lower bound
  of ``log p(x)`` whose bias shrinks as ``K`` grows (Burda et al. 2016);
- the ELBO estimated from the same particles, :math:`\\frac{1}{K} \\sum_k \\log w_k`, split into
  ``rate`` (:math:`\\mathbb{E}_q[\\log q(z|x) - \\log p(z)]`, the KL term) and ``distortion``
  (:math:`-\\mathbb{E}_q[\\log p(x|z)]`);
- the bound as a function of ``k`` (by default 1, 5, 50, 500, 5000): the ``K`` particles are split into
  ``K // k`` groups of ``k`` and the group estimates averaged, which lowers the variance of each point;
- the effective sample size of the normalised weights, :math:`(\\sum_k w_k)^2 / \\sum_k w_k^2`;
- the Pareto :math:`\\hat k` of the weights' tail (PSIS, Vehtari et al. 2015/2024, through ArviZ): from 0.5
  the weights' variance is infinite, and above the sample-size threshold ``min(1 - 1/log10 K, 0.7)`` the
  estimate is unreliable (:meth:`LogLikelihoodResult.khat_bands` counts the datapoints in each band).

References: Burda, Grosse, Salakhutdinov, ICLR 2016; Vehtari, Simpson, Gelman, Yao, Gabry, "Pareto Smoothed
Importance Sampling", JMLR 2024.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, overload

import numpy as np
import pyro
import torch

from .. import distributed as dist
from ..checks import whole_number
from .annealing import ais_log_likelihood
from .batches import BatchedArgs, _batch, _check_data, _placement, first_transformed
from .chunking import particles_per_chunk
from .replicates import replicate_stderr
from .results import PerDatapointSummary, standard_error
from .weights import check_data_plate, direct_terms_owner, plate_layout, terms_producer

if TYPE_CHECKING:  # pragma: no cover
    from .annealing import AISOptions, AISResult

__all__ = ["LogLikelihoodResult", "log_likelihood", "k_curve", "effective_sample_size", "pareto_khat",
           "replicate_stderr", "PerDatapointSummary", "compare", "Comparison",
           "DEFAULT_K_VALUES", "KHAT_THRESHOLD"]

DEFAULT_K_VALUES = (1, 5, 50, 500, 5000)
#: Pareto k-hat above which an importance-sampling estimate is unreliable (Vehtari et al.)
KHAT_THRESHOLD = 0.7


_LIBC: Any = None


def _release_freed_memory() -> None:
    """Give the heap memory freed by the last batch back to the operating system (glibc's ``malloc_trim``).

    Without it, glibc's allocator keeps the blocks of each batch's large temporary tensors, fragmented, and the
    resident memory of a K = 5000 evaluation over 10000 datapoints grows by about 1 GiB (measured in
    ``docs/reliability.md``); with it, memory stays flat. A no-op where glibc is absent.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size of each datapoint's importance weights.

    :param log_w: ``(K, N)`` log weights.
    :returns: ``(N,)`` ESS of the normalised weights, in ``[1, K]``.
    """
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def k_curve(log_w: torch.Tensor, k_values: Sequence[int]) -> dict[int, torch.Tensor]:
    """IWAE_k for each ``k <= K`` from ``(K, N)`` log weights, averaging ``K // k`` disjoint groups.

    :returns: ``{k: (N,) tensor}``.
    """
    num_particles = log_w.shape[0]
    out = {}
    for k in k_values:
        if k > num_particles:
            continue
        m = num_particles // k
        groups = log_w[: m * k].reshape(m, k, -1)
        out[int(k)] = (torch.logsumexp(groups, 1) - math.log(k)).mean(0)
    return out


def pareto_khat(log_w: torch.Tensor) -> torch.Tensor:
    """PSIS Pareto k-hat per datapoint through :func:`arviz.psislw`.

    :param log_w: ``(K, N)`` log weights.
    :returns: ``(N,)``.
    """
    import arviz as az

    lw = log_w.detach().double().cpu().numpy().T  # (N, K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about k-hat > 0.7; we report it instead
        _, khat = az.psislw(lw)
    return torch.as_tensor(np.asarray(khat, dtype=np.float64)).reshape(-1)


@dataclass
class LogLikelihoodResult(PerDatapointSummary):
    """Per-datapoint estimates from :func:`log_likelihood` (all tensors of shape ``(N,)``, on the CPU)."""

    #: IWAE_K per datapoint, the log p(x) estimate
    values: torch.Tensor
    #: ELBO per datapoint from the same particles
    elbo: torch.Tensor
    rate: torch.Tensor
    distortion: torch.Tensor
    #: effective sample size per datapoint
    ess: torch.Tensor
    #: PSIS Pareto k-hat per datapoint (None when diagnostics were skipped)
    khat: torch.Tensor | None
    #: ``{k: (N,)}``, the bound as a function of the number of particles
    curve: dict[int, torch.Tensor] = field(default_factory=dict)
    num_particles: int = 1
    #: ``(N,)``: the Monte Carlo error of each datapoint's estimate, from disjoint groups of particles
    #: (:func:`replicate_stderr`); None when ``K`` is too small to split
    mc_stderr: torch.Tensor | None = None
    #: what was measured, named by the model's observed sites and the condition: ``"log p(x)"``, or for a
    #: conditional pair ``"log p(obs | y)"``
    quantity: str = "log p(x)"

    @property
    def khat_threshold(self) -> float:
        """The sample-size dependent threshold of Vehtari et al. (2024), ``min(1 - 1 / log10(K), 0.7)``: above it
        even the smoothed estimate is unreliable (0.57 at K = 200, 0.67 at K = 1000, 0.7 from K = 2154)."""
        k = max(int(self.num_particles), 11)
        return min(1.0 - 1.0 / math.log10(k), KHAT_THRESHOLD)

    def khat_bands(self) -> dict[str, int]:
        """Datapoints per k-hat band, as Pyro's ``psis_diagnostic`` reads them: ``good`` (k-hat < 0.5: the raw
        weights' variance is finite), ``ok`` (below :attr:`khat_threshold`: usable with care, the variance of the
        raw IWAE estimate the library reports is already infinite), ``bad`` (above it: unreliable)."""
        if self.khat is None:
            return {}
        k, top = self.khat, self.khat_threshold
        good = min(0.5, top)  # with few particles (K < 100) the sample-size threshold is itself below 0.5
        return {"good": int((k < good).sum()), "ok": int(((k >= good) & (k < top)).sum()),
                "bad": int((k >= top).sum())}

    @property
    def num_unreliable(self) -> int:
        """Datapoints whose Pareto k-hat exceeds :attr:`khat_threshold`."""
        return self.khat_bands().get("bad", 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (means and standard errors; no per-datapoint arrays)."""
        gap = self.values - self.elbo
        out: dict[str, Any] = {
            "quantity": self.quantity, "num_datapoints": int(self.values.numel()),
            "num_particles": self.num_particles,
            "log_likelihood": self.mean, "log_likelihood_stderr": self.stderr,
            "log_likelihood_mc_stderr": self.mean_mc_stderr,
            "elbo": float(self.elbo.double().mean()), "elbo_stderr": standard_error(self.elbo),
            "rate": float(self.rate.double().mean()), "distortion": float(self.distortion.double().mean()),
            "gap": float(gap.double().mean()), "gap_stderr": standard_error(gap),
            "ess_mean": float(self.ess.double().mean()), "ess_min": float(self.ess.min()),
            "curve": {str(k): {"mean": float(v.double().mean()), "stderr": standard_error(v)}
                      for k, v in self.curve.items()},
        }
        if self.khat is not None:
            out.update({"khat_mean": float(self.khat.mean()), "khat_max": float(self.khat.max()),
                        "num_unreliable": self.num_unreliable, "khat_threshold": self.khat_threshold,
                        "khat_bands": self.khat_bands()})
        return out

    def to_xarray(self) -> Any:
        """The per-datapoint arrays as an :class:`xarray.Dataset` over ``datapoint`` (see
        :func:`pyro_vae.infer.result_to_dataset`)."""
        from .arviz import result_to_dataset

        return result_to_dataset(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        d = self.as_dict()
        lines = [
            f"{self.quantity} (IWAE, K={self.num_particles}): {d['log_likelihood']:.3f} +- "
            f"{d['log_likelihood_stderr']:.3f} nats over {d['num_datapoints']} datapoints (Monte Carlo error of the "
            f"mean {d['log_likelihood_mc_stderr']:.3f})",
            f"ELBO: {d['elbo']:.3f} +- {d['elbo_stderr']:.3f}  (rate {d['rate']:.3f}, distortion "
            f"{d['distortion']:.3f}); gap IWAE - ELBO: {d['gap']:.3f} +- {d['gap_stderr']:.3f}",
            "K-curve: " + ", ".join(f"K={k}: {v['mean']:.3f} +- {v['stderr']:.3f}" for k, v in d["curve"].items()),
            f"ESS: mean {d['ess_mean']:.1f}, min {d['ess_min']:.1f} of {self.num_particles}",
        ]
        if self.khat is not None:
            b = d["khat_bands"]
            good = min(0.5, d["khat_threshold"])
            care = (f"{b['ok']} below {d['khat_threshold']:.2f} (usable with care: the raw weights' variance is "
                    "infinite), " if good < d["khat_threshold"] else "")
            lines.append(f"Pareto k-hat: mean {d['khat_mean']:.3f}, max {d['khat_max']:.3f}; {b['good']} datapoints "
                         f"below {good:.2f} (good), {care}{b['bad']} above {d['khat_threshold']:.2f} (unreliable)")
        lines.append("The errors above are the spread over datapoints and the Monte Carlo error; neither covers "
                     "IWAE_K's downward bias, which only a larger K (or AIS) shrinks")
        return "\n".join(lines)


@overload
def log_likelihood(model: Callable, guide: Callable, data: torch.Tensor, num_particles: int = ...,
                   batch_size: int = ..., chunk_size: int | None = ..., *, method: Literal["iwae"] = ...,
                   **options: Any) -> LogLikelihoodResult: ...


@overload
def log_likelihood(model: Callable, guide: Callable, data: torch.Tensor, num_particles: int = ...,
                   batch_size: int = ..., chunk_size: int | None = ..., *, method: Literal["ais"],
                   **options: Any) -> AISResult: ...


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    num_particles: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    *,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    diagnostics: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    progress: bool = True,
    max_plate_nesting: int | None = None,
    data_plate: str = "data",
    distributed: bool | None = None,
    method: str = "iwae",
    num_groups: int = 10,
    condition: torch.Tensor | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    vectorize_particles: bool = True,
    options: AISOptions | None = None,
    **ais_options: Any,
) -> LogLikelihoodResult | AISResult:
    """Estimate ``log p(x)`` of every datapoint with ``K`` importance samples from the guide (``method="iwae"``),
    or by annealed importance sampling (``method="ais"``: :func:`~pyro_vae.infer.ais_log_likelihood`).

    :param model: a Pyro model keeping the site contract (its parameters already on ``device``).
    :param guide: its guide, the proposal.
    :param data: ``(N, *event_shape)``; or a tuple of tensors batched along dim 0, passed as the model's positional
        arguments; or a :class:`torch.utils.data.Dataset` whose ``collate_fn`` builds each batch's arguments (see
        :mod:`pyro_vae.infer.batches`: every argument of a datapoint stays with it; ``transform`` applies to the
        first argument only).
    :param num_particles: ``K``.
    :param batch_size: datapoints per pass; memory is ``O(batch_size * chunk_size)``.
    :param chunk_size: particles per vectorized pass; None (the default): as many as
        :func:`~pyro_vae.infer.particles_per_chunk` allows for a batch (``batch_size x`` the datapoint's size).
    :param k_values: the ``k`` at which the bound is reported (those ``<= K``; the curve always ends at ``K`` itself,
        the headline estimate).
    :param diagnostics: compute the Pareto k-hat (ArviZ); the ESS is always computed.
    :param transform: applied to each batch before scoring (e.g. a fixed binarization).
    :param device: moves each batch there (the model must already be there).
    :param dtype: casts each batch (e.g. ``torch.float64``; cast the model too).
    :param seed: makes the estimate reproducible: batch ``b`` (of ``batch_size`` consecutive datapoints) is drawn
        after seeding Pyro's generators with :func:`~pyro_vae.distributed.derive_seed` of ``(seed, b)``, so the
        result is the same for any number of processes.
    :param progress: a progress bar over batches when on a terminal (rank 0 only).
    :param distributed: split the batches over the ranks of ``torchrun`` and gather the values (every rank
        returns the whole result). None: when launched by ``torchrun`` with more than one process; False: this
        process evaluates all of ``data`` alone (e.g. when only rank 0 calls it).
    :param method: ``"iwae"`` or ``"ais"``.
    :param condition: a conditional model's ``y`` ``(N, *condition_shape)``, batched with ``data`` and passed after
        ``x``: the estimates are then of ``log p(x | y)``.
    :param collate_fn: with a ``Dataset``: builds a batch's arguments from a list of its datapoints.
    :param vectorize_particles: False: one pass per particle, for a model or guide that cannot broadcast over a
        leading particle dimension (boolean-mask indexing, as Pyro's CVAE); the same estimate, ``K`` times the
        passes.
    :param num_groups: the disjoint groups of particles the Monte Carlo error ``mc_stderr`` is measured from.
    :param options: with ``method="ais"``, the :class:`~pyro_vae.infer.AISOptions`.
    :param ais_options: with ``method="ais"``, fields of :class:`~pyro_vae.infer.AISOptions` one by one
        (``num_chains``, ``num_steps``, ``num_leapfrog``, ``proposal``, ``schedule``, ...); ``num_particles``,
        ``chunk_size``, ``k_values``, ``diagnostics``, ``progress`` and ``num_groups`` are then unused.
    :returns: a :class:`LogLikelihoodResult` with per-datapoint tensors of shape ``(N,)`` (``method="ais"``: an
        :class:`~pyro_vae.infer.AISResult` over the whole data).
    """
    if method not in ("iwae", "ais"):
        raise ValueError(f"unknown method {method!r}; choose 'iwae' or 'ais'")
    if method == "ais":
        if not torch.is_tensor(data) or collate_fn is not None:
            raise TypeError("method='ais' takes its data as one tensor (with condition= for a conditional model); "
                            "a tuple of arguments or a Dataset goes with method='iwae'")
        return ais_log_likelihood(model, guide, data, batch_size=batch_size, options=options, transform=transform,
                                  device=device, dtype=dtype, seed=seed, max_plate_nesting=max_plate_nesting,
                                  data_plate=data_plate, distributed=distributed, condition=condition, **ais_options)
    if ais_options or options is not None:
        raise TypeError(f"unexpected options for method='iwae': {sorted(ais_options) or ['options']}")
    batched = BatchedArgs.of(data, condition, collate_fn)
    first = batched.first
    if first is not None:
        _check_data(model, guide, first, num_particles, transform)
        device, dtype = _placement(model, first, device, dtype)
    else:
        owner = getattr(model, "__self__", None)
        param = next(owner.parameters(), None) if isinstance(owner, torch.nn.Module) else None
        if param is not None:  # a Dataset's batches placed as tensors are (the model's device and dtype)
            device = param.device if device is None else device
            dtype = param.dtype if dtype is None else dtype
        batched = batched.to(device, dtype)
    batch_size = whole_number(batch_size, "batch_size")
    if chunk_size is not None:
        chunk_size = whole_number(chunk_size, "chunk_size (particles per pass)")
    try:
        k_values = [whole_number(k, "k_values") for k in k_values]
    except ValueError:
        raise ValueError(f"k_values must be integers >= 1, got {list(k_values)}") from None
    num_particles = int(num_particles)
    k_values = sorted({k for k in k_values if k <= num_particles} | {num_particles})  # the headline K too
    if distributed is None:
        distributed = dist.launched()
    if distributed:
        dist.init(torch.device(device) if device is not None else first.device if first is not None
                  else torch.device("cpu"))
        if first is not None:
            dist.check_same_data(first)
        seed = dist.shared_seed(seed)  # per-batch seeding below: the ranks need one seed
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("values", "elbo", "rate", "distortion", "ess", "khat",
                                                            "mc")}
    curves: dict[int, list[torch.Tensor]] = {}
    n = batched.n
    starts = list(range(0, n, batch_size))
    quantity, checked = "log p(x)", False
    mine = list(range(rank, len(starts), world))  # whole batches, round-robin over the ranks
    bar = None
    if progress and sys.stderr.isatty() and len(mine) > 1 and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"log p(x), K={num_particles}", unit="batch")
    for b in mine:
        if seed is not None:
            pyro.set_rng_seed(dist.derive_seed(seed, b))
        if batched.tensors is not None:
            args = tuple(_batch(t, starts[b], batch_size, device, dtype if t.is_floating_point() else None,
                                transform if i == 0 else None) for i, t in enumerate(batched.tensors))
        else:
            args = first_transformed(batched.slice(starts[b], starts[b] + batch_size), transform, "transform")
        x, size = args[0], min(batch_size, n - starts[b])
        # the data plate and the plate nesting, from one trace of the first batch; a model class's direct terms
        # with the default plate and a given nesting need neither (a validation step calls this every batch)
        if not checked and (max_plate_nesting is None or data_plate != "data"
                            or not direct_terms_owner(model, guide)):
            nesting, plates = plate_layout(model, guide, *args)
            check_data_plate(data_plate, plates)
            max_plate_nesting = nesting if max_plate_nesting is None else max_plate_nesting
        checked = True
        # one producer per batch: every chunk scores the same datapoints (one subsample of a subsampled plate)
        produce = terms_producer(model, guide, *args, max_plate_nesting=max_plate_nesting, data_plate=data_plate,
                                 vectorize_particles=vectorize_particles)
        log_w, rate, distortion, elbo = [], 0.0, 0.0, 0.0
        chunk = particles_per_chunk(num_particles, x, chunk_size)
        for c in range(0, num_particles, chunk):
            t = produce(min(chunk, num_particles - c))
            log_w.append(t.log_weights)
            elbo = elbo + t.elbo_integrand.sum(0)  # the mean log weight, or with enumerated sites the exact ELBO
            rate = rate + (t.log_guide - t.log_prior).sum(0)
            distortion = distortion - t.log_likelihood.sum(0)
        quantity = f"log p({', '.join(t.observed_sites) or 'x'}{' | y' if condition is not None else ''})"
        lw = torch.cat(log_w)
        if lw.shape != (num_particles, size):
            raise ValueError(f"the pair scored {lw.shape[1]} datapoints of a batch of {size}: log_likelihood "
                             "needs one estimate per datapoint of the batch (a subsampled data plate scores only "
                             "its subsample; evaluate without subsampling)")
        parts["values"].append(torch.logsumexp(lw, 0) - math.log(num_particles))
        parts["elbo"].append(elbo / num_particles)
        parts["rate"].append(rate / num_particles)
        parts["distortion"].append(distortion / num_particles)
        parts["ess"].append(effective_sample_size(lw))
        parts["mc"].append(replicate_stderr(lw, num_groups))
        if diagnostics and num_particles > 1:
            parts["khat"].append(pareto_khat(lw))
        for k, v in k_curve(lw, k_values).items():
            curves.setdefault(k, []).append(v.cpu())
        del lw, log_w, t
        _release_freed_memory()  # keeps the resident memory flat over many batches (glibc fragmentation)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    cat = {k: torch.cat([t.detach().cpu() for t in v]) if v else None for k, v in parts.items()}
    curve = {k: torch.cat(v) for k, v in curves.items()}
    if distributed:
        index = torch.cat([torch.arange(starts[b], min(starts[b] + batch_size, n)) for b in mine]) if mine \
            else torch.zeros(0, dtype=torch.long)
        names = ["values", "elbo", "rate", "distortion", "ess", "mc"]
        names += ["khat"] if diagnostics and num_particles > 1 else []
        ks = [int(k) for k in k_values if k <= num_particles]
        cat, curve = _gather(cat, curve, names, ks, index, n)
        quantity = dist.broadcast_object(quantity)  # rank 0 always has batch 0
    return LogLikelihoodResult(quantity=quantity, values=cat["values"], elbo=cat["elbo"], rate=cat["rate"],
                               distortion=cat["distortion"], ess=cat["ess"], khat=cat["khat"],
                               curve=curve, num_particles=num_particles,
                               mc_stderr=None if cat["mc"] is None or bool(cat["mc"].isnan().all()) else cat["mc"])


def _gather(cat: dict[str, torch.Tensor | None], curve: dict[int, torch.Tensor], names: list[str], ks: list[int],
            index: torch.Tensor, total: int) -> tuple[dict[str, torch.Tensor | None], dict[int, torch.Tensor]]:
    """Every rank's per-datapoint tensors, in data-set order, on every rank (each datapoint counted once).

    ``names`` and ``ks`` are the fields every rank has (a rank may have had no batch at all)."""
    if index.numel():
        fields = [cat[k] for k in names] + [curve[k] for k in ks]
        rows = torch.stack(fields).double()
    else:  # more ranks than batches
        fields, rows = [], torch.zeros(len(names) + len(ks), 0, dtype=torch.float64)
    dtypes = dist.broadcast_object([f.dtype for f in fields])  # rank 0 always has batch 0
    full = [row.to(dtype) for row, dtype in zip(dist.gather_datapoints(rows, index, total), dtypes)]
    out: dict[str, torch.Tensor | None] = {k: None for k in cat}
    out.update({k: full[i] for i, k in enumerate(names)})
    return out, {k: full[len(names) + i] for i, k in enumerate(ks)}


@dataclass
class Comparison:
    """The paired difference ``a - b`` of two estimates over the same datapoints (see :func:`compare`)."""

    #: ``(N,)``: per-datapoint differences
    difference: torch.Tensor
    mean: float
    #: the standard error of :attr:`mean` from the spread of the paired differences (it holds the Monte Carlo
    #: noise of both estimates too)
    stderr: float
    #: the Monte Carlo part of the error of :attr:`mean`, where both results report one (else NaN)
    mc_stderr: float
    ci_low: float
    ci_high: float
    confidence: float
    #: the names of ``a`` and ``b``: the difference is ``names[0] - names[1]``
    names: tuple[str, str] = ("a", "b")
    #: why :attr:`mc_stderr` is NaN although one of the two results reports a Monte Carlo error ("" otherwise)
    mc_note: str = ""

    def summary(self) -> str:
        """One line: ``A - B: mean ± stderr``, the interval, and the Monte Carlo part (or why it is missing)."""
        mc = (f"; Monte Carlo part {self.mc_stderr:.3f}" if math.isfinite(self.mc_stderr)
              else f"; {self.mc_note}" if self.mc_note else "")
        return (f"{self.names[0]} - {self.names[1]}: {self.mean:.3f} ± {self.stderr:.3f} nats per datapoint over "
                f"{self.difference.numel()} datapoints; {100 * self.confidence:.0f}% interval "
                f"[{self.ci_low:.3f}, {self.ci_high:.3f}]{mc}")


def _estimate_name(result: Any, default: str) -> str:
    """What an estimate is called in a comparison: ``AIS``, ``IWAE_K``, or ``default`` for a plain tensor."""
    if type(result).__name__ == "AISResult":
        return "AIS" if getattr(result, "direction", 1) > 0 else "reverse AIS"
    if isinstance(result, LogLikelihoodResult):
        return f"IWAE_{result.num_particles}"
    return default


def compare(a: Any, b: Any, confidence: float = 0.95, names: tuple[str, str] | None = None) -> Comparison:
    """The paired difference of two models' (or two estimators') ``log p(x)`` estimates on the same datapoints.

    Pairing removes the spread between datapoints that both share: the standard error of a paired difference
    is usually far smaller than either estimate's.

    :param a: a result with ``.values`` ``(N,)`` (:class:`LogLikelihoodResult`, :class:`~pyro_vae.infer.AISResult`)
        or an ``(N,)`` tensor.
    :param b: the same for the other estimate, over the same datapoints in the same order.
    :param confidence: of the normal interval.
    :param names: what to call ``a`` and ``b`` in the summary (default: ``AIS`` for an AIS result, ``IWAE_K`` for
        a :class:`LogLikelihoodResult`, ``a`` / ``b`` for a tensor); the difference is ``a - b``.
    :returns: :class:`Comparison`: ``mean``, ``stderr``, ``ci_low``, ``ci_high``, per-datapoint ``difference``,
        ``names``. Its Monte Carlo part needs both Monte Carlo errors: when one argument is a plain tensor (e.g.
        ``result.values``) it is left out, and the summary says so.

    Example::

        >>> import torch
        >>> from pyro_vae.infer import compare
        >>> print(compare(torch.tensor([1.0, 2.0, 3.5]), torch.tensor([0.5, 1.0, 3.0]), names=("AIS", "IWAE"))
        ...       .summary())
        AIS - IWAE: 0.667 ± 0.167 nats per datapoint over 3 datapoints; 95% interval [0.340, 0.993]
    """
    va, vb = (r if torch.is_tensor(r) else r.values if hasattr(r, "values") else torch.as_tensor(r) for r in (a, b))
    if va.shape != vb.shape or va.dim() != 1:
        raise ValueError(f"compare needs two per-datapoint estimates of the same datapoints, got shapes "
                         f"{tuple(va.shape)} and {tuple(vb.shape)}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = (va.double().cpu() - vb.double().cpu())
    mean, se = float(diff.mean()), standard_error(diff)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + float(confidence) / 2)))
    mcs = [None if torch.is_tensor(r) else getattr(r, "mc_stderr", None) for r in (a, b)]
    mc, note = float("nan"), ""
    label = tuple(names) if names is not None else (_estimate_name(a, "a"), _estimate_name(b, "b"))
    if all(m is not None for m in mcs):
        mc = float((mcs[0].double().cpu().pow(2) + mcs[1].double().cpu().pow(2)).sum().sqrt() / diff.numel())
    elif any(m is not None for m in mcs):
        name, r = next((n, r) for n, r, m in zip(label, (a, b), mcs) if m is None)
        plain = torch.is_tensor(r) or not hasattr(r, "values")
        note = (f"Monte Carlo part left out: {name} came as a plain tensor, without one (pass a result, not its "
                ".values, to include it)" if plain else
                f"Monte Carlo part left out: {name} has none (its particles were too few to split into groups)")
    return Comparison(difference=diff, mean=mean, stderr=se, mc_stderr=mc, ci_low=mean - z * se,
                      ci_high=mean + z * se, confidence=float(confidence), names=label, mc_note=note)

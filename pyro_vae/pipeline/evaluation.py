"""Evaluating a run: :func:`evaluate_run` is what ``pyro-vae evaluate`` does: ``log p(x)`` of the run's test data
by IWAE (and AIS beside it when asked), written to ``evaluation.json`` with its per-datapoint values
(``evaluation_values.pt``) and its figures; :func:`measure_run` is the same measurement written nowhere (what
``pyro-vae compare`` does to a run without a matching evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import distributed
from ..io import write_json
from ..runs import (
    EVALUATION_NAME,
    EVALUATION_VALUES_NAME,
    load_run,
    read_config,
    read_evaluation,
    run_test_data,
    write_evaluation_values,
)
from .registry import get_kind
from .settings import EVALUATE_BATCH_SIZE

__all__ = ["evaluate_run", "measure_run", "check_evaluation_options", "evaluation_setting"]


def evaluate_run(run: str | os.PathLike[str], *, num_particles: int = 5000, split: str | None = None,
                 num: int | None = None, batch_size: int = EVALUATE_BATCH_SIZE, chunk_size: int | None = None,
                 data_root: str | os.PathLike[str] | None = None, device: str = "auto", seed: int = 0,
                 diagnostics: bool = True, ais_steps: int = 0, ais_chains: int = 16,
                 progress: bool = True) -> dict[str, Any]:
    """Estimate ``log p(x)`` of a run's test data and write ``evaluation.json``, its per-datapoint values
    (``evaluation_values.pt``, what ``pyro-vae compare`` pairs) and its figures: what ``pyro-vae evaluate`` does.
    Under ``torchrun`` every rank takes its batches and rank 0 writes.

    The run's kind (:mod:`pyro_vae.pipeline.kinds`) says what is measured and how ``"model"`` names it: stage 1 of
    a two-stage run (the two-stage sampler's own density has no tractable ``log p(x)``); for a semi-supervised run
    ``log p(x)`` with the label summed exactly inside every importance weight, with ``"accuracy"`` of the
    classifier ``argmax_y q(y | x)`` on the same datapoints, and AIS refused (it cannot anneal a discrete label).

    :param run: the run folder.
    :param num_particles: ``K`` per datapoint.
    :param split: the data split (default: the run's test split); ``num``: only the first ``num`` datapoints.
    :param ais_steps: also estimate ``log p(x)`` of the same datapoints by AIS with this many steps (0: off).
    :returns: what ``evaluation.json`` holds, plus ``"result"`` (the :class:`~pyro_vae.infer.LogLikelihood`),
        ``"ais_result"`` (or None), ``"latent_usage"`` and ``"written"`` (the files); ``{}`` on ranks other than 0.
    :raises ValueError: for bad options, before any work.
    """
    from .. import drawing as plots

    options = dict(num_particles=num_particles, split=split, num=num, batch_size=batch_size, chunk_size=chunk_size,
                   data_root=data_root, device=device, seed=seed, diagnostics=diagnostics, ais_steps=ais_steps,
                   ais_chains=ais_chains, progress=progress)
    check_evaluation_options(run, **options)
    run_dir = Path(run)
    if distributed.is_main_process() and not os.access(run_dir, os.W_OK):
        raise PermissionError(f"the run folder {run_dir} is not writable: evaluate writes {EVALUATION_NAME} and its "
                              "figures there (copy the run somewhere writable)")
    measured = measure_run(run, **options)
    if not distributed.is_main_process():
        return {}
    out, result, ais = measured["summary"], measured["result"], measured["ais_result"]
    replaced = _replaced_setting(run_dir / EVALUATION_NAME, out)
    write_json(out, run_dir / EVALUATION_NAME)
    write_evaluation_values(run_dir / EVALUATION_VALUES_NAME, evaluation_setting(out), result, ais)
    written = [run_dir / EVALUATION_NAME, run_dir / EVALUATION_VALUES_NAME]
    plots.k_curve(result, run_dir / "k_curve.png")
    plots.gap_histogram(result, run_dir / "gaps.png")
    written += [run_dir / "k_curve.png", run_dir / "gaps.png"]
    if result.khat is not None:
        plots.khat_plot(result, run_dir / "khat.png")
        written.append(run_dir / "khat.png")
    return {**out, "result": result, "ais_result": ais, "latent_usage": measured["latent_usage"], "written": written,
            "replaced": replaced}


def check_evaluation_options(run: str | os.PathLike[str], *, num_particles: int, num: int | None,
                             chunk_size: int | None, ais_steps: int, ais_chains: int, batch_size: int,
                             **unused: Any) -> None:
    """Refuse bad options of an evaluation of ``run``, then a run folder that is not one, then AIS of a kind that
    cannot take it (:meth:`~pyro_vae.pipeline.RunKind.refuse_evaluation`): before any work."""
    for name, value, low in (("num_particles", num_particles, 1), ("num", num, 1), ("chunk_size", chunk_size, 1),
                             ("ais_steps", ais_steps, 0), ("ais_chains", ais_chains, 1), ("batch_size", batch_size, 1)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < low):
            flag = "--num-datapoints" if name == "num" else "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= {low} (a whole number), got {value!r}")
    get_kind(read_config(run).get("class", "VAE")).refuse_evaluation(ais_steps)


def measure_run(run: str | os.PathLike[str], *, num_particles: int = 5000, split: str | None = None,
                num: int | None = None, batch_size: int = EVALUATE_BATCH_SIZE, chunk_size: int | None = None,
                data_root: str | os.PathLike[str] | None = None, device: str = "auto", seed: int = 0,
                diagnostics: bool = True, ais_steps: int = 0, ais_chains: int = 16,
                progress: bool = True) -> dict[str, Any]:
    """What :func:`evaluate_run` measures, written nowhere (``pyro-vae compare`` measures runs it may not write to).

    The datapoints are :func:`~pyro_vae.runs.run_test_data` of the run (one fixed binarization drawn with ``seed``)
    and batch ``b`` of ``batch_size`` datapoints draws its particles after seeding with ``(seed, b)``: two runs
    measured with the same ``split``, ``num``, ``seed`` and ``batch_size`` are measured on the same points with the
    same seeds, so their per-datapoint values pair.

    :returns: ``"summary"``, what ``evaluation.json`` holds (with ``"parameters"``, the model's, and
        ``"batch_size"``), ``"result"``, ``"ais_result"`` and ``"latent_usage"``; ``{}`` on ranks other than 0.
    """
    from .. import infer

    check_evaluation_options(run, num_particles=num_particles, num=num, chunk_size=chunk_size,
                             ais_steps=ais_steps, ais_chains=ais_chains, batch_size=batch_size)
    vae, config = load_run(run, device=device)
    kind = get_kind(config.get("class", "VAE"))
    x, y = run_test_data(config, split=split, num=num, data_root=data_root, seed=seed,
                         device=next(vae.parameters()).device, labels=kind.has_labels)
    split = split or config.get("splits", {}).get("test", "test")
    measured = kind.measured(vae)
    result = infer.log_likelihood(measured.model, measured.guide, x, num_particles=num_particles,
                                  batch_size=batch_size, chunk_size=chunk_size, diagnostics=diagnostics, seed=seed,
                                  progress=progress)
    if not distributed.is_main_process():
        return {}
    usage = infer.latent_usage(measured.model, measured.guide, x, seed=seed)
    out: dict[str, Any] = {"split": split, "seed": seed, "num_datapoints": int(x.shape[0]),
                           "model": kind.describe(config), "epochs": kind.epochs_done(Path(run)),
                           "batch_size": int(batch_size), "parameters": sum(p.numel() for p in vae.parameters()),
                           **result.as_dict(),
                           "latent_usage": {name: {k: v for k, v in u.items() if k != "mean_variance"}
                                            for name, u in usage.items()}}
    out.update(kind.evaluation_extras(vae, x, y))
    ais = None
    if ais_steps:  # the same datapoints, side by side with the ELBO and IWAE
        ais = infer.log_likelihood(measured.model, measured.guide, x, method="ais", batch_size=batch_size,
                                   num_chains=ais_chains, num_steps=ais_steps, seed=seed, distributed=False)
        paired = infer.compare(ais, result)
        out["ais"] = {"num_steps": ais_steps, "num_chains": ais_chains, "log_likelihood": ais.mean,
                      "stderr": ais.stderr, "mc_stderr": ais.mean_mc_stderr,
                      "acceptance_rate": float(ais.acceptance_rate.mean()),
                      "minus_iwae": {"mean": paired.mean, "stderr": paired.stderr,
                                     "ci95": [paired.ci_low, paired.ci_high]}}
    return {"summary": out, "result": result, "ais_result": ais, "latent_usage": usage}


def evaluation_setting(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What makes an evaluation (``evaluation.json``, or what :func:`measure_run` returns) comparable with another:
    its split, datapoints, particles, seed, batch size (the particles' seeds are drawn per batch), epochs, and its
    AIS steps and chains (0 without AIS)."""
    ais = evaluation.get("ais") or {}
    return {**{k: evaluation.get(k) for k in _EVALUATION_SETTING + ("batch_size",)},
            "ais_steps": ais.get("num_steps", 0), "ais_chains": ais.get("num_chains", 0)}


#: what makes two evaluations of a run comparable
_EVALUATION_SETTING = ("split", "num_datapoints", "num_particles", "seed", "epochs")


def _replaced_setting(path: Path, new: dict[str, Any]) -> str | None:
    """A notice when ``path`` holds an evaluation of another setting, which the new one replaces."""
    old = read_evaluation(path.parent)
    if old is None:
        return None
    changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in _EVALUATION_SETTING if old.get(k) != new.get(k)]
    if not changed:
        return None
    return f"replaced the evaluation of another setting in {path} ({', '.join(changed)})"

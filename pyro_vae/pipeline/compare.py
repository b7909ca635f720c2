"""Comparing runs: :func:`compare_runs` is what ``pyro-vae compare RUN RUN [RUN...]`` does.

Every run is measured on the same datapoints (its test split, the first ``num``), with the same fixed binarization
(drawn with ``seed``) and the same seeds per batch of ``batch_size`` datapoints
(:func:`~pyro_vae.pipeline.evaluation.measure_run`), so that the per-datapoint estimates pair: the differences
against the first run come from :func:`pyro_vae.infer.compare` with the paired standard error and its Monte Carlo
part.

How per-datapoint values are found: ``pyro-vae evaluate`` writes ``evaluation_values.pt`` beside
``evaluation.json`` (:func:`pyro_vae.runs.write_evaluation_values`). A run whose ``evaluation.json`` was measured
in the very setting asked (split, datapoints, particles, seed, batch size, the run's epochs, the AIS steps and
chains when AIS is asked) and whose values file holds that same setting is *reused*, and the comparison says so;
any other run is measured anew, in memory: a comparison writes nothing into the run folders (they may be read-only,
or another setting's evaluation may be worth keeping). Everything it measured goes into its own folder ``out``:
``comparison.json`` (the table and the differences), ``comparison_values.pt`` (every run's per-datapoint values,
from which :func:`pyro_vae.report` draws) and the figures ``k_curves.png`` (every run's K-curve on one axes) and
``differences.png`` (the paired differences with their error bars).

It refuses before any work, naming the runs: runs on different data (data set, split or binarization of the test
data); a run still training (its lock is held, :func:`pyro_vae.io.lock_held`); a run whose kind measures something
else beside plain runs (a semi-supervised run's ``log p(x)`` with the label summed, a kind with labels) unless
``allow`` names it (:data:`ALLOWANCES`). AIS is added where each run's kind allows it
(:meth:`~pyro_vae.pipeline.RunKind.refuse_evaluation`) and left out, with the reason, where not.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .._version import __version__
from ..io import RunLocked, atomic_save, load_tensors, lock_held, write_json
from ..runs import (
    EVALUATION_VALUES_NAME,
    binarizes_test_data,
    read_config,
    read_evaluation,
    read_evaluation_values,
    run_test_data,
    values_from_state,
    values_state,
)
from .evaluation import check_evaluation_options, evaluation_setting, measure_run
from .registry import get_kind
from .settings import EVALUATE_BATCH_SIZE

__all__ = ["compare_runs", "check_comparison", "read_comparison", "table_rows", "difference_bars", "ALLOWANCES",
           "COMPARISON_NAME", "COMPARISON_VALUES_NAME", "COMPARISON_FIGURES", "KHAT_LIMIT"]

#: what ``comparison.json`` is called in the comparison's folder
COMPARISON_NAME = "comparison.json"
#: every run's per-datapoint values (IWAE, ELBO, k-hat, the K-curve, AIS), for the report's figures
COMPARISON_VALUES_NAME = "comparison_values.pt"
#: the figures a comparison writes
COMPARISON_FIGURES = ("k_curves.png", "differences.png")
#: a comparison of runs whose kinds measure different things goes ahead when ``allow`` names what is compared
ALLOWANCES = {
    "label-summed": "a run with labels (semi-supervised) measures log p(x) with the label summed exactly, compared "
                    "with plain runs' log p(x) of the same datapoints",
}
#: the share of datapoints whose Pareto k-hat is above this is reported (Vehtari et al.: unreliable above 0.7)
KHAT_LIMIT = 0.7


@dataclass
class _Run:
    """A run of the comparison as it is checked: its folder, the name it is shown by, its config and kind, why AIS
    is left out of it (None: it is not)."""

    path: Path
    name: str
    config: dict[str, Any]
    kind: Any
    ais_refused: str | None = None


def check_comparison(runs: Iterable[str | os.PathLike[str]], *, split: str | None = None,
                     allow: Iterable[str] = (), ais_steps: int = 0, **options: Any) -> list[_Run]:
    """Refuse a comparison before any work, with a message naming the runs (see the module's docstring).

    :returns: the runs, each with its name, config and kind.
    :raises ValueError: for fewer than two runs, a run named twice, a bad option, runs on different data, a kind
        mixed with plain runs without ``allow``; :class:`~pyro_vae.io.RunLocked` for runs still training.
    """
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(paths)}")
    allow = list(allow)
    unknown = [a for a in allow if a not in ALLOWANCES]
    if unknown:
        raise ValueError(f"--allow {', '.join(unknown)}: unknown; known: " +
                         "; ".join(f"{k} ({v})" for k, v in ALLOWANCES.items()))
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ValueError(f"the run {p} is named twice (as {seen[p.resolve()]} and {p}): compare different runs")
        seen[p.resolve()] = p
    checked = []
    for p in paths:
        check_evaluation_options(p, ais_steps=0, **options)  # the numbers, and a folder that is a run
        config = read_config(p)
        checked.append(_Run(p, "", config, get_kind(config.get("class", "VAE"))))
    names = [r.path.name for r in checked]
    for r in checked:
        r.name = r.path.name if names.count(r.path.name) == 1 else str(r.path)
    training = [r.name for r in checked if lock_held(r.path)]
    if training:
        raise RunLocked(f"still training (the run's lock is held): {', '.join(training)}; compare it when its "
                        "training has finished")
    groups: dict[tuple[Any, ...], list[str]] = {}
    for r in checked:
        data = (r.config["dataset"], split or r.config.get("splits", {}).get("test", "test"),
                binarizes_test_data(r.config))
        groups.setdefault(data, []).append(r.name)
    if len(groups) > 1:
        described = "; ".join(f"{', '.join(members)}: {d[0]} {d[1]} split"
                              f"{', binarized' if d[2] else ''}" for d, members in groups.items())
        raise ValueError(f"the runs are on different data, so no datapoint pairs: {described} (compare runs of one "
                         "data set, split and binarization)")
    labelled = [r.name for r in checked if r.kind.has_labels]
    if labelled and len(labelled) < len(checked) and "label-summed" not in allow:
        plain = [r.name for r in checked if not r.kind.has_labels]
        raise ValueError(f"{', '.join(labelled)} measure log p(x) with the label summed (a semi-supervised run), "
                         f"{', '.join(plain)} plain log p(x): say that this is what you compare with --allow "
                         "label-summed")
    for r in checked:
        try:
            r.kind.refuse_evaluation(ais_steps)
        except ValueError as e:
            r.ais_refused = str(e)
    return checked


def compare_runs(runs: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 num_particles: int = 5000, num: int | None = None, split: str | None = None,
                 batch_size: int = EVALUATE_BATCH_SIZE, chunk_size: int | None = None,
                 data_root: str | os.PathLike[str] | None = None, device: str = "auto", seed: int = 0,
                 ais_steps: int = 0, ais_chains: int = 16, allow: Iterable[str] = (),
                 progress: bool = True, say: Any = None) -> dict[str, Any]:
    """Measure every run on the same datapoints with the same seeds, pair them with the first, and write
    ``comparison.json``, ``comparison_values.pt`` and the figures into ``out``: what ``pyro-vae compare`` does.

    :param runs: two or more run folders; the differences are each run's minus the first's.
    :param out: the comparison's folder (made if missing).
    :param num_particles: ``K`` per datapoint; ``num``: the first ``num`` datapoints of the test split (default:
        all); ``seed``: the binarization and the particles' seeds; ``batch_size``: datapoints per seeded batch.
    :param ais_steps: also AIS with this many steps and ``ais_chains`` chains, for the runs whose kind allows it.
    :param allow: names of :data:`ALLOWANCES`, what is compared when kinds measure different things.
    :param say: called with each line said while it works (which evaluation is reused); default: nothing.
    :returns: what ``comparison.json`` holds, plus ``"results"`` (``{name: LogLikelihoodResult}``),
        ``"ais_results"`` (``{name: AISResult}`` of the runs with AIS) and ``"written"`` (the files).
    :raises ValueError: before any work, see :func:`check_comparison`.
    """
    from .. import drawing as plots
    from .. import infer

    say = say or (lambda *a, **k: None)
    options = dict(num_particles=num_particles, num=num, chunk_size=chunk_size, ais_chains=ais_chains,
                   batch_size=batch_size)
    checked = check_comparison(runs, split=split, allow=allow, ais_steps=ais_steps, **options)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: a comparison writes a folder")
    first = checked[0]
    x, _ = run_test_data(first.config, split=split, num=num, data_root=data_root, seed=seed)
    split = split or first.config.get("splits", {}).get("test", "test")
    rows, results, ais_results, states = [], {}, {}, []
    for r in checked:
        steps = 0 if r.ais_refused else int(ais_steps)
        wanted = {"split": split, "num_datapoints": int(x.shape[0]), "num_particles": int(num_particles),
                  "seed": int(seed), "epochs": r.kind.epochs_done(r.path), "batch_size": int(batch_size),
                  "ais_steps": steps, "ais_chains": int(ais_chains) if steps else 0}
        found = _reusable(r.path, wanted)
        if found is not None:
            summary, result, ais = found
            say(f"{r.name}: reused {r.path / 'evaluation.json'} (measured in the same setting)")
        else:
            with_ais = f", AIS {steps} steps" if steps else ""
            say(f"{r.name}: measuring (K={num_particles} on {x.shape[0]} datapoints{with_ais})", flush=True)
            measured = measure_run(r.path, num_particles=num_particles, split=split, num=num, batch_size=batch_size,
                                   chunk_size=chunk_size, data_root=data_root, device=device, seed=seed,
                                   diagnostics=True, ais_steps=steps, ais_chains=ais_chains, progress=progress)
            summary, result, ais = measured["summary"], measured["result"], measured["ais_result"]
        results[r.name] = result
        if ais is not None:
            ais_results[r.name] = ais
        states.append(values_state(wanted, result, ais))
        rows.append(_row(r, summary, result, ais, found is not None, steps))
    differences = _differences(checked, results, ais_results, infer)
    comparison: dict[str, Any] = {
        "setting": {"split": split, "num_datapoints": int(x.shape[0]), "num_particles": int(num_particles),
                    "seed": int(seed), "batch_size": int(batch_size), "ais_steps": int(ais_steps),
                    "ais_chains": int(ais_chains) if ais_steps else 0, "dataset": first.config["dataset"]},
        "allow": {a: ALLOWANCES[a] for a in allow},
        "runs": rows, "differences": differences, "pyro_vae_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(comparison, out / COMPARISON_NAME)
    atomic_save({"names": [r.name for r in checked], "runs": states}, out / COMPARISON_VALUES_NAME)
    written = [out / COMPARISON_NAME, out / COMPARISON_VALUES_NAME]
    with plots.save_options(caption=f"comparison {out.resolve().name} · {first.config['dataset']}"):
        plots.k_curves(results, out / COMPARISON_FIGURES[0])
        written.append(out / COMPARISON_FIGURES[0])
        if differences:
            plots.paired_differences(difference_bars(differences), out / COMPARISON_FIGURES[1])
            written.append(out / COMPARISON_FIGURES[1])
    return {**comparison, "results": results, "ais_results": ais_results, "written": written}


def _reusable(run: Path, wanted: dict[str, Any]) -> tuple[dict[str, Any], Any, Any] | None:
    """The run's evaluation (its summary, result and AIS result) when it was measured in the setting ``wanted`` and
    its values file holds that same setting; else None."""
    evaluation = read_evaluation(run)
    if evaluation is None or "stale" in evaluation:
        return None
    setting = evaluation_setting(evaluation)
    if not wanted["ais_steps"]:  # an evaluation with AIS serves a comparison without it
        setting.update(ais_steps=0, ais_chains=0)
    if setting != wanted:
        return None
    values = read_evaluation_values(run / EVALUATION_VALUES_NAME)
    if values is None or values[1].khat is None or values[1].values.numel() != wanted["num_datapoints"]:
        return None
    stored, result, ais = values
    if {**stored, **({} if wanted["ais_steps"] else {"ais_steps": 0, "ais_chains": 0})} != wanted:
        return None
    return evaluation, result, ais if wanted["ais_steps"] else None


def _row(r: _Run, summary: dict[str, Any], result: Any, ais: Any, reused: bool, steps: int) -> dict[str, Any]:
    """One run's line of the table."""
    from ..infer.results import standard_error

    usage = summary.get("latent_usage", {})
    seconds = [rec["seconds"] for records, _ in r.kind.histories(r.path).values() for rec in records
               if isinstance(rec.get("seconds"), (int, float))]
    row: dict[str, Any] = {
        "name": r.name, "path": str(r.path), "model": summary.get("model", r.kind.describe(r.config)),
        "reused": reused,
        "elbo": {"mean": float(result.elbo.double().mean()), "stderr": standard_error(result.elbo)},
        "iwae": {"num_particles": int(result.num_particles), "mean": result.mean, "stderr": result.stderr,
                 "mc_stderr": result.mean_mc_stderr},
        "curve": {str(k): {"mean": float(v.double().mean()), "stderr": standard_error(v)}
                  for k, v in sorted(result.curve.items())},
        "khat_above": float((result.khat > KHAT_LIMIT).double().mean()) if result.khat is not None else None,
        "active_units": sum(int(u["active_units"]) for u in usage.values()),
        "dimensions": sum(int(u["dimensions"]) for u in usage.values()),
        "parameters": summary.get("parameters"), "epochs": summary.get("epochs"),
        "training_seconds": float(sum(seconds)) if seconds else None,
    }
    if ais is not None:
        row["ais"] = {"num_steps": steps, "num_chains": ais.num_chains, "mean": ais.mean, "stderr": ais.stderr,
                      "mc_stderr": ais.mean_mc_stderr}
    elif r.ais_refused:
        row["ais"] = {"left_out": r.ais_refused}
    for extra in ("accuracy",):
        if extra in summary:
            row[extra] = summary[extra]
    return row


def _differences(checked: list[_Run], results: dict[str, Any], ais_results: dict[str, Any],
                 infer: Any) -> list[dict[str, Any]]:
    """Each run's estimates minus the first run's, paired over the datapoints (:func:`pyro_vae.infer.compare`)."""
    base = checked[0].name
    out = []
    for r in checked[1:]:
        pairs = [("ELBO", results[r.name].elbo, results[base].elbo),
                 (f"IWAE_{results[r.name].num_particles}", results[r.name], results[base])]
        if r.name in ais_results and base in ais_results:
            pairs.append(("AIS", ais_results[r.name], ais_results[base]))
        for estimate, a, b in pairs:
            c = infer.compare(a, b, names=(r.name, base))
            out.append({"run": r.name, "against": base, "estimate": estimate, "mean": c.mean, "stderr": c.stderr,
                        "mc_stderr": c.mc_stderr if math.isfinite(c.mc_stderr) else None,
                        "ci95": [c.ci_low, c.ci_high], "num_datapoints": int(c.difference.numel())})
    return out


def difference_bars(differences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``comparison.json``'s differences as :func:`pyro_vae.plots.paired_differences` draws them."""
    return [{"label": f"{d['run']} − {d['against']}\n{d['estimate']}", "mean": d["mean"], "stderr": d["stderr"]}
            for d in differences]


def read_comparison(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A comparison's folder read back: ``(comparison.json, {name: LogLikelihoodResult})`` (the results empty when
    ``comparison_values.pt`` is missing or damaged).

    :raises FileNotFoundError: when the folder holds no ``comparison.json``.
    """
    import json

    folder = Path(folder)
    path = folder / COMPARISON_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {COMPARISON_NAME} (a comparison's folder is what "
                                "'pyro-vae compare RUN RUN --out FOLDER' writes)")
    try:
        comparison = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    results: dict[str, Any] = {}
    try:
        state = load_tensors(folder / COMPARISON_VALUES_NAME, "comparison values file")
        results = {name: values_from_state(s)[1] for name, s in zip(state["names"], state["runs"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return comparison, results


def _pm(d: dict[str, Any] | None, mc: bool = False) -> str:
    if not d or "mean" not in d:
        return "n/a" if not d else "left out"
    text = f"{d['mean']:.3f} ± {d['stderr']:.3f}"
    if mc and d.get("mc_stderr") is not None and math.isfinite(d["mc_stderr"]):
        text += f" (MC {d['mc_stderr']:.3f})"
    return text


def _seconds(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2g} s"


def table_rows(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The comparison's two tables as text cells, for the command line and the report: ``(headers, rows,
    difference headers, difference rows)``: one row per run (ELBO, IWAE_K, AIS where asked, the share of k-hat above
    0.7, active units, parameters, epochs, training time, whether its evaluation was reused), and one per paired
    difference against the first run (the mean, the paired standard error, its Monte Carlo part, the 95% interval)."""
    k = comparison["setting"]["num_particles"]
    ais = bool(comparison["setting"].get("ais_steps"))
    headers = ["run", "ELBO", f"IWAE_{k}"] + (["AIS"] if ais else []) + \
        [f"k-hat > {KHAT_LIMIT}", "active units", "parameters", "epochs", "training", "evaluation"]
    rows = []
    for r in comparison["runs"]:
        seconds = r.get("training_seconds")
        rows.append([r["name"], _pm(r["elbo"]), _pm(r["iwae"], mc=True)] + ([_pm(r.get("ais"), mc=True)] if ais else [])
                    + ["n/a" if r["khat_above"] is None else f"{100 * r['khat_above']:.1f}%",
                       f"{r['active_units']} of {r['dimensions']}",
                       "n/a" if r["parameters"] is None else f"{r['parameters']:,}", str(r["epochs"]),
                       _seconds(seconds), "reused" if r["reused"] else "measured"])
    diff_headers = ["difference", "estimate", "mean", "paired SE", "Monte Carlo part", "95% interval"]
    diff_rows = [[f"{d['run']} − {d['against']}", d["estimate"], f"{d['mean']:+.3f}", f"{d['stderr']:.3f}",
                  "n/a" if d["mc_stderr"] is None else f"{d['mc_stderr']:.3f}",
                  f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"] for d in comparison["differences"]]
    return headers, rows, diff_headers, diff_rows

"""One self-contained HTML page of a run or of a comparison: :func:`report` is what ``pyro-vae report`` does, and
``pyro_vae.report(...)`` from Python.

The page needs nothing else: every figure is a PNG inlined as a ``data:`` URI, the style sheet is inline, there is no
script, the formulas are MathML (which browsers render themselves, offline), and a Content-Security-Policy forbids
any request the page could make (``default-src 'none'; img-src data:``). It reads on a laptop and on a phone (one
column that wraps its figures, tables that scroll sideways).

- A run's page (:mod:`pyro_vae.runs`): its settings, the data line of ``train.log``, the training curves, samples and
  reconstructions of test datapoints, the latent space where it is 2-D, the evaluation of ``pyro-vae evaluate``
  (ELBO and IWAE with their errors, the K-curve and the k-hat histogram from its per-datapoint values, active units,
  AIS), the last lines of ``train.log`` and the commands that resume and evaluate it.
- A comparison's page (:mod:`pyro_vae.pipeline.compare`): its setting, the table, the paired differences and the
  figures (every run's K-curve; the differences with their error bars).

Figures are drawn anew from the run's files and model (the figure primitives of :mod:`pyro_vae.plots`), so the page
never shows a stale PNG.
"""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .._version import __version__
from ..io import atomic_write
from ..run_files import CONFIG_NAME, LOG_NAME, PROG, TEST_METRICS_NAME
from ..runs import (
    EVALUATION_VALUES_NAME,
    load_run,
    read_config,
    read_evaluation,
    read_evaluation_values,
    run_test_data,
)
from .compare import COMPARISON_NAME, read_comparison, table_rows
from .registry import get_kind

__all__ = ["report", "REPORT_NAME", "LOG_LINES"]

#: the page's file name in the source folder when no ``out`` is given
REPORT_NAME = "report.html"
#: how many of the last lines of ``train.log`` the page shows
LOG_LINES = 25

_CSS = """
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce0; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
main { max-width: 62rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; }
p, li { overflow-wrap: anywhere; }
.muted { color: var(--muted); font-size: 0.9rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.55rem; text-align: left; vertical-align: top;
         white-space: nowrap; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 22rem), 1fr)); gap: 1rem; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figcaption { color: var(--muted); font-size: 0.88rem; }
pre { background: #f6f8fa; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; white-space: pre-wrap;
      overflow-wrap: anywhere; }
math { font-size: 1.1rem; }
@media (max-width: 40rem) { body { font-size: 15px; } main { padding: 0.6rem; } th, td { padding: 0.25rem 0.4rem; } }
"""

#: the bounds the evaluation reports, in MathML (rendered by the browser itself, no script, no network)
_FORMULAS = """
<p><math display="block"><mrow><mi>ELBO</mi><mo>=</mo><msub><mi>𝔼</mi><mrow><mi>q</mi><mo>(</mo><mi>z</mi><mo>|</mo>
<mi>x</mi><mo>)</mo></mrow></msub><mo>[</mo><mi>log</mi><mi>p</mi><mo>(</mo><mi>x</mi><mo>,</mo><mi>z</mi><mo>)</mo>
<mo>−</mo><mi>log</mi><mi>q</mi><mo>(</mo><mi>z</mi><mo>|</mo><mi>x</mi><mo>)</mo><mo>]</mo></mrow></math></p>
<p><math display="block"><mrow><msub><mi>ℒ</mi><mi>K</mi></msub><mo>=</mo><mi>log</mi><mfrac><mn>1</mn><mi>K</mi>
</mfrac><munderover><mo>∑</mo><mrow><mi>k</mi><mo>=</mo><mn>1</mn></mrow><mi>K</mi></munderover><mfrac><mrow><mi>p</mi>
<mo>(</mo><mi>x</mi><mo>,</mo><msub><mi>z</mi><mi>k</mi></msub><mo>)</mo></mrow><mrow><mi>q</mi><mo>(</mo><msub><mi>z</mi>
<mi>k</mi></msub><mo>|</mo><mi>x</mi><mo>)</mo></mrow></mfrac><mo>,</mo><mspace width="1em"/><msub><mi>z</mi><mi>k</mi>
</msub><mo>∼</mo><mi>q</mi><mo>(</mo><mi>z</mi><mo>|</mo><mi>x</mi><mo>)</mo></mrow></math></p>
<p class="muted">ELBO ≤ ℒ<sub>K</sub> ≤ log p(x) for every K, and ℒ<sub>K</sub> rises to log p(x) as K grows
(Burda et al. 2016). The errors are the spread over datapoints (±) and the Monte Carlo error (MC); neither covers
ℒ<sub>K</sub>'s downward bias, which only a larger K or AIS shrinks.</p>
"""


def report(source: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
           data_root: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Write one self-contained HTML page of a run folder or of a comparison's folder (``comparison.json``).

    :param source: a run folder written by ``pyro-vae train``, or a folder written by ``pyro-vae compare`` (or its
        ``comparison.json``).
    :param out: the HTML file (default: ``source/report.html``).
    :param data_root: where the run's data set is (default: the run's, else ``$PYRO_VAE_DATA``): the reconstructions
        and the latent space need its test datapoints.
    :param seed: the samples' seed and the test data's binarization.
    :returns: the path of the page written.
    :raises FileNotFoundError: when ``source`` is neither a run nor a comparison.

    Example::

        pyro_vae.report("runs/digits", "digits.html")
    """
    source = Path(source)
    if source.is_file() and source.name == COMPARISON_NAME:
        source = source.parent
    if (source / COMPARISON_NAME).is_file():
        title, body = _comparison_page(source)
    elif (source / CONFIG_NAME).is_file() or not source.is_dir():
        read_config(source)  # a missing or damaged run is named here
        title, body = _run_page(source, data_root, int(seed))
    else:
        raise FileNotFoundError(f"{source} holds neither a run ({CONFIG_NAME}) nor a comparison ({COMPARISON_NAME})")
    path = Path(out) if out is not None else source / REPORT_NAME
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder: give the HTML file's name, e.g. {path / REPORT_NAME}")
    page = _page(title, body)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


# ---------------------------------------------------------------------------------------------------- the page
def _page(title: str, body: str) -> str:
    made = time.strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
            f"<p class=\"muted\">Written by {PROG} {__version__} on {made}. This page is one file: its figures are "
            "inlined and it loads nothing from the network.</p>\n</main>\n</body>\n</html>\n")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    numeric = ' class="num"'
    body = "".join("<tr>" + "".join(f"<td{numeric if i >= numeric_from else ''}>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<div class=\"scroll\"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>\n"


def _png(png: bytes, caption: str) -> str:
    """PNG bytes as an ``<img>`` with a ``data:`` URI, captioned."""
    data, alt = base64.b64encode(png).decode("ascii"), _e(caption)
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{alt}\">"
            f"<figcaption>{alt}</figcaption></figure>\n")


def _figure(fig: Any, caption: str) -> str:
    """A matplotlib figure as an ``<img>`` with a PNG ``data:`` URI."""
    from ..drawing import figure_bytes

    return _png(figure_bytes(fig, "png"), caption)


def _png_file(path: Path, caption: str) -> str:
    """A PNG file as an ``<img>`` with a ``data:`` URI."""
    return _png(path.read_bytes(), caption)


def _figures(items: list[str]) -> str:
    return f"<div class=\"figures\">\n{''.join(items)}</div>\n" if items else ""


# ---------------------------------------------------------------------------------------------------- a run
def _run_page(run: Path, data_root: Any, seed: int) -> tuple[str, str]:
    import json

    from .. import drawing as plots

    config = read_config(run)
    kind = get_kind(config.get("class", "VAE"))
    name = run.resolve().name
    parts = [f"<h1>Run {_e(name)}</h1>\n<p>{_e(kind.name)} on {_e(config['dataset'])} · <span class=\"muted\">"
             f"{_e(run)}</span></p>\n"]
    settings = [("model class", kind.name)] + [(k, v) for k, v in (config.get("model_args") or {}).items()] + \
        [(k, v) for k, v in (config.get("training") or {}).items()]
    parts.append("<h2>Settings</h2>\n" + _table(["setting", "value"], [(k, _setting(v)) for k, v in settings],
                                                numeric_from=2))
    log_lines = _log_lines(run)
    data_line = next((line.split(" ", 2)[-1] for line in reversed(log_lines) if " data: " in line), None)
    parts.append("<h2>Data</h2>\n<p>" + _e(data_line or f"data: {config['dataset']}, splits "
                                           f"{config.get('splits', {})}") + "</p>\n")
    # training
    figures = []
    for history, title in kind.histories(run).values():
        if history:
            figures.append(_figure(plots.training_curves(history, None, title=title), title or "training curves"))
    test = run / TEST_METRICS_NAME
    test_line = ""
    if test.is_file():
        try:
            m = json.loads(test.read_text())
            shown = {k: v for k, v in m.items() if isinstance(v, (int, float, str))}
            test_line = "<p>Test metrics: " + _e(", ".join(f"{k} {_number(v)}" for k, v in shown.items())) + "</p>\n"
        except (json.JSONDecodeError, UnicodeDecodeError):
            test_line = f"<p class=\"muted\">{_e(test)} is damaged.</p>\n"
    parts.append("<h2>Training</h2>\n" + test_line + (_figures(figures) or "<p>No training metrics yet.</p>\n"))
    parts.append(_model_section(run, data_root, seed))
    parts.append(_evaluation_section(run))
    parts.append(f"<h2>train.log</h2>\n<p class=\"muted\">its last {LOG_LINES} lines</p>\n<pre>"
                 + _e("\n".join(log_lines[-LOG_LINES:]) or "(no train.log)") + "</pre>\n")
    epochs = kind.epochs_done(run)
    parts.append("<h2>Resume and evaluate</h2>\n<pre>"
                 + _e(f"{PROG} train --out {run} --resume --epochs {max(epochs, 1) * 2}   # on to that many epochs "
                      f"(it has {epochs})\n{PROG} evaluate {run} --num-particles 5000 --ais-steps 500\n"
                      f"{PROG} plot {run}\n{PROG} report {run} --out report.html") + "</pre>\n")
    return f"{PROG} run {name}", "".join(parts)


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "—" if value is None else str(value)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _log_lines(run: Path) -> list[str]:
    path = run / LOG_NAME
    try:
        return path.read_text(errors="replace").splitlines() if path.is_file() else []
    except OSError:
        return []


def _model_section(run: Path, data_root: Any, seed: int) -> str:
    """Samples, reconstructions of test datapoints and the latent space where it is 2-D."""
    import pyro

    from .. import drawing as plots

    try:
        vae, config = load_run(run, device="cpu")
    except (OSError, ValueError) as e:
        return f"<h2>Samples and reconstructions</h2>\n<p>The model could not be loaded: {_e(e)}</p>\n"
    pyro.set_rng_seed(seed)
    figures, notes = [], []
    try:
        x, labels = run_test_data(config, num=500, data_root=data_root, seed=seed, labels=True)
    except (OSError, ValueError) as e:
        x, labels = None, None
        notes.append(f"The test data could not be read ({e}): no reconstructions or latent space.")
    image = x is None or plots.is_image_shape(x.shape[1:])
    figures.append(_figure(plots.save_samples(vae, None, num_samples=64 if image else 1000,
                                              data=None if image else x), "samples from the model"))
    if x is not None:
        figures.append(_figure(plots.save_reconstructions(vae, x, None, n=min(32, x.shape[0])),
                               "test datapoints (odd rows) and their reconstructions"))
        dims = getattr(vae, "latent_dims", [getattr(vae, "latent_dim", None)])
        if dims and dims[0] == 2 and hasattr(vae, "encode"):
            figures.append(_figure(plots.latent_space(vae, x, labels, None), "the 2-D latent space of test "
                                                                               "datapoints (posterior means)"))
        else:
            notes.append(f"The latent space has {dims[0] if dims else 'several'} dimensions: "
                         f"'{PROG} plot {run}' draws its first two principal components.")
    return ("<h2>Samples and reconstructions</h2>\n" + _figures(figures)
            + "".join(f"<p class=\"muted\">{_e(n)}</p>\n" for n in notes))


def _evaluation_section(run: Path) -> str:
    from .. import drawing as plots

    evaluation = read_evaluation(run)
    if evaluation is None:
        return (f"<h2>Evaluation</h2>\n<p>Not evaluated yet: <code>{_e(PROG)} evaluate {_e(run)}</code> estimates "
                "log p(x) of the test data (IWAE, diagnostics, AIS).</p>\n")
    e = evaluation
    parts = ["<h2>Evaluation</h2>\n"]
    if "stale" in e:
        parts.append(f"<p><strong>Stale:</strong> {_e(e['stale'])}</p>\n")
    parts.append(f"<p>{_e(e.get('model', ''))}: {e.get('num_datapoints')} datapoints of the {_e(e.get('split'))} "
                 f"split, K = {e.get('num_particles')} particles, seed {e.get('seed')}, after "
                 f"{e.get('epochs')} epochs.</p>\n")
    rows = [("ELBO", f"{e['elbo']:.3f} ± {e['elbo_stderr']:.3f}", ""),
            (f"IWAE_{e['num_particles']}", f"{e['log_likelihood']:.3f} ± {e['log_likelihood_stderr']:.3f}",
             f"{e['log_likelihood_mc_stderr']:.3f}"),
            ("IWAE − ELBO", f"{e['gap']:.3f} ± {e['gap_stderr']:.3f}", ""),
            ("rate", f"{e['rate']:.3f}", ""), ("distortion", f"{e['distortion']:.3f}", "")]
    if isinstance(e.get("ais"), dict):
        a = e["ais"]
        rows.append((f"AIS ({a['num_chains']} chains, {a['num_steps']} steps)", f"{a['log_likelihood']:.3f} ± "
                     f"{a['stderr']:.3f}", f"{a['mc_stderr']:.3f}"))
        rows.append(("AIS − IWAE (paired)", f"{a['minus_iwae']['mean']:.3f} ± {a['minus_iwae']['stderr']:.3f}", ""))
    if "accuracy" in e:
        rows.append(("accuracy of argmax q(y|x)", f"{e['accuracy']:.4f}", ""))
    parts.append(_table(["estimate (nats per datapoint)", "mean ± standard error", "Monte Carlo error"], rows))
    parts.append(_FORMULAS)
    if "khat_bands" in e:
        b = e["khat_bands"]
        parts.append(f"<p>Pareto k-hat: mean {e['khat_mean']:.3f}, max {e['khat_max']:.3f}; {b.get('good', 0)} "
                     f"datapoints good, {b.get('ok', 0)} usable with care, {b.get('bad', 0)} above "
                     f"{e['khat_threshold']:.2f} (unreliable).</p>\n")
    usage = e.get("latent_usage") or {}
    if usage:
        parts.append(_table(["latent", "active units", "dimensions", "I(x; z) (nats)"],
                            [(n, u["active_units"], u["dimensions"],
                              "n/a" if u.get("mutual_information") is None else f"{u['mutual_information']:.3f}")
                             for n, u in usage.items()]))
    values = read_evaluation_values(run / EVALUATION_VALUES_NAME)
    figures = []
    if values is not None and values[1].values.numel() == e.get("num_datapoints"):
        result = values[1]
        figures.append(_figure(plots.k_curve(result), "the bound against the number of particles K"))
        if result.khat is not None:
            figures.append(_figure(plots.khat_histogram(result.khat, threshold=result.khat_threshold),
                                   "Pareto k-hat of the datapoints' importance weights"))
    else:
        curve = e.get("curve") or {}
        if curve:
            parts.append(_table(["K", "IWAE_K"], [(k, f"{v['mean']:.3f} ± {v['stderr']:.3f}")
                                                   for k, v in curve.items()]))
        parts.append(f"<p class=\"muted\">This evaluation has no per-datapoint values ({EVALUATION_VALUES_NAME}): "
                     f"evaluate again with this version to draw the K-curve and the k-hat histogram.</p>\n")
    return "".join(parts) + _figures(figures)


# ---------------------------------------------------------------------------------------------------- a comparison
def _comparison_page(folder: Path) -> tuple[str, str]:
    from .. import drawing as plots
    from .compare import COMPARISON_FIGURES, difference_bars

    comparison, results = read_comparison(folder)
    s = comparison["setting"]
    name = folder.resolve().name
    ais = f", AIS with {s['ais_steps']} steps" if s.get("ais_steps") else ""
    parts = [f"<h1>Comparison {_e(name)}</h1>\n<p>{len(comparison['runs'])} runs on the same {s['num_datapoints']} "
             f"datapoints of {_e(s['dataset'])}'s {_e(s['split'])} split, K = {s['num_particles']} particles, seed "
             f"{s['seed']}: the same points, binarization and seeds for every run"
             f"{ais}.</p>\n"]
    for allowance, what in (comparison.get("allow") or {}).items():
        parts.append(f"<p class=\"muted\">Allowed ({_e(allowance)}): {_e(what)}</p>\n")
    headers, rows, diff_headers, diff_rows = table_rows(comparison)
    parts.append("<h2>The runs</h2>\n" + _table(headers, rows))
    parts.append("<p class=\"muted\">" + "; ".join(f"{_e(r['name'])}: {_e(r['model'])} ({_e(r['path'])})"
                                                  for r in comparison["runs"]) + "</p>\n")
    if diff_rows:
        parts.append("<h2>Paired differences against the first run</h2>\n" + _table(diff_headers, diff_rows, 2)
                     + "<p class=\"muted\">Paired over the same datapoints (pyro_vae.infer.compare): the paired "
                       "standard error holds the Monte Carlo noise of both estimates; its Monte Carlo part is given "
                       "apart.</p>\n")
    figures = []
    if results:
        figures.append(_figure(plots.k_curves(results), "every run's bound against K"))
    elif (folder / COMPARISON_FIGURES[0]).is_file():
        figures.append(_png_file(folder / COMPARISON_FIGURES[0], "every run's bound against K"))
    if comparison["differences"]:
        figures.append(_figure(plots.paired_differences(difference_bars(comparison["differences"])),
                               "paired differences with their 95% intervals"))
    parts.append("<h2>Figures</h2>\n" + _figures(figures) + _FORMULAS)
    return f"{PROG} comparison {name}", "".join(parts)

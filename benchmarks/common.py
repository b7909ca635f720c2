"""Helpers shared by the benchmark scripts in ``benchmarks/``.

Every benchmark measures the library side by side with a reference *in one run* (the machines are noisy, so
the ratio is what matters) and can record its result in ``docs/benchmarks.md``. This module holds what the
scripts share:

- :func:`machine_info` / :func:`machine_markdown`: the CPU model, core count, load, torch/Pyro versions,
  threads and device a measurement ran on;
- :func:`print_json`: one JSON object per line on stdout (easy to ``grep``/``jq``);
- :func:`command_line`, :func:`utc_date`, :func:`markdown_table`;
- :func:`update_section`: write or replace one script's section of ``docs/benchmarks.md``, delimited by
  ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, leaving every other section alone.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = [
    "REPO_ROOT", "DOCS_PATH", "machine_info", "machine_markdown", "print_json", "command_line", "utc_date",
    "markdown_table", "update_section",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"

# ``python benchmarks/NAME.py`` puts ``benchmarks/`` on the path, not the repository: make the checkout's
# ``pyro_vae`` importable when it is not installed (an installed one wins otherwise).
if importlib.util.find_spec("pyro_vae") is None:
    sys.path.insert(0, str(REPO_ROOT))

_PAGE_HEADER = """# Benchmarks

Each script in `benchmarks/` measures the library side by side with a hand-written reference **in the same
run**, alternating between the two, and reports the ratio. The machines these numbers come from are shared
and noisy: the *ratio* is the result; the absolute numbers only describe the machine and the moment.

The sections below are written by the scripts themselves (`--write-docs`); each lies between
`<!-- NAME:start -->` and `<!-- NAME:end -->` markers and is replaced whole on the next run, so edit the
scripts rather than the text between the markers.
"""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(threads: int | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Describe the machine a measurement runs on.

    :param threads: the intra-op thread count in use (default: ``torch.get_num_threads()``).
    :param device: the device the benchmark runs on; a CUDA device adds the GPU's name.
    :returns: a JSON-able dict: ``cpu``, ``logical_cores``, ``usable_cores``, ``load_average`` (1, 5, 15 min,
        when the OS reports it), ``python``, ``torch``, ``pyro``, ``threads``, ``device`` and ``gpu``.
    """
    try:
        import pyro

        pyro_version = pyro.__version__
    except ImportError:  # pragma: no cover - pyro is a dependency
        pyro_version = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    dev = torch.device(device) if device is not None else None
    gpu = torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro_version,
        "threads": int(threads) if threads is not None else torch.get_num_threads(),
        "device": str(dev) if dev is not None else None,
        "gpu": gpu,
    }


def machine_markdown(info: dict[str, Any]) -> str:
    """The dict of :func:`machine_info` as a Markdown bullet list."""
    lines = [f"- CPU: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable)"]
    if info.get("load_average") is not None:
        lines.append("- load average when the run started (1, 5, 15 min): "
                     + ", ".join(f"{v:.2f}" for v in info["load_average"]))
    lines.append(f"- Python {info['python']}, torch {info['torch']}, Pyro {info['pyro']}")
    lines.append(f"- torch threads: {info['threads']}")
    if info.get("device") is not None:
        device = info["device"] + (f" ({info['gpu']})" if info.get("gpu") else "")
        lines.append(f"- device: {device}")
    return "\n".join(lines)


def print_json(record: dict[str, Any]) -> None:
    """Print ``record`` as one line of JSON on stdout and flush."""
    print(json.dumps(record), flush=True)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as one would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = argv[0]
    return shlex.join(["python", script_text, *argv[1:]])


def utc_date() -> str:
    """The current time in UTC, e.g. ``2024-05-01 12:34 UTC``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    def numeric(v: Any) -> bool:
        return isinstance(v, (int, float)) or bool(re.fullmatch(r"[-+]?[\d.,]+[x%]?", str(v).strip()))

    align = ["---:" if rows and all(numeric(r[i]) for r in rows) else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def update_section(name: str, body: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``body`` into ``name``'s section of the benchmarks page, replacing the old section.

    The section is ``<!-- name:start -->``, ``body``, ``<!-- name:end -->``. The page is created with a short
    header if missing; a section that does not exist yet is appended at the end. Other sections are kept as
    they are. The file is replaced atomically (temporary file, then rename).

    :param name: the section's name, usually the benchmark script's name (letters, digits, ``_``, ``-``).
    :param body: Markdown text of the section (its own ``##`` heading included).
    :param path: the page (default: ``docs/benchmarks.md`` in the repository).
    :returns: the path written.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"section names are letters, digits, '_' and '-', got {name!r}")
    path = Path(path) if path is not None else DOCS_PATH
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else _PAGE_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

"""The layout: imports only point down the floors of ``docs/architecture.md``, with no circle; every module says
its job in a docstring; every objective and estimator is written once (no stray copies of the IWAE formula)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"

#: the floors, bottom first (a module may import its own floor or lower ones)
FLOORS = [
    ["_version", "checks", "run_files", "rng", "threads", "io", "nets", "likelihoods", "datasets", "distributed",
     "frechet"],
    ["priors", "guides"],
    ["infer.weights", "infer.replicates"],
    ["infer"],  # the other estimators and the objectives, all on the engine's terms
    ["saving"],
    ["models"],
    ["train"],
    ["drawing"],  # figure primitives: tensors and histories in, a figure out (no run folders)
    ["runs"],
    ["pipeline"],
    ["plots"],  # a façade: the primitives and the run's figures by one name
    ["cli"],
    [""],  # the package itself
]
#: upward imports inside a function, each with its reason
ALLOWED_UP = {
    ("models.two_stage", "train.two_stage"): "TwoStageVAE.fit is a convenience that calls the trainer when called",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _floor(name: str) -> int:
    best, depth = None, -1
    for i, floor in enumerate(FLOORS):
        for prefix in floor:
            if (name == prefix or name.startswith(prefix + ".") or prefix == "") and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best is not None, name
    return best


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every relative import of the file."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets = [target] if node.module else [".".join([*base, a.name]) for a in node.names]
            for t in targets:
                out.append((t, id(node) in top_level))
    return out


def _resolve(target: str, known: set[str]) -> str:
    while target and target not in known:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target


def test_imports_point_down_and_have_no_circle() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        name = _module_name(f)
        for target, top in _imports(f):
            target = _resolve(target, known)
            if target == name:
                continue
            if _floor(target) > _floor(name):
                assert (name, target) in ALLOWED_UP and not top, f"{name} imports {target}, a floor above it"
                continue
            if name and target:  # every import, inside functions too (the package's own lazy names aside)
                graph.setdefault(name, set()).add(target)
    # no circle among the imports (a depth-first search)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*path, node, nxt])}")
            if state.get(nxt) is None:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_plots_never_import_cli() -> None:
    targets = {t for t, _ in _imports(PACKAGE / "plots.py")}
    assert not any(t.endswith("cli") for t in targets)


def test_every_module_says_its_job() -> None:
    for f in sorted(PACKAGE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(f.read_text()))
        assert doc and len(doc.split()) >= 5, f"{f.relative_to(PACKAGE)} has no docstring saying its job"


def test_objectives_are_written_once() -> None:
    """The IWAE bound ``logsumexp(log_w) - log K`` and the DReG weights appear in the engine's objectives and
    estimators only, never in a model class."""
    models = [str(p.relative_to(PACKAGE)) for p in sorted((PACKAGE / "models").glob("*.py"))]
    for rel in (*models, "guides.py", "priors.py", "likelihoods.py", "nets.py", "train/step.py", "train/loop.py"):
        text = (PACKAGE / rel).read_text()
        if rel in (*models, "guides.py", "train/step.py", "train/loop.py"):  # (a prior's mixture density may logsumexp)
            assert "logsumexp" not in text, f"{rel} computes a log-sum-exp: estimators belong in pyro_vae.infer"
            assert "softmax" not in text, f"{rel} normalises weights: objectives belong in pyro_vae.infer.objectives"
        if not rel.startswith("train/"):  # the step's loss() applies an objective of pyro_vae.infer
            assert "def loss(" not in text, f"{rel} defines a loss: objectives belong in pyro_vae.infer.objectives"
    objectives = (PACKAGE / "infer" / "objectives.py").read_text()
    assert objectives.count("def iwae_dreg(") == 1 and objectives.count("def iwae(") == 1


def test_the_package_ships_its_license_type_marker_and_declares_what_it_imports():
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    assert (root / "LICENSE").is_file() and cfg["metadata"]["license_files"].strip() == "LICENSE"
    assert (root / "pyro_vae" / "py.typed").is_file() and "py.typed" in cfg["options.package_data"]["pyro_vae"]
    requires = {line.split(">")[0].split("=")[0].strip() for line in cfg["options"]["install_requires"].split("\n")
                if line.strip()}
    imported = set()
    import ast

    for path in (root / "pyro_vae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"pyro_vae", "__future__"}
    names = {"pyro": "pyro-ppl", "sklearn": "scikit-learn", "yaml": "pyyaml"}
    optional = {"tensorboard", "lightning", "mlflow", "fcntl"}  # extras, and a stdlib module of POSIX systems
    assert {names.get(m, m) for m in third_party} - optional <= requires, third_party

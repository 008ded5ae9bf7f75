"""The package layers point one way. An import graph read from the source (ast: imports inside functions count as
much as those at the top of a module) says which unit of kdbench imports which; a unit is the first component
under kdbench/: a subpackage (schema, models, ...) or a top-level module (runtime, train, evaluate, paths).

Nothing here imports kdbench: the graph is read from the files, so a broken import cannot hide an edge.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kdbench"
MAX_LINES = 400
CLIS = ("train", "evaluate")


@dataclass(frozen=True)
class Import:
    """One import of a kdbench module by a file of kdbench."""
    file: str  # relative to the repository: kdbench/models/loading.py
    line: int
    source: str  # the importing module: kdbench.models.loading
    target: str  # the imported module, absolute: kdbench.stages.models

    @property
    def source_unit(self) -> str:
        return unit(self.source)

    @property
    def target_unit(self) -> str:
        return unit(self.target)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.target}"


def module_of(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """kdbench.models.loading -> models; kdbench.runtime -> runtime; kdbench -> kdbench (the package's root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_kdbench(module: str) -> bool:
    return module == "kdbench" or module.startswith("kdbench.")


def _absolute(path: Path, root: Path, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, relative imports (`from ..schema import x`) made absolute."""
    if not node.level:
        return node.module or ""
    package = module_of(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's relative imports start from the package holding it
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_in(path: Path, root: Path = REPO) -> list[Import]:
    """Every kdbench module `path` imports, wherever in the file the import statement is; also
    importlib.import_module("kdbench....") with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(path, root, node)
            # `from kdbench import runtime` and `from . import surgery` name modules, not the package they are in.
            names_modules = module == "kdbench" or node.module is None
            targets = [f"{module}.{alias.name}" for alias in node.names] if names_modules else [module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        found += [Import(path.relative_to(root).as_posix(), node.lineno, module_of(path, root), t)
                  for t in targets if is_kdbench(t)]
    return found


@cache
def python_files() -> tuple[Path, ...]:
    return tuple(sorted(PACKAGE.rglob("*.py")))


@cache
def cross_unit_imports() -> tuple[Import, ...]:
    """The imports that cross from one unit to another (imports within a unit are its own business)."""
    return tuple(i for f in python_files() for i in imports_in(f) if i.source_unit != i.target_unit)


def imports_from(source: str, forbidden: set[str] | None = None) -> list[str]:
    """The imports of unit `source` into the `forbidden` units (into any other unit when None)."""
    return [str(i) for i in cross_unit_imports()
            if i.source_unit == source and (forbidden is None or i.target_unit in forbidden)]


def _report(what: str, offending: list[str]) -> str:
    return f"{what}:\n  " + "\n  ".join(offending)


# ---------------------------------------------------------------------------------------------- the graph itself

def test_the_graph_sees_imports_at_module_and_function_level():
    # If the reader missed imports every check below would pass vacuously; these edges are known to exist.
    edges = {(i.source_unit, i.target_unit) for i in cross_unit_imports()}
    assert ("methods", "schema") in edges  # kdbench/methods/registry.py, at module level
    assert ("runtime", "methods") in edges  # kdbench/runtime.py, inside validate()
    assert {"schema", "models", "storage", "methods", "stages", "runtime", "train", "evaluate"} <= {
        unit(module_of(f)) for f in python_files()}


def test_relative_imports_resolve_to_the_module_they_name(tmp_path):
    # kdbench has none today; one added later must count like its absolute spelling.
    models = tmp_path / "kdbench" / "models"
    models.mkdir(parents=True)
    (models / "loading.py").write_text("def f():\n    from ..stages import teacher\n    from . import surgery\n")
    (models / "__init__.py").write_text("from .loading import f\nfrom .. import runtime\n")
    loading, init = imports_in(models / "loading.py", tmp_path), imports_in(models / "__init__.py", tmp_path)
    assert [i.target for i in loading] == ["kdbench.stages", "kdbench.models.surgery"]
    assert [i.target for i in init] == ["kdbench.models.loading", "kdbench.runtime"]
    assert str(loading[0]) == "kdbench/models/loading.py:2 imports kdbench.stages"


def test_no_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for i in cross_unit_imports():
        graph.setdefault(i.source_unit, set()).add(i.target_unit)
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        cycle = e.args[1]  # [a, b, ..., a]: neighbours import each other one way round
        pairs = set(zip(cycle, cycle[1:])) | set(zip(cycle[1:], cycle))
        offending = [str(i) for i in cross_unit_imports() if (i.source_unit, i.target_unit) in pairs]
        raise AssertionError(_report(f"the units {' <-> '.join(cycle)} import each other", offending)) from None


# ------------------------------------------------------------------------------------------------- the layers

def test_schema_imports_no_other_kdbench_unit():
    # Everything imports the schema: one import from it into runtime code would make a cycle sooner or later.
    offending = imports_from("schema")
    assert not offending, _report("kdbench/schema must import no other kdbench unit", offending)


def test_storage_imports_no_other_kdbench_unit():
    offending = imports_from("storage")
    assert not offending, _report("kdbench/storage is the bottom layer and must import no other kdbench unit",
                                  offending)


def test_models_import_nothing_that_trains_evaluates_or_runs():
    offending = imports_from("models", {"stages", "methods", "training", "evaluation", "runtime", *CLIS})
    assert not offending, _report("kdbench/models loads and reshapes models; it must not import the layers above it",
                                  offending)


def test_methods_import_neither_stages_nor_the_run():
    offending = imports_from("methods", {"stages", "runtime", *CLIS})
    assert not offending, _report("kdbench/methods must import neither stages/ nor runtime/train/evaluate", offending)


def test_no_module_imports_a_cli():
    offending = [str(i) for i in cross_unit_imports() if i.target_unit in CLIS]
    assert not offending, _report("only tests and entry points may import kdbench.train or kdbench.evaluate",
                                  offending)


def test_every_python_file_is_at_most_400_lines():
    # Data files under kdbench/assets (tokenizers, evaluation sets, weights) are not source and not counted.
    too_long = [f"{f.relative_to(REPO)}: {n} lines" for f in python_files()
                if (n := len(f.read_text().splitlines())) > MAX_LINES]
    assert not too_long, _report(f"files over {MAX_LINES} lines (split them by what they do)", too_long)

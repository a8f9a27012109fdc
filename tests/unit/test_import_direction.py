"""Every import of the package's own modules points down the layers (docs/architecture.md).

Reads the source with :mod:`ast` (nothing is imported), so a function-local import counts
as much as a module-level one: hiding an upward import inside a function is still a cycle.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mlcharge_workflows"

#: Layers from the bottom up; a module may import its own layer's modules and lower ones.
#: Entries are module prefixes below ``mlcharge_workflows`` (the longest prefix wins).
LAYERS: list[tuple[str, ...]] = [
    ("units", "settings", "validation", "data", "_compat"),
    ("pseudo", "convergence"),
    ("density",),
    ("model",),
    ("common",),
    ("engines",),
    ("submit.config", "submit.launchpad", "submit.worker"),  # FireWorks plumbing
    ("training",),
    ("catalogue",),
    ("compare", "submit", "savings"),  # savings: the report, and old import paths by name
    ("cli",),
]
#: Sibling packages of one layer that must not import each other.
SIBLINGS = [("engines.qe", "engines.vasp")]


def _layer(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    if level is None:
        raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS")
    return level


@functools.cache
def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


_MODULE_NAME = re.compile(r"mlcharge_workflows(\.[a-z_][a-z0-9_]*)+")


def _imports(path: Path, module: str) -> set[str]:
    """Own-package modules imported anywhere in ``path`` (``if TYPE_CHECKING`` excluded),
    lazy imports by name (a string naming a module) included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                # a lazy import by name (importlib.import_module("mlcharge_workflows.x"))
                names = [child.value] if _MODULE_NAME.fullmatch(child.value) else []
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(["mlcharge_workflows", *[p for p in up if p], base]).rstrip(".")
                names = [base]
            else:
                visit(child)
                continue
            for name in names:
                if name == "mlcharge_workflows" or not name.startswith("mlcharge_workflows."):
                    continue
                dep = name.removeprefix("mlcharge_workflows.")
                if dep in _modules() or any(m.startswith(dep + ".") for m in _modules()):
                    found.add(dep)

    visit(tree)
    return found


def _edges() -> list[tuple[str, str]]:
    return [(m, dep) for m, path in _modules().items() for dep in sorted(_imports(path, m))]


def test_every_module_is_in_a_layer() -> None:
    for module in _modules():
        _layer(module)


def test_imports_point_down() -> None:
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m, d in _edges() if _layer(d) > _layer(m)]
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_engines_do_not_import_each_other() -> None:
    sideways = [f"{m} imports {d}" for m, d in _edges() for a, b in SIBLINGS
                if (m.startswith(a) and d.startswith(b)) or (m.startswith(b) and d.startswith(a))]
    assert sideways == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from mlcharge_workflows.cli.main import app\n", "upward"),
        ("def f():\n    from mlcharge_workflows.engines.qe.jobs import QEStaticMaker\n", "upward"),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path, source, message) -> None:
    """A ``common`` module importing the CLI or an engine (even inside a function) is caught."""
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    deps = _imports(fake, "common.fake")
    assert deps and all(_layer(d) > _layer("common.fake") for d in deps), message

"""The package's import rules, read from its source (no module is imported).

Every `import` and `from ... import` statement counts, wherever it stands: at the top, inside a
function (a lazy import) or under `if TYPE_CHECKING:`. An edge goes to the module imported, or to
the package whose `__init__` provides the name. Implicit imports of parent packages are left out:
they are how Python works, not a design choice.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "effnetv2_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# (importer prefix, forbidden prefix, why)
FORBIDDEN = [
    ("effnetv2_jax.models", "effnetv2_jax.data", "the model never sees the input pipeline"),
    ("effnetv2_jax.models", "effnetv2_jax.train", "the model knows nothing of training"),
    ("effnetv2_jax.models", "effnetv2_jax.nas", "nas builds on models, not the reverse"),
    ("effnetv2_jax.models", "effnetv2_jax.scaling", "scaling builds on models"),
    ("effnetv2_jax.models", "effnetv2_jax.convert", "converters build on models"),
    ("effnetv2_jax.models", "effnetv2_jax.export", "export builds on models"),
    ("effnetv2_jax.data", "effnetv2_jax.models", "the loop copies a variant's preprocessing in"),
    ("effnetv2_jax.data", "effnetv2_jax.train", "data is below training"),
    ("effnetv2_jax.train", "effnetv2_jax.nas", "nas runs training, not the reverse"),
    ("effnetv2_jax.train", "effnetv2_jax.scaling", "scaling writes configs training reads"),
    ("effnetv2_jax.train", "effnetv2_jax.convert", "converters write checkpoints training reads"),
    ("effnetv2_jax.train", "effnetv2_jax.export", "export reads what training wrote"),
    ("effnetv2_jax.cpu", "effnetv2_jax.train", "the CPU layer is below the model"),
    ("effnetv2_jax.cpu", "effnetv2_jax.data", "the CPU layer is below the model"),
]

# The one place where models/ may reach the CPU layer: the choice of ops for a platform.
CPU_GATEWAYS = {"effnetv2_jax.models.ops"}

# Only the entry point drives the training loop; libraries use `effnetv2_jax.train`'s public
# names (imported lazily by the package) or `train/run.py`'s setup.
LOOP = "effnetv2_jax.train.loop"
LOOP_IMPORTERS = {"effnetv2_jax.main"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """{module: modules of this package it imports}, from every import statement."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = (_resolve_relative(name, path.name == "__init__.py", node.level,
                                            node.module) if node.level else node.module or "")
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    edges.add(submodule if submodule in modules else source)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


GRAPH = import_graph()


def test_the_graph_is_read():
    # A broken reader would make every rule below pass: check it sees known edges.
    assert "effnetv2_jax.train.run" in GRAPH["effnetv2_jax.train.loop"]
    assert "effnetv2_jax.models.block_spec" in GRAPH["effnetv2_jax.models.arch"]
    assert len(GRAPH) > 80


@pytest.mark.parametrize("importer, forbidden, why", FORBIDDEN)
def test_no_forbidden_import(importer, forbidden, why):
    found = sorted(f"{module} -> {target}" for module, targets in GRAPH.items()
                   if module == importer or module.startswith(importer + ".")
                   for target in targets
                   if target == forbidden or target.startswith(forbidden + "."))
    assert not found, f"{importer} must not import {forbidden} ({why}): {found}"


def test_models_reach_the_cpu_layer_only_through_the_ops_choice():
    found = sorted(f"{module} -> {target}" for module, targets in GRAPH.items()
                   if module.startswith("effnetv2_jax.models") and module not in CPU_GATEWAYS
                   for target in targets if target.startswith("effnetv2_jax.cpu"))
    assert not found, f"only {sorted(CPU_GATEWAYS)} may import effnetv2_jax.cpu: {found}"


def test_only_the_entry_point_imports_the_training_loop():
    importers = sorted(m for m, targets in GRAPH.items() if LOOP in targets)
    assert set(importers) <= LOOP_IMPORTERS, (
        f"{importers} import {LOOP}; use effnetv2_jax.train.train_and_evaluate or train/run.py")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    # Package __init__ files re-export their modules, so an edge into a package's __init__ from
    # its own module would be a cycle through the package: counted like any other.
    assert _cycles(GRAPH) == []

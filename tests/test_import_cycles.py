"""No import cycle among tierflow's own modules, counting imports inside functions and under
TYPE_CHECKING: a late import hides a cycle from the interpreter, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "tiers", "placement", "migration")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "tierflow." + ".".join(parts)


def imported(tree: ast.AST, here: str, is_package: bool) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def graph_of(sources: dict[str, tuple[str, bool]]) -> nx.DiGraph:
    """Module -> the modules of ``sources`` it imports; ``sources``: name -> (code, is a package)."""
    graph = nx.DiGraph()
    for name, (code, is_package) in sources.items():
        graph.add_node(name)
        for target in imported(ast.parse(code), name, is_package):
            # A package's __init__ only re-exports: an edge to it is an edge to nothing of ours.
            if target in sources and target != name and not sources[target][1]:
                graph.add_edge(name, target)
    return graph


def import_graph() -> nx.DiGraph:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return graph_of({module_name(p): (p.read_text(), p.name == "__init__.py") for p in files})


def test_the_checker_sees_a_cycle_hidden_in_a_function_and_under_type_checking():
    late = "def f():\n    from tierflow.orchestrator.b import x\n"
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    graph = graph_of({"tierflow.orchestrator.a": (late, False), "tierflow.orchestrator.b": (typing_only, False)})
    assert list(nx.simple_cycles(graph)) == [["tierflow.orchestrator.a", "tierflow.orchestrator.b"]] or \
        list(nx.simple_cycles(graph)) == [["tierflow.orchestrator.b", "tierflow.orchestrator.a"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # every module was found
    cycles = [" -> ".join([*c, c[0]]) for c in nx.simple_cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_orchestrator_is_the_only_package_that_imports_the_orchestrator():
    graph = import_graph()
    wrong = [(a, b) for a, b in graph.edges if b.startswith("tierflow.orchestrator") and
             not a.startswith("tierflow.orchestrator")]
    assert not wrong, f"tiers, placement and migration must not import the orchestrator: {wrong}"


def test_the_fleet_is_the_only_module_of_the_orchestrator_that_uses_ray():
    """Every Ray call of the orchestrator goes through orchestrator/fleet.py (so a test can replace
    it); round policies, the loop and the rest see typed results only."""
    users = sorted(name for name, (code, _) in
                   ((module_name(p), (p.read_text(), False)) for p in (ROOT / "orchestrator").rglob("*.py"))
                   if any(m == "ray" or m.startswith("ray.") for m in imported(ast.parse(code), name, False)))
    assert users == ["tierflow.orchestrator.fleet"], users


def test_the_ray_checker_sees_a_late_import():
    assert "ray" in imported(ast.parse("def f():\n    import ray\n"), "tierflow.orchestrator.x", False)

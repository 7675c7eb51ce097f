"""The layering, read from the source: `replication` never imports `reconciler`, no import
cycle between the project's modules (TYPE_CHECKING and function-level imports count: a
cycle there is a cycle in the design), and the client library never reaches the daemon's
dependencies."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("replication", "reconciler")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module `name` imports, anywhere in its body (project modules resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


def project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges[name] = {m for m in imported(name, path) if m in MODULES and m != name}
    return edges


EDGES = project_edges()


def test_the_replication_layer_never_imports_the_reconciler_layer() -> None:
    upward = {
        (name, target)
        for name, targets in EDGES.items()
        if name.startswith("replication")
        for target in targets
        if target.startswith("reconciler")
    }
    assert upward == set()


def test_no_import_cycle_between_the_projects_modules() -> None:
    # Package __init__ modules re-export their parts; an edge into a package's own
    # __init__ from inside it is not a design cycle.
    def edges_of(name: str) -> set[str]:
        return {t for t in EDGES[name] if not (name.startswith(t + ".") and t in MODULES)}

    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        seen[name] = 1
        for target in sorted(edges_of(name)):
            if seen.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in seen:
                visit(target, [*stack, target])
        seen[name] = 2

    for name in sorted(MODULES):
        if name not in seen:
            visit(name, [name])
    assert cycles == []


def test_the_client_library_reaches_none_of_the_daemons_dependencies() -> None:
    reached: set[str] = set()
    todo = [m for m in MODULES if m.startswith("reconciler.client")]
    third_party: set[str] = set()
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for target in imported(name, MODULES[name]):
            if target in MODULES:
                todo.append(target)
            else:
                third_party.add(target.split(".")[0])
    assert not {m for m in reached if m.startswith("reconciler.service")}
    # aiokafka is the optional 'client-kafka' extra: only the metrics stream imports it
    # (test_client_without_daemon_packages imports the client with it absent).
    assert third_party & {"xxhash", "msgpack", "hiredis", "cmsgpack"} == set(), third_party

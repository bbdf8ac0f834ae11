"""No package imports itself in a circle: each module's top-level imports of its own package form a DAG (a
module importing from its own ancestors is no edge back: they are initialised before it runs)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [(ROOT, "nfsd_blender"), (ROOT / "server", "nfsd_server"), (ROOT / "server", "nfsd_contract"),
            (ROOT / "lab", "nfsd_lab")]


def module_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules its top-level statements import}."""
    imports = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found = set()
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts if is_package else parts[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        imports[".".join(parts)] = found
    return {name: {dep for dep in found if dep in imports and dep != name and not name.startswith(dep + ".")}
            for name, found in imports.items()}


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, path = set(), []

    def visit(name):
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        done.add(name)
        path.append(name)
        for dep in sorted(graph[name]):
            if cycle := visit(dep):
                return cycle
        path.pop()
        return None

    return next((cycle for name in sorted(graph) if (cycle := visit(name))), None)


@pytest.mark.parametrize("root, package", PACKAGES, ids=[package for _, package in PACKAGES])
def test_no_package_imports_itself_in_a_circle(root, package):
    graph = module_graph(root, package)
    assert len(graph) > 2 and first_cycle(graph) is None


def test_the_check_finds_a_circle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from pkg.c import thing\n")
    (tmp_path / "pkg" / "c.py").write_text("import os\nfrom .a import x\n")
    assert first_cycle(module_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]

"""The layout holds: heft/ is a plain library (no Prefect), the study is an application beside it,
the import graph has no cycles and no upward import, and no module reaches into another's
private names or imports it under another name.  Every import is counted, also those inside
functions (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("heft", "study", "tasks", "flows")
# Lower layers first: a module may import its own layer and the layers below, never above.
LAYERS = [
    ("heft.modes", "heft.config", "heft.progress", "heft.stats", "heft.presets", "heft.memory"),
    ("heft.store",),
    ("heft.data", "heft.tracking"),
    ("heft.modeling",),
    ("heft.fingerprints", "heft.plan"),
    ("heft.stages",),
    ("heft.run",),
    ("heft.grids", "heft.inference"),
    ("heft",),               # the package itself: heft.load
    ("tasks", "study"),      # Prefect wrappers; the study application (no Prefect)
    ("flows",),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.glob("*/**/*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in PACKAGES:
            name = ".".join(parts).removesuffix(".__init__")
            out[name] = path
    return out


def resolve(name: str, known: dict) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports(known: dict) -> dict[str, set[str]]:
    """{module: project modules it imports (also inside functions)}."""
    graph = defaultdict(set)
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] in PACKAGES and (found := resolve(t, known)) and found != name:
                    graph[name].add(found)
    return graph


def layer(module: str) -> int:
    best = max((p for group in LAYERS for p in group if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def test_heft_and_study_have_no_prefect_imports():
    def prefect(node) -> bool:
        if isinstance(node, ast.Import):
            return any(a.name.split(".")[0] == "prefect" for a in node.names)
        return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect"
    offenders = [str(p.relative_to(ROOT)) for pkg in ("heft", "study") for p in (ROOT / pkg).rglob("*.py")
                 if any(prefect(n) for n in ast.walk(ast.parse(p.read_text())))]
    assert offenders == []


def test_the_import_graph_has_no_cycles():
    graph, seen, stack, cycles = imports(modules()), set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            visit(child)
        stack.pop()
    for node in sorted(modules()):
        visit(node)
    assert cycles == []


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} -> {t}" for m, targets in imports(modules()).items() for t in sorted(targets)
              if layer(t) > layer(m)]
    assert upward == []


def test_no_aliased_project_imports_and_no_private_names_across_modules():
    known, found = modules(), []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        project_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                for a in node.names:
                    if a.asname and a.asname != a.name:
                        found.append(f"{name}: from {node.module} import {a.name} as {a.asname}")
                    if a.name.startswith("_"):
                        found.append(f"{name}: imports the private {node.module}.{a.name}")
                    if f"{node.module}.{a.name}" in known:
                        project_modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in PACKAGES and a.asname:
                        found.append(f"{name}: import {a.name} as {a.asname}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in project_modules and node.attr.startswith("_")):
                found.append(f"{name}: uses the private {node.value.id}.{node.attr}")
    assert found == []

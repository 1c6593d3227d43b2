"""The package's import graph: no cycles, the core never imports the applications, and no
underscore name crosses a module boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "torchmdn"


def _module_name(path: Path) -> str:
    parts = ["torchmdn", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """Every import in the module (module level and inside functions), resolved to the
    modules of this package it names: ``(module, imported names, line)``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # imports for type annotations only never run
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torchmdn"):
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("torchmdn"):
                continue
            names = [a.name for a in node.names]
            modules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if modules:
                found += [(m, [], node.lineno) for m in modules]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not modules:
                found.append((target, rest, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: {t for t, _, _ in _imports(m, p, known) if t in known} for m, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_graph_sees_known_edges():
    """The walker itself works: it finds imports written relative and inside functions."""
    graph = _graph()
    assert "torchmdn.distributions.queries" in graph["torchmdn.metrics"]
    assert "torchmdn.ops.fused" in graph["torchmdn.distributions.mixture"]
    assert "torchmdn.apps.bishop" in graph["torchmdn.cli.parser"]  # the lazy demo import


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# what may import the applications: the command line (lazily, for `torchmdn demo`) and the
# applications themselves
_MAY_IMPORT_APPS = ("torchmdn.cli", "torchmdn.apps")


def test_core_never_imports_applications():
    offenders = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        for t in targets
        if t.startswith("torchmdn.apps") and not m.startswith(_MAY_IMPORT_APPS)
    ]
    assert not offenders, offenders


def test_no_private_names_across_modules():
    mods = _modules()
    known = set(mods)
    offenders = []
    for m, p in mods.items():
        for target, names, line in _imports(m, p, known):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    offenders.append(f"{p.relative_to(ROOT)}:{line} imports {n} from {target}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("tests_dir", ["distributions", "ops", "nn", "training", "apps"])
def test_tests_mirror_the_tree(tests_dir):
    assert (ROOT / tests_dir).is_dir()
    assert (Path(__file__).parent / tests_dir).is_dir()


def test_readme_tree_names_every_module():
    """The README's "For contributors" tree has one line per module."""
    readme = (ROOT.parents[1] / "README.md").read_text()
    tree = readme.split("## For contributors", 1)[1].split("```")[1]
    named = {line.split()[0].rstrip("/") for line in tree.splitlines() if line.strip()}
    missing = [
        str(p.relative_to(ROOT))
        for p in sorted(ROOT.rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py")
        and p.name not in named
        and not (p.parent != ROOT and p.parent.name in named and p.parent.parent.name == "apps")
    ]
    assert not missing, f"modules missing from the README tree: {missing}"

"""The package's modules import each other without a cycle."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parents[2] / "elo_gym"


def _module_imports(path: pathlib.Path) -> set[str]:
    """The package modules that ``path`` imports at module level."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "elo_gym":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("elo_gym."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.split(".")[1]
                for a in node.names
                if a.name.startswith("elo_gym.")
            }
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> the modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done or module not in graph:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, path + [module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_through_others():
    graph = {
        p.stem: _module_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"
    }
    assert graph["lopt_fused"] == {"lo_features"}  # the leaf, not lopt
    assert graph["lo_features"] == set()
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None

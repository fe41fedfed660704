"""Print grokmath's import graph (module-level imports between its own modules) and any import circle.

Reads the source with `ast` (nothing is imported). An import inside a function is listed apart: it
runs only when the function is called, which is how a circle can hide; one that would close a
circle if it were at module level is reported as a hidden circle (a lazy import that closes none,
e.g. of matplotlib's plotting module, is fine). Exit status 1 on any circle, module-level (an
`if TYPE_CHECKING:` import counts as module-level) or hidden. Imports of a package's parent
(`grokmath/__init__.py`, run before any submodule) are not edges.

Example:
    python scripts/import_graph.py
    python scripts/import_graph.py --quiet --root /path/to/another/checkout
"""
import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> tuple[set[str], list[tuple[str, int, str]]]:
    """(module-level imports, [(module, line, function)] imports inside functions) of one file,
    restricted to `modules`."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top, inner = set(), []

    def resolve(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        targets = []
        for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
            targets.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        return targets

    def visit(node, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in resolve(child):
                    if target in modules and target != name:
                        if function is None:
                            top.add(target)
                        elif (target, child.lineno, function) not in inner:
                            inner.append((target, child.lineno, function))
            inside = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            visit(child, inside)

    visit(tree, None)
    return top, inner


def import_graph(package: str = "grokmath", root: Path = ROOT):
    """({module: set of modules it imports at module level}, {module: [(module, line, function)]})."""
    files = sorted((root / package.replace(".", "/")).rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    graph, inner = {}, {}
    for f in files:
        name = module_name(f, root)
        top, late = imports_of(f, root, modules)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name], inner[name] = top - parents, late
    return graph, inner


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def hidden_cycles(graph: dict[str, set[str]], inner: dict[str, list]) -> list[list[str]]:
    """The circles that appear once the imports inside functions count too (beyond the module-level ones)."""
    full = {name: targets | {target for target, _, _ in inner.get(name, ())} for name, targets in graph.items()}
    return [c for c in cycles(full) if c not in cycles(graph)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--package", default="grokmath", help="the package folder under the repo root (default: grokmath)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repo root (default: this checkout)")
    parser.add_argument("--quiet", action="store_true", help="print only the circles and the imports inside functions")
    args = parser.parse_args(argv)
    graph, inner = import_graph(args.package, args.root)
    if not args.quiet:
        for name in sorted(graph):
            print(f"{name} -> {', '.join(sorted(graph[name])) or '-'}")
    for name in sorted(inner):
        for target, line, function in inner[name]:
            print(f"inside a function: {name}:{line} {function}() imports {target}")
    found, hidden = cycles(graph), hidden_cycles(graph, inner)
    for component in found:
        print(f"import circle: {' <-> '.join(component)}")
    for component in hidden:
        print(f"import circle hidden by an import inside a function: {' <-> '.join(component)}")
    if not found and not hidden:
        print("no import circle")
    return 1 if found or hidden else 0


if __name__ == "__main__":
    sys.exit(main())

"""grokmath's modules import one another without a circle, and no import inside a function hides
one (scripts/import_graph.py reads the source; here it also shows it finds circles)."""
from script_helpers import load_script

graph_tool = load_script("import_graph")


def test_grokmath_has_no_import_circle():
    graph, inner = graph_tool.import_graph("grokmath")
    assert "grokmath.training.train" in graph and "grokmath.store.checkpoint" in graph["grokmath.training.train"]
    assert graph_tool.cycles(graph) == []
    assert graph_tool.hidden_cycles(graph, inner) == []
    # the loop knows nothing of orchestration, plots or argparse
    assert not graph["grokmath.training.train"] & {"grokmath.training.run", "grokmath.training.plots", "grokmath.training.insert", "grokmath.cli"}


def test_the_tool_finds_circles_open_and_hidden(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n\ndef g():\n    return 1\n")
    (pkg / "c.py").write_text("def h():\n    from pkg.sub import d\n    return d\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("from .. import c\n")
    graph, inner = graph_tool.import_graph("pkg", tmp_path)
    assert graph["pkg.sub.d"] == {"pkg.c"} and graph["pkg"] == {"pkg.a"}
    assert inner["pkg.c"] == [("pkg.sub.d", 2, "h")]  # `from pkg.sub import d` imports the module pkg.sub.d
    assert graph_tool.cycles(graph) == [["pkg.a", "pkg.b"]]  # through TYPE_CHECKING: still a circle
    assert graph_tool.hidden_cycles(graph, inner) == [["pkg.c", "pkg.sub.d"]]
    assert graph_tool.main(["--package", "pkg", "--root", str(tmp_path), "--quiet"]) == 1
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    (pkg / "c.py").write_text("def h():\n    import json\n    return json\n")  # a lazy import closing no circle
    graph, inner = graph_tool.import_graph("pkg", tmp_path)
    assert graph_tool.cycles(graph) == graph_tool.hidden_cycles(graph, inner) == []
    assert graph_tool.main(["--package", "pkg", "--root", str(tmp_path), "--quiet"]) == 0


def test_the_readme_layout_names_every_module():
    readme = (graph_tool.ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    files = [p for p in (graph_tool.ROOT / "grokmath").rglob("*.py") if p.name != "__init__.py"]
    missing = [str(p.relative_to(graph_tool.ROOT)) for p in files if p.name not in layout]
    assert not missing, f"README's Layout section does not name {missing}"


def test_the_top_of_the_package_shows_the_architecture():
    """At most 14 entries at the top of grokmath/, each subpackage named in the README's Layout tree
    with its own files listed under it (a file moved to another folder fails here)."""
    top = sorted(p.name for p in (graph_tool.ROOT / "grokmath").iterdir() if p.name != "__pycache__")
    assert len(top) <= 14, top
    readme = (graph_tool.ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)].splitlines()
    for folder in (graph_tool.ROOT / "grokmath").iterdir():
        if not folder.is_dir() or folder.name == "__pycache__" or folder.name == "tasks":
            continue
        header = next(i for i, line in enumerate(layout) if line.strip().startswith(f"{folder.name}/"))
        indent = len(layout[header]) - len(layout[header].lstrip())
        block = []
        for line in layout[header + 1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            block.append(line)
        block = "\n".join(block)
        for module in folder.glob("*.py"):
            if module.name != "__init__.py":
                assert module.name in block, f"README's Layout lists {module.name} outside {folder.name}/"


def test_moved_model_names_keep_their_old_import_paths():
    """Issue 24's split of model/: the names users and notebooks import still resolve from their
    old modules (re-exports), to the very objects of their new homes."""
    import grokmath
    from grokmath.model import activation_cache, hook_point, hooks, layers, transformer

    assert transformer.Transformer is grokmath.Transformer
    assert transformer.Attention is layers.Attention and transformer.MLP is layers.MLP
    assert hooks.HookPoint is hook_point.HookPoint is grokmath.HookPoint
    assert hooks.LensHandle is hook_point.LensHandle and hooks.HookHandle is hook_point.HookHandle
    assert hooks.ActivationCache is activation_cache.ActivationCache is grokmath.ActivationCache


def test_the_model_package_imports_each_name_from_its_home():
    """Inside grokmath/model/, a name is imported from the module that defines it, never through a
    module that only re-exports it (the old paths are for users)."""
    import ast

    model = graph_tool.ROOT / "grokmath" / "model"
    defined = {}
    for path in model.glob("*.py"):
        body = ast.parse(path.read_text()).body
        defined[path.stem] = {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined[path.stem] |= {t.id for n in body if isinstance(n, ast.Assign) for t in n.targets
                               if isinstance(t, ast.Name)}
    through = []
    for path in model.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in defined:
                through += [f"{path.name}: {a.name} from .{node.module}" for a in node.names
                            if a.name not in defined[node.module]]
    assert not through, through

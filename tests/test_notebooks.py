"""The tutorial notebooks: each runs top to bottom without an error (executed here with nbclient in
a python3 kernel, in a temporary folder, its runs in another), is committed without outputs, opens
with its title and the one setup cell, and matches its source in notebooks/src (notebooks/_build.py).

The kernel imports this checkout's grokmath (PYTHONPATH) and inherits the tests' one CPU thread.
"""
import ast
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # the dev extra brings nbformat, nbclient and ipykernel
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
CELL_TIMEOUT = 300  # seconds for one cell; a whole notebook takes well under a minute
# Run first in the kernel (not part of the notebook): records every path the kernel's own process
# opens for writing, renames onto, makes or removes (Python's audit events), so the test judges what
# the notebook wrote, not what anything else on the machine writes meanwhile into runs/.
RECORD_WRITES = """
import os as _os, sys as _sys
_WRITTEN = set()
def _record_write(event, args, _written=_WRITTEN, _os=_os):
    if event == "open":
        path, writing = args[0], isinstance(args[2], int) and args[2] & (_os.O_WRONLY | _os.O_RDWR | _os.O_CREAT)
    elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
        path, writing = args[1], True
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
        path, writing = args[0], True
    else:
        return
    if writing and isinstance(path, (str, bytes, _os.PathLike)):
        _written.add(_os.path.abspath(_os.fsdecode(path)))
_sys.addaudithook(_record_write)
"""
REPORT_WRITES = "print('WRITTEN', sorted(_WRITTEN))"
sys.path.insert(0, str(ROOT / "notebooks"))
import _build  # noqa: E402


def test_there_are_seven_notebooks_each_from_its_source():
    assert [p.stem for p in NOTEBOOKS] == [s.stem for s in sorted(_build.SOURCES.glob("[0-9]*.py"))]
    assert len(NOTEBOOKS) == 7
    assert _build.main(["--check"]) == 0, "a notebook differs from its source: run python notebooks/_build.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_opening_with_title_and_setup(path):
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs: clear them"
    title, setup = nb.cells[0], nb.cells[1]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert "reproduces" in title.source and "full" in title.source.lower()  # what it shows, and at full scale
    assert setup.cell_type == "code" and setup.source == _build.SETUP
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code[0] is setup  # the one install cell comes before any other code


def test_setup_cell_installs_a_clone_only_where_grokmath_is_missing(tmp_path, monkeypatch, capsys):
    exec(_build.SETUP, {})  # installed (as in CI): it only says where grokmath is
    assert "grokmath 0.1.0 from" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append(args))  # no pip here
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "grokmath"
                        else find_spec(name, *rest))  # as in a fresh Colab
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="no clone of its repository is here: git clone it into ./grokmath"):
        exec(_build.SETUP, {})
    assert calls == []
    clone = tmp_path / "grokmath"
    (clone / "grokmath").mkdir(parents=True)
    (clone / "setup.py").write_text("")
    (clone / "grokmath" / "__init__.py").write_text("")
    exec(_build.SETUP, {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(clone.resolve()), "plotly"]]
    assert sys.path[0] == str(clone.resolve())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setenv("GROKMATH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as a user has it
    work = tmp_path / "cwd"
    work.mkdir()
    nb = nbformat.reads(path.read_text(), as_version=4)
    nb.cells = [nbformat.v4.new_code_cell(RECORD_WRITES), *nb.cells, nbformat.v4.new_code_cell(REPORT_WRITES)]
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    seconds = time.perf_counter() - started
    print(f"{path.name}: {seconds:.1f} s")
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    assert list(work.iterdir()) == [], "the notebook wrote into its working folder instead of RUNS"
    written = notebook_writes(nb)
    assert any(Path(p).is_relative_to(tmp_path / "runs") for p in written)  # the recorder saw its runs
    inside = [p for p in written if Path(p).is_relative_to(ROOT) or Path(p).is_relative_to(work)]
    assert inside == [], f"the notebook wrote into the repository (or its working folder) instead of RUNS: {inside}"


def notebook_writes(nb) -> list[str]:
    """The paths the kernel recorded (RECORD_WRITES), from the last cell's output."""
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs if out.output_type == "stream")
    assert text.startswith("WRITTEN "), text
    return ast.literal_eval(text[len("WRITTEN "):].strip())


def test_the_write_recorder_sees_its_own_process_writes_only(tmp_path):
    """What the notebook test relies on: RECORD_WRITES records the files its process writes, renames
    onto and makes, and nothing another process writes into the same folder."""
    (tmp_path / "read.txt").write_text("r")
    script = RECORD_WRITES + f"""
import os, pathlib, subprocess, sys
root = pathlib.Path({str(tmp_path)!r})
(root / "mine.txt").write_text("x")
os.replace(root / "mine.txt", root / "moved.txt")
os.mkdir(root / "folder")
(root / "read.txt").read_text()
subprocess.run([sys.executable, "-c", "open({str(tmp_path / 'other.txt')!r}, 'w').write('y')"], check=True)
print(sorted(_WRITTEN))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert {str(tmp_path / n) for n in ("mine.txt", "moved.txt", "folder")} <= written
    assert str(tmp_path / "other.txt") not in written and str(tmp_path / "read.txt") not in written

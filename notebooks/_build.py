"""Write each tutorial notebook (notebooks/NN_name.ipynb) from its source, notebooks/src/NN_name.py.

A source is plain Python in the 'percent' format: `# %%` starts a code cell, `# %% [markdown]`
a markdown cell whose lines are comments (`# ` is stripped). Its first cell is the markdown title
and what the notebook reproduces; the builder puts the one setup cell (SETUP, the same in every
notebook: it installs grokmath where it is missing, e.g. in Colab) right after it. The .ipynb
files are what people open: committed without outputs, and tests/test_notebooks.py checks that
they match their sources, so edit the source and run this script.

Example:
    python notebooks/_build.py            # (re)write every notebook
    python notebooks/_build.py --check    # exit 1 if a committed notebook differs from its source
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"

SETUP = '''\
# Setup. Where grokmath is installed (`pip install -e ".[notebooks]"` in a clone of its repository)
# this cell only says so. In Colab or a fresh environment, first put a clone of the repository beside
# this notebook (`!git clone <the grokmath repository URL> grokmath`, or upload the folder as grokmath);
# this cell then installs it with plotly (Colab already has torch and Jupyter).
import importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("grokmath") is None:
    clone = next((p.resolve() for p in map(pathlib.Path, ("grokmath", "..", "."))
                  if (p / "setup.py").is_file() and (p / "grokmath" / "__init__.py").is_file()), None)
    if clone is None:
        raise RuntimeError("grokmath is not installed and no clone of its repository is here: "
                           "git clone it into ./grokmath, then run this cell again")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(clone), "plotly"], check=True)
    sys.path.insert(0, str(clone))  # importable now, without restarting the kernel
import grokmath
print("grokmath", grokmath.__version__, "from", pathlib.Path(grokmath.__file__).parent)'''


def parse_cells(text: str) -> list[tuple[str, str]]:
    """[(kind 'code' | 'markdown', source)] from a percent-format source."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"code before the first '# %%' marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            for line in lines:
                if line.strip() and not line.startswith("#"):
                    raise ValueError(f"a markdown cell's lines must be comments: {line!r}")
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def build(source: Path):
    """The notebook of one source: its title cell, the setup cell, then the rest."""
    cells = parse_cells(source.read_text())
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{source} must open with a markdown cell (the title and what it reproduces)")
    cells.insert(1, ("code", SETUP))
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    nb.cells = [make[kind](text) for kind, text in cells]
    for i, cell in enumerate(nb.cells):  # stable ids, so a rebuild changes nothing that did not change
        cell.id = f"{source.stem[:2]}-{i:02d}"
    return nb


def notebook_path(source: Path) -> Path:
    return HERE / f"{source.stem}.ipynb"


def text_of(nb) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--check", action="store_true", help="only check that every notebook matches its source")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("[0-9]*.py")):
        nb = build(source)
        nbformat.validate(nb)
        path = notebook_path(source)
        text = text_of(nb)
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date with notebooks/src: {', '.join(stale)}; run python notebooks/_build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

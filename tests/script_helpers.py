"""Loading a script from scripts/ as a module, so tests call its main() in-process, as a user runs it."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_guarded(capsys, script: str, argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a script's main under main_guard, in this process."""
    from grokmath import cli

    capsys.readouterr()
    try:
        cli.main_guard(load_script(script).main, argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err

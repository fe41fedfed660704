"""The gallery: reproduce (at the tiny scale) trains every experiment, collects the figures and
writes an index that shows each one. (That its set-ups are grokmath/experiments.py's: test_experiments.py.)"""
import re

import pytest

from grokmath.tools import gallery
from grokmath.cli import main_guard

from script_helpers import load_script


def test_unknown_experiment_or_scale_is_refused():
    with pytest.raises(ValueError, match="unknown experiment"):
        gallery.experiment_configs("sorting")
    with pytest.raises(ValueError, match="unknown scale"):
        gallery.experiment_configs("modular", "huge")


def test_reproduce_all_at_tiny_scale_fills_the_gallery(tmp_path):
    index = gallery.reproduce(["all"], tmp_path, scale="tiny", device="cpu", progress=False)
    assert index == tmp_path / "gallery" / "README.md"
    text = index.read_text()
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for name in gallery.GALLERY:
        assert (tmp_path / f"{name}_tiny" / "config.json").is_file()
        assert any(s.startswith(name + "_") for s in shown), name
    for figure in shown:  # every figure linked is there, and every figure there is linked
        assert (tmp_path / "gallery" / figure).stat().st_size > 0
    assert sorted(shown) == sorted(p.name for p in (tmp_path / "gallery").glob("*.png"))
    assert "modular_progress_measures.png" in shown and "modular_fourier.png" in shown
    # a second run without overwrite refuses to replace the run folders
    with pytest.raises(ValueError, match="--overwrite"):
        gallery.reproduce(["skip_trigram"], tmp_path, scale="tiny", device="cpu", progress=False)


def test_reproduce_script_refuses_a_bad_device_in_one_line(tmp_path, capsys):
    script = load_script("reproduce")
    with pytest.raises(SystemExit) as stop:
        main_guard(script.main, ["modular", "--tiny", "--device", "tpu", "--out", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tpu" in err
    assert not any(tmp_path.iterdir())  # nothing was written

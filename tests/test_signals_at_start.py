"""A signal while a script starts (issue 14, and CI's flaky exit 2): raised inside an import it
could abort torch's import or be swallowed; main_guard holds it until the import is done, and a
signal whose exception some `except Exception` swallowed still stops the run, at its first step."""
import os
import signal
import sys
import time

import pytest

from grokmath import cli
from grokmath.store.checkpoint import RunDir

from script_helpers import load_script

TINY = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "50", "--checkpoint-every", "10",
        "--device", "cpu", "--no-progress", "--no-plots"]


def guarded(capsys, main, argv=None):
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main_guard(main, argv)
    return stop.value.code, capsys.readouterr().err


def test_a_signal_during_an_import_is_raised_once_the_import_is_done(capsys, tmp_path, monkeypatch):
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.1)  # the handler runs here, inside the import\n"
        "FINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reached = []

    def main(argv):
        import slow_module
        reached.append(slow_module.FINISHED)
        time.sleep(5)  # the held signal is raised within 20 ms
        reached.append("not stopped")

    code, err = guarded(capsys, main)
    assert reached == [True] and code == 128 + signal.SIGTERM
    assert len(err.strip().splitlines()) == 1 and "stopped by SIGTERM" in err, err
    sys.modules.pop("slow_module", None)


def test_a_swallowed_signal_still_stops_the_run_at_its_first_step(capsys, tmp_path):
    script = load_script("train_addition")

    def main(argv):
        try:  # a library's fallback that catches every Exception
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        except Exception:
            pass
        script.main(argv)

    code, err = guarded(capsys, main, [*TINY, "--out", str(tmp_path), "--run-name", "r"])
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step 0" in err and "resume with:" in err, err
    assert RunDir(tmp_path / "r").state_steps() == [0]


def test_a_swallowed_signal_after_the_work_is_still_reported(capsys):
    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        except Exception:
            pass

    code, err = guarded(capsys, main)
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    # and the next script in this process starts clean
    code, err = guarded(capsys, lambda argv: sys.exit(0))
    assert code == 0 and err == ""


def test_an_error_raised_on_the_way_out_of_a_signal_is_the_signal_stop_not_a_usage_error(capsys):
    """A signal whose exception some code turned into a ValueError (a read wrapped into 'cannot read
    ...') still stops with 128 + its number and says the signal, not exit 2 and the wrapped message."""
    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        except Exception as e:
            raise ValueError(f"cannot read the file: {type(e).__name__}") from None

    code, err = guarded(capsys, main)
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and len(err.strip().splitlines()) == 1, err
    code, err = guarded(capsys, lambda argv: (_ for _ in ()).throw(ValueError("a bad flag")))
    assert code == 2 and "a bad flag" in err  # without a signal a ValueError is still the user's mistake

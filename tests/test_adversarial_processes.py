"""Where a real process is the point (issue 14): a run folder locked by a live writer, a lock that a
SIGKILL cannot leave stuck, SIGTERM while a script is still starting, SIGTERM to a --seeds run, and
torchrun (one line from each rank; SIGTERM to torchrun saves a checkpoint and prints the resume
command)."""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokmath import cli
from grokmath.store.checkpoint import RunDir

from script_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
LONG = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "100000", "--checkpoint-every", "40",
        "--device", "cpu", "--no-progress", "--no-plots"]


def start(script, args, *launcher):
    command = [*launcher, str(ROOT / "scripts" / f"{script}.py"), *args]
    return subprocess.Popen(command or [sys.executable], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_handler(proc, signum, timeout=60.0):
    """Wait until the process catches `signum` (its bit in /proc/PID/status SigCgt): a fixed sleep
    is too short on a loaded machine, where the signal would kill Python before main_guard runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the script ended before it could be stopped: {proc.communicate()}"
        caught = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) >> (signum - 1) & 1:
            return
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the script did not install its {signal.Signals(signum).name} handler")


def wait_for_states(proc, runs, timeout=120.0):
    """Wait until every run folder has a resumable state after step 0."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(any(s > 0 for s in RunDir(run).state_steps()) for run in runs):
            return
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def guarded(capsys, script, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main_guard(load_script(script).main, argv)
    return stop.value.code, capsys.readouterr().err


def test_one_writer_per_run_folder_and_sigterm_to_a_seeds_run_says_what_was_kept(capsys, tmp_path):
    runs = [tmp_path / f"addition_2d_s{seed}" for seed in (1, 2)]
    proc = start("train_addition", [*LONG, "--seeds", "1", "2", "--out", str(tmp_path)], sys.executable)
    try:
        wait_for_states(proc, runs)
        for argv in ([*LONG, "--seeds", "1", "2", "--out", str(tmp_path), "--overwrite"], ["--resume", str(runs[1])],
                     [*LONG, "--out", str(tmp_path), "--run-name", runs[0].name, "--overwrite"]):
            code, err = guarded(capsys, "train_addition", argv)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert f"is in use: another grokmath process (pid {proc.pid})" in err
        assert proc.poll() is None  # the writer goes on, alone
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "resumable checkpoints of all 2 seeds are saved" in err and f"--resume {runs[0]}" in err
    stopped = int(err.split(" at step ")[1].split(";")[0])
    assert [max(RunDir(run).state_steps()) for run in runs] == [stopped, stopped]


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_writer_killed_with_sigkill_leaves_no_stuck_lock(capsys, tmp_path):
    """RunDir.lock is an flock on <run>/.lock holding the writer's pid (here taken by a bare process,
    as grokmath's writer takes it): refused while the holder lives, free the moment it is killed."""
    load_script("train_addition").main([*LONG, "--steps", "3", "--out", str(tmp_path), "--run-name", "r"])
    run = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = guarded(capsys, "train_addition", ["--resume", str(run), "--steps", "6"])
        assert code == 2 and f"(pid {holder.pid})" in err and f"kill {holder.pid}" in err, err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    load_script("train_addition").main(["--resume", str(run), "--steps", "6", "--no-progress", "--no-plots"])
    assert RunDir(run).state_steps() == [3, 6]


def test_sigterm_while_a_script_starts_is_one_line_not_a_silent_exit(tmp_path):
    """Before the loop's own handler (imports, building the model, making the folder): main_guard's."""
    proc = start("train_addition", [*LONG, "--out", str(tmp_path), "--run-name", "early"], sys.executable)
    wait_for_handler(proc, signal.SIGTERM)  # main_guard's first line (~0.1 s): most likely still importing torch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "stopped by SIGTERM" in err, err
    if "resume with:" in err:  # a fast machine was already training: a checkpoint was saved first
        assert RunDir(tmp_path / "early").state_steps()
    else:  # nothing half-made is left: the same command starts afresh
        assert not (tmp_path / "early").exists() or RunDir(tmp_path / "early").check_replaceable(False) == "new"


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_sigterm_to_torchrun_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    """torchrun passes SIGTERM to every rank; they stop at one step, rank 0 saves. torchrun itself then
    reports the signal in its own words (a traceback ending in SignalException) and exits 1."""
    run = tmp_path / "addition_2d_s129000"
    proc = start("train_addition", [*LONG, "--out", str(tmp_path)], *TORCHRUN)
    wait_for_states(proc, [run], timeout=240)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    ours = [line for line in err.splitlines() if line.startswith("train_addition.py (rank")]
    assert len(ours) == 2, err
    rank0 = next(line for line in ours if "(rank 0)" in line)
    assert "stopped by SIGTERM at step" in rank0 and f"--resume {run}" in rank0, err
    stopped = int(rank0.split(" at step ")[1].split(";")[0])
    assert max(RunDir(run).state_steps()) == stopped
    assert not re.search(r'File ".*/grokmath/(analysis/|tasks/)?[a-z_]+\.py"', err)  # no frame of ours
    assert proc.returncode != 0


LIGHT = """
import importlib.util, sys
from pathlib import Path
root = Path(sys.argv[1])
for name in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location(name, root / "scripts" / f"{name}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(sorted(m for m in ("torch", "pandas", "numpy", "matplotlib") if m in sys.modules))
"""


def test_scripts_reach_main_guard_before_importing_torch():
    """What a script imports before main_guard runs is the time a signal would kill it silently:
    grokmath.cli and the scripts' module level import nothing heavy (bench.py, a tool, excepted)."""
    names = sorted(p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem not in ("bench", "import_graph"))
    done = subprocess.run([sys.executable, "-c", LIGHT, str(ROOT), *names], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr)

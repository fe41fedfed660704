"""Reliability, third pass (issue 25), through the real scripts: every state a kill can leave a move
aside in (both ways) is recognised by readers and recovered by writers; a failed --resume --steps
changes nothing; a signal right after the old run was moved aside puts it back; a full disk while
writing a checkpoint is one line and the run stays resumable; ablate / attention / progress_measures
check memory first, and the free figure honours cgroup limits (v1 and v2) and `ulimit -v`; a symlink
loop as a run folder is one line; a missing metrics.csv is named as such; two real training
processes racing for one run folder: one trains, the other is refused."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import grokmath.store.checkpoint
import grokmath.store.rundir
import grokmath.store.files
import grokmath.memory
from grokmath.store.checkpoint import REPLACED, REPLACING, RunDir, load_latest_states, prepare_runs, safe_load
from grokmath.memory import format_bytes

from script_helpers import load_script, run_guarded
from test_adversarial import TINY, base_runs, copy_run, expect_error, user_files  # noqa: F401 (base_runs: a fixture)

ROOT = Path(__file__).resolve().parents[1]




class Killed(BaseException):
    """Stands for a SIGKILL: nothing of ours runs after it (not an Exception, so no handler catches it)."""


def kill_after(monkeypatch, n_ops: int):
    """Make the n_ops+1-th file move or removal of a move aside (os.replace, rundir._remove, os.rmdir)
    a kill."""
    done = [0]

    def counted(real):
        def op(*args, **kwargs):
            if done[0] == n_ops:
                raise Killed
            done[0] += 1
            return real(*args, **kwargs)
        return op

    monkeypatch.setattr(grokmath.store.rundir.os, "replace", counted(os.replace))
    monkeypatch.setattr(grokmath.store.rundir.os, "rmdir", counted(os.rmdir))
    monkeypatch.setattr(grokmath.store.rundir, "_remove", counted(grokmath.store.rundir._remove))


# The states: (direction, kill after n moves). A finished tiny run has 4 entries (checkpoints, config.json,
# metrics.csv, summary.json): forward, 4 moves into .replacing/ and its rename to .replaced/ (n = 5: the
# whole move, then the new run's config.json); back, from there: 2 removals (the new run's checkpoints/ and
# config.json; the first is an os.rmdir too), the rename to .replacing/, 4 moves back, the removal of the
# empty .replacing/.
# ("issue", 0): the state as the issue built it by hand (config.json moved, the rest not; our moves go in
# sorted order, checkpoints/ first).
STATES = [("forward", n) for n in range(6)] + [("back", n) for n in range(9)] + [("issue", 0)]


def build_state(monkeypatch, run: Path, direction: str, n_ops: int) -> None:
    config = json.loads((run / "config.json").read_text())
    if direction == "issue":  # mkdir RUN/.replacing; mv RUN/config.json RUN/.replacing/
        (run / REPLACING).mkdir()
        os.replace(run / "config.json", run / REPLACING / "config.json")
        return
    if direction == "forward":
        with monkeypatch.context() as m:
            kill_after(m, n_ops)
            try:
                prepare_runs([run], [{**config, "train": {**config["train"], "steps": 9}}], overwrite=True)
            except Killed:
                pass
    else:
        prepare_runs([run], [{**config, "train": {**config["train"], "steps": 9}}], overwrite=True)
        with monkeypatch.context() as m:
            kill_after(m, n_ops)
            try:
                RunDir(run).recover()
            except Killed:
                pass
    RunDir(run).unlock()  # the kill: the lock goes with the process


def test_the_states_are_the_ones_listed(monkeypatch, tmp_path, base_runs):
    """The enumeration covers the reported state (config.json moved, checkpoints/ not) both ways."""
    seen = {}
    for direction, n in STATES:
        run = copy_run(base_runs, "add", tmp_path / f"{direction}{n}")
        build_state(monkeypatch, run, direction, n)
        seen[direction, n] = (sorted(p.name for p in run.iterdir() if p.name != ".lock"),
                              RunDir(run).moving_entries())
    assert seen["forward", 0] == ([REPLACING, "checkpoints", "config.json", "metrics.csv", "summary.json"], [])
    assert seen["forward", 2] == ([REPLACING, "metrics.csv", "summary.json"], ["checkpoints", "config.json"])
    assert seen["forward", 5] == ([REPLACED, "checkpoints"], [])  # the new run's checkpoints/, no config.json yet
    assert seen["back", 8] == ([REPLACING, "checkpoints", "config.json", "metrics.csv", "summary.json"], [])
    assert seen["back", 5] == ([REPLACING, "checkpoints"], ["config.json", "metrics.csv", "summary.json"])


@pytest.mark.parametrize("direction,n_ops", STATES)
def test_every_state_of_a_move_aside_is_recognised_and_recovered(capsys, monkeypatch, tmp_path, base_runs,
                                                                  direction, n_ops):
    run, again = copy_run(base_runs, "add", tmp_path), copy_run(base_runs, "add", tmp_path / "again")
    before = user_files(run)
    for folder in (run, again):
        build_state(monkeypatch, folder, direction, n_ops)
    whole = not RunDir(run).being_replaced()  # an empty .replacing/: the run at the top is whole
    # a reader: reads a whole run, or says what recovers it; never "not a grokmath run folder"
    code, _, err = run_guarded(capsys, "evaluate", [str(run), "--questions", "10", "--no-progress"])
    if whole:
        assert code == 0, err
        shutil.rmtree(run / "analysis")
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "not a grokmath run folder" not in err and f"--resume {run} puts" in err, err
    # each writer recovers first: a fresh start without --overwrite puts the old run back, then refuses
    expect_error(capsys, "train_addition", [*TINY, "--out", str(run.parent), "--run-name", "add"],
                 "already exists: pass --overwrite")
    assert user_files(run) == before and set(os.listdir(run)) == set(os.listdir(base_runs / "add")) | {".lock"}
    # --resume, from the same state, puts it back and continues it (here: finished, so it says so)
    expect_error(capsys, "train_addition", ["--resume", str(again)], "already finished its 6 steps")
    assert user_files(again) == before
    assert set(os.listdir(again)) == set(os.listdir(base_runs / "add")) | {".lock"}


@pytest.mark.parametrize("direction,n_ops", [("forward", 2), ("back", 5)])
def test_the_overwrite_command_again_recovers_and_replaces(capsys, monkeypatch, tmp_path, base_runs, direction,
                                                           n_ops):
    """The reported case: config.json already in .replacing/, checkpoints/ still at the top."""
    run = copy_run(base_runs, "add", tmp_path)
    build_state(monkeypatch, run, direction, n_ops)
    code, _, err = run_guarded(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent),
                                                         "--run-name", "add", "--overwrite"])
    assert code == 0, err
    assert RunDir(run).state_steps() == [6, 9] and not RunDir(run).needs_recovery()
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 9


def test_a_kill_after_the_new_runs_first_state_leaves_the_new_run(capsys, monkeypatch, tmp_path, base_runs):
    """State 5: the first state is written, the old run not yet deleted; readers read the new run and
    the next writer deletes the old one."""
    run = copy_run(base_runs, "add", tmp_path)
    real = shutil.rmtree

    def killed_deleting_the_old_run(path, *args, **kwargs):
        if Path(path).name == REPLACED:
            raise Killed
        return real(path, *args, **kwargs)

    monkeypatch.setattr(grokmath.store.checkpoint.shutil, "rmtree", killed_deleting_the_old_run)
    with pytest.raises(Killed):
        load_script("train_addition").main([*TINY, "--steps", "9", "--out", str(run.parent), "--run-name", "add",
                                            "--overwrite"])
    monkeypatch.undo()
    RunDir(run).unlock()
    assert RunDir(run).state_steps() == [0] and (run / REPLACED / "config.json").is_file()
    code, out, err = run_guarded(capsys, "evaluate", [str(run), "--questions", "10", "--no-progress"])
    assert code == 0 and "step000000" in out, err
    code, _, err = run_guarded(capsys, "train_addition", ["--resume", str(run), "--no-progress", "--no-plots"])
    assert code == 0, err
    assert not (run / REPLACED).exists() and RunDir(run).state_steps() == [6, 9]


# ---- a failed --resume --steps N changes nothing -------------------------------------------------

@pytest.mark.parametrize("damage", ["zero bytes", "a key missing"])
def test_a_failed_resume_with_steps_leaves_config_json_as_it_was(capsys, tmp_path, base_runs, damage):
    import torch
    from grokmath.store.checkpoint import atomic_torch_save
    run = copy_run(base_runs, "add", tmp_path)
    for step in (3, 6):
        path = run / "checkpoints" / f"state_{step:06d}.pt"
        if damage == "zero bytes":
            path.write_bytes(b"")
        else:
            atomic_torch_save({k: v for k, v in torch.load(path, weights_only=True).items() if k != "optimizer"},
                              path)
    damaged = user_files(run)
    expect_error(capsys, "train_addition", ["--resume", str(run), "--steps", "9"], "no usable resumable checkpoint")
    assert user_files(run) == damaged  # config.json byte for byte included


def test_resume_with_steps_records_them_once_it_works(capsys, tmp_path, base_runs):
    run = copy_run(base_runs, "add", tmp_path)
    config = json.loads((run / "config.json").read_text())
    code, _, err = run_guarded(capsys, "train_addition", ["--resume", str(run), "--steps", "9", "--no-progress",
                                                         "--no-plots"])
    assert code == 0, err
    assert json.loads((run / "config.json").read_text()) == {**config, "train": {**config["train"], "steps": 9}}


# ---- a signal right after the old run is moved aside puts it back ----------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_the_moment_the_old_run_is_moved_aside_puts_it_back(capsys, monkeypatch, tmp_path, base_runs,
                                                                     signum):
    """The signal lands as prepare_runs returns (the old run in .replaced/, the new config.json written)."""
    import grokmath.training.run
    real = grokmath.training.run.prepare_runs

    def prepare_then_signal(*args, **kwargs):
        runs = real(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return runs

    monkeypatch.setattr(grokmath.training.run, "prepare_runs", prepare_then_signal)
    run = copy_run(base_runs, "add", tmp_path)
    before = user_files(run)
    expect_error(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent), "--run-name", "add",
                                            "--overwrite"], f"stopped by {signal.Signals(signum).name} before",
                 "is back in place", code=128 + signum)
    assert user_files(run) == before and not RunDir(run).needs_recovery()


@pytest.mark.parametrize("signals_at", [(2,), (2, 7)])
def test_a_signal_during_the_move_waits_for_it_then_puts_the_run_back(capsys, monkeypatch, tmp_path, base_runs,
                                                                      signals_at):
    """SIGTERM between two moves (and a second one while the run is being put back): the move finishes,
    then the run goes back whole."""
    calls, real = [0], os.replace

    def replace_and_signal(*args, **kwargs):
        calls[0] += 1
        if calls[0] in signals_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(grokmath.store.rundir.os, "replace", replace_and_signal)
    run = copy_run(base_runs, "add", tmp_path)
    before = user_files(run)
    expect_error(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent), "--run-name", "add",
                                            "--overwrite"], "stopped by SIGTERM", code=128 + signal.SIGTERM)
    monkeypatch.undo()
    assert user_files(run) == before and not RunDir(run).needs_recovery()


# ---- a full disk while writing a checkpoint -------------------------------------------------------

@pytest.fixture
def full_disk_for(monkeypatch):
    """full_disk_for(name): the write of that file (its temporary file) goes to /dev/full: ENOSPC from the
    kernel, which torch.save turns into its RuntimeError."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real = grokmath.store.files.tempfile.mkstemp

    def arm(name):
        def mkstemp(*args, **kwargs):
            fd, tmp = real(*args, **kwargs)
            if Path(tmp).name.startswith(f".{name}."):
                full = os.open("/dev/full", os.O_RDWR)
                os.dup2(full, fd)
                os.close(full)
            return fd, tmp
        monkeypatch.setattr(grokmath.store.files.tempfile, "mkstemp", mkstemp)
    return arm


def no_temporary_files(run: Path) -> bool:
    return not [p for p in run.rglob("*.tmp")]


@pytest.mark.parametrize("name", ["state_000003.pt", "model_000003.pt"])
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_the_run_resumes(capsys, tmp_path, base_runs,
                                                                                 full_disk_for, monkeypatch, name):
    full_disk_for(name)
    err = expect_error(capsys, "train_addition", [*TINY, "--out", str(tmp_path), "--run-name", "r"],
                       f"could not write {tmp_path / 'r' / 'checkpoints' / name}", "No space left on device",
                       "intact up to its checkpoint at step 0 and stays resumable", "--resume")
    assert "Traceback" not in err
    run = tmp_path / "r"
    assert RunDir(run).state_steps() == [0] and no_temporary_files(run)
    safe_load(run / "checkpoints" / "state_000000.pt")  # whole, checksum and all
    monkeypatch.undo()
    code, _, err = run_guarded(capsys, "train_addition", ["--resume", str(run), "--no-progress", "--no-plots"])
    assert code == 0, err
    # resumed, it is the run that never met a full disk
    assert (run / "metrics.csv").read_bytes() == (base_runs / "add" / "metrics.csv").read_bytes()


def test_a_full_disk_inside_torch_save_is_the_same_one_line(tmp_path, full_disk_for, monkeypatch):
    """Where torch.save itself meets ENOSPC (tensors of 1000 floats and more) it raises its RuntimeError
    ('[enforce fail at inline_container.cc...]', the issue's traceback; closing the file may add an
    OSError over it): the same WriteFailed, and the file it was to replace is unchanged."""
    import torch
    seen, real = [], grokmath.store.files._write_failure

    def spy(error):
        chain = error
        while chain is not None:  # what was raised, and what it was raised over
            seen.append(type(chain))
            chain = chain.__context__
        return real(error)

    monkeypatch.setattr(grokmath.store.files, "_write_failure", spy)
    path = tmp_path / "state_000003.pt"
    grokmath.store.files.atomic_torch_save({"step": 3}, path)
    before = path.read_bytes()
    full_disk_for("state_000003.pt")
    with pytest.raises(grokmath.store.files.WriteFailed, match=r"could not write .*state_000003.pt \(No space left"):
        grokmath.store.files.atomic_torch_save({"model": {"w": torch.zeros(1000)}, "step": 3}, path)
    assert RuntimeError in seen and path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
    # torch's RuntimeError alone (its OSError swallowed, as the issue saw it) is a failed write too
    assert "inline_container" in grokmath.store.files._write_failure(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))[0]


def test_a_full_disk_before_the_first_checkpoint_keeps_the_old_run(capsys, tmp_path, base_runs, full_disk_for):
    run = copy_run(base_runs, "add", tmp_path)
    before = user_files(run)
    full_disk_for("metrics.csv")  # the new run's first file after config.json
    expect_error(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent), "--run-name", "add",
                                            "--overwrite"], "No space left on device",
                 "nothing of the new run was kept (the run it was replacing is back in place)")
    assert user_files(run) == before


def test_a_full_disk_during_a_resume_is_one_line(capsys, tmp_path, base_runs, full_disk_for):
    run = copy_run(base_runs, "add", tmp_path)
    full_disk_for("state_000009.pt")
    expect_error(capsys, "train_addition", ["--resume", str(run), "--steps", "12", "--no-progress"],
                 "could not write", "intact up to its checkpoint at step 6 and stays resumable")
    assert RunDir(run).state_steps() == [3, 6] and no_temporary_files(run)


# ---- memory: every analysis that allocates by a user's number checks first ----------------------------

def fake_cgroup(tmp_path, monkeypatch, version: int, limit: int, usage: int, inactive: int) -> int:
    """A cgroup tree (limit at the parent of this process's cgroup); returns the free bytes it leaves."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    proc.mkdir()
    if version == 1:
        (proc / "cgroup").write_text("5:memory:/jobs/this\n3:cpu,cpuacct:/jobs/this\n")
        (root / "memory" / "jobs" / "this").mkdir(parents=True)
        parent = root / "memory" / "jobs"
        (parent / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (parent / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (parent / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {inactive}\n")
        (parent / "this" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (parent / "this" / "memory.usage_in_bytes").write_text("1\n")
    else:
        (proc / "cgroup").write_text("0::/jobs/this\n")
        (root / "jobs" / "this").mkdir(parents=True)
        (root / "cgroup.controllers").write_text("cpu memory\n")
        (root / "jobs" / "memory.max").write_text(f"{limit}\n")
        (root / "jobs" / "memory.current").write_text(f"{usage}\n")
        (root / "jobs" / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\n")
        (root / "jobs" / "this" / "memory.max").write_text("max\n")
    monkeypatch.setattr(grokmath.memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(grokmath.memory, "PROC_SELF", proc)
    return limit - usage + inactive


@pytest.mark.parametrize("version", [1, 2])
def test_the_free_figure_honours_cgroup_limits(capsys, tmp_path, base_runs, monkeypatch, version):
    run = copy_run(base_runs, "add", tmp_path)
    free = fake_cgroup(tmp_path, monkeypatch, version, limit=5_000_000, usage=4_600_000, inactive=100_000)
    expect_error(capsys, "ablate", [str(run), "--questions", "20000"], "ablating on 20000 questions",
                 f"but {format_bytes(free)} is free", "lower --questions or --chunk-size")
    assert not (run / "analysis").exists()


def test_ablate_with_too_many_questions_is_refused_before_drawing_them(capsys, tmp_path, base_runs):
    run = copy_run(base_runs, "add", tmp_path)
    err = expect_error(capsys, "ablate", [str(run), "--questions", "10000000"], "needs about", "lower --questions")
    assert " GB " in err or " TB " in err
    assert not (run / "analysis").exists()


def test_progress_measures_and_attention_check_memory_first(capsys, tmp_path, base_runs, monkeypatch):
    import torch
    from grokmath.analysis.attention import attention_patterns
    model = grokmath.store.checkpoint.load_run(base_runs / "add").model
    run = copy_run(base_runs, "mod", tmp_path)
    free = fake_cgroup(tmp_path, monkeypatch, 2, limit=2000, usage=0, inactive=0)
    expect_error(capsys, "progress_measures", [str(run), "--no-progress"], "the progress measures of a p=5 run",
                 f"but {format_bytes(free)} is free")
    assert sorted(os.listdir(run)) == sorted([*os.listdir(base_runs / "mod")])
    # attention draws one question at a time (at most 20): its check is on those patterns
    monkeypatch.setattr(grokmath.memory, "_cpu_available", lambda: 10_000)
    with pytest.raises(ValueError, match="the attention patterns of 1000 sequences needs about"):
        attention_patterns(model, torch.zeros(1000, model.cfg.n_ctx, dtype=torch.long))


ABLATE_UNDER_CAP = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = [sys.argv[2], *sys.argv[3:]]
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"), {"__name__": "__main__", "__file__": sys.argv[0]})
"""


def test_the_free_figure_honours_ulimit_v(tmp_path, base_runs):
    """A real process under an address-space cap (ulimit -v) far below the free memory: the refusal names
    at most the cap, where before it allocated and died with a traceback."""
    run = copy_run(base_runs, "add", tmp_path)
    cap = 3 * 10**9
    cfg = grokmath.store.checkpoint.load_run(run, load_model=False).model_cfg
    questions = 1
    while grokmath.memory.ablation_bytes(cfg, questions, 4) < 2 * cap:  # fits the machine, not the cap
        questions *= 2
    done = subprocess.run([sys.executable, "-c", ABLATE_UNDER_CAP, str(cap), str(ROOT / "scripts" / "ablate.py"),
                           str(run), "--questions", str(questions), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    free = re.search(r"but ([\d.]+) (bytes|KB|MB|GB) is free", done.stderr)
    assert free, done.stderr
    assert float(free.group(1)) * {"bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[free.group(2)] <= cap
    assert not (run / "analysis").exists()


# ---- a symlink loop; a missing metrics.csv -------------------------------------------------------------

def test_a_symlink_loop_as_a_run_folder_is_one_line(capsys, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    os.symlink("loop", out / "loop")  # loop -> loop
    for script, argv in (("train_addition", [*TINY, "--out", str(out), "--run-name", "loop"]),
                         ("train_addition", [*TINY, "--out", str(out), "--run-name", "loop", "--overwrite"]),
                         ("train_addition", ["--resume", str(out / "loop")]),
                         ("evaluate", [str(out / "loop"), "--questions", "10"])):
        expect_error(capsys, script, argv, "symbolic link that loops back on itself")
    assert os.listdir(out) == ["loop"] and os.readlink(out / "loop") == "loop"


def test_a_missing_metrics_csv_on_resume_is_named_as_missing(capsys, tmp_path, base_runs):
    run = copy_run(base_runs, "add", tmp_path)
    (run / "metrics.csv").unlink()
    before = user_files(run)
    err = expect_error(capsys, "train_addition", ["--resume", str(run), "--steps", "9"],
                       f"{run / 'metrics.csv'} is missing", "restore it")
    assert "another configuration" not in err
    assert user_files(run) == before


# ---- two real training processes race for one run folder -------------------------------------------------

RACE = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "100000", "--checkpoint-every", "20",
        "--device", "cpu", "--no-progress", "--no-plots"]


def test_two_training_processes_racing_for_one_run_folder(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "train_addition.py"), *RACE, "--out", str(tmp_path),
               "--run-name", "race"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    run = tmp_path / "race"
    try:
        deadline = time.time() + 120
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        assert loser.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"is in use: another grokmath process (pid {winner.pid})" in err, err
        while not any(s > 0 for s in RunDir(run).state_steps()):  # the winner trains on, alone
            assert winner.poll() is None and time.time() < deadline, winner.communicate()
            time.sleep(0.05)
        winner.send_signal(signal.SIGTERM)
        _, err = winner.communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert winner.returncode == 128 + signal.SIGTERM and "resume with:" in err, err
    stopped = int(err.split(" at step ")[1].split(";")[0])
    # the run is whole: its settings, its rows up to the stop and its newest states all load
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 100000
    assert len((run / "metrics.csv").read_text().splitlines()) == stopped + 1
    runs = [RunDir(run)]
    assert load_latest_states(runs)[0]["step"] == stopped
    assert no_temporary_files(run) and not RunDir(run).needs_recovery()


def test_resume_recovers_a_seeds_group_member_left_partway(capsys, tmp_path):
    """--resume on one run of a --seeds group puts back every member first (here the second, as the
    issue built the state), then resumes the group (finished: it says so)."""
    load_script("train_addition").main([*TINY, "--seeds", "1", "2", "--out", str(tmp_path)])
    runs = [tmp_path / f"addition_2d_s{seed}" for seed in (1, 2)]
    before = [user_files(run) for run in runs]
    (runs[1] / REPLACING).mkdir()
    os.replace(runs[1] / "config.json", runs[1] / REPLACING / "config.json")
    expect_error(capsys, "evaluate", [str(runs[1]), "--questions", "10"], "partway through moving its run aside",
                 f"--resume {runs[1]} puts them back")
    expect_error(capsys, "train_addition", ["--resume", str(runs[0])], "already finished its 6 steps")
    assert [user_files(run) for run in runs] == before and not RunDir(runs[1]).needs_recovery()

"""Sweeps (scripts/sweep.py): run folders, results.csv read back against each run's own metrics.csv,
a kill -9 mid-sweep finished by the same command without retraining, Ray, and bad sweep files."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from script_helpers import ROOT, load_script

sweep_script = load_script("sweep")

SWEEP = """script = "train_addition"
out = "{out}"
seeds = [1, 2]
{extra}
[base]
digits = 2
d_model = 16
n_heads = 2
steps = 150
checkpoint_every = 30
device = "cpu"
no_plots = true
[grid]
lr = [1e-3, 3e-3]
"""
RUNS = ["lr=0.001_s1", "lr=0.001_s2", "lr=0.003_s1", "lr=0.003_s2"]


def write_sweep(tmp, name, extra=""):
    path = tmp / f"{name}.toml"
    path.write_text(SWEEP.format(out=tmp / name, extra=extra))
    return path


def expected_row(run_dir: Path) -> dict:
    """What results.csv must say of a run, computed here from its own metrics.csv and config.json."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    config = json.loads((run_dir / "config.json").read_text())
    loss = metrics["train_loss"].to_numpy()
    row = {"lr": config["train"]["lr"], "seed": config["train"]["seed"], "steps": len(metrics),
           "final_loss": loss[-1], "mean_loss_last_100": loss[-100:].mean()}
    for t in (1.0, 0.1):
        below = np.flatnonzero(loss < t)
        row[f"steps_to_{t:g}"] = below[0] if len(below) else None
    for digit in ("A2", "A1", "A0"):
        below = np.flatnonzero(metrics[f"loss_{digit}"].to_numpy() < 0.1)
        row[f"under_0.1_{digit}"] = below[0] if len(below) else None
    return row


def check_results(sweep_dir: Path) -> pd.DataFrame:
    results = pd.read_csv(sweep_dir / "results.csv")
    assert list(results["run"]) == RUNS
    for _, row in results.iterrows():
        for key, value in expected_row(sweep_dir / row["run"]).items():
            if value is None:
                assert pd.isna(row[key]), (row["run"], key)
            else:
                assert row[key] == pytest.approx(value, rel=1e-12), (row["run"], key)
    return results


@pytest.fixture(scope="module")
def stacked_sweep(tmp_path_factory):
    """2 settings x 2 seeds, the seeds of each setting stacked in one process, 2 at a time."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_script.main([str(write_sweep(tmp, "stacked", "workers = 2")), "--no-progress"])
    return tmp / "stacked"


def test_a_sweep_of_2_settings_x_2_seeds_gives_4_run_folders_and_results(stacked_sweep):
    runs = sorted(p.name for p in stacked_sweep.iterdir() if (p / "config.json").is_file())
    assert runs == RUNS
    for name in RUNS:  # each an ordinary run folder with its setting and seed, stacked with its sibling
        config = json.loads((stacked_sweep / name / "config.json").read_text())
        assert config["train"]["lr"] == float(name.split("=")[1].split("_")[0])
        assert config["train"]["seed"] == config["model"]["seed"] == int(name[-1])
        assert config["task"]["n_digits"] == 2 and config["model"]["d_model"] == 16
        assert (stacked_sweep / name / "group.json").is_file()
    check_results(stacked_sweep)
    # the phase-change atlas says what each run's metrics say
    atlas = pd.read_csv(stacked_sweep / "views" / "phase_changes.csv")
    for _, row in atlas.iterrows():
        expected = expected_row(stacked_sweep / f"{row['setting']}_s{row['seed']}")[f"under_0.1_{row['position']}"]
        assert (pd.isna(row["step"]) if expected is None else row["step"] == expected)
    assert len(atlas) == 4 * 3
    for png in ("curves.png", "phase_changes.png", "runs.png"):
        assert (stacked_sweep / "views" / png).stat().st_size > 1000


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


def _state_steps(run_dir: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("state_*.pt")]


def test_kill_9_mid_sweep_then_the_same_command_finishes_without_retraining(tmp_path, stacked_sweep):
    path = write_sweep(tmp_path, "killed", "stack = 2\nworkers = 1")  # one setting after the other
    sweep_dir = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--no-progress"]
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.time() + 240
    try:  # kill when one run has finished and the next is between two checkpoints
        while process.poll() is None and time.time() < deadline:
            finished = [n for n in RUNS if (sweep_dir / n / "summary.json").is_file()]
            stopped = [n for n in RUNS if n not in finished and (sweep_dir / n / "checkpoints").is_dir()
                       and 0 < max(_state_steps(sweep_dir / n), default=0) < 150]
            if finished and stopped:
                os.killpg(process.pid, signal.SIGKILL)  # the sweep and its training process, at once
                killed = True
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None and not killed:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert killed, "the sweep finished before it could be killed mid-run"
    done = {n: _snapshot(sweep_dir / n) for n in finished}
    assert stopped[0] not in done and not (sweep_dir / stopped[0] / "summary.json").exists()

    sweep_script.main([str(path), "--no-progress"])
    for name, files in done.items():  # finished runs: not one file rewritten
        assert _snapshot(sweep_dir / name) == files
    resumed = [line for log in (sweep_dir / "logs").iterdir() for line in log.read_text().splitlines()
               if "--resume" in line]
    assert len(resumed) == 1 and str(sweep_dir / stopped[0].replace("_s2", "_s1")) in resumed[0]  # its group
    check_results(sweep_dir)
    for name in RUNS:  # every run, resumed or not, trained exactly as in the sweep that was never stopped
        assert (sweep_dir / name / "metrics.csv").read_bytes() == (stacked_sweep / name / "metrics.csv").read_bytes()
    # run again: nothing to do, nothing touched
    before = {n: _snapshot(sweep_dir / n) for n in RUNS}
    sweep_script.main([str(path), "--no-progress"])
    assert {n: _snapshot(sweep_dir / n) for n in RUNS} == before


def test_a_local_ray_sweep_gives_the_same_results(tmp_path, stacked_sweep, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")  # a shared test machine is not out of memory
    path = write_sweep(tmp_path, "ray")
    sweep_script.main([str(path), "--no-progress", "--ray", "local", "--workers", "2"])
    ours = pd.read_csv(tmp_path / "ray" / "results.csv")
    pd.testing.assert_frame_equal(ours, check_results(stacked_sweep))


@pytest.mark.parametrize("text, message", [
    ('script = "train_addition"\nseeds = [1]\nbogus = 1', "unknown key"),
    ('script = "train_nothing"\nseeds = [1]', "not a training script"),
    ('script = "train_addition"\nseeds = []', "seeds must be"),
    ('script = "train_addition"\nseeds = [1]\n[grid]\nlr = 0.1', "non-empty list"),
    ('script = "train_addition"\nseeds = [1]\n[base]\nseed = 3', "set by the sweep"),
    ('script = "train_addition"\nseeds = [1]\n[base]\nlearning_rate = 3', "not a flag"),
    ('script = "train_addition"\nseeds = [1]\n[grid]\nlr = [-1.0]', "lr"),
    ('script = "train_addition"\nseeds = [1]\n[base]\nno_plots = 1', "switch"),
    ('script = "train_addition"\nseeds = [1]\n[base\n', "not valid TOML"),
])
def test_a_bad_sweep_file_gets_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'out = "{tmp_path / "out"}"\n' + text)
    with pytest.raises(ValueError, match=message) as error:
        sweep_script.main([str(path)])
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_the_command_line_says_it_in_one_line_with_exit_status_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('script = "train_addition"\nseeds = [1]\n[grid]\nlr = 0.1\n')
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "grid.lr" in result.stderr, result.stderr


def test_the_example_sweep_file_plans_its_grid_times_its_seeds():
    from grokmath.sweeps.grid import plan_sweep, read_sweep
    sweep = read_sweep(ROOT / "sweeps" / "addition_lr.toml")
    runs = plan_sweep(sweep)
    assert [r.name for r in runs] == [f"lr={lr}_s{s}" for lr in ("0.001", "0.003") for s in (1, 2, 3, 4)]
    assert {r.values["lr"] for r in runs} == {1e-3, 3e-3}  # names carry the exact value


def test_the_atlas_takes_the_grokking_step_from_test_accuracy():
    from grokmath.sweeps.results import phase_changes
    acc = [0.1, 0.5, 0.98, 0.995, 0.97, 1.0]
    metrics = pd.DataFrame({"step": range(6), "loss_out": [3, 2, 0.5, 0.05, 0.01, 0.0], "test_acc": acc})
    assert phase_changes(metrics) == {"out": 3, "grok": 3}
    metrics["test_acc"] = [0.1] * 6
    assert phase_changes(metrics) == {"out": 3, "grok": None}

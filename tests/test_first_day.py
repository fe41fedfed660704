"""A newcomer's first day (issue 20): a run stopped by Ctrl-C is analysed at the step it stopped,
every analysis script says which run and step it read, the plots are there after a stop, the start
of a run says where, on what and how long, a default folder holding other settings asks for
--run-name, and a flag's prefix is never taken for the flag."""
import argparse
import os
import re
import signal

import pytest
import torch

from grokmath import cli
from grokmath.store.checkpoint import RunDir, load_run

from script_helpers import ROOT, load_script, run_guarded

TINY = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "30", "--checkpoint-every", "10",
        "--device", "cpu", "--no-progress"]
STOP_AT = 17  # not a checkpoint step: before the fix, every analysis read step 10 without a word



@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """train_addition.py stopped by SIGINT (Ctrl-C) in the step that ends at STOP_AT, through the real
    stop path: the loop's signal handler, its checkpoint, main_guard's message."""
    import grokmath.training.train
    out = tmp_path_factory.mktemp("runs")
    real, calls = grokmath.training.train.train_step, [0]

    def step_then_ctrl_c(*args, **kwargs):
        calls[0] += 1
        if calls[0] == STOP_AT:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    grokmath.training.train.train_step = step_then_ctrl_c
    try:
        with pytest.raises(SystemExit) as stop:
            cli.main_guard(load_script("train_addition").main, [*TINY, "--out", str(out), "--run-name", "stopped"])
    finally:
        grokmath.training.train.train_step = real
    return out / "stopped", stop.value.code


def test_ctrl_c_saves_the_model_at_the_stop_and_draws_the_plots(stopped_run, capsys):
    run, code = stopped_run
    assert code == 128 + signal.SIGINT
    assert RunDir(run).state_steps() == [10, STOP_AT] and RunDir(run).model_steps() == [0, 10, STOP_AT]
    for png in ("per_position_loss.png", "loss.png", "case_loss.png"):  # drawn at the stop
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    loaded = load_run(run)
    assert loaded.step == STOP_AT and not loaded.finished
    # the weights analysed are the ones --resume continues from (the resumable state's), not step 10's
    state = RunDir(run).load_state(STOP_AT)["model"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())
    assert not torch.equal(load_run(run, step=10).model.state_dict()["unembed.W_U"], state["unembed.W_U"])


def test_the_stop_message_names_the_plots_and_the_resume_command(tmp_path, capsys, monkeypatch):
    import grokmath.training.train
    real, calls = grokmath.training.train.train_step, [0]

    def step_then_ctrl_c(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(grokmath.training.train, "train_step", step_then_ctrl_c)
    code, _, err = run_guarded(capsys, "train_addition", [*TINY, "--out", str(tmp_path), "--no-plots"])
    assert code == 130 and len(err.strip().splitlines()) == 1, err
    assert "stopped by SIGINT at step 5" in err and "draw the plots with" in err and "plot_run.py" in err
    assert "--resume" in err


def test_an_old_stopped_run_without_a_model_at_its_stop_is_read_from_its_state(stopped_run, tmp_path):
    """A run stopped before grokmath saved the model at a stop has only the resumable state there."""
    import shutil
    run, _ = stopped_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "checkpoints" / f"model_{STOP_AT:06d}.pt").unlink()
    loaded = load_run(old)
    assert loaded.step == STOP_AT and STOP_AT in loaded.steps
    state = RunDir(old).load_state(STOP_AT)["model"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("script,argv", [
    ("evaluate", ["--questions", "64", "--no-progress"]),
    ("ablate", ["--questions", "32"]),
    ("attention", ["--questions", "1"]),
    ("plot_run", []),
    ("explain", ["--per-class", "4", "--probe-questions", "40", "--no-progress"]),
])
def test_every_analysis_script_says_first_which_run_and_step_it_read(stopped_run, capsys, script, argv):
    run, _ = stopped_run
    code, out, err = run_guarded(capsys, script, [str(run), *argv])
    if script == "explain":  # the 17-step model answers nothing right, which explain refuses, after saying what it read
        assert code == 2 and "answers none of the questions right" in err, err
    else:
        assert code == 0, err
    first = out.splitlines()[0]
    step = "trained to step" if script == "plot_run" else "at step"  # plots read the metrics, not a model
    assert first.startswith(f"run {run} {step} {STOP_AT} of 30 "), first
    assert f"stopped at step {STOP_AT}" in first and "--resume" in first
    written = re.findall(r"step(\d{6})", out)  # the files it wrote are named by the step it analysed
    assert all(int(s) == STOP_AT for s in written)


def test_a_finished_run_says_finished(tmp_path, capsys):
    load_script("train_addition").main([*TINY, "--steps", "4", "--out", str(tmp_path), "--run-name", "done",
                                        "--no-plots"])
    run = load_run(tmp_path / "done")
    assert run.describe() == f"run {run.path} at step 4 of 4 (finished)"
    assert "an earlier checkpoint" in load_run(tmp_path / "done", step=0).describe()


def test_the_start_says_where_on_what_and_how_long_before_the_bar(tmp_path, capsys):
    argv = [a for a in TINY if a != "--no-progress"]
    load_script("train_addition").main([*argv, "--out", str(tmp_path), "--run-name", "r", "--no-plots"])
    captured = capsys.readouterr()
    header, expected = captured.out.splitlines()[:2]
    assert f"run folder: {tmp_path / 'r'}" in header and "device: cpu" in header and "step path: eager" in header
    n_params = sum(v.numel() for v in load_run(tmp_path / "r").model.state_dict().values())
    assert "steps 0 to 30" in header and f"{n_params:,} parameters" in header
    assert re.match(r"expected time on cpu: about \d+ s for the \d+ steps left \([\d.]+ ms a step", expected)
    assert "addition" in captured.err  # the bar, opened after those lines


def test_the_expected_time_counts_the_steps_and_checkpoints_left(monkeypatch):
    from grokmath.training import announce
    clock = iter([0.0, 1.0])  # the timed window: 20 steps in 1 s, i.e. 50 ms a step
    monkeypatch.setattr(announce.time, "perf_counter", lambda: next(clock))
    timer = announce.StepTimer(0, 1000, 100, torch.device("cpu"))
    timer.save_seconds = 0.5
    assert [timer.expected(done) for done in (1, 2)] == [None, None]
    assert timer.expected(3) is None  # timing starts
    line = timer.expected(23)
    # 977 steps at 50 ms, and the 10 saves at steps 100 ... 900 and 1000 at 0.5 s: 48.85 + 5 s
    assert line.startswith("expected time on cpu: about 54 s for the 977 steps left (50 ms a step")
    assert announce.duration(5400) == "1.5 h" and announce.duration(150) == "2.5 min"


def test_a_default_folder_holding_other_settings_asks_for_a_run_name(tmp_path, capsys):
    """The README's small run, then the main job, both without --run-name (here tiny)."""
    small = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "3", "--device", "cpu",
             "--no-progress", "--no-plots", "--out", str(tmp_path)]
    load_script("train_addition").main(small)
    (folder,) = tmp_path.iterdir()
    before = sorted(p.name for p in folder.rglob("*"))
    code, _, err = run_guarded(capsys, "train_addition", [*small[:2], "--d-model", "8", *small[4:]])
    assert code == 2 and "already holds a run with other settings (d_model 16, here 8" in err
    assert "--run-name" in err and sorted(p.name for p in folder.rglob("*")) == before
    code, _, err = run_guarded(capsys, "train_addition", [*small[:2], "--d-model", "8", *small[4:], "--run-name", "b"])
    assert code == 0 and (tmp_path / "b" / "config.json").exists()


SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_script_takes_a_prefix_of_a_flag_for_the_flag(script, monkeypatch):
    made = []
    real = argparse.ArgumentParser.__init__

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", record)
    module = load_script(script)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0 and made
    assert all(parser.allow_abbrev is False for parser in made), script


def test_digit_is_not_digits(capsys):
    code, _, err = run_guarded(capsys, "train_addition", ["--digit", "5"])
    assert code == 2 and "unrecognized arguments: --digit 5" in err


def test_failing_questions_show_the_right_answer_as_the_model_writes_it(stopped_run, capsys):
    """Each listed failure: the right answer with its leading zeros, from Python integers."""
    run, _ = stopped_run
    code, out, err = run_guarded(capsys, "evaluate", [str(run), "--questions", "200", "--no-progress",
                                                  "--max-failures", "30", "--seed", "3"])
    assert code == 0, err
    assert "the right answer and the model's greedy answer" in out
    rows = re.findall(r"^  (\d+)\+(\d+)=\s+right (\d+)  model (\d+)  wrong: ([A0-9 ]+)$", out, re.M)
    assert len(rows) == 20  # the model at step 17 gets most wrong; 20 of them are printed
    for x, y, right, model, wrong in rows:
        assert right == str(int(x) + int(y)).zfill(3) and len(model) == 3
        # greedy generation follows teacher forcing up to its first wrong digit, so both fail first there
        first_wrong = next(f"A{2 - i}" for i in range(3) if right[i] != model[i])
        assert wrong.split()[0] == first_wrong


def test_evaluate_picks_its_default_count_by_device_and_says_so(stopped_run, capsys, monkeypatch):
    from grokmath.analysis import evaluate
    assert evaluate.default_questions("cpu") == 100_000 and evaluate.default_questions("cuda") == 1_000_000
    monkeypatch.setattr(evaluate, "default_questions", lambda device: 40 if torch.device(device).type == "cpu" else 0)
    run, _ = stopped_run
    code, out, err = run_guarded(capsys, "evaluate", [str(run), "--no-progress", "--overwrite"])
    assert code == 0, err
    assert out.splitlines()[1].startswith("40 questions, the default on a CPU") and ": 40 uniform questions" in out


def test_a_notebook_name_asked_of_batch_meta_points_to_the_notebook_layout():
    """Raw batch.meta is units first and bool; a cell ported from the seed notebooks asks for their
    names and must be told where their layout is, however the batch was made."""
    from grokmath.tasks import make_task
    from grokmath.tasks.base import Batch
    task = make_task("addition", n_digits=3)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    for made in (batch, batch.index(slice(0, 4)), batch.to("cpu"), Batch.cat([batch, batch])):
        for name in ("use_sum9s", "base_adds", "make_carry1s", "carries"):
            with pytest.raises(KeyError, match=r"UNITS FIRST.*task\.notebook_layout\(batch\)"):
                made.meta[name]
        assert "units first" in repr(made.meta) and "notebook_layout" in repr(made.meta)
    # what the pointer leads to: the same flags most significant digit first, as the notebook's loop builds them
    notebook = task.notebook_layout(batch)
    digits = [[int(c) for c in text[:7].replace("+", "")] for text in task.decode(batch.tokens)]
    for row, d in enumerate(digits):
        x, y = d[:3], d[3:]
        carry, use_sum9 = 0, []
        for col in range(2, -1, -1):  # units last in the notebook's columns
            use_sum9.insert(0, int(x[col] + y[col] == 9 and carry == 1))
            carry = int(x[col] + y[col] + carry >= 10)
        assert notebook.use_sum9s[row].tolist() == use_sum9
    assert torch.equal(notebook.use_sum9s, batch.meta["use_sum9"].flip(1).long())


def test_compare_runs_and_train_sae_also_say_which_run_and_step(stopped_run, tmp_path, capsys):
    run, _ = stopped_run
    code, out, err = run_guarded(capsys, "compare_runs", [str(run), "--out", str(tmp_path / "cmp.png"), "--window", "5"])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"run {run} trained to step {STOP_AT} of 30 (stopped at step {STOP_AT}")
    sae = tmp_path / "sae_run"
    import shutil
    shutil.copytree(run, sae)
    code, out, err = run_guarded(capsys, "train_sae", [str(sae), "--d-sae", "8", "--n-batches", "1", "--eval-batches", "1",
                                                   "--epochs", "1", "--batch-size", "8", "--no-progress"])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"run {sae} at step {STOP_AT} of 30 (stopped at step {STOP_AT}")

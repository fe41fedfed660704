"""Reliability: exact resume after SIGKILL / SIGTERM / SIGINT, damaged and unsafe checkpoints,
and one-line exit-2 errors for every bad input a user can give."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from grokmath import cli
from grokmath.store.checkpoint import CheckpointError, RunDir, load_run, safe_load
from grokmath.model.transformer import Transformer
from grokmath.tasks import make_task
from grokmath.config import TrainConfig, model_config_for
from grokmath.training.run import resume_run, start_run
from grokmath.training.train import NonFiniteLoss, TrainingInterrupted, train

from script_helpers import load_script
from signal_helpers import signal_at

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--digits", "2", "--d-model", "32", "--batch-size", "32", "--steps", "300", "--checkpoint-every", "50",
         "--device", "cpu", "--no-progress", "--no-plots"]


def run_script(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_addition.py"), *args],
                          capture_output=True, text=True, timeout=120, **kw)


def start_script(args):
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_addition.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_state(proc, run: RunDir, after: int, timeout=60.0) -> None:
    """Wait until the subprocess has written a resumable state beyond step `after`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(s > after for s in run.state_steps()):
            return
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the settings every kill test uses (in-process: the same code path)."""
    out = tmp_path_factory.mktemp("ref")
    load_script("train_addition").main([*SMALL, "--out", str(out), "--run-name", "ref"])
    return pd.read_csv(out / "ref" / "metrics.csv")


def test_sigkill_then_resume_is_bit_identical(reference, tmp_path, capsys):
    run = RunDir(tmp_path / "killed")
    proc = start_script([*SMALL, "--out", str(tmp_path), "--run-name", "killed"])
    wait_for_state(proc, run, after=0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # what the kill left is readable: the metrics cover every step up to the newest state
    newest = max(run.state_steps())
    assert newest < 300
    assert pd.read_csv(run.metrics_path)["step"].iloc[:newest].tolist() == list(range(newest))
    load_script("train_addition").main(["--resume", str(run.path), "--no-progress", "--no-plots"])
    resumed = pd.read_csv(run.metrics_path)
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = RunDir(tmp_path / "termed")
    proc = start_script([*SMALL, "--out", str(tmp_path), "--run-name", "termed"])
    wait_for_state(proc, run, after=0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "SIGTERM" in err and f"--resume {run.path}" in err
    stopped = int(err.split(" at step ")[1].split(";")[0])
    assert max(run.state_steps()) == stopped  # the state is at the step it stopped, not the last 50
    # (that a resumed run matches an uninterrupted one is checked above and, in-process, below)


# ---- in-process resume, damaged and unsafe checkpoints -------------------------------------------

def nan_from(model, start):
    """Make `model`'s logits NaN from its `start`-th forward call on."""
    calls = [0]

    def hook(module, args, output):
        calls[0] += 1
        return output * float("nan") if calls[0] > start else output

    model.register_forward_hook(hook)
    return model


def small_setup(grokfast=None):
    task = make_task("addition", n_digits=2)
    model_cfg = model_config_for(task, d_model=32, n_heads=4, seed=9)
    cfg = TrainConfig(steps=30, lr=3e-3, batch_size=16, checkpoint_every=10, schedule="cosine", grokfast=grokfast)
    return task, model_cfg, cfg


def interrupted_run(path, at, grokfast=None):
    task, model_cfg, cfg = small_setup(grokfast)
    run = RunDir(path)
    run.create({"model": model_cfg.to_dict(), "task": {"name": task.name, **task.options()},
                "train": cfg.to_dict()})
    with pytest.raises(TrainingInterrupted):
        train(signal_at(Transformer(model_cfg), at), task, cfg, run.path, device="cpu", progress=False)
    return run


@pytest.mark.parametrize("grokfast", [None, "ma"])
def test_sigint_then_resume_is_bit_identical(tmp_path, grokfast):
    task, model_cfg, cfg = small_setup(grokfast)
    ref = start_run(model_cfg, task, cfg, tmp_path / "ref", device="cpu", progress=False, plots=False)
    run = interrupted_run(tmp_path / "cut", at=16, grokfast=grokfast)
    assert run.state_steps() == [10, 16]  # the signal came during step 15, which completes
    result = resume_run(run.path, device="cpu", progress=False, plots=False)
    pd.testing.assert_frame_equal(result.metrics, ref.metrics, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(run.metrics_path), ref.metrics, check_exact=True)
    final = torch.load(run.model_path(30), weights_only=True)
    expected = torch.load(RunDir(ref.run_dir).model_path(30), weights_only=True)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    task, model_cfg, cfg = small_setup()
    ref = start_run(model_cfg, task, cfg, tmp_path / "ref", device="cpu", progress=False, plots=False)
    run = interrupted_run(tmp_path / "cut", at=26)
    newest = run.state_path(26)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a crash mid-copy, say
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        safe_load(newest)
    warnings = []
    result = resume_run(run.path, device="cpu", progress=False, plots=False, warn=warnings.append)
    assert len(warnings) == 1 and "state_000026.pt" in warnings[0]
    pd.testing.assert_frame_equal(result.metrics, ref.metrics, check_exact=True)


class Payload:
    """Pickles to a call of open(marker, 'w'): loading it unsafely would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model_000000.pt"
    torch.save({"embed.W_E": torch.zeros(2), "x": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to load .*pickled code"):
        safe_load(evil)
    assert not marker.exists()
    # inside a run: as a model checkpoint, and as the newest resumable state (no silent fallback)
    task, model_cfg, cfg = small_setup()
    start_run(model_cfg, task, TrainConfig(steps=4, checkpoint_every=2), tmp_path / "run", device="cpu",
              progress=False, plots=False)
    run = RunDir(tmp_path / "run")
    torch.save({"step": 4, "model": Payload(marker)}, run.state_path(4))
    torch.save({"w": Payload(marker)}, run.model_path(4))
    with pytest.raises(CheckpointError, match="refusing"):
        load_run(run.path)
    with pytest.raises(CheckpointError, match="refusing"):
        run.load_latest_state()
    assert not marker.exists()


def test_nonfinite_run_keeps_its_last_good_checkpoint(tmp_path):
    task, model_cfg, cfg = small_setup()
    run = RunDir(tmp_path / "r")
    run.create({"model": model_cfg.to_dict(), "task": {"name": "addition", "n_digits": 2}, "train": cfg.to_dict()})
    with pytest.raises(NonFiniteLoss, match="at step 13; .* last good checkpoint is step 10"):
        train(nan_from(Transformer(model_cfg), 13), task, cfg, run.path, device="cpu", progress=False)
    assert max(run.model_steps()) == 10 and max(run.state_steps()) == 10
    assert all(torch.isfinite(v).all() for v in safe_load(run.model_path(10)).values())


# ---- bad input: one line, exit status 2, nothing written ------------------------------------------


def expect_exit_2(capsys, script, argv, fragment):
    with pytest.raises(SystemExit) as info:
        cli.main_guard(load_script(script).main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err
    return err


BAD_INPUTS = [
    ("train_addition", ["--digits", "0"], "must be a whole number >= 1"),
    ("train_addition", ["--digits", "-3"], "must be a whole number >= 1"),
    ("train_addition", ["--digits", "1000"], "n_digits"),
    ("train_addition", ["--steps", "0"], "--steps: 0 must be a whole number >= 1"),
    ("train_addition", ["--steps", "ten"], "'ten' is not a whole number"),
    ("train_addition", ["--steps", "1000000000"], "steps=1000000000 is out of range"),
    ("train_addition", ["--batch-size", "0"], "--batch-size"),
    ("train_addition", ["--lr", "0"], "--lr: 0 must be a number > 0"),
    ("train_addition", ["--lr=-1e-3"], "must be a number > 0"),
    ("train_addition", ["--lr", "-1e-3"], "a value starting with '-' needs '='"),
    ("train_addition", ["--lr", "5"], "lr=5.0 is out of range"),
    ("train_addition", ["--lr", "nan"], "must be a finite number"),
    ("train_addition", ["--d-model", "100", "--n-heads", "3"], "not divisible by n_heads=3"),
    ("train_addition", ["--device", "tpu"], "not a device torch knows"),
    ("train_addition", ["--foo"], "unrecognized arguments: --foo"),
    ("train_addition", ["--run-name", "a/b"], "plain folder name"),
    ("train_addition", ["--grokfast", "fast"], "invalid choice"),
    ("train_arithmetic", ["--ops", "div=100"], "unknown op 'div'"),
    ("train_arithmetic", ["--ops", "sub=50,add=20"], "sum to 100"),
    ("train_arithmetic", ["--ops", "sub80"], "is not a mix like sub=80,add=20"),
    ("train_modular", ["--p", "100"], "p must be prime"),
    ("train_modular", ["--frac-train", "1.5"], "fraction between 0 and 1"),
    ("train_modular", ["--batch-size", "64"], "--batch-size does not apply"),
    ("train_skip_trigram", ["--seq-len", "0"], "--seq-len"),
    ("train_induction", ["--subseq-len", "50"], "too short"),
]


@pytest.mark.parametrize("script,argv,fragment", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, script, argv, fragment):
    expect_exit_2(capsys, script, [*argv, "--out", str(tmp_path / "runs"), "--steps", "1"]
                  if "--steps" not in argv else [*argv, "--out", str(tmp_path / "runs")], fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(capsys, tmp_path):
    expect_exit_2(capsys, "train_addition", ["--device", "cuda", "--out", str(tmp_path)], "use --device cpu")
    assert not any(tmp_path.iterdir())


def test_resume_errors(capsys, tmp_path):
    expect_exit_2(capsys, "train_addition", ["--resume", str(tmp_path / "missing")], "does not exist")
    (tmp_path / "foreign").mkdir()
    expect_exit_2(capsys, "train_addition", ["--resume", str(tmp_path / "foreign")], "not a grokmath run folder")
    task = make_task("modular", p=5)
    start_run(model_config_for(task, d_model=8, n_heads=2), task,
              TrainConfig(steps=2, data="full", batch_size=None), tmp_path / "mod", device="cpu", progress=False,
              plots=False)
    expect_exit_2(capsys, "train_addition", ["--resume", str(tmp_path / "mod")], "resume it with scripts/train_modular.py")
    expect_exit_2(capsys, "train_modular", ["--resume", str(tmp_path / "mod"), "--lr", "0.1"],
                  "--lr cannot be combined with --resume")
    expect_exit_2(capsys, "train_modular", ["--resume", str(tmp_path / "mod")], "already finished its 2 steps")


def test_resume_takes_the_command_retyped_and_names_the_flags_that_differ(capsys, tmp_path):
    command = ["--p", "5", "--d-model", "8", "--n-heads", "2", "--steps", "4", "--lr", "0.003", "--device", "cpu",
               "--out", str(tmp_path), "--no-progress", "--no-plots", "--checkpoint-every", "2"]
    run = tmp_path / "modular_add_p5_s0"
    load_script("train_modular").main(command)
    capsys.readouterr()
    # the same command with --resume: the flags equal the saved settings, so it gets as far as resuming
    expect_exit_2(capsys, "train_modular", [*command, "--resume", str(run)], "already finished its 4 steps")
    # flags that differ are named, with the saved values; nothing is touched
    err = expect_exit_2(capsys, "train_modular", [*command, "--steps", "6", "--lr", "0.1", "--p", "7", "--resume",
                                                  str(run)], "--lr, --p cannot be combined with --resume")
    assert "lr 0.003, given 0.1" in err and "p 5, given 7" in err
    assert len(pd.read_csv(run / "metrics.csv")) == 4
    expect_exit_2(capsys, "train_modular", [*command, "--overwrite", "--resume", str(run)], "give one of them")
    # --steps may differ: it extends the run
    load_script("train_modular").main([*command, "--steps", "6", "--resume", str(run)])
    assert len(pd.read_csv(run / "metrics.csv")) == 6
    capsys.readouterr()


def test_existing_run_is_left_untouched_without_overwrite(capsys, tmp_path):
    argv = ["--digits", "2", "--d-model", "16", "--steps", "3", "--device", "cpu", "--out", str(tmp_path),
            "--run-name", "mine", "--no-progress", "--no-plots"]
    load_script("train_addition").main(argv)
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    expect_exit_2(capsys, "train_addition", [*argv[:-6], "--steps", "5", *argv[-6:]], "pass --overwrite")
    after = {p: p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    assert before == after
    load_script("train_addition").main([*argv, "--overwrite"])
    assert before.keys() == {p for p in (tmp_path / "mine").rglob("*") if p.is_file()}


def test_a_real_process_prints_no_traceback(tmp_path):
    done = run_script(["--digits", "0", "--out", str(tmp_path)])
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr

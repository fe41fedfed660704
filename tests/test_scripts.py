"""The scripts end to end with tiny settings: the small addition run as a real process, the
other training scripts in-process (same code path, without a Python start-up each), and the
plotting scripts on the result."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from script_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_addition", "train_arithmetic", "train_skip_trigram", "train_induction", "train_modular",
           "plot_run", "compare_runs"]



@pytest.fixture(scope="module")
def addition_run(tmp_path_factory):
    """The issue's small run: `train_addition.py --d-model 64 --steps 200` on CPU, as a subprocess."""
    out = tmp_path_factory.mktemp("runs")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_addition.py"), "--d-model", "64",
                           "--steps", "200", "--device", "cpu", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out / "addition_5d_s129000", done.stdout


def test_small_addition_run_makes_a_complete_run_folder(addition_run):
    run, stdout = addition_run
    assert f"run folder: {run}" in stdout and "first step with loss < 0.1: A5=" in stdout
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == {"name": "addition", "n_digits": 5}
    assert config["model"]["d_model"] == 64 and config["model"]["n_heads"] == 4
    assert config["model"]["normalization"] is None and config["model"]["d_mlp"] == 256
    assert config["train"]["lr"] == 1e-4 and config["train"]["weight_decay"] == 0.1
    assert config["train"]["batch_size"] == 64 and config["train"]["seed"] == 129000
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 200 and metrics["train_loss"].notna().all()
    assert [c for c in metrics.columns if c.startswith("loss_")] == [f"loss_A{i}" for i in range(5, -1, -1)]
    assert {"case_BaseAdd/A3", "case_UseCarry1/A3", "case_UseSum9/A3"} <= set(metrics.columns)
    # the loss goes down: the leading digit (0 or 1) is learnt first
    assert metrics["loss_A5"].iloc[-20:].mean() < 0.5 * metrics["loss_A5"].iloc[:20].mean()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["model_000000.pt", "model_000200.pt", "state_000000.pt", "state_000200.pt"]
    for png in ("per_position_loss.png", "loss.png", "case_loss.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_run_and_compare_runs(addition_run, tmp_path, capsys):
    run, _ = addition_run
    (run / "loss.png").unlink()
    load_script("plot_run").main([str(run)])
    assert (run / "loss.png").exists()
    out = tmp_path / "cmp.png"
    load_script("compare_runs").main([str(run), str(run), "--label-by", "digits", "--out", str(out),
                                      "--window", "10"])
    summary = pd.read_csv(tmp_path / "cmp.csv")
    assert out.exists() and list(summary["label"]) == ["5", f"5 ({run.name})"]
    metrics = pd.read_csv(run / "metrics.csv")
    assert summary["final_loss"].iloc[0] == metrics["train_loss"].iloc[-1]
    assert summary["mean_loss_last_100"].iloc[0] == pytest.approx(metrics["train_loss"].iloc[-100:].mean())
    below = metrics["step"][metrics["train_loss"] < 1.0]
    expected = below.iloc[0] if len(below) else None
    assert (summary["steps_to_1"].iloc[0] if pd.notna(summary["steps_to_1"].iloc[0]) else None) == expected
    # an existing comparison is kept unless --overwrite; --thresholds picks the summary's columns
    with pytest.raises(ValueError, match="--overwrite"):
        load_script("compare_runs").main([str(run), "--out", str(out)])
    assert pd.read_csv(tmp_path / "cmp.csv").equals(summary)
    load_script("compare_runs").main([str(run), "--out", str(out), "--overwrite", "--thresholds", "2.5", "0.5"])
    assert {"steps_to_2.5", "steps_to_0.5"} <= set(pd.read_csv(tmp_path / "cmp.csv").columns)


@pytest.mark.parametrize("script,argv,columns", [
    ("train_arithmetic", ["--digits", "2", "--ops", "add=50,sub=50", "--d-model", "30", "--n-heads", "3"],
     {"loss_sign", "loss_A2", "case_add", "case_sub/A0"}),
    ("train_skip_trigram", ["--rand-size", "4", "--seq-len", "6"], {"loss_target", "case_target_3"}),
    ("train_induction", ["--seq-len", "13", "--subseq-len", "3", "--vocab-size", "10", "--d-model", "16"],
     {"loss_P11"}),
    ("train_modular", ["--p", "11", "--d-model", "16", "--test-every", "2"], {"test_acc", "test_loss_answer"}),
    ("train_addition", ["--digits", "2", "--d-model", "16", "--finite", "50", "--grokfast", "ema"],
     {"test_loss", "test_loss_A1"}),
])
def test_each_training_script_runs(tmp_path, capsys, script, argv, columns):
    load_script(script).main([*argv, "--steps", "6", "--checkpoint-every", "3", "--device", "cpu",
                              "--out", str(tmp_path), "--no-progress"])
    (run,) = tmp_path.iterdir()
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 6 and columns <= set(metrics.columns)
    assert sorted(p.name for p in (run / "checkpoints").glob("model_*")) == [
        "model_000000.pt", "model_000003.pt", "model_000006.pt"]
    assert (run / "loss.png").exists()
    assert f"run folder: {run}" in capsys.readouterr().out
    if "--finite" in argv:  # a fixed training set trains full batch unless --batch-size is given
        assert json.loads((run / "config.json").read_text())["train"]["batch_size"] is None


def test_script_defaults_are_the_notebooks(tmp_path):
    """The defaults a script builds (parsed, not run), against the seed notebooks' settings."""
    from grokmath import cli

    def defaults(script, *argv):
        module = load_script(script)
        return cli.parse(module.build_parser(), list(argv))

    add = defaults("train_addition")
    assert (add.digits, add.d_model, add.n_heads, add.n_layers, add.batch_size, add.lr, add.weight_decay,
            add.steps, add.seed) == (5, 512, 4, 1, 64, 1e-4, 0.1, 3000, 129000)
    assert defaults("train_addition", "--finite", "750").batch_size == 64  # cli.run_training makes it full batch
    ar = defaults("train_arithmetic")
    assert (ar.digits, ar.n_layers, ar.n_heads, ar.d_model, ar.lr, ar.schedule, ar.batch_size) == \
        (6, 2, 3, 510, 8e-5, "cosine", 64)
    sk = defaults("train_skip_trigram")
    assert (sk.d_model, sk.n_heads, sk.d_head, sk.batch_size, sk.lr, sk.steps, sk.seed) == (32, 1, 8, 256, 1e-3, 3000, 6798)
    ind = defaults("train_induction")
    assert (ind.n_layers, ind.d_model, ind.n_heads, ind.batch_size, ind.warmup, ind.steps, ind.seed) == \
        (2, 48, 4, 128, 100, 6000, 123)
    mod = defaults("train_modular")
    assert (mod.p, mod.d_model, mod.n_heads, mod.d_mlp, mod.frac_train, mod.lr, mod.weight_decay) == \
        (113, 128, 4, 512, 0.3, 1e-3, 1.0)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help_and_the_docstring_an_example(script):
    module = load_script(script)
    parser = module.build_parser()
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    assert f"python scripts/{script}.py" in module.__doc__


CHECKS = ("resolve_device", "check_stackable", "check_data_parallel")


def test_each_check_runs_once_on_the_way_from_the_flags_to_the_loop(tmp_path, monkeypatch):
    """The device is resolved and the seeds checked once, at the edge, whichever module holds a
    name for the check: a single run, a --seeds group and a --resume each count one."""
    from grokmath.training import devices
    from grokmath.training import train as train_module
    calls = {name: 0 for name in CHECKS}

    def counted(name, check):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return check(*args, **kwargs)
        return wrapper

    originals = {"resolve_device": devices.resolve_device, "check_data_parallel": devices.check_data_parallel,
                 "check_stackable": train_module.check_stackable}
    for module in [m for name, m in sys.modules.items() if name.startswith("grokmath") and m is not None]:
        for name, check in originals.items():
            if getattr(module, name, None) is check:
                monkeypatch.setattr(module, name, counted(name, check))
    tiny = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "2", "--checkpoint-every", "2",
            "--device", "cpu", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    script = load_script("train_addition")
    script.main([*tiny, "--run-name", "one"])
    assert calls == {"resolve_device": 1, "check_stackable": 0, "check_data_parallel": 0}
    script.main([*tiny, "--seeds", "1", "2"])
    assert calls == {"resolve_device": 2, "check_stackable": 1, "check_data_parallel": 0}
    script.main(["--resume", str(tmp_path / "one"), "--steps", "4", "--no-progress", "--no-plots"])
    assert calls == {"resolve_device": 3, "check_stackable": 1, "check_data_parallel": 0}

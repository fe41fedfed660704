"""Many seeds stacked in one process (--seeds): the same loop as one model, so each model trains as
its single run would, writes the same run folder, and keeps every promise of the loop (non-finite
stop, signals, checkpoints, bit-identical resume of the whole group, also after SIGKILL)."""
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from grokmath import Transformer, cli
from grokmath.store.checkpoint import RunDir, prepare_runs, run_config
from grokmath.config import TrainConfig, model_config_for
from grokmath.training.run import resume_runs, start_seed_runs
from grokmath.tasks import make_task
from grokmath.training.multiseed import StackedModels
from grokmath.training.train import NonFiniteLoss, TrainingInterrupted, run_loop, train, train_seeds

from script_helpers import load_script
from signal_helpers import signal_at

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, options, model, train_settings", [
    ("skip_trigram", {}, dict(n_layers=1, d_model=16, n_heads=1, d_head=8, attn_only=True), dict(batch_size=64)),
    ("modular", {"p": 13}, dict(d_model=16, n_heads=2, d_mlp=32), dict(batch_size=None, data="full", weight_decay=1.0)),
    ("addition", {"n_digits": 2}, dict(d_model=16, n_heads=2, normalization="LN"), dict(batch_size=32)),
    ("addition", {"n_digits": 2}, dict(d_model=16, n_heads=2), dict(batch_size=32, grokfast="ma", grokfast_window=3)),
])
def test_stacked_seeds_equal_single_runs(name, options, model, train_settings):
    task = make_task(name, **options)
    model_cfg = model_config_for(task, **model, seed=0)
    cfg = TrainConfig(steps=8, lr=3e-3, checkpoint_every=100, **train_settings)
    seeds = [3, 11, 12]
    stacked = train_seeds(model_cfg, task, cfg, seeds, progress=False)
    for seed, result in zip(seeds, stacked):
        single = train(Transformer(replace(model_cfg, seed=seed)), task, replace(cfg, seed=seed), progress=False)
        pd.testing.assert_frame_equal(result.metrics, single.metrics, atol=1e-6, rtol=1e-5)
    assert stacked[0].metrics["train_loss"].iloc[-1] != stacked[1].metrics["train_loss"].iloc[-1]


def test_seeds_flag_writes_one_run_folder_per_seed_as_single_runs_do(tmp_path, capsys):
    common = ["--steps", "3", "--d-model", "16", "--no-progress", "--no-plots", "--device", "cpu"]
    load_script("train_skip_trigram").main([*common, "--seeds", "1", "2", "--out", str(tmp_path / "stacked")])
    load_script("train_skip_trigram").main([*common, "--seed", "2", "--out", str(tmp_path / "single")])
    assert "run folder:" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "stacked").iterdir())
    assert names == ["skip_trigram_s1", "skip_trigram_s2"]
    for run in (tmp_path / "stacked").iterdir():
        assert len(pd.read_csv(run / "metrics.csv")) == 3
        assert (run / "checkpoints" / "model_000003.pt").exists()
        assert json.loads((run / "group.json").read_text())["runs"] == names
    stacked, single = tmp_path / "stacked" / "skip_trigram_s2", tmp_path / "single" / "skip_trigram_s2"
    assert json.loads((stacked / "config.json").read_text()) == json.loads((single / "config.json").read_text())
    assert sorted(p.name for p in (stacked / "checkpoints").iterdir()) == \
        sorted(p.name for p in (single / "checkpoints").iterdir())
    pd.testing.assert_frame_equal(pd.read_csv(stacked / "metrics.csv"), pd.read_csv(single / "metrics.csv"),
                                  atol=1e-6, rtol=1e-5)
    # a member's resumable state is a single run's: same keys, same shapes
    a, b = (torch.load(p / "checkpoints" / "state_000003.pt", weights_only=True) for p in (stacked, single))
    assert a.keys() == b.keys() and a["model"].keys() == b["model"].keys()
    assert all(a["model"][k].shape == b["model"][k].shape for k in a["model"])
    assert [s["exp_avg"].shape for s in a["optimizer"]["state"].values()] == \
        [s["exp_avg"].shape for s in b["optimizer"]["state"].values()]


# ---- the loop's promises, for a group -----------------------------------------------------------

def setup(grokfast=None):
    task = make_task("addition", n_digits=2)
    model_cfg = model_config_for(task, d_model=16, n_heads=2, seed=0)
    cfg = TrainConfig(steps=24, lr=3e-3, batch_size=16, checkpoint_every=8, schedule="cosine", grokfast=grokfast)
    return task, model_cfg, cfg


def group(path, seeds):
    return [path / f"g_s{s}" for s in seeds]


@pytest.mark.parametrize("grokfast", [None, "ema"])
def test_stacked_sigint_then_resume_is_bit_identical(tmp_path, grokfast):
    task, model_cfg, cfg = setup(grokfast)
    seeds = [1, 2]
    reference = start_seed_runs(model_cfg, task, cfg, seeds, group(tmp_path / "ref", seeds), device="cpu",
                                progress=False, plots=False)
    dirs = group(tmp_path / "cut", seeds)
    prepare_runs(dirs, [run_config(replace(model_cfg, seed=s), task, replace(cfg, seed=s)) for s in seeds])
    models = StackedModels(model_cfg, seeds)
    signal_at(models.skeleton, 14)  # during step 13's forward: step 13 completes, then the loop stops
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 14; resumable checkpoints of all 2") as info:
        run_loop(models, task, [replace(cfg, seed=s) for s in seeds], dirs, torch.device("cpu"), progress=False)
    assert info.value.run_dir == dirs[0]
    assert [RunDir(d).state_steps() for d in dirs] == [[8, 14], [8, 14]]
    results = resume_runs(dirs[1], device="cpu", progress=False, plots=False)  # any member resumes the group
    for ref, result, d in zip(reference, results, dirs):
        pd.testing.assert_frame_equal(result.metrics, ref.metrics, check_exact=True)
        pd.testing.assert_frame_equal(pd.read_csv(RunDir(d).metrics_path), ref.metrics, check_exact=True)
        final, expected = (torch.load(RunDir(p).model_path(24), weights_only=True) for p in (d, ref.run_dir))
        assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_stacked_nonfinite_loss_stops_the_group_naming_the_seed(tmp_path):
    task, model_cfg, cfg = setup()
    seeds = [1, 2]
    dirs = group(tmp_path, seeds)
    prepare_runs(dirs, [run_config(replace(model_cfg, seed=s), task, replace(cfg, seed=s)) for s in seeds])
    models = StackedModels(model_cfg, seeds)

    def poison(step):  # model 2's weights diverge after step 10
        if step == 10:
            next(iter(models.params.values()))[1].fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match=r"of seed 2 \(g_s2\) is nan at step 11; all 2 stacked runs stopped "
                                            r"and their last good checkpoint is step 8"):
        run_loop(models, task, [replace(cfg, seed=s) for s in seeds], dirs, torch.device("cpu"), progress=False,
                 after_step=poison)
    for d in dirs:
        assert max(RunDir(d).state_steps()) == 8 and max(RunDir(d).model_steps()) == 8


def test_a_member_without_the_newest_state_resumes_the_group_from_the_step_before(tmp_path):
    """A SIGKILL between two members' checkpoints: the group resumes from the newest common step."""
    task, model_cfg, cfg = setup()
    cfg = replace(cfg, schedule="warmup")  # a schedule that does not depend on the number of steps
    seeds = [5, 6]
    reference = start_seed_runs(model_cfg, task, cfg, seeds, group(tmp_path / "ref", seeds), device="cpu",
                                progress=False, plots=False)
    dirs = group(tmp_path / "cut", seeds)
    start_seed_runs(model_cfg, task, replace(cfg, steps=16), seeds, dirs, device="cpu", progress=False, plots=False)
    for d in dirs:  # as if the run had been started for 24 steps and killed after step 16's checkpoints
        config = json.loads(RunDir(d).config_path.read_text())
        RunDir(d).config_path.write_text(json.dumps({**config, "train": {**config["train"], "steps": 24}}))
    RunDir(dirs[1]).state_path(16).unlink()  # the second member's newest state never got written
    results = resume_runs(dirs[0], device="cpu", progress=False, plots=False)
    for ref, result in zip(reference, results):
        pd.testing.assert_frame_equal(result.metrics, ref.metrics, check_exact=True)


def test_group_errors_say_what_to_do(tmp_path, capsys):
    task, model_cfg, cfg = setup()
    cfg = replace(cfg, schedule="warmup")  # extendable
    dirs = group(tmp_path, [1, 2])
    start_seed_runs(model_cfg, task, replace(cfg, steps=8), [1, 2], dirs, device="cpu", progress=False, plots=False)
    with pytest.raises(ValueError, match="already finished its 8 steps"):
        resume_runs(dirs[0], device="cpu", progress=False, plots=False)
    moved = dirs[1].rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"g_s2 is missing .*restore it to resume the group, or delete group.json"):
        resume_runs(dirs[0], device="cpu", steps=10, progress=False, plots=False)
    (dirs[0] / "group.json").unlink()  # each member is a single run: it resumes alone
    (result,) = resume_runs(dirs[0], device="cpu", steps=10, progress=False, plots=False)
    assert len(result.metrics) == 10
    (dirs[0] / "group.json").write_text('{"runs": "g_s1"}')
    with pytest.raises(ValueError, match="group.json is damaged: it should list"):
        resume_runs(dirs[0], device="cpu", steps=12, progress=False, plots=False)
    # what stacking cannot do is refused before anything is written
    for argv, fragment in ((["--seeds", "3", "3"], "repeat"), (["--seeds", "3", "4", "--skip-nonfinite"], "single runs")):
        with pytest.raises(SystemExit):
            cli.main_guard(load_script("train_addition").main,
                           [*argv, "--digits", "2", "--steps", "2", "--out", str(moved.parent / "new")])
        assert fragment in capsys.readouterr().err
        assert not (moved.parent / "new").exists()


SMALL = ["--digits", "2", "--d-model", "32", "--batch-size", "32", "--steps", "200", "--checkpoint-every", "25",
         "--device", "cpu", "--no-progress", "--no-plots", "--seeds", "1", "2"]


def test_seeds_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    load_script("train_addition").main([*SMALL, "--out", str(tmp_path / "ref")])
    reference = {s: pd.read_csv(tmp_path / "ref" / f"addition_2d_s{s}" / "metrics.csv") for s in (1, 2)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_addition.py"), *SMALL,
                             "--out", str(tmp_path / "cut")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [RunDir(tmp_path / "cut" / f"addition_2d_s{s}") for s in (1, 2)]
    deadline = time.time() + 120
    while not all(any(step > 0 for step in run.state_steps()) for run in runs):
        assert proc.poll() is None and time.time() < deadline, f"the run ended before it was killed: {proc.communicate()}"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert max(runs[0].state_steps()) < 200
    # re-typing the command with --resume (the flags equal the saved settings) resumes the whole group
    load_script("train_addition").main([*SMALL, "--out", str(tmp_path / "cut"), "--resume", str(runs[1].path)])
    capsys.readouterr()
    for seed, run in zip((1, 2), runs):
        pd.testing.assert_frame_equal(pd.read_csv(run.metrics_path), reference[seed], check_exact=True)

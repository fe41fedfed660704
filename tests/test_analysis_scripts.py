"""scripts/ablate.py, evaluate.py and attention.py on a tiny run folder (in-process; the same code path)."""
import json

import pandas as pd
import pytest

from grokmath.store.checkpoint import RunDir
from grokmath.tasks import make_task
from grokmath.store.checkpoint import run_config
from grokmath.config import TrainConfig

from analysis_helpers import tiny_model, trained_addition
from script_helpers import load_script


def make_run(path, model, task, step=40):
    run = RunDir(path)
    run.create(run_config(model.cfg, task, TrainConfig(steps=step)))
    run.save_model(step, model)
    return path


@pytest.fixture(scope="module")
def addition_run(tmp_path_factory):
    model, task = trained_addition(n_digits=2, steps=40)
    return make_run(tmp_path_factory.mktemp("runs") / "add", model, task)


def run_main(name, argv, capsys):
    from grokmath import cli
    with pytest.raises(SystemExit) as exit_info:
        cli.main_guard(load_script(name).main, argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_ablate_script_writes_table_and_heatmaps(addition_run, capsys):
    code, out, err = run_main("ablate", [str(addition_run), "--kind", "mean", "--questions", "64",
                                         "--per-position", "--device", "cpu"], capsys)
    assert code == 0, err
    table = pd.read_csv(addition_run / "analysis" / "ablation_mean_step000040.csv")
    assert {"node", "loss", "loss_change", "loss_A2", "loss_A0", "acc_change"} <= set(table.columns)
    assert (addition_run / "analysis" / "ablation_mean_step000040_heads.png").is_file()
    assert (addition_run / "analysis" / "ablation_mean_step000040_positions.png").is_file()
    assert "L0H0" in out
    code, _, err = run_main("ablate", [str(addition_run), "--kind", "mean", "--questions", "64"], capsys)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1


def test_evaluate_script_prints_and_writes_json(addition_run, capsys):
    argv = [str(addition_run), "--questions", "500", "--batch-size", "128", "--no-progress", "--device", "cpu"]
    code, out, err = run_main("evaluate", argv, capsys)
    assert code == 0, err
    report = json.loads((addition_run / "analysis" / "evaluate_step000040_n500_seed0.json").read_text())
    assert report["n_questions"] == 500 and report["step"] == 40 and "nines" in report
    assert "question accuracy" in out
    code, _, err = run_main("evaluate", argv, capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_main("evaluate", argv + ["--overwrite"], capsys)
    assert code == 0, err


def test_attention_script_draws_grids(addition_run, capsys):
    code, out, err = run_main("attention", [str(addition_run), "--questions", "2"], capsys)
    assert code == 0, err
    assert (addition_run / "analysis" / "attention_step000040_1.png").is_file()
    code, out, err = run_main("attention", [str(addition_run), "--text", "12+34=046", "--overwrite"], capsys)
    assert code == 0, err
    code, _, err = run_main("attention", [str(addition_run), "--text", "12+34=", "--overwrite"], capsys)
    assert code == 0, err


def test_scripts_refuse_bad_input_in_one_line(addition_run, tmp_path, capsys):
    code, _, err = run_main("evaluate", [str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, _, err = run_main("ablate", [str(addition_run), "--checkpoint", "7"], capsys)
    assert code == 2 and "no checkpoint at step 7" in err
    task = make_task("modular", p=5)
    modular = make_run(tmp_path / "mod", tiny_model(task, n_layers=1), task)
    code, _, err = run_main("evaluate", [str(modular), "--questions", "10"], capsys)
    assert code == 2 and "addition and arithmetic" in err

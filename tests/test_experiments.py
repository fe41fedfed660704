"""grokmath/experiments.py is the one definition of the seed set-ups: every training script, its
--help, the gallery and the benchmark build exactly its configs, and a value changed there
changes all of them."""
from dataclasses import replace

import pytest

from grokmath import cli
from grokmath.tools import bench, gallery
from grokmath.experiments import EXPERIMENTS, experiment_configs, flag_defaults

from script_helpers import load_script


def script_configs(name, argv, monkeypatch):
    """(task options, ModelConfig, TrainConfig) that scripts/train_<name>.py builds from argv,
    caught where it hands them to grokmath.training.run (nothing is trained)."""
    caught = {}

    def catch(args, configs, run_name=None, insert=None):
        task, model_cfg, train_cfg = configs
        caught.update(task=task.options(), model=model_cfg, train=train_cfg)

    monkeypatch.setattr(cli, "run_training", catch)
    load_script(f"train_{name}").main(argv)
    return caught["task"], caught["model"], caught["train"]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_script_builds_the_experiments_configs(name, monkeypatch):
    task, model_cfg, train_cfg = experiment_configs(name)
    assert script_configs(name, [], monkeypatch) == (task.options(), model_cfg, train_cfg)


def test_the_benchmark_and_the_gallery_use_the_same_set_ups():
    for name in EXPERIMENTS:
        task, model_cfg, train_cfg = bench.build(name, quick=False, steps=7)
        full_task, full_model, full_train = experiment_configs(name)
        assert (task.options(), model_cfg) == (full_task.options(), full_model)
        assert replace(train_cfg, steps=full_train.steps, checkpoint_every=full_train.checkpoint_every) == full_train
    # the arithmetic set-up the benchmark times is the script's, enriched data and b_U included
    task, model_cfg, _ = bench.build("arithmetic")
    assert task.enrich and model_cfg.unembed_bias and model_cfg.attn_bias


def test_a_value_changed_in_experiments_changes_scripts_help_gallery_and_bench(monkeypatch, tmp_path):
    arithmetic, addition = EXPERIMENTS["arithmetic"], EXPERIMENTS["addition"]
    monkeypatch.setitem(EXPERIMENTS, "arithmetic", replace(
        arithmetic, task_options={**arithmetic.task_options, "n_digits": 4, "enrich": False},
        model={**arithmetic.model, "d_model": 63, "unembed_bias": False},
        train={**arithmetic.train, "lr": 2.5e-4}, seed=77))
    monkeypatch.setitem(EXPERIMENTS, "addition", replace(addition, model={**addition.model, "d_model": 96}))

    # the script: its parsed defaults, the configs it builds (settings without a flag included), --help
    task, model_cfg, train_cfg = script_configs("arithmetic", [], monkeypatch)
    assert task["n_digits"] == 4 and task["enrich"] is False
    assert (model_cfg.d_model, model_cfg.unembed_bias, model_cfg.seed) == (63, False, 77)
    assert (train_cfg.lr, train_cfg.seed) == (2.5e-4, 77)
    script = load_script("train_arithmetic")
    args = cli.parse(script.build_parser(), [])
    assert (args.digits, args.d_model, args.lr, args.seed, args.enrich) == (4, 63, 2.5e-4, 77, False)
    help_text = " ".join(script.build_parser().format_help().split())
    for shown in ("residual stream width (default: 63)", "peak learning rate of AdamW (default: 0.00025)",
                  "digits in each operand (default: 4)", "unembed_bias False", "(default: off)"):
        assert shown in help_text, shown
    assert flag_defaults("addition")["d_model"] == 96
    assert "(default: 96)" in " ".join(load_script("train_addition").build_parser().format_help().split())

    # the benchmark
    _, bench_model, bench_train = bench.build("arithmetic")
    assert (bench_model.d_model, bench_model.unembed_bias, bench_train.lr) == (63, False, 2.5e-4)

    # the gallery: what it would train (caught where it starts the run)
    started = {}

    class Caught(Exception):
        pass

    def catch(model_cfg, task, train_cfg, run_dir, **kw):
        started.update(model=model_cfg, train=train_cfg)
        raise Caught

    monkeypatch.setattr(gallery, "start_run", catch)
    with pytest.raises(Caught):
        gallery.run_experiment("addition", tmp_path, "full")
    assert started["model"].d_model == 96 and started["train"] == experiment_configs("addition")[2]

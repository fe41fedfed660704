"""--config FILE (grokmath/cli/config_files.py): a run's config.json re-runs it bit for bit on a CPU, a
TOML file sets the same settings, flags beside it win, and a wrong file gets one line."""
import json

import pandas as pd
import pytest
import torch
from script_helpers import load_script

addition = load_script("train_addition")
modular = load_script("train_modular")
TINY = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "8", "--checkpoint-every", "4",
        "--lr", "0.003", "--seed", "7", "--device", "cpu", "--no-plots", "--no-progress"]


def states(run_dir):
    return {p.name: torch.load(p, weights_only=True) for p in sorted((run_dir / "checkpoints").glob("model_*.pt"))}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("config")
    addition.main(TINY + ["--out", str(out), "--run-name", "first"])
    return out / "first"


def test_a_runs_config_json_re_runs_it_bit_for_bit(first_run):
    out = first_run.parent
    addition.main(["--config", str(first_run / "config.json"), "--out", str(out), "--run-name", "again",
                   "--no-plots", "--no-progress"])
    again = out / "again"
    assert json.loads((again / "config.json").read_text()) == json.loads((first_run / "config.json").read_text())
    assert (again / "metrics.csv").read_bytes() == (first_run / "metrics.csv").read_bytes()
    ours, theirs = states(again), states(first_run)
    assert list(ours) == list(theirs) == ["model_000000.pt", "model_000004.pt", "model_000008.pt"]
    for name in ours:
        assert ours[name].keys() == theirs[name].keys()
        assert all(torch.equal(ours[name][k], theirs[name][k]) for k in ours[name])


def test_a_toml_file_sets_the_same_settings_and_flags_beside_it_win(first_run, tmp_path):
    toml = tmp_path / "small.toml"
    toml.write_text('[task]\ndigits = 2\n[model]\nd_model = 16\nn_heads = 2\n'
                    '[train]\nsteps = 8\ncheckpoint_every = 4\nlr = 0.01\nseed = 7\n')
    addition.main(["--config", str(toml), "--lr", "0.003", "--out", str(tmp_path), "--run-name", "toml",
                   "--device", "cpu", "--no-plots", "--no-progress"])
    config = json.loads((tmp_path / "toml" / "config.json").read_text())
    assert config["train"]["lr"] == 0.003  # the flag, not the file's 0.01
    assert config == json.loads((first_run / "config.json").read_text())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "toml" / "metrics.csv"),
                                  pd.read_csv(first_run / "metrics.csv"), check_exact=True)


@pytest.mark.parametrize("text, message", [
    ('[train]\nlearning_rate = 0.1\n', "train.learning_rate is not a setting"),
    ('[model]\nact_fn = "gelu"\n', "no flag for"),
    ('[trian]\nsteps = 3\n', "unknown section"),
    ('[train\nsteps = 3\n', "not valid TOML"),
])
def test_a_wrong_config_gets_one_line_saying_what_to_do(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        addition.main(["--config", str(path), "--out", str(tmp_path)])
    assert "\n" not in str(error.value)
    assert not any(tmp_path.glob("addition_*"))


def test_another_scripts_config_names_the_script_to_use(first_run, capsys):
    with pytest.raises(ValueError, match="scripts/train_addition.py --config"):
        modular.main(["--config", str(first_run / "config.json")])
    with pytest.raises(ValueError, match="no such file"):
        addition.main(["--config", str(first_run / "nothing.json")])


def test_help_says_flags_override_the_file(capsys):
    with pytest.raises(SystemExit):
        addition.main(["--help"])
    assert "flags given beside it override" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["addition", "arithmetic", "skip_trigram", "induction", "modular"])
def test_every_scripts_config_json_parses_back_to_the_same_configs(name, tmp_path):
    """A config.json of each experiment's tiny set-up (made here from experiments.py, not by a run),
    given as --config, builds exactly its model, task and training configs again."""
    from grokmath import cli, experiments
    from grokmath.store.checkpoint import run_config
    task, model_cfg, train_cfg = experiments.experiment_configs(name, "tiny")
    config = run_config(model_cfg, task, train_cfg)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    args = cli.parse(load_script(f"train_{name}").build_parser(), ["--config", str(path)])
    flags = {k: experiments.FLAG_NAMES.get(k, k) for k in task.options()}
    options = {k: getattr(args, dest) for k, dest in flags.items() if hasattr(args, dest)}
    rebuilt_task, rebuilt_model, rebuilt_train = cli.training_configs(args, options)
    rebuilt = run_config(rebuilt_model, rebuilt_task, rebuilt_train)
    assert json.loads(json.dumps(rebuilt)) == config

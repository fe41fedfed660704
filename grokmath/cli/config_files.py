"""`--config FILE` for every training script: a file's settings become the parser's defaults.

FILE is a run's own `config.json` (so `--config runs/X/config.json --run-name X2` trains run X
again, bit for bit on a CPU) or a TOML file with the same sections:
```toml
[task]              # the task's options (name optional; it must be this script's task)
n_digits = 2        # config.json's names, or the script's flag names (digits = 2)
[model]
d_model = 64
[train]
steps = 500
lr = 1e-3
```
It works at the edge only: `apply_config(parser, argv)` reads the file before argparse's final
parse and turns every setting into `parser.set_defaults(dest=value)`, so flags given beside it
override it and nothing below the parser knows a file was read. A setting with no flag is accepted
when it equals what the script builds anyway (config.json's derived fields: d_vocab, n_ctx, act_fn
...) and refused otherwise, in one line, as is a key that is no setting at all, or a config of
another script's task.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SECTIONS = ("task", "model", "train", "insert")
# config.json name -> flag dest, where they differ (the rest are the same name)
TRAIN_DESTS = {"n_train": "finite"}
INSERT_DESTS = {"run_dir": "insert_from", "mode": "insert_mode", "late": "insert_late", "heads": "insert_heads",
                "every": "insert_every", "step": "insert_step"}
HELP = ("read the settings from FILE: a run's config.json (re-runs that run exactly) or a TOML file with its "
        "sections [task] [model] [train]; flags given beside it override the file")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="_config", metavar="FILE", default=None, help=HELP)


def read_config_file(path) -> dict:
    """A config.json or TOML file as a dict of sections; a file that cannot be read is one ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file; give a run's config.json or a .toml file")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            data = json.loads(path.read_text())
    except ImportError:
        raise ValueError("--config: reading TOML needs Python 3.11 (tomllib) or `pip install tomli`") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"--config {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"--config {path} must hold sections of settings ({', '.join(SECTIONS)}), e.g. "
                         "[train] steps = 500")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--config {path}: unknown section(s) {unknown}: use {', '.join(SECTIONS[:3])}")
    return data


def config_defaults(data: dict, parser: argparse.ArgumentParser, experiment: str, where: str) -> dict:
    """The parser defaults (dest -> value) that a config file's sections set."""
    from .. import experiments
    dests = {a.dest for a in parser._actions}
    script = f"scripts/train_{experiment}.py"
    task_name = experiments.EXPERIMENTS[experiment].task
    task = dict(data.get("task", {}))
    named = task.pop("name", task_name)
    if named != task_name:
        raise ValueError(f"--config {where} is a config of the {named} task: run it with scripts/train_{named}.py --config "
                         f"{where} (this is {script})")
    defaults, fixed = {}, {}  # fixed: settings without a flag, which must equal the script's own

    def take(section, key, value, dest):
        if dest in dests:
            if value is not None:
                defaults[dest] = value
        else:
            fixed[(section, key)] = value

    for key, value in task.items():
        take("task", key, value, experiments.FLAG_NAMES.get(key, key))
    for key, value in data.get("model", {}).items():
        take("model", key, value, "_model_seed" if key == "seed" else key)
    for key, value in data.get("train", {}).items():
        if key == "betas":
            if not (isinstance(value, list) and len(value) == 2):
                raise ValueError(f"--config {where}: train.betas must be two numbers, e.g. [0.9, 0.98]")
            fixed[("train", "beta1")] = value[0]
            value, key = value[1], "beta2"
        take("train", key, value, TRAIN_DESTS.get(key, key))
    for key, value in data.get("insert", {}).items():
        if key == "heads" and isinstance(value, list):
            value = ",".join(value)
        take("insert", key, value, INSERT_DESTS.get(key, key))
    if defaults.get("skip_nonfinite") is False or defaults.get("tf32") is False or defaults.get("insert_late") is False:
        for switch in ("skip_nonfinite", "tf32", "insert_late"):  # a switch that is off is the default
            if defaults.get(switch) is False:
                del defaults[switch]
    model_seed = fixed.pop(("model", "seed"), None)
    if model_seed is not None and model_seed != defaults.get("seed", model_seed):
        raise ValueError(f"--config {where}: model.seed {model_seed} differs from train.seed {defaults['seed']}; "
                         f"{script} seeds both with --seed: give one seed")
    if model_seed is not None and "seed" not in defaults:
        defaults["seed"] = model_seed
    data_regime = fixed.pop(("train", "data"), None)
    if data_regime == "finite" and "finite" not in dests:
        raise ValueError(f"--config {where} trains on a finite data set, which {script} has no flag for")
    if data_regime is not None and data_regime != "finite":
        fixed[("train", "data")] = data_regime
    _check_fixed(fixed, defaults, experiment, where, script)
    return defaults


def _check_fixed(fixed: dict, defaults: dict, experiment: str, where: str, script: str) -> None:
    """Settings without a flag must be what the script builds from the other settings anyway."""
    from dataclasses import fields

    from .. import experiments
    from ..config import ModelConfig, TrainConfig, model_config_for
    from ..tasks import make_task
    if not fixed:
        return
    known = {"task": None, "model": {f.name for f in fields(ModelConfig)},
             "train": {f.name for f in fields(TrainConfig)} | {"beta1"}, "insert": set()}
    for (section, key), value in fixed.items():
        if known[section] is not None and key not in known[section]:
            raise ValueError(f"--config {where}: {section}.{key} is not a setting of {script}: remove it (see "
                             f"{script} --help for the flags; a key is a flag's name with '_' for '-')")
    task_options, model_settings, train_settings, _ = experiments.settings(experiment)
    flag_of = {experiments.FLAG_NAMES.get(k, k): k for k in task_options}
    try:
        task = make_task(experiments.EXPERIMENTS[experiment].task,
                         **{**task_options, **{flag_of[d]: v for d, v in defaults.items() if d in flag_of}})
        sizes = {k: defaults[k] for k in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp") if k in defaults}
        built = {"task": task.options(),
                 "model": model_config_for(task, **{**model_settings, **sizes}, seed=0).to_dict(),
                 "train": {**TrainConfig(**train_settings).to_dict(), "beta1": 0.9}}
    except (ValueError, TypeError):
        return  # a bad value among the flag settings: the script names it when it builds its configs
    for (section, key), value in fixed.items():
        if section not in built or key not in built[section]:
            raise ValueError(f"--config {where}: {section}.{key} is not a setting of {script}: remove it (see "
                             f"{script} --help)")
        ours = built[section][key]
        if json.loads(json.dumps(value)) != json.loads(json.dumps(ours)):
            raise ValueError(f"--config {where} sets {section}.{key} = {value!r}, which {script} has no flag for "
                             f"(it builds {ours!r}): remove it, or train that model from Python (grokmath.training.run)")


def apply_config(parser: argparse.ArgumentParser, argv=None) -> None:
    """If argv has --config FILE, make the file's settings the parser's defaults (flags still win)."""
    import sys
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.config is None:
        return
    experiment = parser.get_default("_experiment")
    defaults = config_defaults(read_config_file(known.config), parser, experiment, known.config)
    defaults.pop("_model_seed", None)
    parser.set_defaults(**defaults)

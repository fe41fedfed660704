"""The command-line edge shared by every script: flags, their types, and one-line errors.

`training_parser(doc, experiment)` makes an argparse parser with the flags every training script
has (--steps --seed --device --run-name --out --checkpoint-every --batch-size --lr
--weight-decay --d-model --n-layers --n-heads --overwrite --grokfast --resume --seeds ...), their
defaults and --help taken from grokmath/experiments.py; a script adds its task's own flags, then
builds the configs once, `training_configs(args, task_options)`, and hands them to `run_training(args,
configs)`, the one entry point, which starts or resumes the run through grokmath.training.run (the
orchestration lives there, not here). `--resume RUN_DIR` accepts the other flags
when they equal the run's saved settings (re-type the command you ran and add --resume) and names
the ones that differ. `main_guard(main)` (grokmath.cli.guard) is the error edge: a mistake a user can make
(ValueError, a bad file) becomes one line on stderr and exit status 2, never a traceback; an
interrupted run says how to resume it, and a signal at any other moment says what was kept. This
module imports nothing heavy at its top (torch, pandas, the rest of grokmath load inside the
functions), so a script reaches main_guard within ~0.1 s. Set GROKMATH_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path

from ..config import TrainConfig, config_differences, is_whole, model_config_for
from .guard import EXIT_USAGE

# torch, pandas and the rest of grokmath are imported inside the functions that use them, so that a
# script reaches main_guard (its signal handler and one-line errors) before those slow imports


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the usage first by default) and no
    prefix matching: `--digit 5` is refused, not read as `--digits 5` (a typo must not pass as
    another flag)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        if message.endswith("expected one argument"):  # e.g. --lr -1e-3: argparse reads -1e-3 as a flag
            message += " (a value starting with '-' needs '=', e.g. --lr=-1e-3)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# ---- value types: each refuses a bad value with a message saying what to give -------------------

def whole_number(low: int):
    """The argparse type of a whole number >= low (the one whole-number check: config.is_whole)."""
    def parse_whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not is_whole(value, low):
            raise argparse.ArgumentTypeError(f"{text} must be a whole number >= {low}")
        return value
    return parse_whole


positive_int = whole_number(1)
nonneg_int = whole_number(0)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number > 0")
    return value


def nonneg_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number >= 0")
    return value


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a fraction between 0 and 1")
    return value


def percentages(text: str) -> dict:
    """'sub=80,add=20' -> {'sub': 80.0, 'add': 20.0}."""
    mix = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not a mix like sub=80,add=20")
        try:
            value = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{share!r} in {text!r} is not a percentage") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{share!r} in {text!r} is not a percentage (a number from 0 to 100)")
        mix[name.strip()] = value
    return mix


def shown(value) -> str:
    """A default as --help shows it: a mix dict as sub=80,add=20."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    return str(value)


# ---- the shared flags ---------------------------------------------------------------------------

# (flag, dest, type, help); the default comes from the script's experiment (grokmath/experiments.py)
SHARED_FLAGS = [
    ("--steps", "steps", positive_int, "training steps"),
    ("--seed", "seed", nonneg_int, "seed of the model initialisation and of the data"),
    ("--batch-size", "batch_size", positive_int, "examples per step"),
    ("--lr", "lr", positive_float, "peak learning rate of AdamW"),
    ("--weight-decay", "weight_decay", nonneg_float, "AdamW weight decay"),
    ("--beta2", "beta2", fraction, "AdamW's second-moment decay (beta1 is 0.9)"),
    ("--warmup", "warmup", nonneg_int, "linear warm-up steps (default: 10, or steps/5 with --schedule cosine)"),
    ("--d-model", "d_model", positive_int, "residual stream width"),
    ("--n-layers", "n_layers", positive_int, "transformer blocks"),
    ("--n-heads", "n_heads", positive_int, "attention heads per block"),
    ("--d-head", "d_head", positive_int, "width of each head (default: d_model / n_heads)"),
    ("--d-mlp", "d_mlp", positive_int, "MLP hidden width (default: 4 * d_model)"),
    ("--checkpoint-every", "checkpoint_every", positive_int, "steps between checkpoints"),
    ("--test-every", "test_every", positive_int, "steps between test-set evaluations (finite data)"),
    ("--grokfast-alpha", "grokfast_alpha", nonneg_float, "Grokfast EMA decay"),
    ("--grokfast-lamb", "grokfast_lamb", nonneg_float, "Grokfast amplification (default: 2 for ema, 5 for ma)"),
    ("--grokfast-window", "grokfast_window", positive_int, "Grokfast MA window in steps"),
]
TRAIN_FIELDS = ("steps", "seed", "batch_size", "lr", "weight_decay", "warmup", "schedule", "checkpoint_every",
                "test_every", "grokfast", "grokfast_alpha", "grokfast_lamb", "grokfast_window", "skip_nonfinite",
                "tf32")
MODEL_FIELDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp")
# flags that may accompany --resume with any value (the rest must equal the run's saved settings)
RESUME_FLAGS = {"resume", "device", "steps", "no_progress", "no_plots", "no_capture", "tensorboard", "wandb"}
SWITCHES = ("overwrite", "skip_nonfinite", "no_progress", "no_plots", "tf32", "no_capture", "tensorboard", "wandb")


def train_config_defaults() -> dict:
    """TrainConfig's own defaults under flag names, shown in --help where an experiment sets none."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return {**defaults, "beta2": defaults["betas"][1]}


def training_parser(doc: str, experiment: str) -> ArgumentParser:
    """A parser with the shared training flags; their defaults (and --help) are the experiment's."""
    from .. import experiments
    defaults = experiments.flag_defaults(experiment)
    parser = ArgumentParser(description=doc, epilog=experiments.describe(experiment),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_experiment=experiment)
    fallback = train_config_defaults()
    for flag, dest, kind, text in SHARED_FLAGS:
        value = defaults.get(dest, fallback.get(dest))
        suffix = f" (default: {shown(value)})" if value is not None and "default:" not in text else ""
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text + suffix)
    parser.add_argument("--schedule", choices=("warmup", "cosine"), default=None,
                        help="'warmup': linear warm-up then constant; 'cosine': warm-up then cosine decay to 0 "
                        f"(default: {defaults.get('schedule', fallback['schedule'])})")
    parser.add_argument("--device", default=None,
                        help="'cpu', 'cuda' or 'cuda:N' (default: cuda when available, else cpu)")
    parser.add_argument("--run-name", default=None, help="name of the run folder (default: from the settings, "
                        "e.g. addition_5d_s129000)")
    parser.add_argument("--out", default=None, help="folder that holds run folders (default: runs)")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="replace an existing run folder of the same name")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR (or its whole --seeds group) from its newest checkpoint; "
                        "its settings come from RUN_DIR/config.json, and other flags must equal them (--steps may "
                        "extend it, --device may move it)")
    parser.add_argument("--seeds", type=nonneg_int, nargs="+", default=None, metavar="SEED",
                        help="train one model per seed at once, stacked in one process (one run folder each, "
                        "named ..._s<SEED>); fastest for small models on a GPU")
    parser.add_argument("--grokfast", choices=("ema", "ma"), default=None,
                        help="amplify slow gradients with Grokfast's EMA or MA filter (default: off)")
    parser.add_argument("--skip-nonfinite", action="store_true", default=None,
                        help="skip (and count) steps whose loss is NaN or inf instead of stopping the run")
    parser.add_argument("--tf32", action="store_true", default=None,
                        help="CUDA float32 matmuls in TF32 (tensor cores: faster, about 1e-3 relative error; "
                        "recorded in config.json) (default: fp32, as the seed notebooks)")
    parser.add_argument("--no-capture", action="store_true", default=None,
                        help="run the eager training step on a GPU too, not the captured CUDA graph (the run's "
                        "summary.json says which ran and why)")
    parser.add_argument("--no-progress", action="store_true", default=None, help="hide the progress bar")
    parser.add_argument("--no-plots", action="store_true", default=None, help="do not draw the PNG plots at the end")
    from . import config_files; from ..store import tracking
    config_files.add_config_flag(parser)
    tracking.add_tracking_flags(parser)
    return parser


def parse(parser: ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse; `args.given` names the flags given, every other flag takes the experiment's default."""
    from . import config_files; from .. import experiments
    config_files.apply_config(parser, argv)  # --config FILE: the file's settings become the defaults
    typed = vars(parser.parse_args(argv))  # a flag neither typed nor in a --config file is None here
    experiment = typed.pop("_experiment")
    given = {k: v for k, v in typed.items() if v is not None and not k.startswith("_")}
    defaults = {**experiments.flag_defaults(experiment), **{flag: False for flag in SWITCHES}, "out": "runs"}
    # one Namespace, complete when made: nothing below changes it
    return argparse.Namespace(**{**typed, **defaults, **given}, given=frozenset(given), experiment=experiment)


# ---- from flags to configs, then to grokmath.training.run --------------------------------------

def training_configs(args, task_options: dict, data: str | None = None, n_train: int | None = None):
    """(task, ModelConfig, TrainConfig) from parsed flags: the experiment's settings with the flags over
    them. data/n_train: a script's own data regime (e.g. --finite N), else the experiment's."""
    from .. import experiments
    from ..tasks import make_task
    _, model_settings, train_settings, _ = experiments.settings(args.experiment)
    task = make_task(experiments.EXPERIMENTS[args.experiment].task, **task_options)
    model = {**model_settings, **{k: getattr(args, k) for k in MODEL_FIELDS if getattr(args, k) is not None}}
    train = {**train_settings, **{k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}}
    if args.beta2 is not None:
        train["betas"] = (0.9, args.beta2)
    if data is not None:
        train.update(data=data, n_train=n_train)
    if train.get("data") == "finite" and "batch_size" not in args.given:
        train["batch_size"] = None  # the notebooks train a fixed set full batch
    return task, model_config_for(task, **model, seed=args.seed), TrainConfig(**train)


def run_dir_of(args, run_name: str) -> Path:
    name = args.run_name
    if name is not None and (not name.strip() or Path(name).name != name or name in (".", "..")):
        raise ValueError(f"--run-name {name!r} must be a plain folder name (no '/', not '.' or '..'); use --out for "
                         "the parent")
    return Path(args.out) / (name or run_name)


def run_training(args, configs: tuple, run_name: str | None = None, insert: dict | None = None) -> None:
    """Train (or, with --resume, continue) the run of the configs a script built once from its flags
    (`training_configs`): the one entry point of every training script. The device is resolved here,
    once; a resume first checks the flags given beside it against the run's saved configs."""
    from ..training import run
    from ..store.tracking import configure_tracking
    from ..training.devices import resolve_device
    device = resolve_device(args.device)  # once: a bad --device fails before anything is written
    configure_tracking(tensorboard=args.tensorboard, wandb=args.wandb, warn=_warn)
    progress, plots = not args.no_progress, not args.no_plots
    step_path = "eager" if args.no_capture else "auto"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and (args.resume is not None or args.seeds):
        raise ValueError("--resume and --seeds run in one process: leave out torchrun")
    if args.resume is not None:
        run.put_back_replaced(args.resume)  # a replacement stopped before its first checkpoint: the old run
        check_resume_flags(args, configs, run_name, insert)
        for result in run.resume_runs(args.resume, device, args.steps if "steps" in args.given else None,
                                      progress=progress, plots=plots, warn=_warn, step_path=step_path):
            report(result)
        return
    task, model_cfg, train_cfg = configs
    run_dir = run_dir_of(args, run_name or f"{task.name}_s{args.seed}")
    if args.run_name is None and not args.overwrite:
        check_default_name_free(run.seed_run_dirs(run_dir, args.seed, args.seeds) if args.seeds else [run_dir],
                                {"model": model_cfg.to_dict(), "task": task.options(), "train": train_cfg.to_dict()})
    if insert is not None and (args.seeds or world > 1):
        raise ValueError("--insert-from trains one run in one process: leave out --seeds and torchrun")
    if args.seeds:
        results = run.start_seed_runs(model_cfg, task, train_cfg, args.seeds,
                                      run.seed_run_dirs(run_dir, args.seed, args.seeds), overwrite=args.overwrite,
                                      device=device, progress=progress, plots=plots, step_path=step_path)
    elif world > 1:
        results = [run.start_data_parallel(model_cfg, task, train_cfg, run_dir, int(os.environ.get("LOCAL_RANK", "0")),
                                           world, args.overwrite, device, progress, plots)]
    else:
        results = [run.start_run(model_cfg, task, train_cfg, run_dir, overwrite=args.overwrite, device=device,
                                 progress=progress, plots=plots, insert=insert, step_path=step_path)]
    for result in results:
        if result is not None:
            report(result)


def check_default_name_free(run_dirs: list, fresh: dict) -> None:
    """A run given no --run-name whose default folder holds a run with other settings (the README's
    small run, then the main job) is refused in one line naming the settings that differ and saying
    to choose a --run-name; a run with the same settings is left to the usual refusal (--overwrite
    or --resume)."""
    from ..store.checkpoint import RunDir
    for run_dir in run_dirs:
        try:
            saved = RunDir(run_dir).read_config() if RunDir(run_dir).is_run() else None
        except ValueError:  # damaged or being replaced: prepare_runs says what is wrong
            saved = None
        if saved is None:
            continue
        differ = [f"{key} {shown(old)}, here {shown(new)}"
                  for _, key, old, new in config_differences(saved, fresh, ignore={"seed"})]
        if differ:
            raise ValueError(f"{run_dir} already holds a run with other settings ({'; '.join(differ)}): give this "
                             "run its own folder with --run-name NAME (or --overwrite to replace that run)")


def check_resume_flags(args, configs, run_name, insert) -> None:
    """--resume with other flags: each must equal the run's saved setting; name those that differ.
    The settings are compared as configs (the saved config.json against the configs the flags
    build, config_differences), each difference named by its flag where that flag was given."""
    from .. import experiments; from ..training import run
    from ..store.checkpoint import RunDir
    members = run.group_of(args.resume)
    saved = RunDir(args.resume).read_config()
    task_name = experiments.EXPERIMENTS[args.experiment].task
    if saved["task"]["name"] != task_name:
        raise ValueError(f"{args.resume} is a {saved['task']['name']} run: resume it with "
                         f"scripts/train_{saved['task']['name']}.py")
    given = sorted(args.given - RESUME_FLAGS)
    if not given:
        return
    if "overwrite" in given:
        raise ValueError("--overwrite cannot be combined with --resume: --resume continues the run, --overwrite "
                         "replaces it; give one of them")
    task, model_cfg, train_cfg = configs
    fresh = {"model": model_cfg.to_dict(), "task": task.options(), "train": train_cfg.to_dict()}
    seeds = [RunDir(m).read_config()["train"]["seed"] for m in members] if len(members) > 1 else None
    settings = {setting_flag(section, key) for section in fresh for key in fresh[section]}
    said = {}  # flag dest -> how its setting differs
    for section, key, old, new in config_differences(saved, fresh, ignore={"seed"} if seeds else ()):
        if key == "betas":  # the flag sets the second
            old, new = old[1], new[1]
        said.setdefault(setting_flag(section, key), f"{key} {shown(old)}, given {shown(new)}")
    differ = []
    for dest in given:
        if dest in settings:
            if dest in said:
                differ.append((dest, said[dest]))
        elif dest == "seeds":
            if seeds != list(args.seeds):
                differ.append((dest, f"seeds {seeds or 'none (a single run)'}, given {args.seeds}"))
        elif dest in ("run_name", "out"):
            named = run_dir_of(args, run_name or f"{task.name}_s{args.seed}")
            dirs = run.seed_run_dirs(named, args.seed, args.seeds) if args.seeds else [named]
            wanted = [d.resolve() for d in dirs] if dest == "run_name" else [named.parent.resolve()]
            where = Path(args.resume).resolve() if dest == "run_name" else Path(args.resume).resolve().parent
            if where not in wanted:
                differ.append((dest, f"folder {args.resume}, given {dirs[0] if dest == 'run_name' else args.out}"))
        elif dest.startswith("insert_") and insert is not None:
            text = insert_difference(dest, saved.get("insert") or {}, insert)
            if text:
                differ.append((dest, text))
        else:
            differ.append((dest, "not a setting a resumed run can take"))
    if differ:
        flags = ", ".join("--" + dest.replace("_", "-") for dest, _ in differ)
        details = "; ".join(text for _, text in differ)
        raise ValueError(f"{flags} cannot be combined with --resume: the run's saved settings differ ({details}); "
                         "a resumed run keeps RUN_DIR/config.json: leave those flags out or give the saved values "
                         "(only --steps and --device may change)")


def setting_flag(section: str, key: str) -> str:
    """The flag (its dest) that sets a config.json setting: the setting's own name but for a few."""
    from .. import experiments
    if section == "task":
        return experiments.FLAG_NAMES.get(key, key)
    return {("train", "n_train"): "finite", ("train", "betas"): "beta2"}.get((section, key), key)


def insert_difference(dest: str, saved: dict, insert: dict) -> str | None:
    """How an --insert-* flag differs from the run's saved insertion (config.json's "insert"), or None."""
    key = {"insert_from": "run_dir"}.get(dest, dest.removeprefix("insert_"))
    ours = insert.get(key)
    if key == "heads" and isinstance(ours, str):
        ours = [h.strip().upper() for h in ours.split(",")]
    if key == "step" and ours is None:
        return None  # the newest checkpoint, resolved when the run started
    if json.loads(json.dumps(ours)) != json.loads(json.dumps(saved.get(key))):
        return f"insert {key} {saved.get(key)}, given {ours}"
    return None


# ---- what the user sees -------------------------------------------------------------------------

def report(result) -> None:
    """A few lines on stdout about the finished run."""
    from ..training.metrics import phase_change_steps
    metrics = result.metrics
    last = metrics.iloc[-1]
    lines = [f"run folder: {result.run_dir}", f"final train loss: {last['train_loss']:.6g}"]
    if "test_loss" in metrics and metrics["test_loss"].notna().any():
        lines.append(f"final test loss: {metrics['test_loss'].dropna().iloc[-1]:.6g}")
    if "test_acc" in metrics and metrics["test_acc"].notna().any():
        lines.append(f"final train / test accuracy: {last['train_acc']:.4f} / {metrics['test_acc'].dropna().iloc[-1]:.4f}")
    steps = phase_change_steps(metrics, 0.1)
    if 1 < len(steps) <= 16:
        lines.append("first step with loss < 0.1: " + ", ".join(f"{k}={v}" for k, v in steps.items()))
    if result.n_skipped:
        lines.append(f"skipped {result.n_skipped} steps with a non-finite loss")
    print("\n".join(lines))


def _warn(message: str) -> None:
    print(message, file=sys.stderr)

"""The seed experiments: the one definition of every seed set-up (task, model, training).

Each `Experiment` holds the seed notebook's settings at full scale and what the `quick` (a CPU in
minutes; the gallery's --quick and the benchmark's --quick) and `tiny` (a few steps, for tests of
the plumbing) scales change. Everything else reads these: the training scripts' defaults and
their --help (`flag_defaults`, `describe`), the gallery, the benchmark, the data benchmark's batch
sizes (`seed_batch_size`) and the tests. Change a value here and all of them change.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ModelConfig, TrainConfig, model_config_for
from .tasks import make_task

SCALES = ("full", "quick", "tiny")


@dataclass(frozen=True)
class Experiment:
    """One seed experiment: its task, model and training settings at full scale, and what
    `quick` / `tiny` change ({'task': {...}, 'model': {...}, 'train': {...}} overrides)."""
    task: str
    task_options: dict
    model: dict  # ModelConfig fields besides the task-given vocabulary and context, and the seed
    train: dict  # TrainConfig fields besides the seed
    seed: int  # seeds the model's initialisation and the data (the scripts' --seed)
    quick: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=dict)


EXPERIMENTS = {
    # the 'non-modular addition grokking tasks' notebook
    "addition": Experiment(
        "addition", {"n_digits": 5},
        dict(n_layers=1, d_model=512, n_heads=4, act_fn="relu", normalization=None, positional="learned"),
        dict(steps=3000, batch_size=64, lr=1e-4, weight_decay=0.1, checkpoint_every=500, test_every=1),
        seed=129000,
        quick={"model": dict(d_model=128), "train": dict(steps=1500, lr=1e-3, checkpoint_every=500)},
        tiny={"model": dict(d_model=16, n_heads=2), "train": dict(steps=6, checkpoint_every=3)},
    ),
    # the 'accurate integer mathematics' notebook's Config: 80% subtraction / 20% addition batches,
    # enriched data, d_head 170, LayerNorm, attention and unembedding biases, 20% warm-up from 1%
    # then cosine decay to 0
    "arithmetic": Experiment(
        "arithmetic", {"n_digits": 6, "ops": {"sub": 80, "add": 20}, "enrich": True},
        dict(n_layers=2, d_model=510, n_heads=3, act_fn="relu", normalization="LN", positional="learned",
             attn_bias=True, unembed_bias=True),
        dict(steps=40000, batch_size=64, lr=8e-5, weight_decay=0.1, schedule="cosine", checkpoint_every=5000,
             test_every=1),
        seed=372001,
        quick={"model": dict(d_model=60), "train": dict(steps=1500, lr=1e-3, checkpoint_every=500)},
        tiny={"task": dict(n_digits=2), "model": dict(d_model=12, n_layers=1),
              "train": dict(steps=6, checkpoint_every=3, batch_size=16)},
    ),
    # the grokking-tasks notebook's skip-trigrams
    "skip_trigram": Experiment(
        "skip_trigram", {"rand_size": 10, "seq_len": 40},
        dict(n_layers=1, d_model=32, n_heads=1, d_head=8, attn_only=True, positional="learned"),
        dict(steps=3000, batch_size=256, lr=1e-3, weight_decay=0.1, checkpoint_every=100, test_every=1),
        seed=6798,
        quick={"train": dict(steps=1500, checkpoint_every=500)},
        tiny={"train": dict(steps=6, checkpoint_every=3, batch_size=16)},
    ),
    # the grokking-tasks notebook's induction heads, except weight decay 0.1, not its 1: the notebook's
    # model adds the residual stream twice per block, and with the standard block weight decay 1 keeps
    # induction heads from forming within 6000 steps (with 0.1 the loss drops between steps ~750 and
    # ~1000); AdamW's default beta2 0.999 as the notebook
    "induction": Experiment(
        "induction", {"seq_len": 85, "subseq_len": 16, "num_repeats": 3, "vocab_size": 128},
        dict(n_layers=2, d_model=48, n_heads=4, attn_only=True, positional="learned"),
        dict(steps=6000, batch_size=128, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1, warmup=100,
             checkpoint_every=100, test_every=1),
        seed=123,
        quick={"train": dict(steps=1200, checkpoint_every=400)},
        tiny={"task": dict(seq_len=20, subseq_len=4, vocab_size=16), "model": dict(d_model=16),
              "train": dict(steps=6, checkpoint_every=3, batch_size=8, warmup=2)},
    ),
    # Nanda et al.'s progress-measures notebook: every step one full-batch epoch of the 30% training
    # pairs; 40000 epochs, the paper's run length (the notebook's comment says 50000)
    "modular": Experiment(
        "modular", {"p": 113, "op": "add", "frac_train": 0.3},
        dict(n_layers=1, d_model=128, n_heads=4, d_mlp=512, act_fn="relu", normalization=None,
             positional="learned"),
        dict(steps=40000, batch_size=None, lr=1e-3, weight_decay=1.0, data="full", checkpoint_every=100,
             test_every=1),
        seed=0,
        # p=31: train accuracy 100% by epoch ~70 with the test accuracy ~34%, test accuracy 99% at ~1150
        quick={"task": dict(p=31, frac_train=0.5), "model": dict(d_model=64, d_mlp=256),
               "train": dict(steps=2000, lr=3e-3, checkpoint_every=20)},
        tiny={"task": dict(p=7, frac_train=0.7), "model": dict(d_model=16, n_heads=2, d_mlp=32),
              "train": dict(steps=6, checkpoint_every=3)},
    ),
}

# a script's flag names where they differ from the setting's name
FLAG_NAMES = {"n_digits": "digits"}


def settings(name: str, scale: str = "full") -> tuple[dict, dict, dict, int]:
    """(task options, model settings, train settings, seed) of experiment `name` at `scale`."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: choose from {', '.join(EXPERIMENTS)} or 'all'")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    exp = EXPERIMENTS[name]
    change = {} if scale == "full" else getattr(exp, scale)
    return ({**exp.task_options, **change.get("task", {})}, {**exp.model, **change.get("model", {})},
            {**exp.train, **change.get("train", {})}, exp.seed)


def experiment_configs(name: str, scale: str = "full"):
    """(task, ModelConfig, TrainConfig) of experiment `name` at `scale`."""
    task_options, model, train, seed = settings(name, scale)
    task = make_task(EXPERIMENTS[name].task, **task_options)
    model_cfg: ModelConfig = model_config_for(task, **model, seed=seed)
    return task, model_cfg, TrainConfig(**train, seed=seed)


def flag_defaults(name: str) -> dict:
    """The full-scale settings under the training script's flag names (dest -> value): the task's
    options, the model's sizes and the training settings that have flags, and the seed."""
    task_options, model, train, seed = settings(name)
    defaults = {FLAG_NAMES.get(k, k): v for k, v in task_options.items()}
    defaults.update({k: model[k] for k in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp") if k in model})
    defaults.update({k: v for k, v in train.items() if k not in ("betas", "data")})
    if "betas" in train:
        defaults["beta2"] = train["betas"][1]
    defaults["seed"] = seed
    return defaults


def describe(name: str) -> str:
    """One paragraph of the full-scale set-up, for a script's --help."""
    task_options, model, train, seed = settings(name)

    def items(d):
        return ", ".join(f"{k} {v}" for k, v in d.items())

    return (f"Seed set-up (grokmath/experiments.py): task {items(task_options)}; model {items(model)}; "
            f"training {items(train)}; seed {seed}.")


def seed_batch_size(name: str) -> int:
    """Examples per step of the seed set-up (a full-batch set-up: its training set's size)."""
    task, _, train_cfg = experiment_configs(name)
    if train_cfg.batch_size is not None:
        return train_cfg.batch_size
    n_train = train_cfg.n_train if train_cfg.data == "finite" else None
    return len(task.split(n_train, torch.Generator().manual_seed(0))[0])

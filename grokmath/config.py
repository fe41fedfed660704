"""Every configuration dataclass: frozen, validated, and round-tripping through a plain dict.

- ModelConfig: the transformer's shape. Derived sizes (d_head, d_mlp, d_vocab_out) may be left as
  None and are filled in from the others; `model_config_for(task, ...)` takes the vocabulary and
  context from a task.
- TrainConfig: one training run's optimizer, schedule, data regime, checkpoints and Grokfast.
- SAEConfig: a sparse autoencoder's size, penalties and training.
A value a user can get wrong raises a ValueError that names the field and the fix. `check_whole`
is the one whole-number check (the task options, the configs and the command line's types use it).
The seed experiments' values live in grokmath/experiments.py, not here.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields

ACT_FNS = ("relu", "gelu")
NORMALIZATIONS = (None, "LN")
POSITIONALS = ("learned", "sinusoidal", "none")


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 1
    d_model: int = 512
    n_heads: int = 4
    d_head: int | None = None  # None: d_model // n_heads
    d_mlp: int | None = None  # None: 4 * d_model
    d_vocab: int = 12
    d_vocab_out: int | None = None  # None: d_vocab
    n_ctx: int = 18
    act_fn: str = "relu"
    normalization: str | None = None  # None or 'LN'
    attn_only: bool = False
    positional: str = "learned"
    attn_bias: bool = False  # b_Q, b_K, b_V, b_O (TransformerLens always has them)
    mlp_bias: bool = True  # b_in, b_out (the seed notebooks have them)
    unembed_bias: bool = False  # b_U
    ln_eps: float = 1e-5
    # The induction seed notebook's quirk, for loading its checkpoints: its block returns
    # x + attn(x) and its model adds x again, so each block outputs 2 * x + attn(x) (+ mlp_out).
    residual_doubled: bool = False
    seed: int = 0
    # not a field (not saved, not compared): a model keeps its own cfg.device where its weights are,
    # as TransformerLens's cfg.device
    device = "cpu"

    def __post_init__(self):
        def fail(name, why, fix):
            raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} {why}: {fix}")

        def check_size(name, fix):  # the one whole-number check (is_whole); a numpy integer is kept as an int
            if not is_whole(getattr(self, name), 1):
                fail(name, "is not a positive integer", fix)
            object.__setattr__(self, name, int(getattr(self, name)))

        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            check_size(name, f"set {name} to a whole number >= 1")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                fail("d_model", f"is not divisible by n_heads={self.n_heads}",
                     "choose d_model a multiple of n_heads, or set d_head explicitly")
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        for name in ("d_head", "d_mlp", "d_vocab_out"):
            check_size(name, f"set {name} to a whole number >= 1 (or None to derive it)")
        if self.act_fn not in ACT_FNS:
            fail("act_fn", "is not a known activation", f"use one of {ACT_FNS}")
        if self.normalization not in NORMALIZATIONS:
            fail("normalization", "is not a known normalization", "use None (no LayerNorm) or 'LN'")
        if self.positional not in POSITIONALS:
            fail("positional", "is not a known positional embedding", f"use one of {POSITIONALS}")
        eps = self.ln_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            fail("ln_eps", "is not a finite positive number", "use a small positive float such as 1e-5")
        for name in ("attn_only", "attn_bias", "mlp_bias", "unembed_bias", "residual_doubled"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "is not a bool", "use True or False")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            fail("seed", "is not an integer", "use a whole number")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return from_dict(cls, d)


def from_dict(cls, d: dict):
    """Build the dataclass `cls` from a plain dict, naming any key it does not know."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}: known fields are {sorted(known)}")
    return cls(**d)


def config_differences(saved: dict, fresh: dict, ignore=()) -> list[tuple[str, str, object, object]]:
    """Where two run configs ({"model": ..., "task": ..., "train": ...}, as config.json holds them)
    differ: (section, key, saved value, fresh value) for each key of `fresh` (in its order) not in
    `ignore`, compared as JSON (a tuple equals its list)."""
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731
    return [(section, key, saved[section].get(key), value)
            for section in ("model", "task", "train") for key, value in fresh[section].items()
            if key not in ignore and as_json(value) != as_json(saved[section].get(key))]


def model_config_for(task, **settings) -> ModelConfig:
    """A ModelConfig whose vocabulary and context come from the task, the rest from `settings`."""
    return ModelConfig(d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx, **settings)


def is_whole(value, low: int, high: int | None = None) -> bool:
    """Whether `value` is an integer (not a bool) in [low, high] (high None: no upper bound)."""
    return (not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low
            and (high is None or value <= high))


def check_whole(name: str, value, low: int = 1, high: int | None = None, what: str = "") -> int:
    """`value` as an int in [low, high], else one ValueError naming it and the range to use."""
    if not is_whole(value, low, high):
        span = f"from {low} to {high:,}" if high is not None else f">= {low}"
        problem = "is out of range" if isinstance(value, numbers.Integral) else "is not a whole number"
        raise ValueError(f"{what}{name}={value!r} {problem}: use a whole number {span}")
    return int(value)


DATA_REGIMES = ("infinite", "finite", "full")
SCHEDULES = ("warmup", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int | None = 64  # None: full batch ('finite' / 'full' data only)
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.98)
    schedule: str = "warmup"  # 'warmup': min(step / warmup, 1); 'cosine': warm-up from 1% then cosine to 0
    warmup: int | None = None  # None: 10 for 'warmup', steps // 5 for 'cosine' (the seed notebooks)
    data: str = "infinite"
    n_train: int | None = None  # 'finite': size of the fixed training set
    n_test: int | None = None  # 'finite': size of the held-out set (None: the task's default)
    test_every: int = 1
    checkpoint_every: int = 100
    seed: int = 0  # seeds the data generator (the model's init is seeded by ModelConfig.seed)
    grokfast: str | None = None  # None, 'ema' or 'ma'
    grokfast_alpha: float = 0.98
    grokfast_lamb: float | None = None  # None: 2.0 for 'ema', 5.0 for 'ma' (the paper)
    grokfast_window: int = 100
    skip_nonfinite: bool = False
    tf32: bool = False  # CUDA float32 matmuls in TF32 (faster, ~1e-3 relative error); fp32 when False

    def __post_init__(self):
        def fail(name, why, fix):
            raise ValueError(f"training setting {name}={getattr(self, name)!r} {why}: {fix}")

        def check_int(name, low, high, allow_none=False):
            if getattr(self, name) is not None or not allow_none:
                check_whole(name, getattr(self, name), low, high, what="training setting ")

        def check_float(name, low, high, low_open=True):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value > high or value < low or (low_open and value == low):
                bound = f"> {low}" if low_open else f">= {low}"
                fail(name, "is out of range", f"use a number {bound} and <= {high}")

        check_int("steps", 1, 100_000_000)
        check_int("batch_size", 1, 10_000_000, allow_none=True)
        check_float("lr", 0.0, 1.0)
        check_float("weight_decay", 0.0, 100.0, low_open=False)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            fail("betas", "is not two numbers in [0, 1)", "use e.g. (0.9, 0.98)")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.schedule not in SCHEDULES:
            fail("schedule", "is not a known schedule", f"use one of {SCHEDULES}")
        if self.warmup is None:
            object.__setattr__(self, "warmup", 10 if self.schedule == "warmup" else self.steps // 5)
        check_int("warmup", 0, 100_000_000)
        if self.data not in DATA_REGIMES:
            fail("data", "is not a known data regime", f"use one of {DATA_REGIMES}")
        if self.data == "infinite" and self.batch_size is None:
            fail("batch_size", "is None with infinite data", "give a batch size (full batch needs a finite data set)")
        check_int("n_train", 1, 100_000_000, allow_none=True)
        if self.data == "finite" and self.n_train is None:
            fail("n_train", "is not set for finite data", "give the size of the training set (e.g. --finite 750)")
        check_int("n_test", 1, 100_000_000, allow_none=True)
        check_int("test_every", 1, 100_000_000)
        check_int("checkpoint_every", 1, 100_000_000)
        check_int("seed", 0, 2**63 - 1)
        if self.grokfast not in (None, "ema", "ma"):
            fail("grokfast", "is not a known filter", "use 'ema', 'ma' or leave it unset")
        check_float("grokfast_alpha", 0.0, 0.999999, low_open=False)
        if self.grokfast_lamb is not None:
            check_float("grokfast_lamb", 0.0, 1000.0, low_open=False)
        check_int("grokfast_window", 1, 100_000)
        for name in ("skip_nonfinite", "tf32"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "is not a bool", "use True or False")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_dict(cls, d)


SAE_ARCHITECTURES = ("standard", "topk", "jumprelu")  # SAELens's names


@dataclass(frozen=True)
class SAEConfig:
    d_sae: int = 64  # dictionary size (the notebook's encoding_dim)
    # 'standard': ReLU, trained with the notebook's MSE + KL + L1; 'topk': the k largest
    # pre-activations (ReLU'd), trained on MSE alone; 'jumprelu': ReLU where the pre-activation
    # exceeds a learned per-feature threshold, trained with MSE + l0_weight * L0 (straight-through)
    architecture: str = "standard"
    k: int = 8  # 'topk': active features per row
    l0_weight: float = 1e-3  # 'jumprelu': weight of the L0 penalty
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3  # width of the straight-through estimator's window
    lr: float = 1e-3
    sparsity_target: float = 0.05  # the wished-for mean activation of each feature
    sparsity_weight: float = 1e-3  # weight of the KL sparsity penalty
    l1_weight: float = 1e-4  # weight of the L1 penalty on feature activations
    epochs: int = 10
    patience: int = 2  # epochs without improvement before stopping
    min_delta: float = 1e-4  # a smaller loss improvement does not count (the notebook's threshold)
    batch_size: int = 1024  # rows per step for TensorSource (a model source steps once per question batch)
    max_grad_norm: float = 1.0
    seed: int = 0  # the SAE's initialisation and the shuffling of a TensorSource

    def __post_init__(self):
        def fail(name, fix):
            raise ValueError(f"SAE setting {name}={getattr(self, name)!r} is out of range: {fix}")

        for name, low in (("d_sae", 1), ("epochs", 1), ("batch_size", 1), ("patience", 0), ("seed", 0), ("k", 1)):
            check_whole(name, getattr(self, name), low, what="SAE setting ")
        if self.architecture not in SAE_ARCHITECTURES:
            fail("architecture", f"use one of {', '.join(SAE_ARCHITECTURES)}")
        if self.architecture == "topk" and self.k > self.d_sae:
            fail("k", f"use k <= d_sae={self.d_sae}")
        for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                fail(name, "use a number > 0")
        for name in ("lr", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                fail(name, "use a number > 0")
        if not (isinstance(self.sparsity_target, (int, float)) and 0 < self.sparsity_target < 1):
            fail("sparsity_target", "use a fraction between 0 and 1, e.g. 0.05")
        for name in ("sparsity_weight", "l1_weight", "min_delta", "l0_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                fail(name, "use a number >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        return from_dict(cls, d)

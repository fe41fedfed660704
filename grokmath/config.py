"""Model configuration: a frozen, validated dataclass that round-trips through a plain dict.

Derived sizes (d_head, d_mlp, d_vocab_out) may be left as None and are filled in from the
others; a value a user can get wrong raises a ValueError that names the field and the fix.
"""
from __future__ import annotations

import math
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

    def __post_init__(self):
        def fail(name, why, fix):
            raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} {why}: {fix}")

        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(name, "is not a positive integer", f"set {name} to a whole number >= 1")
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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(name, "is not a positive integer", f"set {name} to a whole number >= 1 (or None to derive it)")
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

"""Other codebases' weights in a grokmath Transformer: TransformerLens and the seed notebooks.

`load_tlens_state_dict(state_dict, tl_config)` builds a grokmath Transformer from a
`HookedTransformer` state dict (e.g. the published arithmetic models, saved with
`torch.save(model.state_dict())`) and the config fields it was built with;
`to_tlens_state_dict(model)` and `to_tlens_config(model)` go back. The parameter names are the
same on both sides; only the buffers and the always-present TransformerLens biases differ.

`load_seed_state_dict(state_dict)` builds one from a state dict of the seed notebooks' own
hand-written classes (`Transformer` with `blocks.*`, the induction section's `AttnOnlyTransformer`
with `attn_blocks.*`), whose layouts differ from grokmath's (transposed W_E and W_Q/K/V, per-head
or flat W_O, transposed MLP weights); `load_seed_checkpoint(path)` reads the file the notebook
saved. The config is read off the names and shapes; only the MLP activation, which no state dict
stores, must be given (default 'ReLU', as in every seed notebook).
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from ..model.transformer import Transformer

# TransformerLens config fields we map, and fields that change nothing about the weights.
_MAPPED = {"n_layers", "n_heads", "d_model", "d_head", "d_mlp", "act_fn", "normalization_type",
           "d_vocab", "d_vocab_out", "n_ctx", "attn_only", "positional_embedding_type", "eps", "seed"}
_HARMLESS = {"model_name", "device", "n_devices", "init_weights", "init_mode", "initializer_range",
             "default_prepend_bos", "tokenizer_name", "tokenizer_prepends_bos", "original_architecture",
             "checkpoint_index", "checkpoint_label_type", "checkpoint_value", "from_checkpoint",
             "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in",
             "use_hook_tokens", "n_key_value_heads", "n_params", "dtype"}
_BUFFERS = ("attn.IGNORE", "attn.mask")
_SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in")


def _unsupported(field, value, why):
    raise ValueError(f"TransformerLens config {field}={value!r} is not supported by grokmath: {why}")


def config_from_tlens(tl_config: dict) -> ModelConfig:
    if tl_config.get("use_hook_tokens"):  # never ignored: a hook on hook_tokens would find no point
        _unsupported("use_hook_tokens", True, "grokmath has no hook_tokens; hook blocks.0.hook_resid_pre or "
                     "hook_embed, or edit the tokens before the call")
    kv_heads = tl_config.get("n_key_value_heads")
    if kv_heads is not None and kv_heads != tl_config.get("n_heads"):
        _unsupported("n_key_value_heads", kv_heads, f"grouped-query attention (n_key_value_heads < n_heads="
                     f"{tl_config.get('n_heads')}) is not supported: grokmath models have one key and value per head")
    unknown = sorted(set(tl_config) - _MAPPED - _HARMLESS)
    if unknown:
        _unsupported(unknown[0], tl_config[unknown[0]],
                     f"grokmath maps only {sorted(_MAPPED)}; remove the field if it has its default value")
    act_fn = tl_config.get("act_fn", "relu")
    if act_fn not in ("relu", "gelu"):
        _unsupported("act_fn", act_fn, "use a model trained with 'relu' or 'gelu'")
    norm = tl_config.get("normalization_type", "LN")
    if norm not in (None, "LN"):
        _unsupported("normalization_type", norm, "only None and 'LN' exist here")
    pos = tl_config.get("positional_embedding_type", "standard")
    if pos != "standard":
        _unsupported("positional_embedding_type", pos, "only 'standard' (learned) positions exist here")
    dtype = tl_config.get("dtype", torch.float32)
    if dtype not in (torch.float32, "float32", "torch.float32"):
        _unsupported("dtype", dtype, "load in float32 and cast the model afterwards")
    for field in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
        if field not in tl_config:
            raise ValueError(f"TransformerLens config lacks {field!r}: pass the HookedTransformerConfig fields")
    return ModelConfig(
        n_layers=tl_config["n_layers"], d_model=tl_config["d_model"], n_heads=tl_config["n_heads"],
        d_head=tl_config["d_head"], d_mlp=tl_config.get("d_mlp") or 4 * tl_config["d_model"],
        d_vocab=tl_config["d_vocab"], d_vocab_out=tl_config.get("d_vocab_out") or tl_config["d_vocab"],
        n_ctx=tl_config["n_ctx"], act_fn=act_fn, normalization=norm,
        attn_only=bool(tl_config.get("attn_only", False)), positional="learned",
        attn_bias=True, mlp_bias=True, unembed_bias=True, ln_eps=tl_config.get("eps", 1e-5),
        seed=int(tl_config.get("seed") or 0),
    )


def load_tlens_state_dict(state_dict: dict, tl_config: dict) -> Transformer:
    """A grokmath Transformer holding a HookedTransformer's weights."""
    model = Transformer(config_from_tlens(tl_config))
    weights = {k: v for k, v in state_dict.items() if not k.endswith(_BUFFERS)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                         "check that tl_config is the one the weights were trained with")
    for switch in _SWITCHES:  # the optional hook points the TransformerLens model had switched on
        if tl_config.get(switch):
            getattr(model, f"set_{switch}")(True)
    return model


# ---- the seed notebooks' hand-written models ---------------------------------------------------

def _seed_shapes(sd: dict) -> tuple[dict, dict]:
    """(inferred config fields, {key: expected shape}) for a seed-notebook state dict.

    Raises the one-line ValueError when the keys that fix the sizes are absent or not 2-D / 3-D.
    """
    families = {k.split(".")[0] for k in sd} & {"blocks", "attn_blocks"}
    if len(families) != 1:
        raise ValueError(f"a seed-notebook state dict has blocks.* (Transformer) or attn_blocks.* "
                         f"(AttnOnlyTransformer) keys, this one has {sorted(families) or 'neither'}; "
                         "pass model.state_dict() of one of those classes")
    prefix = families.pop()
    anchors = {"embed.W_E": 2, "unembed.W_U": 2, f"{prefix}.0.attn.W_Q": 3}
    bad = [k for k, ndim in anchors.items() if k not in sd or sd[k].dim() != ndim]
    if bad:
        raise ValueError(f"seed state dict: {bad} missing or of the wrong rank (want embed.W_E [d_model, "
                         "d_vocab], unembed.W_U [d_model, d_vocab_out], W_Q [n_heads, d_head, d_model])")
    d, d_vocab = sd["embed.W_E"].shape
    h, dh = sd[f"{prefix}.0.attn.W_Q"].shape[:2]
    layers = {k.split(".")[1] for k in sd if k.startswith(prefix + ".")}  # "0" is there (the W_Q anchor)
    n_layers = 1 + max(int(x) for x in layers if x.isdigit())  # a gap shows as missing keys
    mlp = f"{prefix}.0.mlp.W_in"
    # The induction model's blocks never have an MLP; an mlp key there is reported as unexpected.
    attn_only = prefix == "attn_blocks" or mlp not in sd
    d_mlp = None if attn_only or sd[mlp].dim() != 2 else sd[mlp].shape[0]
    pos = {"pos_embed.W_pos": "learned", "pos_embed.sinusoidal_pos_embeds": "sinusoidal"}
    positional = next((pos[k] for k in pos if k in sd), "none")
    mask = sd.get(f"{prefix}.0.attn.mask")
    if mask is not None and mask.dim() == 2:
        n_ctx = mask.shape[0]
    elif positional != "none" and sd[next(k for k in pos if k in sd)].dim() == 2:
        n_ctx = sd[next(k for k in pos if k in sd)].shape[0]
    else:
        n_ctx = None
    flat_W_O = sd.get(f"{prefix}.0.attn.W_O", torch.empty(0, 0)).dim() == 2  # 004 / induction: flat
    want = {"embed.W_E": (d, d_vocab), "unembed.W_U": (d, sd["unembed.W_U"].shape[1])}
    if positional != "none":
        want[next(k for k in pos if k in sd)] = (n_ctx, d)
    for L in range(n_layers):
        a = f"{prefix}.{L}."
        want.update({a + "attn.W_Q": (h, dh, d), a + "attn.W_K": (h, dh, d), a + "attn.W_V": (h, dh, d),
                     a + "attn.W_O": (d, h * dh) if flat_W_O else (h, d, dh), a + "attn.mask": (n_ctx, n_ctx)})
        if not attn_only:
            want.update({a + "mlp.W_in": (d_mlp, d), a + "mlp.b_in": (d_mlp,),
                         a + "mlp.W_out": (d, d_mlp), a + "mlp.b_out": (d,)})
    fields = dict(prefix=prefix, n_layers=n_layers, d_model=d, n_heads=h, d_head=dh, d_mlp=d_mlp,
                  d_vocab=d_vocab, d_vocab_out=sd["unembed.W_U"].shape[1], n_ctx=n_ctx,
                  attn_only=attn_only, positional=positional, flat_W_O=flat_W_O)
    return fields, want


def load_seed_state_dict(state_dict: dict, act_type: str = "ReLU",
                         residual_doubled: bool | None = None) -> Transformer:
    """A grokmath Transformer holding the weights of a seed notebook's own model class.

    `state_dict` is `model.state_dict()` of the notebooks' `Transformer` (keys `embed.W_E`,
    `pos_embed.W_pos`, `blocks.L.attn.W_Q` ..., `blocks.L.mlp.W_in` ..., `unembed.W_U`) or of the
    induction section's `AttnOnlyTransformer` (`attn_blocks.L.*`, learned `pos_embed.W_pos` or
    fixed `pos_embed.sinusoidal_pos_embeds`). Read off the shapes: n_layers, d_model, n_heads,
    d_head, d_mlp, d_vocab, d_vocab_out, n_ctx (from the causal-mask buffer), attention-only or
    not, the positional embedding, and W_O's layout ([n_heads, d_model, d_head] in the grokking
    notebook's Transformer; flat [d_model, n_heads * d_head], head-major columns, in the analysis
    notebook's Transformer and the induction model). Not stored, so taken as arguments:
      act_type          the MLP activation, 'ReLU' (every seed notebook) or 'GeLU'; unused when
                        attention-only
      residual_doubled  None: True for AttnOnlyTransformer, whose block returns x + attn(x) and
                        whose model adds x again (2x + attn(x) per block), False for Transformer;
                        pass a bool for a notebook copy that changed this.
    No LayerNorm, no attention or unembedding biases, MLP biases: as the notebooks build them.
    Any missing, unexpected or mis-shaped key (or a mask that is not causal) raises one
    ValueError that names them all; nothing is loaded partially.
    """
    acts = {"relu": "relu", "gelu": "gelu"}
    if not isinstance(act_type, str) or act_type.lower() not in acts:
        raise ValueError(f"act_type={act_type!r} is not one of the notebooks' 'ReLU' or 'GeLU'")
    if residual_doubled is not None and not isinstance(residual_doubled, bool):
        raise ValueError(f"residual_doubled={residual_doubled!r} must be None (infer), True or False")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError("state_dict must be a dict of tensors: the notebook's model.state_dict() "
                         "(for a saved checkpoint file use load_seed_checkpoint)")
    f, want = _seed_shapes(state_dict)
    shape = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in want if k not in shape]
    unexpected = [k for k in shape if k not in want]
    wrong = [k for k in want if k in shape and shape[k] != want[k]]
    not_causal = [k for k in want if k.endswith("attn.mask") and k in shape and k not in wrong
                  and not torch.equal(state_dict[k].detach().cpu().float(), torch.ones(want[k]).tril())]
    if missing or unexpected or wrong or not_causal:
        problems = [f"missing {missing}" if missing else "",
                    f"unexpected {unexpected}" if unexpected else "",
                    "wrong shape [" + ", ".join(f"{k} {shape[k]} (want {want[k]})" for k in wrong) + "]"
                    if wrong else "",
                    f"not the causal mask {not_causal}" if not_causal else ""]
        cls = "AttnOnlyTransformer" if f["prefix"] == "attn_blocks" else "Transformer"
        raise ValueError(f"seed state dict does not fit the notebook's {cls} (read as n_layers={f['n_layers']}, "
                         f"d_model={f['d_model']}, n_heads={f['n_heads']}, d_head={f['d_head']}): "
                         + "; ".join(p for p in problems if p) + "; pass the notebook's own model.state_dict()")
    cfg = ModelConfig(
        n_layers=f["n_layers"], d_model=f["d_model"], n_heads=f["n_heads"], d_head=f["d_head"],
        d_mlp=f["d_mlp"], d_vocab=f["d_vocab"], d_vocab_out=f["d_vocab_out"], n_ctx=f["n_ctx"],
        act_fn=acts[act_type.lower()], normalization=None, attn_only=f["attn_only"],
        positional=f["positional"], attn_bias=False, mlp_bias=True, unembed_bias=False,
        residual_doubled=f["prefix"] == "attn_blocks" if residual_doubled is None else residual_doubled)
    sd = {k: v.detach() for k, v in state_dict.items()}
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    ours = {"embed.W_E": sd["embed.W_E"].T, "unembed.W_U": sd["unembed.W_U"]}  # -> [d_vocab, d_model]
    if cfg.positional != "none":
        ours["pos_embed.W_pos"] = sd.get("pos_embed.W_pos", sd.get("pos_embed.sinusoidal_pos_embeds"))
    for L in range(cfg.n_layers):
        a, b = f"{f['prefix']}.{L}.", f"blocks.{L}."
        for name in ("W_Q", "W_K", "W_V"):  # [n_heads, d_head, d_model] -> [n_heads, d_model, d_head]
            ours[b + "attn." + name] = sd[a + "attn." + name].transpose(1, 2)
        W_O = sd[a + "attn.W_O"]  # flat column i * d_head + e is head i, dimension e
        ours[b + "attn.W_O"] = W_O.T.reshape(h, dh, d) if f["flat_W_O"] else W_O.transpose(1, 2)
        if not cfg.attn_only:
            ours[b + "mlp.W_in"] = sd[a + "mlp.W_in"].T  # [d_model, d_mlp]
            ours[b + "mlp.W_out"] = sd[a + "mlp.W_out"].T  # [d_mlp, d_model]
            ours[b + "mlp.b_in"], ours[b + "mlp.b_out"] = sd[a + "mlp.b_in"], sd[a + "mlp.b_out"]
    model = Transformer(cfg)
    model.load_state_dict(ours, strict=True)  # every name checked above: a failure here is a bug
    return model


def load_seed_checkpoint(path, act_type: str | None = None,
                         residual_doubled: bool | None = None) -> Transformer:
    """`load_seed_state_dict` on a file the notebooks saved: a bare state dict, or the induction
    section's `{'model': state_dict, 'model_config': {..., 'act_type': ...}, ...}` (act_type is
    then read from model_config unless given). Read on the CPU with torch.load(weights_only=True)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing, truncated or non-torch file: one line, the cause included
        first_line = (str(e).splitlines() or [""])[0]
        raise ValueError(f"cannot read the checkpoint {path}: {type(e).__name__}: {first_line}") from None
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        config = saved.get("model_config") if isinstance(saved.get("model_config"), dict) else {}
        act_type = act_type or config.get("act_type")
        saved = saved["model"]
    return load_seed_state_dict(saved, act_type or "ReLU", residual_doubled)


def to_tlens_config(model: Transformer) -> dict:
    cfg = model.cfg
    if cfg.positional != "learned":
        _unsupported("positional", cfg.positional, "TransformerLens's 'standard' positions are learned")
    if cfg.residual_doubled:
        _unsupported("residual_doubled", True, "a HookedTransformer block adds its input to the stream once")
    return {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model, "d_head": cfg.d_head,
            "d_mlp": None if cfg.attn_only else cfg.d_mlp, "act_fn": cfg.act_fn,
            "normalization_type": cfg.normalization, "d_vocab": cfg.d_vocab, "d_vocab_out": cfg.d_vocab_out,
            "n_ctx": cfg.n_ctx, "attn_only": cfg.attn_only, "eps": cfg.ln_eps, "seed": cfg.seed,
            "positional_embedding_type": "standard"}


def to_tlens_state_dict(model: Transformer) -> dict:
    """The state dict a HookedTransformer of `to_tlens_config(model)` loads: zero biases where
    grokmath has none, and TransformerLens's causal-mask buffers."""
    cfg = model.cfg
    to_tlens_config(model)  # raises on what TransformerLens cannot hold
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    zeros = {"attn.b_Q": (cfg.n_heads, cfg.d_head), "attn.b_K": (cfg.n_heads, cfg.d_head),
             "attn.b_V": (cfg.n_heads, cfg.d_head), "attn.b_O": (cfg.d_model,)}
    if not cfg.attn_only:
        zeros.update({"mlp.b_in": (cfg.d_mlp,), "mlp.b_out": (cfg.d_model,)})
    for layer in range(cfg.n_layers):
        for name, shape in zeros.items():
            sd.setdefault(f"blocks.{layer}.{name}", torch.zeros(shape))
        sd[f"blocks.{layer}.attn.mask"] = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))
        sd[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(float("-inf"))
    sd.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab_out))
    return sd

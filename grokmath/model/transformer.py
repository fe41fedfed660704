"""The Transformer: the components of layers.py composed, with TransformerLens 3.x's forward.

Parameter and hook names are TransformerLens's, so its vocabulary (W_E, W_Q, hook_pattern,
hook_resid_post, ...) works here unchanged, and so does its `forward`: `return_type` 'logits',
'loss' (the next-token loss, for models whose output vocabulary is the input one), 'both' or
None, `loss_per_token`, `stop_at_layer` and `start_at_layer`. Initialisation follows the seed
notebooks (`randn / sqrt(fan)`), drawn from a local generator seeded by `cfg.seed`.

`model(tokens)` returns logits at every position. `model(tokens, positions=pos)` returns them
only at `pos`: the last layer then computes queries, MLP and unembedding only there, which is
all that training on the answer positions needs (analysis leaves `positions` unset); that
training path alone projects Q, K, V in one matmul and uses the fused attention kernel. Every
other call runs one explicit arithmetic whatever is hooked (TransformerLens's einsums), so
`forward`, `run_with_cache` and the split-input switches give identical numbers.

As in TransformerLens, four switches add hook points that cost memory and are off by default:
`set_use_attn_result` (each head's output, attn.hook_result), `set_use_attn_in` and
`set_use_split_qkv_input` (a copy of the residual stream per head, hook_attn_in and
hook_q_input / hook_k_input / hook_v_input) and `set_use_hook_mlp_in`. Unlike TransformerLens, a
hook attached to one of these points by its name switches it on for that run (TransformerLens
refuses it in add_hook and silently skips it in run_with_hooks).
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn as nn

from ..config import ModelConfig
from .hook_point import HookPoint
from .hooks import HookedRootModule
from .layers import MLP, Attention, Block, Embed, LayerNorm, PosEmbed, Unembed  # noqa: F401 (Attention, MLP re-exported)
from .weights import TransformerWeights

RETURN_TYPES = ("logits", "loss", "both", None)


class Output(NamedTuple):
    """What forward(..., return_type='both') returns, as TransformerLens's Output."""
    logits: torch.Tensor
    loss: torch.Tensor

class Transformer(TransformerWeights, HookedRootModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = replace(cfg)  # this model's own copy: its `device` follows the model (TransformerLens's cfg.device)
        object.__setattr__(self.cfg, "device", "cpu")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.embed = Embed(cfg, gen)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional != "none":
            self.pos_embed = PosEmbed(cfg, gen)
            self.hook_pos_embed = HookPoint(copy_on_hook=True)  # hooks must not see W_pos's storage
        self.blocks = nn.ModuleList(Block(cfg, gen) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg) if cfg.normalization == "LN" else nn.Identity()
        self.unembed = Unembed(cfg, gen)
        self.use_attn_result = self.use_attn_in = self.use_split_qkv_input = self.use_hook_mlp_in = False
        self.setup_hooks()

    def forward(self, input: torch.Tensor, return_type: str | None = "logits", loss_per_token: bool = False,
                prepend_bos=None, padding_side=None, start_at_layer: int | None = None,
                tokens: torch.Tensor | None = None, shortformer_pos_embed=None,
                attention_mask: torch.Tensor | None = None, stop_at_layer: int | None = None,
                past_kv_cache=None, positions: torch.Tensor | None = None):
        """tokens [batch, pos] -> logits [batch, pos, d_vocab_out], or [batch, len(positions), ...].

        TransformerLens 3.x's signature. return_type: 'logits', 'loss' (mean next-token loss;
        [batch, pos-1] with loss_per_token), 'both' (Output(logits, loss)) or None. stop_at_layer:
        return the residual stream before that block (negative counts from the end).
        start_at_layer: `input` is the residual stream [batch, pos, d_model] before that block, e.g.
        from `input_to_embed` (pass `tokens=` too for a loss, and its `attention_mask`).
        attention_mask [batch, pos] (1 = token, 0 = padding): padding is not attended, positions
        count real tokens only and the loss skips padding, as TransformerLens applies it.
        prepend_bos / padding_side only concern strings, which a grokmath model (no tokenizer) refuses.
        positions: grokmath's training path (logits only at those positions, fused attention).
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type={return_type!r}: use one of {RETURN_TYPES}")
        if shortformer_pos_embed is not None or past_kv_cache is not None:
            what = "shortformer_pos_embed" if shortformer_pos_embed is not None else "past_kv_cache"
            raise ValueError(f"{what} is not supported by grokmath (standard positions, no key-value cache): leave it None")
        wants_loss = return_type in ("loss", "both") and stop_at_layer is None
        if wants_loss and self.cfg.d_vocab_out != self.cfg.d_vocab:
            raise ValueError(f"return_type={return_type!r} is the next-token loss, which needs d_vocab_out == d_vocab "
                             f"(here {self.cfg.d_vocab_out} != {self.cfg.d_vocab}): take the logits and score them "
                             "with the task's loss (grokmath.training.losses.loss_fn at task.pred_pos)")
        if positions is not None and (stop_at_layer is not None or wants_loss or attention_mask is not None):
            raise ValueError("positions= selects which logits to compute: it does not combine with "
                             "stop_at_layer, attention_mask or a next-token loss; leave it out")
        if start_at_layer is None:
            resid, tokens, _, attention_mask = self.input_to_embed(input, attention_mask=attention_mask)
        else:
            resid = self._checked_resid(input, start_at_layer)
            if wants_loss:
                if tokens is None:
                    raise ValueError("a loss with start_at_layer needs the tokens: pass tokens=[batch, pos] ids")
                tokens = self._checked_tokens(tokens)
            attention_mask = self._checked_mask(attention_mask, resid.shape[:2])
        fast = positions is not None
        if fast:
            positions = torch.as_tensor(positions, device=resid.device)
        last = self.cfg.n_layers - 1
        blocks = list(enumerate(self.blocks))[start_at_layer:stop_at_layer]
        for layer, block in blocks:
            resid = block(resid, positions if layer == last else None, fast, attention_mask)
        if stop_at_layer is not None:
            return resid  # [batch, pos, d_model]
        if positions is not None and not blocks:
            resid = resid[:, positions]
        resid = self.ln_final(resid)
        if return_type is None:
            return None
        logits = self.unembed(resid)  # [batch, pos, d_vocab_out]
        if return_type == "logits":
            return logits
        loss = self.loss_fn(logits, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

    def input_to_embed(self, input, prepend_bos=None, padding_side=None, attention_mask=None,
                       past_kv_cache=None):
        """TransformerLens 3.x's first step: tokens [batch, pos] (or [pos]) -> (residual [batch, pos,
        d_model], tokens [batch, pos], shortformer_pos_embed (None: standard positions),
        attention_mask [batch, pos] or None), for `forward(residual, start_at_layer=0, ...)`."""
        if isinstance(input, (str, list)) and (isinstance(input, str) or any(isinstance(x, str) for x in input)):
            raise ValueError("a grokmath model has no tokenizer: pass token ids [batch, pos] (e.g. task.encode(texts))")
        if past_kv_cache is not None:
            raise ValueError("past_kv_cache is not supported by grokmath (no key-value cache): leave it None")
        tokens = self._checked_tokens(input)
        attention_mask = self._checked_mask(attention_mask, tokens.shape)
        resid = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
        if self.cfg.positional != "none":
            resid = resid + self.hook_pos_embed(self.pos_embed(tokens, attention_mask))
        return resid, tokens, None, attention_mask

    def _checked_mask(self, attention_mask, shape) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        mask = torch.as_tensor(attention_mask)
        if tuple(mask.shape) != tuple(shape) or mask.is_floating_point() and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"attention_mask of shape {tuple(mask.shape)}: pass 1 (token) / 0 (padding) of the "
                             f"tokens' shape {tuple(shape)}")
        if self.cfg.positional == "sinusoidal":
            raise ValueError("attention_mask needs learned positions (TransformerLens's 'standard'): this model's are sinusoidal")
        return mask.to(self.W_E.device).long()

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
        """TransformerLens's next-token loss: -log p(tokens[:, t+1]) from logits[:, t], averaged over
        batch and positions (per_token: [batch, pos-1]); with attention_mask, a position counts only
        where it and the next token are real (elsewhere per_token gives 0), as TransformerLens."""
        log_probs = logits.log_softmax(dim=-1)[:, :-1]  # [batch, pos-1, d_vocab]
        nll = -log_probs.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]  # [batch, pos-1]
        if attention_mask is None:
            return nll if per_token else nll.mean()
        counted = (attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()).to(logits.device)
        nll = nll * counted
        return nll if per_token else nll.sum() / counted.sum()

    def _checked_tokens(self, tokens) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens of dtype {tokens.dtype} and shape {tuple(tokens.shape)}: token ids must be "
                            "integers (to start from a residual stream, pass start_at_layer=)")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)}: pass [batch, pos] (or [pos]) token ids")
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens is longer than n_ctx={self.cfg.n_ctx}: "
                             "shorten it or build the model with a larger n_ctx")
        if tokens.numel() and not torch._C._are_functorch_transforms_active():
            lo, hi = tokens.aminmax()
            in_range = (lo >= 0) & (hi < self.cfg.d_vocab)
            if tokens.device.type == "cuda":  # no host sync: a device-side assert instead of a silent wrap
                torch._assert_async(in_range, f"a token id is outside [0, d_vocab={self.cfg.d_vocab})")
            elif not in_range:  # W_E[-1] would silently read the last row
                bad = int(lo) if lo < 0 else int(hi)
                raise ValueError(f"token id {bad} is outside [0, d_vocab={self.cfg.d_vocab}): "
                                 "give ids the model's vocabulary has")
        return tokens

    def _checked_resid(self, resid, start_at_layer: int) -> torch.Tensor:
        if not (isinstance(resid, torch.Tensor) and resid.is_floating_point() and resid.dim() == 3
                and resid.shape[-1] == self.cfg.d_model):
            shape = tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__
            raise ValueError(f"start_at_layer={start_at_layer} needs the residual stream [batch, pos, "
                             f"d_model={self.cfg.d_model}] as input, not {shape}")
        if resid.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"residual stream of {resid.shape[1]} positions is longer than n_ctx={self.cfg.n_ctx}")
        return resid

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .cpu() end here: keep cfg.device where the weights are
        out = super()._apply(fn, *args, **kwargs)
        object.__setattr__(self.cfg, "device", str(self.embed.W_E.device))
        return out

    # TransformerLens's switches for the optional hook points (all off by default)
    def set_use_attn_result(self, use_attn_result: bool):
        """Compute each head's output [batch, pos, head, d_model] at attn.hook_result (n_heads x
        the memory of hook_attn_out)."""
        self.use_attn_result = _flag(use_attn_result, "use_attn_result")
        for block in self.blocks:
            block.attn.use_attn_result = use_attn_result

    def set_use_attn_in(self, use_attn_in: bool):
        """Give each head its own copy of the attention input, at blocks.L.hook_attn_in."""
        self.use_attn_in = _flag(use_attn_in, "use_attn_in")
        for block in self.blocks:
            block.use_attn_in = use_attn_in

    def set_use_split_qkv_input(self, use_split_qkv_input: bool):
        """Give each head separate query, key and value inputs, at blocks.L.hook_q_input / hook_k_input /
        hook_v_input [batch, pos, head, d_model]."""
        self.use_split_qkv_input = _flag(use_split_qkv_input, "use_split_qkv_input")
        for block in self.blocks:
            block.use_split_qkv_input = use_split_qkv_input

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool):
        """Expose the MLP's input (a copy of hook_resid_mid) at blocks.L.hook_mlp_in."""
        if self.cfg.attn_only and use_hook_mlp_in:
            raise ValueError("this model is attention-only: it has no MLP input to hook")
        self.use_hook_mlp_in = _flag(use_hook_mlp_in, "use_hook_mlp_in")
        for block in self.blocks:
            block.use_hook_mlp_in = use_hook_mlp_in


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value

"""The Transformer, written by hand: Embed, PosEmbed, LayerNorm, Attention, MLP, Block, Unembed.

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

import math
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .hooks import ALIASES, HookedRootModule, HookPoint
from .weights import TransformerWeights

RETURN_TYPES = ("logits", "loss", "both", None)


class Output(NamedTuple):
    """What forward(..., return_type='both') returns, as TransformerLens's Output."""
    logits: torch.Tensor
    loss: torch.Tensor


def _randn(gen: torch.Generator, *shape: int, fan: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=gen) / math.sqrt(fan))


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        self.W_E = _randn(gen, cfg.d_vocab, cfg.d_model, fan=cfg.d_model)  # [d_vocab, d_model]

    def forward(self, tokens):
        # F.embedding, not W_E[tokens]: indexing's backward (index_put_ with accumulate) adds rows in a
        # thread-dependent order on a CPU, so two identical runs would differ in the last bits
        return F.embedding(tokens, self.W_E)  # [batch, pos, d_model]


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        if cfg.positional == "learned":
            self.W_pos = _randn(gen, cfg.n_ctx, cfg.d_model, fan=cfg.d_model)  # [n_ctx, d_model]
        else:  # the seed's fixed sinusoids, scaled by 1/sqrt(d_model)
            pos = torch.arange(cfg.n_ctx)[:, None]
            freq = 10000 ** (torch.arange(cfg.d_model // 2) / cfg.d_model)
            W_pos = torch.zeros(cfg.n_ctx, cfg.d_model)
            W_pos[:, 0::2][:, : freq.numel()] = torch.cos(pos / freq)
            W_pos[:, 1::2][:, : freq.numel()] = torch.sin(pos / freq)
            self.register_buffer("W_pos", W_pos / math.sqrt(cfg.d_model))

    def forward(self, tokens, attention_mask=None):
        # A view of W_pos: free when nothing is hooked; hook_pos_embed copies it for any hook.
        batch, n_pos = tokens.shape
        if attention_mask is None:
            return self.W_pos[:n_pos].expand(batch, n_pos, -1)  # [batch, pos, d_model]
        # TransformerLens's padding: positions count attended tokens only (a left-padded prompt
        # starts at position 0), and padding tokens get no positional embedding
        position = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)  # [batch, pos]
        return torch.where(attention_mask[..., None].bool(), F.embedding(position, self.W_pos), 0.0)


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps), then scale w and bias b, as TransformerLens does; as in
    TransformerLens 3.x, hook_normalized sees the activation before w and b."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.ln_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.n_heads, self.d_head = h, dh
        self.W_Q = _randn(gen, h, d, dh, fan=d)  # [n_heads, d_model, d_head]
        self.W_K = _randn(gen, h, d, dh, fan=d)
        self.W_V = _randn(gen, h, d, dh, fan=d)
        self.W_O = _randn(gen, h, dh, d, fan=d)  # [n_heads, d_head, d_model]
        if cfg.attn_bias:
            self.b_Q = nn.Parameter(torch.zeros(h, dh))
            self.b_K = nn.Parameter(torch.zeros(h, dh))
            self.b_V = nn.Parameter(torch.zeros(h, dh))
            self.b_O = nn.Parameter(torch.zeros(d))
        self.bias = cfg.attn_bias
        self.fused = True  # the training path's scaled_dot_product_attention, when nothing hooks the pattern (off under vmap)
        self.use_attn_result = False  # model.set_use_attn_result
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def __getattr__(self, name):
        if name in ALIASES:  # the seed notebooks' hook_attn / hook_attn_pre
            return getattr(self, ALIASES[name])
        return super().__getattr__(name)

    def _project(self, x, weights, biases):
        # One matmul for several of Q, K, V: [batch, pos, d_model] -> n x [batch, pos, head, d_head]
        W = torch.cat(weights, dim=0)  # [n*head, d_model, d_head]
        out = x @ W.transpose(0, 1).reshape(x.shape[-1], -1)  # [batch, pos, n*head*d_head]
        out = out.view(*x.shape[:-1], len(weights), self.n_heads, self.d_head)
        if self.bias:
            out = out + torch.stack(biases)
        return out.unbind(-3)

    def _project_heads(self, x, which: str):
        # A separate input per head: [batch, pos, head, d_model] -> [batch, pos, head, d_head]
        out = torch.einsum("bphm,hmd->bphd", x, getattr(self, f"W_{which}"))
        return out + getattr(self, f"b_{which}") if self.bias else out

    def forward(self, x, q_pos=None, key_input=None, value_input=None, fast=False, attention_mask=None):
        """x: [batch, pos, d_model], the input of queries, keys and values; or, with key_input and
        value_input given, the query input, each [batch, pos, head, d_model] (one per head).
        q_pos: [n_q] positions whose output is needed (None: all). attention_mask: [batch, pos], 0
        at padding (keys there are not attended). fast: the training path (one matmul for Q, K, V
        and the fused attention kernel); otherwise every call runs the same explicit arithmetic,
        hooked or not, so caching and the split inputs change no number."""
        if key_input is not None or not fast:
            if key_input is None:  # the same per-head arithmetic as with separate inputs per head
                key_input = value_input = x[:, :, None].expand(-1, -1, self.n_heads, -1)
                x = key_input
            q_in = x if q_pos is None else x[:, q_pos]
            q = self._project_heads(q_in, "Q")
            k, v = self._project_heads(key_input, "K"), self._project_heads(value_input, "V")
        elif q_pos is None:
            q, k, v = self._project(x, (self.W_Q, self.W_K, self.W_V), self._biases("QKV"))
        else:
            k, v = self._project(x, (self.W_K, self.W_V), self._biases("KV"))
            (q,) = self._project(x[:, q_pos], (self.W_Q,), self._biases("Q"))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # [batch, pos, head, d_head]
        n_k = k.shape[1]
        k_idx = torch.arange(n_k, device=k.device)
        q_idx = k_idx if q_pos is None else q_pos
        allowed = k_idx[None, :] <= q_idx[:, None]  # [query, key] causal mask
        if attention_mask is not None:  # and no key at padding: [batch, 1, query, key]
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        fused = fast and self.fused and attention_mask is None
        if not fused or self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))  # [batch, head, q, k]
            pattern = scores.softmax(dim=-1)
            if attention_mask is not None:  # a query with no key to attend (padding) reads nothing
                pattern = torch.nan_to_num(pattern, nan=0.0)
            pattern = self.hook_pattern(pattern)
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:  # the same arithmetic in one fused kernel
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed
            ).transpose(1, 2)
        z = self.hook_z(z)  # [batch, q, head, d_head]
        if self.use_attn_result or self.hook_result.requested():
            result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))  # [batch, q, head, d_model]
            out = result.sum(dim=2)
        else:
            out = z.flatten(-2) @ self.W_O.flatten(0, 1)  # [batch, q, d_model]
        return out + self.b_O if self.bias else out

    def _biases(self, which: str):
        return [getattr(self, f"b_{c}") for c in which] if self.bias else []


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        self.W_in = _randn(gen, cfg.d_model, cfg.d_mlp, fan=cfg.d_model)  # [d_model, d_mlp]
        self.W_out = _randn(gen, cfg.d_mlp, cfg.d_model, fan=cfg.d_model)  # [d_mlp, d_model], the seed's scale
        if cfg.mlp_bias:
            self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
            self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.bias = cfg.mlp_bias
        self.act = F.relu if cfg.act_fn == "relu" else F.gelu
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()

    def forward(self, x):
        pre = x @ self.W_in + self.b_in if self.bias else x @ self.W_in
        post = self.hook_post(self.act(self.hook_pre(pre)))
        return post @ self.W_out + self.b_out if self.bias else post @ self.W_out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        self.attn_only = cfg.attn_only
        self.residual_doubled = cfg.residual_doubled
        use_ln = cfg.normalization == "LN"
        self.ln1 = LayerNorm(cfg) if use_ln else nn.Identity()
        self.attn = Attention(cfg, gen)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()
        # Off unless switched on (model.set_use_attn_in / set_use_split_qkv_input / set_use_hook_mlp_in)
        self.use_attn_in = self.use_split_qkv_input = self.use_hook_mlp_in = False
        self.hook_attn_in = HookPoint(copy_on_hook=True)  # [batch, pos, head, d_model]
        self.hook_q_input = HookPoint(copy_on_hook=True)  # [batch, pos, head, d_model]
        self.hook_k_input = HookPoint(copy_on_hook=True)
        self.hook_v_input = HookPoint(copy_on_hook=True)
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if use_ln else nn.Identity()
            self.mlp = MLP(cfg, gen)
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_out = HookPoint()

    def forward(self, x, q_pos=None, fast=False, attention_mask=None):
        resid_pre = self.hook_resid_pre(x)  # [batch, pos, d_model]
        attn_out = self.hook_attn_out(self._attend(resid_pre, q_pos, fast, attention_mask))  # [batch, q, d_model]
        resid = (resid_pre if q_pos is None else resid_pre[:, q_pos]) + attn_out
        if not self.attn_only:
            resid = self.hook_resid_mid(resid)
            mlp_in = self.hook_mlp_in(resid) if self.use_hook_mlp_in or self.hook_mlp_in.requested() else resid
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        if self.residual_doubled:  # the induction notebook adds the block's input again
            resid = resid + (resid_pre if q_pos is None else resid_pre[:, q_pos])
        # resid_post: the stream the next block reads (2 * resid_pre + attn_out when doubled; the
        # notebook's own hook_resid_post held resid_post - resid_pre)
        return self.hook_resid_post(resid)

    def _attend(self, resid_pre, q_pos, fast=False, attention_mask=None):
        """ln1 and attention; with the per-head switches, each head reads its own copy of the input."""
        split = self.use_split_qkv_input or self.hook_q_input.requested() or self.hook_k_input.requested() \
            or self.hook_v_input.requested()
        per_head = self.use_attn_in or self.hook_attn_in.requested()
        if not (split or per_head):
            return self.attn(self.ln1(resid_pre), q_pos, fast=fast, attention_mask=attention_mask)
        heads = resid_pre[:, :, None].expand(-1, -1, self.attn.n_heads, -1)  # [batch, pos, head, d_model]
        if per_head:
            heads = self.hook_attn_in(heads)
        if not split:
            normalized = self.ln1(heads)
            return self.attn(normalized, q_pos, normalized, normalized, attention_mask=attention_mask)
        q_in, k_in, v_in = self.hook_q_input(heads), self.hook_k_input(heads), self.hook_v_input(heads)
        return self.attn(self.ln1(q_in), q_pos, self.ln1(k_in), self.ln1(v_in), attention_mask=attention_mask)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        # The seed scales W_U by 1/sqrt(d_vocab_out).
        self.W_U = _randn(gen, cfg.d_model, cfg.d_vocab_out, fan=cfg.d_vocab_out)  # [d_model, d_vocab_out]
        if cfg.unembed_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))
        self.bias = cfg.unembed_bias
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab_out]

    def forward(self, x):
        logits = self.hook_in(x) @ self.W_U  # [batch, pos, d_vocab_out]
        return self.hook_out(logits + self.b_U if self.bias else logits)


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

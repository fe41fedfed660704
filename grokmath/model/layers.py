"""The components of the Transformer, written by hand: Embed, PosEmbed, LayerNorm, Attention, MLP,
Block, Unembed (transformer.py composes them).

Parameter and hook names are TransformerLens's (W_E, W_Q, hook_pattern, hook_resid_post, ...), and
initialisation follows the seed notebooks (`randn / sqrt(fan)`), drawn from the model's local
generator. Attention and Block take `q_pos` (the positions whose output is needed) and `fast`:
the training path, which projects Q, K, V in one matmul and uses the fused attention kernel.
Every other call runs one explicit arithmetic whatever is hooked (TransformerLens's einsums), so
`forward`, `run_with_cache` and the split-input switches give identical numbers.

The optional hook points (attn.hook_result, hook_attn_in, hook_q_input / hook_k_input /
hook_v_input, hook_mlp_in) compute their activation only when switched on (the model's set_use_*)
or when a hook is attached to one of them by its name (`HookPoint.requested()`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .hook_point import HookPoint
from .utils import ALIASES


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

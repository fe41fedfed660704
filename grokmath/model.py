"""The Transformer, written by hand: Embed, PosEmbed, LayerNorm, Attention, MLP, Block.

Parameter and hook names are TransformerLens's, so its vocabulary (W_E, W_Q, hook_pattern,
hook_resid_post, ...) works here unchanged. Initialisation follows the seed notebooks
(`randn / sqrt(fan)`), drawn from a local generator seeded by `cfg.seed`.

`model(tokens)` returns logits at every position. `model(tokens, positions=pos)` returns them
only at `pos`: the last layer then computes queries, MLP and unembedding only there, which is
all that training on the answer positions needs (analysis leaves `positions` unset).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .hooks import ALIASES, HookedRootModule, HookPoint
from .weights import TransformerWeights


def _randn(gen: torch.Generator, *shape: int, fan: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=gen) / math.sqrt(fan))


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator):
        super().__init__()
        self.W_E = _randn(gen, cfg.d_vocab, cfg.d_model, fan=cfg.d_model)  # [d_vocab, d_model]

    def forward(self, tokens):
        return self.W_E[tokens]  # [batch, pos, d_model]


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

    def forward(self, tokens):
        batch, n_pos = tokens.shape
        return self.W_pos[:n_pos].expand(batch, n_pos, -1)  # [batch, pos, d_model]


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps), then scale w and bias b, as TransformerLens does."""

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
        return self.hook_normalized(x / scale * self.w + self.b)


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
        self.fused = True  # scaled_dot_product_attention when nothing hooks the pattern (off under vmap)
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

    def forward(self, x, q_pos=None):
        # x: [batch, pos, d_model]; q_pos: [n_q] positions whose output is needed (None: all)
        if q_pos is None:
            q, k, v = self._project(x, (self.W_Q, self.W_K, self.W_V), self._biases("QKV"))
        else:
            k, v = self._project(x, (self.W_K, self.W_V), self._biases("KV"))
            (q,) = self._project(x[:, q_pos], (self.W_Q,), self._biases("Q"))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # [batch, pos, head, d_head]
        n_k = k.shape[1]
        k_idx = torch.arange(n_k, device=x.device)
        q_idx = k_idx if q_pos is None else q_pos
        allowed = k_idx[None, :] <= q_idx[:, None]  # [query, key] causal mask
        if not self.fused or self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))  # [batch, head, q, k]
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:  # the same arithmetic in one fused kernel
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed
            ).transpose(1, 2)
        z = self.hook_z(z)  # [batch, q, head, d_head]
        if self.hook_result.has_hooks():
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
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if use_ln else nn.Identity()
            self.mlp = MLP(cfg, gen)
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()

    def forward(self, x, q_pos=None):
        resid_pre = self.hook_resid_pre(x)  # [batch, pos, d_model]
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), q_pos))  # [batch, q, d_model]
        resid = (resid_pre if q_pos is None else resid_pre[:, q_pos]) + attn_out
        if not self.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        if self.residual_doubled:  # the induction notebook adds the block's input again
            resid = resid + (resid_pre if q_pos is None else resid_pre[:, q_pos])
        # resid_post: the stream the next block reads (2 * resid_pre + attn_out when doubled; the
        # notebook's own hook_resid_post held resid_post - resid_pre)
        return self.hook_resid_post(resid)


class Transformer(TransformerWeights, HookedRootModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        self.embed = Embed(cfg, gen)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional != "none":
            self.pos_embed = PosEmbed(cfg, gen)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg, gen) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg) if cfg.normalization == "LN" else nn.Identity()
        self.unembed = nn.Module()
        # The seed scales W_U by 1/sqrt(d_vocab_out).
        self.unembed.W_U = _randn(gen, cfg.d_model, cfg.d_vocab_out, fan=cfg.d_vocab_out)  # [d_model, d_vocab_out]
        if cfg.unembed_bias:
            self.unembed.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))
        self.setup_hooks()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab_out], or [batch, len(positions), ...]."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens is longer than n_ctx={self.cfg.n_ctx}: "
                             "shorten it or build the model with a larger n_ctx")
        resid = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
        if self.cfg.positional != "none":
            resid = resid + self.hook_pos_embed(self.pos_embed(tokens))
        if positions is not None:
            positions = torch.as_tensor(positions, device=tokens.device)
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            resid = block(resid, positions if layer == last else None)
        resid = self.ln_final(resid)
        logits = resid @ self.unembed.W_U  # [batch, pos, d_vocab_out]
        return logits + self.unembed.b_U if self.cfg.unembed_bias else logits

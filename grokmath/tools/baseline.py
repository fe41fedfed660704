"""A straightforward full-sequence transformer: the benchmark's baseline and the tests' reference.

It computes what `grokmath.Transformer` computes, the way the seed notebooks write it: separate
einsums for Q, K and V, every position through every layer, an explicit masked softmax, and
the logits sliced to the answer positions afterwards. It loads a grokmath state dict, so the
two can be run side by side on the same weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig


class PlainTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, state_dict: dict):
        super().__init__()
        if cfg.residual_doubled:
            raise ValueError("the plain baseline model has no doubled residual stream: benchmark a model without it")
        self.cfg = cfg
        # Same names as grokmath's, flattened: 'blocks.0.attn.W_Q' -> 'blocks_0_attn_W_Q'.
        self.params = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v.detach().clone())
                                        for k, v in state_dict.items() if v.is_floating_point()})

    def p(self, name):
        key = name.replace(".", "_")
        return self.params[key] if key in self.params else None

    def _ln(self, x, prefix):
        if self.cfg.normalization is None:
            return x
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + self.cfg.ln_eps).sqrt()
        return x * self.p(prefix + ".w") + self.p(prefix + ".b")

    def forward(self, tokens):
        cfg = self.cfg
        x = self.p("embed.W_E")[tokens]  # [batch, pos, d_model]
        if cfg.positional == "learned":
            x = x + self.p("pos_embed.W_pos")[: tokens.shape[1]]
        elif cfg.positional == "sinusoidal":
            raise NotImplementedError("the baseline covers learned positions only")
        n = tokens.shape[1]
        mask = torch.tril(torch.ones(n, n, device=tokens.device))
        for L in range(cfg.n_layers):
            b = f"blocks.{L}."
            h = self._ln(x, b + "ln1")
            q = torch.einsum("bpd,hde->bhpe", h, self.p(b + "attn.W_Q"))  # [batch, head, pos, d_head]
            k = torch.einsum("bpd,hde->bhpe", h, self.p(b + "attn.W_K"))
            v = torch.einsum("bpd,hde->bhpe", h, self.p(b + "attn.W_V"))
            if cfg.attn_bias:
                q = q + self.p(b + "attn.b_Q")[:, None]
                k = k + self.p(b + "attn.b_K")[:, None]
                v = v + self.p(b + "attn.b_V")[:, None]
            scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(cfg.d_head)
            scores = scores - 1e10 * (1 - mask)  # the seed's masking
            z = torch.einsum("bhqk,bhke->bhqe", F.softmax(scores, dim=-1), v)
            out = torch.einsum("bhqe,hed->bqd", z, self.p(b + "attn.W_O"))
            x = x + (out + self.p(b + "attn.b_O") if cfg.attn_bias else out)
            if not cfg.attn_only:
                h = self._ln(x, b + "ln2")
                pre = torch.einsum("bpd,dm->bpm", h, self.p(b + "mlp.W_in"))
                if cfg.mlp_bias:
                    pre = pre + self.p(b + "mlp.b_in")
                post = F.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre)
                out = torch.einsum("bpm,md->bpd", post, self.p(b + "mlp.W_out"))
                x = x + (out + self.p(b + "mlp.b_out") if cfg.mlp_bias else out)
        x = self._ln(x, "ln_final")
        logits = x @ self.p("unembed.W_U")
        return logits + self.p("unembed.b_U") if cfg.unembed_bias else logits

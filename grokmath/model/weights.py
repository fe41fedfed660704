"""The model's weights as TransformerLens offers them: stacked over layers, with its names.

`Transformer` inherits `TransformerWeights`, so `model.W_Q`, `model.b_O`, `model.QK`, ... work
as in TransformerLens's HookedTransformer. Layouts (the stacked ones are fresh tensors built on
each access, still attached to the parameters for gradients):

    W_E [d_vocab, d_model]      W_pos [n_ctx, d_model]      W_E_pos [d_vocab + n_ctx, d_model]
    W_Q, W_K, W_V [n_layers, n_heads, d_model, d_head]      b_Q, b_K, b_V [n_layers, n_heads, d_head]
    W_O [n_layers, n_heads, d_head, d_model]                b_O [n_layers, d_model]
    W_in [n_layers, d_model, d_mlp]    b_in [n_layers, d_mlp]
    W_out [n_layers, d_mlp, d_model]   b_out [n_layers, d_model]
    W_U [d_model, d_vocab_out]         b_U [d_vocab_out]
    QK = W_Q @ W_K^T, OV = W_V @ W_O: FactoredMatrix [n_layers, n_heads, d_model, d_model]

A vector multiplies on the left (x @ W). TransformerLens's models always have every bias; a
grokmath model built without one (attn_bias=False, mlp_bias=False, unembed_bias=False) shows
zeros of the right shape, which is what it computes with. Attention-only models have no W_in,
W_out, b_in, b_out; a model with positional='none' has no W_pos.
"""
from __future__ import annotations

import torch

from .factored_matrix import FactoredMatrix


class TransformerWeights:
    """Mixin for the Transformer: weight views, accumulated_bias, tokens_to_residual_directions."""

    # ---- embeddings and unembedding ----

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:
        if self.cfg.positional == "none":
            raise ValueError("this model has no positional embedding (positional='none'), so no W_pos")
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> torch.Tensor:
        """W_E and W_pos stacked: one basis for every token and position input."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:
        return self._bias_or_zeros(self.unembed, "b_U", (self.cfg.d_vocab_out,))

    # ---- stacked over layers ----

    def _stack(self, module: str, name: str) -> torch.Tensor:
        if module == "mlp" and self.cfg.attn_only:
            raise ValueError(f"this model is attention-only: it has no MLP weight {name}")
        return torch.stack([getattr(getattr(block, module), name) for block in self.blocks])

    def _bias_or_zeros(self, module, name: str, shape: tuple) -> torch.Tensor:
        bias = getattr(module, name, None)
        return bias if bias is not None else self.W_U.new_zeros(shape)

    def _stack_bias(self, module: str, name: str, shape: tuple) -> torch.Tensor:
        if module == "mlp" and self.cfg.attn_only:
            raise ValueError(f"this model is attention-only: it has no MLP bias {name}")
        return torch.stack([self._bias_or_zeros(getattr(block, module), name, shape) for block in self.blocks])

    W_Q = property(lambda self: self._stack("attn", "W_Q"))
    W_K = property(lambda self: self._stack("attn", "W_K"))
    W_V = property(lambda self: self._stack("attn", "W_V"))
    W_O = property(lambda self: self._stack("attn", "W_O"))
    W_in = property(lambda self: self._stack("mlp", "W_in"))
    W_out = property(lambda self: self._stack("mlp", "W_out"))
    b_Q = property(lambda self: self._stack_bias("attn", "b_Q", (self.cfg.n_heads, self.cfg.d_head)))
    b_K = property(lambda self: self._stack_bias("attn", "b_K", (self.cfg.n_heads, self.cfg.d_head)))
    b_V = property(lambda self: self._stack_bias("attn", "b_V", (self.cfg.n_heads, self.cfg.d_head)))
    b_O = property(lambda self: self._stack_bias("attn", "b_O", (self.cfg.d_model,)))
    b_in = property(lambda self: self._stack_bias("mlp", "b_in", (self.cfg.d_mlp,)))
    b_out = property(lambda self: self._stack_bias("mlp", "b_out", (self.cfg.d_model,)))

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q @ W_K^T per head [n_layers, n_heads, d_model (query side), d_model (key side)]; no
        1/sqrt(d_head) and no biases, as in TransformerLens."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """W_V @ W_O per head [n_layers, n_heads, d_model (source), d_model (written)]."""
        return FactoredMatrix(self.W_V, self.W_O)

    # ---- helpers ----

    def all_head_labels(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """The b_O (and b_out) of every layer below `layer` summed [d_model]; with mlp_input also
        `layer`'s own b_O. layer runs 0..n_layers (n_layers: all of them)."""
        n = self.cfg.n_layers
        if self.cfg.residual_doubled:
            raise ValueError("accumulated_bias: this model doubles its residual stream in every block "
                             "(residual_doubled=True), so the biases do not simply add up along it")
        if not 0 <= layer <= n:
            raise ValueError(f"layer={layer}: use 0..{n}")
        if mlp_input and layer == n:
            raise ValueError("mlp_input=True needs a layer below n_layers: no attention bias lies past the last")
        total = self.W_U.new_zeros(self.cfg.d_model)
        for block in self.blocks[:layer]:
            total = total + self._bias_or_zeros(block.attn, "b_O", (self.cfg.d_model,))
            if include_mlp_biases and not self.cfg.attn_only:
                total = total + self._bias_or_zeros(block.mlp, "b_out", (self.cfg.d_model,))
        if mlp_input:
            total = total + self._bias_or_zeros(self.blocks[layer].attn, "b_O", (self.cfg.d_model,))
        return total

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """The unembedding column of each output token: an int or a one-element tensor -> [d_model];
        a tensor or list of tokens [...] -> [..., d_model]. (With a final LayerNorm the logit is not
        just this dot product: see ActivationCache.apply_ln_to_stack.)"""
        if isinstance(tokens, str):
            raise ValueError("grokmath models have no tokenizer: pass output token ids (an int, a list or a tensor)")
        tokens = torch.as_tensor(tokens)
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        n_out = self.cfg.d_vocab_out
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= n_out):
            raise ValueError(f"token ids must lie in 0..{n_out - 1} (d_vocab_out={n_out}), "
                             f"got {int(tokens.min())}..{int(tokens.max())}")
        if tokens.numel() == 1:
            return self.W_U[:, int(tokens)]  # [d_model]
        return self.W_U[:, tokens.to(self.W_U.device)].movedim(0, -1)  # [..., d_model]

    def to_single_token(self, string: str):
        raise ValueError("grokmath models have no tokenizer: use the task's token ids (task.token_names lists them)")

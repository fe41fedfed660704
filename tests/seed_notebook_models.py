"""The seed notebooks' own model classes, re-typed from /work/shared/seeds for the interop tests.

An independent truth for `grokmath.interop.state_dicts.load_seed_state_dict`: the same parameter names,
shapes, layouts and forward arithmetic as the notebooks (einsum strings included), sharing no code
with grokmath. Three models:
  GrokkingTransformer  the 'non-modular addition grokking tasks' notebook's Transformer: W_O
                       [n_heads, d_model, d_head], hook_result, optional attn_only / d_vocab_out /
                       use_pos (its addition and skip-trigram models)
  AnalysisTransformer  the 'addition interpretability' notebook's Transformer: flat W_O
                       [d_model, n_heads * d_head], W_U over the whole input vocabulary
  AttnOnlyTransformer  the grokking notebook's induction model: `attn_blocks`, flat W_O, a mask
                       Parameter, learned ('orig') or 'sine' positions, and the doubled residual
                       (its block returns x + attn(x), the model adds x again)
LayerNorm is left out because every notebook comments it out. Hook points are identities that
record their input in `model.cache` under the notebook's hook name, for checking what each holds.
"""
import einops
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class HookPoint(nn.Module):
    def __init__(self, store):
        super().__init__()
        self.store = store  # [dict] shared with the model, a list so it is no submodule
        self.name = None

    def forward(self, x):
        self.store[0][self.name] = x.detach().clone()
        return x


class Embed(nn.Module):
    def __init__(self, d_vocab, d_model):
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(d_model, d_vocab) / np.sqrt(d_model))

    def forward(self, x):
        return torch.einsum('dbp -> bpd', self.W_E[:, x])


class Unembed(nn.Module):
    def __init__(self, d_vocab, d_model):
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab) / np.sqrt(d_vocab))

    def forward(self, x):
        return x @ self.W_U


class PosEmbed(nn.Module):
    def __init__(self, max_ctx, d_model):
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(max_ctx, d_model) / np.sqrt(d_model))

    def forward(self, x):
        return x + self.W_pos[:x.shape[-2]]


class PosEmbedSine(nn.Module):
    def __init__(self, max_ctx, d_model):
        super().__init__()
        self.sinusoidal_pos_embeds = nn.Parameter(torch.zeros((max_ctx, d_model)), requires_grad=False)
        with torch.no_grad():
            self.sinusoidal_pos_embeds[:, ::2] = torch.cos(
                torch.arange(max_ctx)[:, None] / 10000 ** (torch.arange(d_model // 2) / d_model))
            self.sinusoidal_pos_embeds[:, 1::2] = torch.sin(
                torch.arange(max_ctx)[:, None] / 10000 ** (torch.arange(d_model // 2) / d_model))
            self.sinusoidal_pos_embeds /= np.sqrt(d_model)

    def forward(self, x):
        return x + self.sinusoidal_pos_embeds[:x.shape[-2]]


class Attention(nn.Module):
    """flat_W_O=False: the grokking notebook's W_O [heads, d_model, d_head] and hook_result;
    True: the analysis notebook's and the induction model's W_O [d_model, heads * d_head]."""

    def __init__(self, d_model, num_heads, d_head, n_ctx, store, flat_W_O, mask_as_parameter=False):
        super().__init__()
        self.W_K = nn.Parameter(torch.randn(num_heads, d_head, d_model) / np.sqrt(d_model))
        self.W_Q = nn.Parameter(torch.randn(num_heads, d_head, d_model) / np.sqrt(d_model))
        self.W_V = nn.Parameter(torch.randn(num_heads, d_head, d_model) / np.sqrt(d_model))
        if flat_W_O:
            self.W_O = nn.Parameter(torch.randn(d_model, d_head * num_heads) / np.sqrt(d_model))
        else:
            self.W_O = nn.Parameter(torch.randn(num_heads, d_model, d_head) / np.sqrt(d_model))
        if mask_as_parameter:  # the induction model
            self.mask = nn.Parameter(torch.tril(torch.ones((n_ctx, n_ctx))), requires_grad=False)
        else:
            self.register_buffer('mask', torch.tril(torch.ones((n_ctx, n_ctx))))
        self.d_head = d_head
        self.flat_W_O = flat_W_O
        for name in ('k', 'q', 'v', 'z', 'attn', 'attn_pre', 'result'):
            setattr(self, f'hook_{name}', HookPoint(store))

    def forward(self, x):
        k = self.hook_k(torch.einsum('ihd,bpd->biph', self.W_K, x))
        q = self.hook_q(torch.einsum('ihd,bpd->biph', self.W_Q, x))
        v = self.hook_v(torch.einsum('ihd,bpd->biph', self.W_V, x))
        attn_scores_pre = torch.einsum('biph,biqh->biqp', k, q)
        attn_scores_masked = torch.tril(attn_scores_pre) - 1e10 * (1 - self.mask[:x.shape[-2], :x.shape[-2]])
        attn_matrix = self.hook_attn(F.softmax(self.hook_attn_pre(attn_scores_masked / np.sqrt(self.d_head)), dim=-1))
        z = self.hook_z(torch.einsum('biph,biqp->biqh', v, attn_matrix))
        if self.flat_W_O:
            z_flat = einops.rearrange(z, 'b i q h -> b q (i h)')
            return torch.einsum('df,bqf->bqd', self.W_O, z_flat)
        result = self.hook_result(torch.einsum('idh,biqh->biqd', self.W_O, z))
        return einops.reduce(result, 'batch index position model->batch position model', 'sum')


class MLP(nn.Module):
    def __init__(self, d_model, d_mlp, act_type, store):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_mlp, d_model) / np.sqrt(d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_model, d_mlp) / np.sqrt(d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.act_type = act_type
        self.hook_pre = HookPoint(store)
        self.hook_post = HookPoint(store)
        assert act_type in ['ReLU', 'GeLU']

    def forward(self, x):
        x = self.hook_pre(torch.einsum('md,bpd->bpm', self.W_in, x) + self.b_in)
        x = F.relu(x) if self.act_type == 'ReLU' else F.gelu(x)
        x = self.hook_post(x)
        return torch.einsum('dm,bpm->bpd', self.W_out, x) + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, d_model, d_mlp, d_head, num_heads, n_ctx, act_type, attn_only, store, flat_W_O):
        super().__init__()
        self.attn = Attention(d_model, num_heads, d_head, n_ctx, store, flat_W_O)
        self.hook_attn_out = HookPoint(store)
        self.hook_resid_pre = HookPoint(store)
        self.hook_resid_post = HookPoint(store)
        self.attn_only = attn_only
        if not attn_only:
            self.mlp = MLP(d_model, d_mlp, act_type, store)
            self.hook_mlp_out = HookPoint(store)
            self.hook_resid_mid = HookPoint(store)

    def forward(self, x):
        x = x + self.hook_attn_out(self.attn(self.hook_resid_pre(x)))
        if not self.attn_only:
            x = x + self.hook_mlp_out(self.mlp(self.hook_resid_mid(x)))
        return self.hook_resid_post(x)


class _Named(nn.Module):
    def name_hooks(self):
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name


class GrokkingTransformer(_Named):
    """The 'non-modular addition grokking tasks' notebook's Transformer (same arguments)."""

    def __init__(self, num_layers, d_vocab, d_model, d_mlp, d_head, num_heads, n_ctx, act_type,
                 attn_only=False, d_vocab_out=None, use_pos=True, flat_W_O=False):
        super().__init__()
        self.store = [{}]
        self.cache = self.store[0]
        self.embed = Embed(d_vocab, d_model)
        self.use_pos = use_pos
        if use_pos:
            self.pos_embed = PosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, d_mlp, d_head, num_heads, n_ctx, act_type,
                                                      attn_only, self.store, flat_W_O) for _ in range(num_layers)])
        self.unembed = Unembed(d_vocab if d_vocab_out is None else d_vocab_out, d_model)
        self.name_hooks()

    def forward(self, x):
        x = self.embed(x)
        if self.use_pos:
            x = self.pos_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


def AnalysisTransformer(num_layers, d_vocab, d_model, d_mlp, d_head, num_heads, n_ctx, act_type):
    """The 'addition interpretability' notebook's Transformer: the same blocks with a flat W_O,
    always an MLP and learned positions, W_U over all d_vocab tokens. (Its resid_mid hook sits on
    the block's output after attention rather than the MLP's input: the same tensor.)"""
    return GrokkingTransformer(num_layers, d_vocab, d_model, d_mlp, d_head, num_heads, n_ctx, act_type,
                               flat_W_O=True)


class AttnBlock(nn.Module):
    def __init__(self, d_model, d_head, num_heads, n_ctx, store):
        super().__init__()
        self.attn = Attention(d_model, num_heads, d_head, n_ctx, store, flat_W_O=True, mask_as_parameter=True)
        self.hook_attn_out = HookPoint(store)
        self.hook_resid_pre = HookPoint(store)
        self.hook_resid_post = HookPoint(store)

    def forward(self, x):
        return self.hook_resid_post(x + self.hook_attn_out(self.attn(self.hook_resid_pre(x))))


class AttnOnlyTransformer(_Named):
    """The induction model, from the notebook's model_config dict."""

    def __init__(self, model_config):
        super().__init__()
        c = model_config
        self.store = [{}]
        self.cache = self.store[0]
        self.embed = Embed(c['d_vocab'], c['d_model'])
        if c['pos_embed_type'] == 'sine':
            self.pos_embed = PosEmbedSine(c['n_ctx'], c['d_model'])
        elif c['pos_embed_type'] == 'orig':
            self.pos_embed = PosEmbed(c['n_ctx'], c['d_model'])
        self.attn_blocks = nn.ModuleList([AttnBlock(c['d_model'], c['d_head'], c['num_heads'], c['n_ctx'], self.store)
                                          for _ in range(c['num_layers'])])
        self.unembed = Unembed(c['d_vocab'], c['d_model'])
        self.name_hooks()

    def forward(self, x):
        x = self.embed(x)
        x = self.pos_embed(x)
        for attn_block in self.attn_blocks:
            x = x + attn_block(x)  # the doubled residual: attn_block already returns x + attn(x)
        return self.unembed(x)


def randomise(model, seed):
    """Every trainable parameter redrawn (the zero-initialised MLP biases too), from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
    return model

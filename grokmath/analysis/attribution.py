"""Direct logit attribution, the logit lens, and the QK / OV circuits of each head.

These are thin users of `ActivationCache` and `FactoredMatrix` (grokmath's TransformerLens-style
cache and factored matrices), so they give TransformerLens's numbers and labels.

Direct logit attribution splits the final residual stream with
`cache.get_full_resid_decomposition(expand_neurons=False)`: each head's output ('L0H1', z @ W_O),
each MLP layer's output ('0_mlp_out'), 'embed', 'pos_embed' and 'bias' (the attention layers'
b_O), and maps each part straight to the logit of the answer. Without a final LayerNorm the parts
sum exactly to logit - b_U. With one, LN(x) = (x - mean x) / scale * w + b: centring is linear, so
`apply_ln=True` centres each part and divides it by the final LN's *cached* scale of the whole
stream (frozen, as in TransformerLens); the parts are then dotted with w * W_U[:, answer], and the
constant b @ W_U + b_U goes to the 'bias' row. So the rows always sum to the logit; 'bias' is
there when the model has b_O, b_U or a final LN.

The logit lens is `cache.accumulated_resid(incl_mid=True, apply_ln=True)` (the final LayerNorm run
afresh on the stream after each stage) then W_U and b_U, scored against the answer. QK and OV
circuits come from `model.QK` / `model.OV` as factored matrices (`LowRank`, A @ B never formed
unless asked): QK = W_E W_Q W_K^T W_E^T (query token x key token, no 1/sqrt(d_head) scale, as
TransformerLens), OV = W_E W_V W_O W_U (source token x output logit). They describe the direct
path from the embeddings and ignore LayerNorm and biases.
"""
from __future__ import annotations

import pandas as pd
import torch

from ..model.activation_cache import ActivationCache
from ..model.factored_matrix import FactoredMatrix
from ..training.losses import masked_mean
from .common import answer_logits, model_device, score


def _cache(model, tokens: torch.Tensor, names: list[str]):
    """An ActivationCache of just `names` for `tokens` (no gradients)."""
    _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=names)
    return cache


# ---- direct logit attribution ------------------------------------------------------------------

def _decomposition_names(cfg) -> list[str]:
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "blocks.0.hook_resid_pre",
             f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    for layer in range(cfg.n_layers):  # head results come from z and W_O (cache.compute_head_results)
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"]
    return names


@torch.no_grad()
def direct_logit_attribution(model, batch, task, answers: torch.Tensor | None = None) -> tuple[torch.Tensor, list[str]]:
    """Each component's direct contribution to the answer logit at each answer position.

    Returns ([component, batch, n_pred], labels); `answers` [batch, n_pred] are the output tokens
    whose logits are split (default batch.targets). The rows sum to those logits (module doc).
    """
    cfg = model.cfg
    device = model_device(model)
    pred_pos = task.pred_pos.to(device)
    cache = _cache(model, batch.tokens, _decomposition_names(cfg))
    # centred and divided by the cached final-LN scale when the model has a final LayerNorm
    parts, labels = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True, pos_slice=pred_pos,
                                                       return_labels=True)  # [component, batch, n_pred, d_model]
    answers = (batch.targets if answers is None else answers).to(device)
    directions = model.tokens_to_residual_directions(answers)  # [batch, n_pred, d_model]
    constant = model.b_U[answers]  # [batch, n_pred]
    if cfg.normalization == "LN":  # the final LN's w and b, which TransformerLens leaves to fold_ln
        directions = directions * model.ln_final.w
        constant = constant + (model.ln_final.b @ model.W_U)[answers]
    contributions = torch.einsum("cbpd,bpd->cbp", parts, directions)  # [component, batch, n_pred]
    bias = labels.index("bias")
    if cfg.attn_bias or cfg.unembed_bias or cfg.normalization == "LN":
        contributions[bias] += constant
    else:  # nothing can reach the logit but the other rows
        contributions = torch.cat([contributions[:bias], contributions[bias + 1:]])
        labels = labels[:bias] + labels[bias + 1:]
    return contributions, labels


def attribution_table(contributions: torch.Tensor, labels: list[str], task, mask=None) -> pd.DataFrame:
    """Mean contribution over the batch: one row per component, a column per answer position and 'mean'."""
    mask = None if mask is None else mask[None].expand_as(contributions)
    per_pos = masked_mean(contributions.to(torch.float64), mask, dim=1)  # [component, n_pred]
    table = pd.DataFrame(per_pos.cpu().numpy(), index=labels, columns=task.pred_labels)
    table["mean"] = table[task.pred_labels].mean(axis=1)
    return table.rename_axis("component").reset_index()


def plot_attribution(table: pd.DataFrame, task, path, title: str = "direct logit attribution to the answer"):
    from .plots import save_heatmap
    return save_heatmap(table[task.pred_labels].to_numpy(), path, xlabels=task.pred_labels,
                        ylabels=table["component"].tolist(), xlabel="answer position", ylabel="component",
                        title=title, diverging=True)


# ---- the logit lens --------------------------------------------------------------------------

def _stage_label(label: str) -> str:
    """TransformerLens's '0_pre', '0_mid', 'final_post' -> this table's 'L0 pre', 'L0 mid', 'final'."""
    if label == "final_post":
        return "final"
    layer, _, stage = label.partition("_")
    return f"L{layer} {stage}"


def _lens_names(cfg) -> list[str]:
    names = ["ln_final.hook_scale", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    for layer in range(cfg.n_layers):
        names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid"]
    return names


@torch.no_grad()
def accumulated_residual(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The residual stream after each stage: ([stage, batch, pos, d_model], labels), stages
    'L0 pre', 'L0 mid', 'L1 pre', ..., 'final' (resid_post of the last layer);
    cache.accumulated_resid(incl_mid=True) with its labels renamed."""
    cache = _cache(model, tokens, _lens_names(model.cfg))
    stages, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    return stages, [_stage_label(label) for label in labels]


@torch.no_grad()
def unembed(model, resid: torch.Tensor) -> torch.Tensor:
    """Final LayerNorm (its scale recomputed from `resid`) and unembedding: [..., d_model] -> [..., vocab]."""
    return model.ln_final(resid) @ model.W_U + model.b_U


@torch.no_grad()
def logit_lens(model, batch, task) -> pd.DataFrame:
    """Loss, accuracy, per-position loss and mean correct-answer logit of each residual stage."""
    device = model_device(model)
    batch = batch.to(device)
    cache = _cache(model, batch.tokens, _lens_names(model.cfg))
    # the final LayerNorm run afresh on each stage, as TransformerLens's logit lens
    stages, labels = cache.accumulated_resid(incl_mid=True, apply_ln=True, return_labels=True)
    rows = []
    for stage, label in zip(stages, labels):
        logits = answer_logits(stage @ model.W_U + model.b_U, task)  # [batch, n_pred, vocab]
        s = score(logits, batch)
        answer_logit = logits.gather(-1, batch.targets[..., None])[..., 0].to(torch.float64)
        row = {"stage": _stage_label(label), "loss": s["loss"].item(), "acc": s["acc"].item(),
               "answer_logit": masked_mean(answer_logit, batch.mask).item()}
        row.update({f"loss_{name}": v for name, v in zip(task.pred_labels, s["loss_pos"].tolist())})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_logit_lens(table: pd.DataFrame, task, path, title: str = "logit lens: loss of the answer"):
    from .plots import save_heatmap
    columns = [f"loss_{name}" for name in task.pred_labels]
    return save_heatmap(table[columns].to_numpy(), path, xlabels=task.pred_labels, ylabels=table["stage"].tolist(),
                        xlabel="answer position", ylabel="residual stream after", title=title)


# ---- QK and OV circuits --------------------------------------------------------------------------

class LowRank(FactoredMatrix):
    """A FactoredMatrix A @ B ([m, r] @ [r, n]) under this module's older names: `full()` is `AB`,
    `rank_bound` is `mdim`; `svd()` gives U [m, k], S [k], V [n, k] with A @ B = U diag(S) V^T."""

    def full(self) -> torch.Tensor:
        return self.AB

    @property
    def rank_bound(self) -> int:
        return self.mdim


def _source(model, side: str) -> torch.Tensor:
    if side == "embed":
        return model.embed.W_E  # [d_vocab, d_model]
    if side == "pos":
        if model.cfg.positional == "none":
            raise ValueError("this model has no positional embedding: use side='embed'")
        return model.pos_embed.W_pos  # [n_ctx, d_model]
    raise ValueError(f"side {side!r} is unknown: use 'embed' or 'pos'")


@torch.no_grad()
def qk_circuit(model, layer: int, head: int, side: str = "embed") -> LowRank:
    """W_E W_Q W_K^T W_E^T of one head [query token, key token] (side='pos': W_pos for W_E):
    W @ model.QK[layer, head] @ W^T."""
    W = _source(model, side)
    circuit = W @ model.QK[layer, head] @ W.T
    return LowRank(circuit.A, circuit.B)


@torch.no_grad()
def ov_circuit(model, layer: int, head: int) -> LowRank:
    """W_E W_V W_O W_U of one head [source token, output logit]: W_E @ model.OV[layer, head] @ W_U."""
    circuit = model.W_E @ model.OV[layer, head] @ model.W_U
    return LowRank(circuit.A, circuit.B)


def plot_circuits(model, task, path, kind: str = "qk", tokens: list[int] | None = None):
    """Every head's QK ('qk', 'pos_qk') or OV ('ov') circuit as a grid of layers x heads, token names on the axes.

    `tokens` limits the rows (and QK columns) to those input tokens (default: all of them).
    """
    from .plots import save_heatmap_grid
    cfg = model.cfg
    if kind not in ("qk", "pos_qk", "ov"):
        raise ValueError(f"circuit kind {kind!r} is unknown: use 'qk', 'pos_qk' or 'ov'")
    if kind == "pos_qk":
        names = [str(p) for p in range(cfg.n_ctx)]
        rows = list(range(cfg.n_ctx))
    else:
        names = list(task.token_names)
        rows = list(range(cfg.d_vocab)) if tokens is None else list(tokens)
    out_names = [str(t) for t in range(cfg.d_vocab_out)] if kind == "ov" else None
    if kind == "ov" and task.d_vocab_out == cfg.d_vocab_out and cfg.d_vocab_out <= len(names):
        out_names = names[:cfg.d_vocab_out]
    grid, titles = [], []
    for layer in range(cfg.n_layers):
        grid.append([])
        titles.append([])
        for head in range(cfg.n_heads):
            if kind == "ov":
                grid[-1].append(ov_circuit(model, layer, head).full()[rows])
            else:
                full = qk_circuit(model, layer, head, "pos" if kind == "pos_qk" else "embed").full()
                grid[-1].append(full[rows][:, rows])
            titles[-1].append(f"L{layer}H{head} {kind.upper().replace('_', ' ')}")
    row_names = [names[r] for r in rows]
    xlabel, ylabel = ("output", "source token") if kind == "ov" else ("key", "query")
    return save_heatmap_grid(grid, path, titles=titles, xlabels=out_names if kind == "ov" else row_names,
                             ylabels=row_names, xlabel=xlabel, ylabel=ylabel, diverging=True)

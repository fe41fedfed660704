"""What a trained SAE does to the model and what its features fire on, with their plots.

`spliced_losses` is the check researchers trust most: the task loss with the SAE's reconstruction
patched in place of the activation (at the SAE's positions), against the clean loss and the loss
with the activation zeroed; `loss_recovered` = (zero - spliced) / (zero - clean), 1 = perfect.

`feature_stats` says, per feature, how often it fires (> 0) overall, at each answer position
(A5 .. A0, sign) and in each case class: the task's `case_masks` (BaseAdd / UseCarry1 / UseSum9,
or one per op) and its `question_classes` (S0.., or 'add S0', 'sub M1', 'sub N1', 'mul').
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..training.losses import score_sums
from ..training.plots import save_figure  # sets matplotlib's Agg backend before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402,I001
from .sae_source import ModelSource

# ---- the spliced-in check -------------------------------------------------------------------

@torch.no_grad()
def spliced_losses(source: ModelSource, sae) -> dict:
    """Mean task loss (and accuracy) clean, with the SAE reconstruction spliced in, and zero-ablated."""
    model, task, pos = source.model, source.task, source.positions.to(source.device)
    pred_pos = task.pred_pos.to(source.device)
    sums = {name: [0.0, 0.0, 0.0] for name in ("clean", "sae", "zero")}  # nll, right, count

    def patch(kind):
        def fn(tensor, hook):
            out = tensor.clone()
            selected = out[:, pos]  # [batch, n_pos, ...]
            if kind == "zero":
                out[:, pos] = 0
            else:
                _, recon = sae(selected.reshape(-1, sae.d_in).float())
                out[:, pos] = recon.reshape(selected.shape).to(out.dtype)
            return out
        return fn

    for batch in source.questions():
        for kind in sums:
            hooks = [] if kind == "clean" else [(source.hook, patch(kind))]
            forward = lambda tokens: model.run_with_hooks(tokens, fwd_hooks=hooks)[:, pred_pos]  # noqa: E731
            parts = [part.sum() for part in score_sums(forward, batch, chunk=len(batch))]  # nll, right, count
            sums[kind] = [a + b.item() for a, b in zip(sums[kind], parts)]
    out = {}
    for kind, (nll, right, count) in sums.items():
        out[f"{kind}_loss"], out[f"{kind}_acc"] = nll / count, right / count
    gap = out["zero_loss"] - out["clean_loss"]
    out["loss_recovered"] = (out["zero_loss"] - out["sae_loss"]) / gap if gap > 0 else math.nan
    return {"clean_loss": out["clean_loss"], "sae_loss": out["sae_loss"], "zero_ablation_loss": out["zero_loss"],
            "loss_recovered": out["loss_recovered"], "clean_acc": out["clean_acc"], "sae_acc": out["sae_acc"],
            "zero_ablation_acc": out["zero_acc"]}


# ---- what each feature fires on -------------------------------------------------------------

@torch.no_grad()
def feature_stats(source: ModelSource, sae) -> pd.DataFrame:
    """Per feature: `freq` (fraction of rows where it fires), `mean_act`, `freq_<answer label>` (at that
    answer's scored position) and `freq_case_<name>` (over the scored positions in that case)."""
    task = source.task
    where = {int(p): i for i, p in enumerate(source.positions.tolist())}
    answer = [(label, where.get(int(p))) for label, p in zip(task.pred_labels, task.pred_pos.tolist())]
    full = all(i is not None for _, i in answer)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    act_sum = torch.zeros(sae.d_sae, dtype=torch.float64)
    by_label = {label: torch.zeros(sae.d_sae, dtype=torch.float64) for label, _ in answer}
    by_case, case_count, n_rows, n_questions = {}, {}, 0, 0
    for batch, acts in source.pairs():
        features = sae.encode(acts.reshape(-1, sae.d_in)).reshape(*acts.shape[:2], -1).cpu().double()
        on = (features > 0).double()  # [batch, n_pos, d_sae]
        fired += on.sum((0, 1))
        act_sum += features.sum((0, 1))
        n_rows += on.shape[0] * on.shape[1]
        n_questions += on.shape[0]
        if not full:
            continue  # the SAE does not read every answer position: no per-answer statistics
        for label, i in answer:
            by_label[label] += on[:, i].sum(0)
        on_answer = on[:, [i for _, i in answer]]  # [batch, n_pred, d_sae]
        cases = {k: v.cpu() for k, v in task.case_masks(batch).items()}
        classes = task.question_classes(batch.meta)  # the task's names of whole-question classes
        cases.update({k: v.cpu()[:, None].expand(-1, len(answer)) for k, v in classes.items()})
        for name, mask in cases.items():
            weight = mask.double()  # [batch, n_pred]
            by_case[name] = by_case.get(name, 0) + torch.einsum("bp,bpf->f", weight, on_answer)
            case_count[name] = case_count.get(name, 0) + weight.sum().item()
    table = {"feature": np.arange(sae.d_sae), "freq": (fired / n_rows).numpy(), "mean_act": (act_sum / n_rows).numpy()}
    if full:
        table.update({f"freq_{label}": (v / n_questions).numpy() for label, v in by_label.items()})
    for name in by_case:  # the task's cases, then its question classes, in the task's order
        if case_count[name]:
            table[f"freq_case_{name}"] = (by_case[name] / case_count[name]).numpy()
    return pd.DataFrame(table)


# ---- plots --------------------------------------------------------------------------------------

def plot_feature_frequency(stats: pd.DataFrame, path, title="SAE feature activation frequency"):
    """Each feature's firing frequency, most frequent first, on a log axis."""
    freq = np.sort(stats["freq"].to_numpy())[::-1]
    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    ax.bar(np.arange(len(freq)), np.where(freq > 0, freq, np.nan), width=1.0, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel(f"Feature (sorted; {int((freq > 0).sum())} of {len(freq)} ever fire)")
    ax.set_ylabel("Fraction of rows where it fires (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_feature_heatmap(stats: pd.DataFrame, prefix: str, path, title: str, max_features: int = 64):
    """Firing frequency of the most frequent features (rows) for each `prefix*` column."""
    columns = [c for c in stats.columns if c.startswith(prefix)]
    if prefix == "freq_":  # the answer-digit columns, not the case ones
        columns = [c for c in columns if not c.startswith("freq_case_")]
    if not columns:
        return None
    shown = stats[stats["freq"] > 0].sort_values("freq", ascending=False).head(max_features)
    values = shown[columns].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(columns), 1.5 + 0.22 * max(len(shown), 1)), layout="constrained")
    image = ax.imshow(values if len(shown) else np.zeros((1, len(columns))), aspect="auto", cmap="viridis",
                      vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(columns)), [c[len(prefix):] for c in columns], rotation=90 if len(columns) > 12 else 0)
    ax.set_yticks(range(len(shown)), [f"F{f}" for f in shown["feature"]], fontsize=7)
    ax.set_ylabel("Feature (most frequent first)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="Fraction firing")
    return save_figure(fig, path)

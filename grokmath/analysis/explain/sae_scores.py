"""SAE features scored against the ground truth: which feature fires exactly when a variable holds.

Only `sae.encode(acts)` is used ([rows, d_in] -> features [rows, d_sae]), so any SAE class with
that method works (ReLU + L1 today; TopK or JumpReLU beside it). A feature is 'on' for a question
when it is above `threshold`; for every binary condition 'variable == value' (every class of every
ground-truth variable) the feature's precision (of the questions it is on, the share where the
condition holds) and recall (of the questions where it holds, the share it is on) are computed,
and each feature keeps its best condition by F1.

    acts = cache['blocks.0.hook_resid_post'][:, position]   # [batch, d_model]
    table = score_features(sae, acts, variables(task, batch))
"""
from __future__ import annotations

import pandas as pd
import torch

from .truth import Variable


@torch.no_grad()
def score_features(sae, acts: torch.Tensor, truth: dict[str, Variable], threshold: float = 0.0,
                   min_support: int = 5) -> pd.DataFrame:
    """One row per live feature: its best condition, precision, recall, F1 and how often it is on."""
    features = sae.encode(acts)  # [rows, d_sae]
    on = (features > threshold).cpu()  # [rows, d_sae]
    n_on = on.sum(0)  # [d_sae]
    best = {}
    for name, var in truth.items():
        for value in range(var.n_classes):
            cond = (var.valid & (var.values == value)).cpu()  # [rows]
            support = int(cond.sum())
            if support < min_support or support == int(var.valid.sum()):
                continue  # too rare to score, or true on every question
            both = (on & cond[:, None]).sum(0).double()  # [d_sae]
            precision = both / n_on.clamp_min(1)
            recall = both / support
            f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
            for k in torch.nonzero(n_on > 0)[:, 0].tolist():
                if k not in best or f1[k] > best[k]["f1"]:
                    best[k] = dict(feature=k, variable=name, value=value, precision=precision[k].item(),
                                   recall=recall[k].item(), f1=f1[k].item(), on_frac=n_on[k].item() / len(on))
    table = pd.DataFrame(sorted(best.values(), key=lambda r: -r["f1"]))
    if table.empty:
        table = pd.DataFrame(columns=["feature", "variable", "value", "precision", "recall", "f1", "on_frac"])
    table.attrs["dead"] = int((n_on == 0).sum())
    return table


@torch.no_grad()
def score_sae_at_positions(sae, model, hook: str, batch, truth: dict[str, Variable], positions,
                           names: list[str], top: int = 3) -> pd.DataFrame:
    """score_features at each token position the SAE reads: the SAE's input is `hook`'s activation at
    that position of the questions in `batch` ([batch, pos, d_in] -> [batch, d_in] per position).
    Keeps, per position, each variable's `top` features by F1; columns: position, position_name,
    feature, variable, value, precision, recall, f1, on_frac."""
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(batch.tokens.to(device), names_filter=[hook])
    acts = cache[hook]  # [batch, pos, d_in]
    frames = []
    for pos in positions:
        table = score_features(sae.to(acts.device), acts[:, int(pos)], truth)
        if table.empty:
            continue
        table = table.sort_values("f1", ascending=False).groupby("variable", sort=False).head(top)
        frames.append(table.assign(position=int(pos), position_name=names[int(pos)]))
    columns = ["position", "position_name", "feature", "variable", "value", "precision", "recall", "f1", "on_frac"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames)[columns].sort_values(["f1", "position"], ascending=[False, True]).reset_index(drop=True)

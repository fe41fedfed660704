"""Linear probes: where each ground-truth variable becomes linearly readable in the residual stream.

For every residual stage (`L0 pre`, `L0 mid`, ..., `final`: the stream before each block, between
its attention and MLP, and at the end) and every position, one ridge-regression probe per variable
is fitted on a training question set and scored on a separate one: the probe predicts the class
whose one-hot column it scores highest. All variables that share a validity mask are fitted in one
closed-form solve per (stage, position), so every probe costs one [d_model, d_model] solve in
total. The baseline is the majority class of the training set, scored on the test set. A
variable of answer digit Ak is probed up to the position that predicts Ak: later positions hold
the answer token itself (teacher forcing), so reading it there says nothing.

    table = probe_table(model, task, train_batch, test_batch)   # variable, layer, position, accuracy, baseline
"""
from __future__ import annotations

import pandas as pd
import torch

from ..attribution import accumulated_residual
from .truth import Variable, position_names, variables


def fit_ridge(X: torch.Tensor, Y: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Ridge weights [..., d + 1, k] for X [..., n, d] -> Y [..., n, k], with a bias column and a
    penalty `ridge` times the mean feature variance (the bias is not penalised)."""
    ones = torch.ones(*X.shape[:-1], 1, dtype=X.dtype)
    Xb = torch.cat([X, ones], dim=-1)  # [..., n, d+1]
    gram = Xb.transpose(-1, -2) @ Xb  # [..., d+1, d+1]
    scale = X.var(dim=-2).mean(-1).clamp_min(1e-12) * X.shape[-2]  # [...]
    eye = torch.eye(Xb.shape[-1], dtype=X.dtype)
    eye[-1, -1] = 0
    penalty = ridge * scale[..., None, None] * eye
    return torch.linalg.solve(gram + penalty, Xb.transpose(-1, -2) @ Y)


def _predict(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(*X.shape[:-1], 1, dtype=X.dtype)
    return torch.cat([X, ones], dim=-1) @ W


def probe_table(model, task, train, test, ridge: float = 1e-2, stages: list[str] | None = None) -> pd.DataFrame:
    """Probe accuracy and majority baseline for every variable at every (stage, position)."""
    truth_train, truth_test = variables(task, train), variables(task, test)
    if not truth_train:
        raise ValueError(f"the {task.name} task has no ground-truth variables to probe")
    acts_train, labels = accumulated_residual(model, train.tokens)  # [stage, batch, pos, d_model]
    acts_test, _ = accumulated_residual(model, test.tokens)
    keep = [i for i, label in enumerate(labels) if stages is None or label in stages]
    acts_train = acts_train[keep].double().cpu().transpose(1, 2)  # [stage, pos, batch, d_model]
    acts_test = acts_test[keep].double().cpu().transpose(1, 2)
    labels = [labels[i] for i in keep]
    names = position_names(task)
    groups: dict[bytes, list[str]] = {}  # variables sharing a validity mask are solved together
    for name, var in truth_train.items():
        if var.n_classes >= 2:
            key = var.valid.numpy().tobytes() + truth_test[name].valid.numpy().tobytes()
            groups.setdefault(key, []).append(name)
    rows = []
    for members in groups.values():
        v_train, v_test = truth_train[members[0]].valid, truth_test[members[0]].valid
        if v_train.sum() < 2 or v_test.sum() < 1:
            continue
        Y = torch.cat([_one_hot(truth_train[m]) for m in members], dim=1)[v_train]  # [n, sum classes]
        W = fit_ridge(acts_train[:, :, v_train], Y, ridge)  # [stage, pos, d+1, sum classes]
        scores = _predict(acts_test[:, :, v_test], W)  # [stage, pos, n_test, sum classes]
        start = 0
        for m in members:
            k = truth_train[m].n_classes
            guess = scores[..., start:start + k].argmax(-1)  # [stage, pos, n_test]
            start += k
            truth = truth_test[m].values[v_test]
            accuracy = (guess == truth).double().mean(-1)  # [stage, pos]
            counts = torch.bincount(truth_train[m].values[v_train], minlength=k)
            if (counts > 0).sum() < 2:
                continue  # one class only (e.g. no cascade through the units): nothing to probe
            baseline = (truth == counts.argmax()).double().mean().item()
            for s, stage in enumerate(labels):
                for p in range(min(acts_test.shape[1], last_position(task, m) + 1)):
                    rows.append(dict(variable=m, layer=stage, position=p, position_name=names[p],
                                     accuracy=accuracy[s, p].item(), baseline=baseline))
    return pd.DataFrame(rows)


def last_position(task, variable: str) -> int:
    """The position that predicts the variable's answer digit (the sign for 'sign'): later positions
    hold that answer token itself, so probes stop there."""
    label = variable.split(".")[-1].split(" ")[-1]
    labels = list(task.pred_labels)
    return int(task.pred_pos[labels.index(label)]) if label in labels else task.n_ctx - 1


def _one_hot(var: Variable) -> torch.Tensor:
    return torch.nn.functional.one_hot(var.values, var.n_classes).double()  # [batch, classes]


def best_probes(table: pd.DataFrame) -> pd.DataFrame:
    """Per variable: the first (stage, position) reaching its best accuracy, with the gain over baseline."""
    best = table.loc[table.groupby("variable")["accuracy"].idxmax()].copy()
    best["gain"] = best["accuracy"] - best["baseline"]
    return best.sort_values("variable").reset_index(drop=True)

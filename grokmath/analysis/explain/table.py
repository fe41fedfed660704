"""The node table: every node tried, whether it is useful, what fails without it, and why.

`node_table(model, task, batch, ...)` ablates (mean by default) every head and whole MLP at every
position that can matter, then every neuron at the positions whose MLP is useful, and returns a
DataFrame, one row per node: node, position, layer, head, neuron, useful, fail_pct (of the
questions right before, the % wrong after), impact (the answer digits that change in at least 10%
of the failures, high to low, e.g. A3A2), attends (for heads: the positions given at least
`attend_threshold` of the attention on average, e.g. D2 D'2), tags (the paper's role read from
what the head attends to, the ground-truth variable that best predicts its failures, and the
question classes that fail most), loss_change (true) and attribution (the attribution-patching
estimate of loss_change). The failures per node are returned too, for claims.

Attribution skips hopeless nodes where ablation is dear (outside the last layer, where each
ablation runs the later blocks): a head or MLP there whose |attribution| is below
`attribution_floor` is not ablated but still listed (ablated False, fail_pct 0, loss_change NaN),
and neurons there are ablated only for the `max_neurons` per position with the largest
|attribution|, those above the floor. Last-layer nodes are cheap and always ablated, so a
1-layer model's table does not depend on the floor. One forward and one backward give the
attribution of every node (attribution_patch.attribution_grids). The floor is off by default: it is
an absolute loss change, and the loss of an accurate model is saturated (~1e-9 on the 6-digit
addition model), so every first-order estimate there is far below any fixed floor while ablating a
first-layer head fails most questions: a floor would skip the nodes that matter. Set it for large,
less accurate models, and read the `ablated` column.
"""
from __future__ import annotations

import pandas as pd
import torch

from ..attention import attention_patterns
from ..ablation import reference_activations
from .attribution_patch import attribution_grids, node_scores, spearman
from .claims import explain_failures, failures
from .nodes import KINDS, PosNode, ablate_nodes, head_nodes, mlp_nodes, neuron_nodes
from .truth import position_names, predicts, variables

# below this |estimated loss change| a node outside the last layer is not ablated (see the module doc: off,
# since an accurate model's saturated loss puts every estimate below any fixed floor)
ATTRIBUTION_FLOOR = 0.0


def node_table(model, task, batch, classes: list[str] | None = None, kind: str = "mean", reference=None,
               generator=None, useful_pct: float = 0.5, attend_threshold: float = 0.1,
               max_neurons: int = 64, neurons: bool = True, progress=None,
               attribution_floor: float = ATTRIBUTION_FLOOR):
    """(table DataFrame, failed [node, batch] bool, info dict) for `batch` (see the module doc)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    tokens, targets = batch.tokens.to(device), batch.targets.to(device)
    last = cfg.n_layers - 1
    scored = sorted(predicts(task))
    # a last-layer node changes only its own position's logits: only scored positions can matter
    positions = {layer: (scored if layer == last else list(range(scored[-1] + 1))) for layer in range(cfg.n_layers)}
    first = [n for n in head_nodes(cfg, range(task.n_ctx)) + mlp_nodes(cfg, range(task.n_ctx))
             if n.position in positions[n.layer]]
    with torch.no_grad():  # the one clean forward of the batch
        clean_logits = model(tokens)[:, task.pred_pos.to(device)]  # [batch, n_pred, vocab]
    clean = clean_logits.argmax(-1)  # [batch, n_pred]
    clean_loss = torch.nn.functional.cross_entropy(clean_logits.transpose(1, 2), targets).item()
    right = (clean == targets).all(-1)
    if not right.any():
        raise ValueError("the model answers none of the questions right: nothing can fail; train it longer")
    gen = None if generator is None else torch.Generator(device=device).manual_seed(
        int(torch.randint(0, 2**31, (1,), generator=generator)))
    # the ablation values of every hook (one reference forward), and every node's attribution
    hooks = [PosNode(0, layer, k, None if k == "mlp" else 0) for layer in range(cfg.n_layers)
             for k in (("head",) if cfg.attn_only else KINDS)]
    values = reference_activations(model, [n.ablation_node() for n in hooks], kind, tokens, reference, gen)
    grids = attribution_grids(model, task, tokens, values)
    attr_first = node_scores(grids, first)
    tried = [i for i, n in enumerate(first) if n.layer == last or abs(attr_first[i]) >= attribution_floor]
    answers = clean.expand(len(first), -1, -1).clone()  # a node not ablated changes nothing it is charged with
    losses = torch.full((len(first),), float("nan"), dtype=torch.float64)
    answers[tried], losses[tried] = ablate_nodes(model, task, tokens, [first[i] for i in tried], kind,
                                                 progress=progress, values=values)
    ablated = torch.zeros(len(first), dtype=torch.bool)
    ablated[tried] = True
    failed = failures(answers, targets, right)
    nodes, all_answers, all_losses, all_failed = list(first), [answers], [losses], [failed]
    chosen = []
    if neurons and not cfg.attn_only:
        useful_mlp = [n for n, f in zip(first, failed) if n.kind == "mlp" and _pct(f, right) >= useful_pct]
        for m in useful_mlp:
            candidates = neuron_nodes(cfg, m.position, m.layer)
            if m.layer != last:  # dear to ablate: the most promising by attribution only
                attr = node_scores(grids, candidates)
                order = sorted(range(len(candidates)), key=lambda i: -abs(attr[i].item()))[:max_neurons]
                candidates = [candidates[i] for i in order if abs(attr[i].item()) >= attribution_floor]
            chosen += candidates
        if chosen:
            answers_n, losses_n = ablate_nodes(model, task, tokens, chosen, kind, progress=progress, values=values)
            nodes += chosen
            all_answers.append(answers_n)
            all_losses.append(losses_n)
            all_failed.append(failures(answers_n, targets, right))
    answers, losses, failed = torch.cat(all_answers), torch.cat(all_losses), torch.cat(all_failed)
    ablated = torch.cat([ablated, torch.ones(len(chosen), dtype=torch.bool)])
    attribution = node_scores(grids, nodes)
    rows = _rows(model, task, batch, nodes, answers, clean, failed.cpu(), right.cpu(), losses - clean_loss,
                 attribution, classes, useful_pct, attend_threshold)
    table = pd.DataFrame(rows)
    table["ablated"] = ablated.tolist()
    tried_rows = table[table["ablated"]]
    skipped = table[~table["ablated"]]
    info = dict(questions=len(tokens), right=int(right.sum()), clean_loss=clean_loss, kind=kind,
                spearman_all=spearman(tried_rows["attribution"], tried_rows["loss_change"]),
                spearman_heads=spearman(*_pair(tried_rows, "head")),
                spearman_neurons=spearman(*_pair(tried_rows, "neuron")),
                neurons_skipped=_skipped(cfg, table), attribution_floor=attribution_floor,
                skipped_by_attribution={k: int((skipped["kind"] == k).sum()) for k in ("head", "mlp")},
                ablations=int(ablated.sum()))
    if classes is not None:  # how the model does on each question class before any ablation
        right_cpu = right.cpu()
        info["class_accuracy"] = {name: round(right_cpu[[c == name for c in classes]].double().mean().item(), 4)
                                  for name in dict.fromkeys(classes)}
        info["class_count"] = {name: classes.count(name) for name in dict.fromkeys(classes)}
    return table, failed.cpu(), info


def _pair(table, kind):
    rows = table[table["kind"] == kind]
    return rows["attribution"].tolist(), rows["loss_change"].tolist()


def _skipped(cfg, table) -> int:
    if cfg.attn_only:
        return 0
    useful_mlps = table[(table["kind"] == "mlp") & table["useful"]]
    return len(useful_mlps) * cfg.d_mlp - int((table["kind"] == "neuron").sum())


def _pct(failed: torch.Tensor, right: torch.Tensor) -> float:
    return 100.0 * (failed & right).sum().item() / max(1, right.sum().item())


def _rows(model, task, batch, nodes, answers, clean, failed, right, loss_change, attribution, classes,
          useful_pct, attend_threshold) -> list[dict]:
    names = position_names(task)
    labels = list(task.pred_labels)
    truth = variables(task, batch)
    patterns = attention_patterns(model, batch.tokens).mean(1).cpu()  # [layer, head, query, key]
    changed = (answers != clean[None]).cpu()  # [node, batch, n_pred]
    rows = []
    for i, node in enumerate(nodes):
        fail = failed[i]
        pct = _pct(fail, right)
        n_fail = int(fail.sum())
        impact = ""
        if n_fail:
            share = changed[i][fail].float().mean(0)  # [n_pred] share of the failures where each digit changed
            impact = "".join(label for label, s in zip(labels, share.tolist()) if s >= 0.1)
        attends = ""
        if node.kind == "head":
            weights = patterns[node.layer, node.index, node.position]  # [key]
            top = [k for k in weights.argsort(descending=True).tolist() if weights[k] >= attend_threshold]
            attends = " ".join(names[k] for k in top)
        tags = []
        role = paper_role(task, node, attends, predicts(task))
        if role and pct >= useful_pct:
            tags.append(role)
        if n_fail and truth:
            best = explain_failures(fail, right, truth, top=1)
            if best and best[0]["f1"] >= 0.5:
                b = best[0]
                what = "all questions" if b["variable"].endswith("all") else f"{b['variable']}={b['value']}"
                tags.append(f"{what} (p{b['precision']:.2f} r{b['recall']:.2f})")
        if n_fail and classes is not None:
            tags += _class_tags(fail, right, classes)
        rows.append(dict(node=node.name, position=node.position, position_name=names[node.position],
                         predicts=predicts(task).get(node.position, ""), layer=node.layer, kind=node.kind,
                         head=node.index if node.kind == "head" else -1,
                         neuron=node.index if node.kind == "neuron" else -1,
                         useful=pct >= useful_pct, fail_pct=round(pct, 3), impact=impact, attends=attends,
                         tags="; ".join(tags), loss_change=float(loss_change[i]), attribution=float(attribution[i])))
    return rows


def _class_tags(fail, right, classes) -> list[str]:
    """'S3:74%'-style tags for the question classes where at least half of the right questions fail."""
    out = []
    for name in dict.fromkeys(classes):
        rows = torch.tensor([c == name for c in classes]) & right
        if rows.sum() >= 5:
            rate = (fail & rows).sum().item() / rows.sum().item()
            if rate >= 0.5:
                out.append(f"{name}:{100 * rate:.0f}%")
    return out


def paper_role(task, node: PosNode, attends: str, predicted: dict[int, str]) -> str:
    """The role Quirke & Barez give a head that, at the position computing An, attends to a digit
    pair Dk D'k: BaseAdd (k = n), MakeCarry (k = n - 1, the carry from below), UseSum9 / cascade
    (k <= n - 2); a head that attends to two pairs gets both, e.g. 'BaseAdd A3 + MakeCarry 2->A3'.
    '' when the head attends to no digit pair or the task is not arithmetic."""
    if node.kind != "head" or node.position not in predicted or not attends:
        return ""
    label = predicted[node.position]
    if not label.startswith("A"):
        return ""
    n = int(label[1:])
    words = attends.split()
    pairs = [int(t[1:]) for t in words if t.startswith("D") and not t.startswith("D'") and f"D'{t[1:]}" in words]
    base = "BaseSub" if task.has_ground_truth and "add" not in task.truth_ops else "BaseAdd"
    roles = []
    for k in pairs:  # in the order of attention, strongest pair first
        if k == n:
            roles.append(f"{base} A{n}")
        elif k == n - 1:
            roles.append(f"MakeCarry {k}->A{n}")
        elif k < n - 1:
            roles.append(f"Cascade {k}->A{n}")
    return " + ".join(roles)

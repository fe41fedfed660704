"""Nodes at one token position, named as Quirke's QuantaTools names them, and their ablation.

A node is an attention head (`P14L0H1`: position 14, layer 0, head 1), one MLP neuron
(`P14L0M37`) or a whole MLP layer (`P14L0MLP`) at one position. `ablate_nodes` ablates each node
on its own over a batch of questions (mean by default, zero and resample: the values come from
analysis.ablation.reference_activations) and returns, per node, the predicted answer digits
[node, batch, n_pred] and the loss, the quantities the node table is built from.

Two paths give the same numbers (a test checks both against hand-written hooks):
- a node in the LAST layer changes only its own position's logits, so its effect is computed in
  closed form from one cached forward: the head's changed z through W_O, then the rest of the
  block (MLP) and the unembedding at that one position, many nodes at once ([node, batch, d_model]);
  a neuron's change is (new - old) * W_out[neuron]. This is what makes every neuron affordable.
- a node in an EARLIER layer changes only its own position's residual stream after its block: that
  one row [node, batch, d_model] is computed in closed form as above, put into the cached stream,
  and only the later blocks run, their last block at the answer positions only (several nodes
  stacked on the batch). For a 2-layer model this is about a quarter of a full forward per node.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ablation import Node, check_nodes, reference_activations
from ..common import model_device

KINDS = ("head", "neuron", "mlp")
_NAME = re.compile(r"P(\d+)L(\d+)(?:H(\d+)|M(\d+)|(MLP))$")


@dataclass(frozen=True, order=True)
class PosNode:
    """A node at one position: kind 'head' | 'neuron' | 'mlp', index None for 'mlp'."""
    position: int
    layer: int
    kind: str
    index: int | None = None

    @property
    def name(self) -> str:
        tail = {"head": f"H{self.index}", "neuron": f"M{self.index}", "mlp": "MLP"}[self.kind]
        return f"P{self.position}L{self.layer}{tail}"

    def ablation_node(self) -> Node:
        return Node(self.kind, self.layer, self.index, (self.position,))


def parse_node(text: str) -> PosNode:
    """'P14L0H1' -> PosNode(14, 0, 'head', 1); also 'P14L0M37' (neuron) and 'P14L0MLP'."""
    match = _NAME.match(text.strip())
    if not match:
        raise ValueError(f"node {text!r} is not a node name like P14L0H1 (head), P14L0M37 (neuron) or P14L0MLP")
    pos, layer, head, neuron, mlp = match.groups()
    if head is not None:
        return PosNode(int(pos), int(layer), "head", int(head))
    if neuron is not None:
        return PosNode(int(pos), int(layer), "neuron", int(neuron))
    return PosNode(int(pos), int(layer), "mlp")


def head_nodes(cfg, positions) -> list[PosNode]:
    return [PosNode(p, layer, "head", h) for p in positions for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]


def mlp_nodes(cfg, positions) -> list[PosNode]:
    return [] if cfg.attn_only else [PosNode(p, layer, "mlp") for p in positions for layer in range(cfg.n_layers)]


def neuron_nodes(cfg, position: int, layer: int, neurons=None) -> list[PosNode]:
    neurons = range(cfg.d_mlp) if neurons is None else neurons
    return [PosNode(position, layer, "neuron", int(k)) for k in neurons]


# ---- ablation ------------------------------------------------------------------------------------

def _hook_names(layer: int) -> list[str]:
    b = f"blocks.{layer}"
    return [f"{b}.hook_resid_pre", f"{b}.attn.hook_z", f"{b}.hook_resid_mid", f"{b}.mlp.hook_post",
            f"{b}.hook_resid_post"]


def _tail(model, layer: int, resid_mid: torch.Tensor, resid_pre: torch.Tensor) -> torch.Tensor:
    """The rest of the last block and the unembedding at one position: [..., d_model] -> logits [..., vocab]."""
    block = model.blocks[layer]
    resid = resid_mid
    if not block.attn_only:
        resid = resid + block.mlp(block.ln2(resid_mid))
    if block.residual_doubled:
        resid = resid + resid_pre
    return model.unembed(model.ln_final(resid))


@torch.no_grad()
def ablate_nodes(model, task, tokens: torch.Tensor, nodes: list[PosNode], kind: str = "mean",
                 reference: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 chunk_size: int = 256, progress=None, values: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each node ablated on its own: (predicted answers [node, batch, n_pred] int64, loss [node]).

    The loss is the mean cross-entropy of the true answer digits over batch and answer positions
    (as grokmath.training.losses.score). `reference` gives the mean / resample values (default: the batch).
    `progress(n)` is called after each n nodes. `values` (reference_activations of these nodes'
    hooks) may be given to skip the reference forward.
    """
    device = model_device(model)
    tokens = tokens.to(device)
    check_nodes(model, [node.ablation_node() for node in nodes])
    pred_pos = task.pred_pos.to(device)
    targets = tokens[:, pred_pos + 1] if task.has_ground_truth else None
    last = model.cfg.n_layers - 1
    if values is None:
        values = reference_activations(model, [n.ablation_node() for n in nodes], kind, tokens, reference, generator)
    names = sorted({name for layer in {n.layer for n in nodes} | {last} for name in _hook_names(layer)})
    clean_logits, cache = model.run_with_cache(tokens, names_filter=names)
    clean_logits = clean_logits[:, pred_pos]  # [batch, n_pred, vocab]
    if targets is None:
        raise ValueError("node ablation scores answers of the arithmetic tasks; use ablation.ablate for others")
    answers = torch.empty(len(nodes), *targets.shape, dtype=torch.int64, device=device)
    losses = torch.empty(len(nodes), dtype=torch.float64)
    clean_nll = F.cross_entropy(clean_logits.transpose(1, 2), targets, reduction="none")  # [batch, n_pred]
    slot = {int(p): i for i, p in enumerate(pred_pos.tolist())}

    fast = [i for i, n in enumerate(nodes) if n.layer == last]
    slow = [i for i, n in enumerate(nodes) if n.layer != last]
    # fast path: last-layer nodes, grouped by position and kind
    groups: dict[tuple, list[int]] = {}
    for i in fast:
        groups.setdefault((nodes[i].position, nodes[i].kind), []).append(i)
    for (p, kind_), members in groups.items():
        for start in range(0, len(members), chunk_size):
            chunk = members[start:start + chunk_size]
            if p not in slot:  # a last-layer node changes only its own position, which is not scored
                answers[chunk] = clean_logits.argmax(-1)
                losses[chunk] = clean_nll.mean().item()
            else:
                logits_p = _fast_logits(model, last, p, [nodes[i] for i in chunk], cache, values)  # [k, batch, vocab]
                pred = clean_logits.argmax(-1).expand(len(chunk), -1, -1).clone()
                pred[:, :, slot[p]] = logits_p.argmax(-1)
                answers[chunk] = pred
                nll_p = F.cross_entropy(logits_p.transpose(1, 2), targets[:, slot[p]].expand(len(chunk), -1),
                                        reduction="none")  # [k, batch]
                total = clean_nll.sum() - clean_nll[:, slot[p]].sum() + nll_p.sum(1)
                losses[chunk] = (total / clean_nll.numel()).double().cpu()
            if progress:
                progress(len(chunk))
    # earlier layers: the changed row put into the cached stream, then only the later blocks
    groups = {}
    for i in slow:
        groups.setdefault((nodes[i].layer, nodes[i].position, nodes[i].kind), []).append(i)
    per_node = tokens.shape[0] * tokens.shape[1] * model.cfg.d_model  # floats of one stacked copy
    step = max(1, min(chunk_size, 2**25 // per_node))
    for (layer, p, _), members in groups.items():
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            new = _changed_resid(model, layer, p, [nodes[i] for i in chunk], cache, values)  # [k, batch, d_model]
            logits = _later_logits(model, layer, p, new, cache, pred_pos)  # [k, batch, n_pred, vocab]
            answers[chunk] = logits.argmax(-1)
            nll = F.cross_entropy(logits.flatten(0, 1).transpose(1, 2), targets.repeat(len(chunk), 1),
                                  reduction="none")  # [k * batch, n_pred]
            losses[chunk] = nll.view(len(chunk), -1).mean(1).double().cpu()
            if progress:
                progress(len(chunk))
    return answers, losses


def _fast_logits(model, layer, p, group: list[PosNode], cache, values) -> torch.Tensor:
    """Logits at position p [k, batch, vocab] with each of `group` (same kind, last layer, at p) ablated."""
    b = f"blocks.{layer}"
    kind = group[0].kind
    resid_pre, resid_mid = cache[f"{b}.hook_resid_pre"][:, p], None
    block = model.blocks[layer]
    if kind == "head":
        heads = torch.tensor([n.index for n in group], device=resid_pre.device)
        z = cache[f"{b}.attn.hook_z"][:, p]  # [batch, head, d_head]
        new = values[f"{b}.attn.hook_z"][:, p]
        delta = (new - z)[:, heads].transpose(0, 1)  # [k, batch, d_head]
        change = torch.einsum("kbd,kdm->kbm", delta, block.attn.W_O[heads])  # [k, batch, d_model]
        base = cache[f"{b}.hook_resid_mid"][:, p] if not block.attn_only else cache[f"{b}.hook_resid_post"][:, p]
        if block.attn_only:  # no MLP: resid_post = resid_pre + attn_out (+ resid_pre when doubled)
            return model.unembed(model.ln_final(base + change))
        return _tail(model, layer, base + change, resid_pre)
    if kind == "mlp":
        mlp_out = values[f"{b}.hook_mlp_out"][:, p]  # [batch, d_model]
        resid = cache[f"{b}.hook_resid_mid"][:, p] + mlp_out
        if block.residual_doubled:
            resid = resid + resid_pre
        return model.unembed(model.ln_final(resid))[None]
    neurons = torch.tensor([n.index for n in group], device=resid_pre.device)
    post = cache[f"{b}.mlp.hook_post"][:, p]  # [batch, d_mlp]
    delta = (values[f"{b}.mlp.hook_post"][:, p] - post)[:, neurons].T  # [k, batch]
    resid_post = cache[f"{b}.hook_resid_post"][:, p]  # [batch, d_model]
    if isinstance(model.ln_final, torch.nn.Identity):  # no final LayerNorm: the logits move linearly
        clean = model.unembed(resid_post)  # [batch, vocab]
        return clean + delta[..., None] * (block.mlp.W_out[neurons] @ model.unembed.W_U)[:, None]  # [k, batch, vocab]
    resid = resid_post + delta[..., None] * block.mlp.W_out[neurons][:, None]  # [k, batch, d_model]
    return model.unembed(model.ln_final(resid))


def _changed_resid(model, layer, p, group: list[PosNode], cache, values) -> torch.Tensor:
    """The residual stream after block `layer` at position p [k, batch, d_model] with each of `group`
    (same kind and layer, at p) ablated; the other positions' streams are unchanged."""
    b = f"blocks.{layer}"
    block = model.blocks[layer]
    resid_pre = cache[f"{b}.hook_resid_pre"][:, p]  # [batch, d_model]
    kind = group[0].kind
    if kind == "neuron":
        neurons = torch.tensor([n.index for n in group], device=resid_pre.device)
        delta = (values[f"{b}.mlp.hook_post"][:, p] - cache[f"{b}.mlp.hook_post"][:, p])[:, neurons].T  # [k, batch]
        return cache[f"{b}.hook_resid_post"][:, p] + delta[..., None] * block.mlp.W_out[neurons][:, None]
    if kind == "head":
        heads = torch.tensor([n.index for n in group], device=resid_pre.device)
        delta = (values[f"{b}.attn.hook_z"][:, p] - cache[f"{b}.attn.hook_z"][:, p])[:, heads].transpose(0, 1)
        change = torch.einsum("kbd,kdm->kbm", delta, block.attn.W_O[heads])  # [k, batch, d_model]
        if block.attn_only:  # resid_post = resid_pre + attn_out (+ resid_pre when doubled): linear in z
            return cache[f"{b}.hook_resid_post"][:, p] + change
        mid = cache[f"{b}.hook_resid_mid"][:, p] + change
        resid = mid + block.mlp(block.ln2(mid))
    else:  # the whole MLP: its output replaced
        resid = (cache[f"{b}.hook_resid_mid"][:, p] + values[f"{b}.hook_mlp_out"][:, p])[None]
    return resid + resid_pre if block.residual_doubled else resid


def _later_logits(model, layer, p, new: torch.Tensor, cache, pred_pos) -> torch.Tensor:
    """Logits at the answer positions [k, batch, n_pred, vocab] with the stream after block `layer`
    at position p replaced by each of new [k, batch, d_model]: only the later blocks run."""
    resid = cache[f"blocks.{layer}.hook_resid_post"]  # [batch, pos, d_model]
    k, n = new.shape[0], resid.shape[0]
    x = resid.expand(k, *resid.shape).clone()  # [k, batch, pos, d_model]
    x[:, :, p] = new
    x = x.flatten(0, 1)  # [k * batch, pos, d_model]
    last = model.cfg.n_layers - 1
    for later in range(layer + 1, last + 1):
        x = model.blocks[later](x, pred_pos if later == last else None)
    return model.unembed(model.ln_final(x)).view(k, n, len(pred_pos), -1)

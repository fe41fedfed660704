"""Ablation: replace one part of the model's computation and measure what the loss does.

A `Node` is a part: an attention head (its `z`, blocks.L.attn.hook_z[..., head, :]), a whole
attention layer (hook_attn_out), an MLP layer (hook_mlp_out) or one MLP neuron
(mlp.hook_post[..., n]), optionally at chosen positions only. Kinds of ablation:
- 'zero': the activation becomes 0;
- 'mean': its mean over a reference batch, per position;
- 'resample': its value on another question: row b takes the activation of reference row
  donor[b], one donor permutation drawn once per call (from `generator`) and shared by all nodes,
  so every node sees the same substitutions.
`ablate` runs many nodes per forward pass (the batch repeated once per node, see
common.run_variants) and returns a DataFrame, one row per node: loss, loss change, loss per answer
position (columns `loss_<label>` named by task.pred_labels), accuracy, accuracy change and
question accuracy. Nothing edits weights; every change is a forward hook.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..memory import ablation_bytes, check_fits
from .common import answer_logits, model_device, run_variants, score

KINDS = ("zero", "mean", "resample")
NODE_TYPES = ("head", "attn", "mlp", "neuron")


@dataclass(frozen=True)
class Node:
    """One ablatable part: type 'head' | 'attn' | 'mlp' | 'neuron', its layer, head or neuron index
    (None for whole layers), and the positions it is ablated at (None: all)."""
    type: str
    layer: int
    index: int | None = None
    positions: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.type not in NODE_TYPES:
            raise ValueError(f"node type {self.type!r} is unknown: use one of {NODE_TYPES}")
        if (self.index is None) != (self.type in ("attn", "mlp")):
            raise ValueError(f"a {self.type} node {'needs' if self.index is None else 'takes no'} index")
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    @property
    def hook_name(self) -> str:
        return {"head": f"blocks.{self.layer}.attn.hook_z", "attn": f"blocks.{self.layer}.hook_attn_out",
                "mlp": f"blocks.{self.layer}.hook_mlp_out", "neuron": f"blocks.{self.layer}.mlp.hook_post"}[self.type]

    @property
    def name(self) -> str:
        base = {"head": f"L{self.layer}H{self.index}", "attn": f"L{self.layer} attn",
                "mlp": f"L{self.layer} mlp", "neuron": f"L{self.layer}N{self.index}"}[self.type]
        return base if self.positions is None else f"{base} @{positions_text(self.positions)}"

    def select(self, act: torch.Tensor) -> tuple:
        """The index into the activation [batch, pos, ...] that this node covers."""
        pos = slice(None) if self.positions is None else list(self.positions)
        if self.type == "head":  # hook_z [batch, pos, head, d_head]
            return (slice(None), pos, self.index)
        if self.type == "neuron":  # hook_post [batch, pos, d_mlp]
            return (slice(None), pos, self.index)
        return (slice(None), pos)


def positions_text(positions) -> str:
    return "all" if positions is None else ",".join(str(p) for p in positions)


# ---- sets of nodes ---------------------------------------------------------------------------

def head_nodes(cfg, positions=None) -> list[Node]:
    return [Node("head", layer, head, positions) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]


def layer_nodes(cfg, positions=None) -> list[Node]:
    """Each attention layer and (unless attn_only) each MLP layer."""
    nodes = []
    for layer in range(cfg.n_layers):
        nodes.append(Node("attn", layer, None, positions))
        if not cfg.attn_only:
            nodes.append(Node("mlp", layer, None, positions))
    return nodes


def neuron_nodes(cfg, layer: int, positions=None) -> list[Node]:
    if cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons")
    return [Node("neuron", layer, n, positions) for n in range(cfg.d_mlp)]


def standard_nodes(cfg) -> list[Node]:
    """Every head, attention layer and MLP layer, at all positions."""
    return head_nodes(cfg) + layer_nodes(cfg)


def per_position(nodes: list[Node], positions) -> list[Node]:
    """Each node at each single position: the rows of a position x node heatmap."""
    return [Node(node.type, node.layer, node.index, (int(p),)) for node in nodes for p in positions]


# ---- the replacement values ------------------------------------------------------------------

def check_nodes(model, nodes: list[Node]) -> None:
    cfg = model.cfg
    for node in nodes:
        if not 0 <= node.layer < cfg.n_layers:
            raise ValueError(f"{node.name}: layer {node.layer} is outside 0..{cfg.n_layers - 1}")
        if node.type in ("mlp", "neuron") and cfg.attn_only:
            raise ValueError(f"{node.name}: this model is attention-only and has no MLP")
        limit = {"head": cfg.n_heads, "neuron": cfg.d_mlp}.get(node.type)
        if limit is not None and not 0 <= node.index < limit:
            raise ValueError(f"{node.name}: index {node.index} is outside 0..{limit - 1}")
        if node.positions is not None and not all(0 <= p < cfg.n_ctx for p in node.positions):
            raise ValueError(f"{node.name}: positions must be in 0..{cfg.n_ctx - 1}")


def reference_activations(model, nodes: list[Node], kind: str, tokens: torch.Tensor,
                          reference: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """What each hook's activation is replaced by: {hook name: tensor shaped like the batch's activation}.

    zero: zeros; mean: the reference batch's mean per position, broadcast over the batch;
    resample: the reference batch's activations at rows `donor` (a permutation of the batch when
    the reference is the batch itself, else rows drawn with replacement).
    """
    if kind not in KINDS:
        raise ValueError(f"ablation kind {kind!r} is unknown: use one of {KINDS}")
    names = sorted({node.hook_name for node in nodes})
    reference = tokens if reference is None else reference.to(tokens.device)
    _, cache = model.run_with_cache(reference, names_filter=names)
    n = tokens.shape[0]
    if kind == "resample":
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        if reference is tokens:
            donor = torch.randperm(n, generator=generator, device=generator.device)
        else:
            donor = torch.randint(0, reference.shape[0], (n,), generator=generator, device=generator.device)
        donor = donor.to(tokens.device)
    values = {}
    for name in names:
        act = cache[name]  # [n_ref, pos, ...]
        if kind == "zero":
            values[name] = torch.zeros((n, *act.shape[1:]), dtype=act.dtype, device=act.device)
        elif kind == "mean":
            values[name] = act.mean(0, keepdim=True).expand(n, *act.shape[1:])
        else:
            values[name] = act[donor]
    return values


def node_edit(node: Node, value: torch.Tensor):
    """The edit (hook name, fn) that puts `value`'s entries for this node into the activation."""
    def fn(act):
        where = node.select(act)
        act[where] = value[where]
        return act
    return node.hook_name, fn


# ---- ablation --------------------------------------------------------------------------------

def check_ablation_fits(cfg, questions: int, n_nodes: int, chunk_size: int, device) -> None:
    """Refuse, before the questions are drawn, an ablation that cannot fit in memory (ablate.py's
    --questions and --chunk-size): ablate() runs min(chunk_size, n_nodes) ablations per forward pass."""
    check_fits(ablation_bytes(cfg, questions, min(chunk_size, n_nodes)), device,
               f"ablating on {questions} questions, {min(chunk_size, n_nodes)} ablations per forward pass",
               "lower --questions or --chunk-size")


@torch.no_grad()
def ablate(model, batch, task, nodes: list[Node] | None = None, kind: str = "zero",
           reference: torch.Tensor | None = None, generator: torch.Generator | None = None,
           chunk_size: int = 16) -> pd.DataFrame:
    """Loss and accuracy with each node ablated, one DataFrame row per node (see the module doc).

    `batch` is a task Batch; `reference` tokens give the mean / resample values (default: the
    batch itself). Nodes default to every head, attention layer and MLP layer.
    """
    nodes = standard_nodes(model.cfg) if nodes is None else list(nodes)
    if not nodes:
        raise ValueError("no nodes to ablate: give at least one Node")
    check_nodes(model, nodes)
    device = model_device(model)
    batch = batch.to(device)
    values = reference_activations(model, nodes, kind, batch.tokens, reference, generator)
    clean = _scores(model.run_with_hooks(batch.tokens), batch, task)
    variants = [[node_edit(node, values[node.hook_name])] for node in nodes]
    ablated = run_variants(model, batch.tokens, variants, lambda logits: _scores(logits, batch, task), chunk_size)
    rows = []
    for node, s in zip(nodes, ablated):
        row = {"node": node.name, "type": node.type, "layer": node.layer,
               "index": -1 if node.index is None else node.index, "positions": positions_text(node.positions),
               "loss": s["loss"], "loss_change": s["loss"] - clean["loss"]}
        row.update({f"loss_{label}": v for label, v in zip(task.pred_labels, s["loss_pos"])})
        row.update({"acc": s["acc"], "acc_change": s["acc"] - clean["acc"], "seq_acc": s["seq_acc"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update(clean_loss=clean["loss"], clean_acc=clean["acc"], kind=kind,
                       clean_loss_pos=dict(zip(task.pred_labels, clean["loss_pos"])))
    return table


def _scores(logits, batch, task) -> dict:
    s = score(answer_logits(logits, task), batch)
    return {"loss": s["loss"].item(), "acc": s["acc"].item(), "seq_acc": s["seq_acc"].item(),
            "loss_pos": s["loss_pos"].tolist()}


def head_grid(table: pd.DataFrame, n_layers: int, n_heads: int, value: str = "loss_change") -> torch.Tensor:
    """The all-position head rows of an ablation table as [n_layers, n_heads] (NaN where absent)."""
    grid = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    rows = table[(table["type"] == "head") & (table["positions"] == "all")]
    for _, row in rows.iterrows():
        grid[int(row["layer"]), int(row["index"])] = float(row[value])
    return grid


def position_grid(table: pd.DataFrame, value: str = "loss_change") -> tuple[torch.Tensor, list[str], list[int]]:
    """Single-position rows as [node, position] with the node names and positions (NaN where absent)."""
    rows = table[table["positions"].astype(str).str.fullmatch(r"\d+")].copy()
    if rows.empty:
        raise ValueError("the table has no single-position rows: ablate per_position(nodes, positions)")
    rows["pos"] = rows["positions"].astype(int)
    rows["base"] = rows["node"].str.replace(r" @\d+$", "", regex=True)
    names = list(dict.fromkeys(rows["base"]))
    positions = sorted(rows["pos"].unique().tolist())
    grid = torch.full((len(names), len(positions)), float("nan"), dtype=torch.float64)
    for _, row in rows.iterrows():
        grid[names.index(row["base"]), positions.index(row["pos"])] = float(row[value])
    return grid, names, positions


def plot_heads(table: pd.DataFrame, cfg, path, value: str = "loss_change"):
    """Layer x head heatmap of an ablation table's all-position head rows."""
    from .plots import save_heatmap
    kind = table.attrs.get("kind", "")
    return save_heatmap(head_grid(table, cfg.n_layers, cfg.n_heads, value), path,
                        xlabels=list(range(cfg.n_heads)), ylabels=list(range(cfg.n_layers)),
                        xlabel="head", ylabel="layer", title=f"{kind} ablation: {value}")


def plot_positions(table: pd.DataFrame, path, value: str = "loss_change", position_names=None):
    """Node x position heatmap of an ablation table's single-position rows."""
    from .plots import save_heatmap
    grid, names, positions = position_grid(table, value)
    xlabels = [f"{p}:{position_names[p]}" if position_names is not None else p for p in positions]
    kind = table.attrs.get("kind", "")
    return save_heatmap(grid, path, xlabels=xlabels, ylabels=names, xlabel="position", ylabel="node",
                        title=f"{kind} ablation per position: {value}")


@torch.no_grad()
def ablated_logits(model, tokens: torch.Tensor, nodes: list[Node], kind: str = "zero",
                   reference: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits [batch, pos, vocab] with all `nodes` ablated together in one forward pass."""
    check_nodes(model, nodes)
    tokens = tokens.to(model_device(model))
    values = reference_activations(model, nodes, kind, tokens, reference, generator)
    variant = [node_edit(node, values[node.hook_name]) for node in nodes]
    return run_variants(model, tokens, [variant], lambda logits: logits)[0]

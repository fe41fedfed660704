"""The explain report's figures (matplotlib, PNG): the quanta map, attention by node, probe
accuracy by layer and position, and the claims' verdicts. Each takes the report's tables, never a
live model, and returns the path it wrote.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ...training.plots import save_figure
from ..plots import plt  # Agg unless a notebook chose a backend

SHORT = {"BaseAdd": "BA", "BaseSub": "BS", "MakeCarry": "MC", "Cascade": "US9"}


def _short_tag(tags: str) -> str:
    """'BaseAdd A3 + MakeCarry 2->A3; ...' -> 'BA+MC' (the role read from the attention)."""
    first = tags.split(";")[0].strip() if tags else ""
    parts = [next((short for word, short in SHORT.items() if part.strip().startswith(word)), "")
             for part in first.split(" + ")]
    return "+".join(p for p in parts if p) if all(parts) else ""


def quanta_map(table: pd.DataFrame, path, position_names: list[str], title: str = "", max_neurons: int = 24):
    """Positions x nodes, each cell coloured by fail % and labelled with its impact and role tag.
    Rows: every head and MLP layer, then the useful neurons with the highest fail % (up to max_neurons)."""
    table = table[table["fail_pct"] > 0]
    base = table[table["kind"] != "neuron"]
    neurons = table[(table["kind"] == "neuron") & table["useful"]]
    top = neurons.groupby(["layer", "neuron"])["fail_pct"].max().sort_values(ascending=False).head(max_neurons)
    rows = sorted({_row_name(r) for _, r in base.iterrows()}) + [f"L{layer}M{n}" for layer, n in top.index]
    positions = sorted(table["position"].unique().tolist()) if len(table) else []
    grid = np.full((len(rows), len(positions)), np.nan)
    labels = [["" for _ in positions] for _ in rows]
    for _, r in table.iterrows():
        name = _row_name(r)
        if name in rows and r["position"] in positions:
            i, j = rows.index(name), positions.index(r["position"])
            grid[i, j] = r["fail_pct"]
            labels[i][j] = "\n".join(x for x in (str(r["impact"]), _short_tag(str(r["tags"]))) if x and x != "nan")
    fig, ax = plt.subplots(figsize=(1.1 * max(4, len(positions)) + 2, 0.38 * max(4, len(rows)) + 1.5))
    image = ax.imshow(grid, cmap="YlOrRd", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(positions)):
            if labels[i][j]:
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=6.5)
    ax.set_xticks(range(len(positions)), [f"P{p}\n{position_names[p]}" for p in positions], fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("position (token there)")
    fig.colorbar(image, ax=ax, label="fail % when ablated")
    ax.set_title(title or "quanta map: fail % of each node ablated (label: impact, role)")
    return save_figure(fig, path)


def _row_name(r) -> str:
    return {"head": f"L{r['layer']}H{r['head']}", "mlp": f"L{r['layer']}MLP",
            "neuron": f"L{r['layer']}M{r['neuron']}"}[r["kind"]]


def attention_by_node(table: pd.DataFrame, patterns: np.ndarray, path, position_names: list[str], title: str = ""):
    """For each useful head node, its mean attention over the key positions (bars).
    patterns: [layer, head, query, key] mean attention."""
    heads = table[(table["kind"] == "head") & table["useful"]].sort_values(["position", "layer", "head"])
    n = max(1, len(heads))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, r) in zip(axes.flat, heads.iterrows()):
        ax.axis("on")
        weights = patterns[r["layer"], r["head"], r["position"], : r["position"] + 1]
        ax.bar(range(len(weights)), weights, color="tab:blue")
        ax.set_xticks(range(len(weights)), position_names[: len(weights)], fontsize=5, rotation=90)
        ax.set_ylim(0, 1)
        ax.set_title(f"{r['node']} fail {r['fail_pct']:.0f}% {r['impact']}", fontsize=7)
    fig.suptitle(title or "attention of each useful head at its position (mean over questions)")
    fig.tight_layout()
    return save_figure(fig, path)


def probe_map(probes: pd.DataFrame, path, position_names: list[str], title: str = ""):
    """Probe accuracy above the majority baseline, as the share of the gap to 100% it closes (a
    rare variable's 0.99 against a 0.90 baseline shows as 0.9), one panel per residual stage."""
    stages = list(dict.fromkeys(probes["layer"]))
    variables = sorted(probes["variable"].unique(), key=_variable_order)
    positions = sorted(probes["position"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(0.32 * len(positions) * len(stages) + 3, 0.22 * len(variables) + 2),
                             squeeze=False, sharey=True)
    for ax, stage in zip(axes[0], stages):
        part = probes[probes["layer"] == stage]
        grid = np.full((len(variables), len(positions)), np.nan)
        for _, r in part.iterrows():
            # the share of the gap from the majority baseline to 100% that the probe closes
            gap = max(1e-9, 1 - r["baseline"])
            grid[variables.index(r["variable"]), positions.index(r["position"])] = (r["accuracy"] - r["baseline"]) / gap
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(positions)), [position_names[p] for p in positions], fontsize=5, rotation=90)
        ax.set_yticks(range(len(variables)), variables, fontsize=5)
        ax.set_title(stage, fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label="(accuracy - baseline) / (1 - baseline)")
    fig.suptitle(title or "linear probes: where each variable is readable (held-out questions)")
    return save_figure(fig, path)


def _variable_order(name: str):
    base = name.split(".")[-1]
    kind, _, digit = base.partition(" ")
    return (name.split(".")[0] if "." in name else "", kind, digit)


def claim_verdicts(claims: list[dict], path, title: str = ""):
    """Precision and recall of each tested claim, coloured by verdict."""
    n = max(1, len(claims))
    fig, ax = plt.subplots(figsize=(7, 0.3 * n + 1.5))
    colours = {"holds": "tab:green", "partly": "tab:orange"}
    for i, c in enumerate(claims):
        colour = next((v for k, v in colours.items() if c["verdict"].startswith(k)), "tab:red")
        ax.barh(i - 0.2, np.nan_to_num(c["precision"]), height=0.4, color=colour)
        ax.barh(i + 0.2, np.nan_to_num(c["recall"]), height=0.4, color=colour, alpha=0.5)
    ax.set_yticks(range(len(claims)), [c["claim"] for c in claims], fontsize=6)
    ax.axvline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("precision (dark) and recall (light) of the questions the ablation changes")
    ax.set_title(title or "claims tested by intervention (green holds, orange partly, red fails)")
    fig.tight_layout()
    return save_figure(fig, path)

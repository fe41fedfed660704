"""The explain report for the tasks without digit-level ground truth: skip-trigram, induction, modular.

What fits them: every head and MLP (and, for a 1-layer model, every neuron is left to the modular
tools) ablated at every position by mean ablation, the useful ones listed (loss change and accuracy
change, from analysis.ablation.ablate); induction and previous-token scores of every head
(analysis.attention); the key frequencies of a modular model (analysis.progress.key_frequencies).
Claims (others_claims), tested on a fresh batch: each useful head is useful, and for induction each
head with a high induction score is an induction head (its ablation hurts the repeats, not the
first occurrence). Writes nodes.csv, heads.json, claims.json, summary.md and the figures
head_scores.png, attention.png (the useful heads) and, for modular, key_frequencies.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...store.files import atomic_write_text
from ..ablation import ablate, per_position, standard_nodes
from ..attention import attention_patterns, induction_scores, previous_token_scores
from ..common import question_sampler
from . import others_claims


def explain_other(model, task, out_dir, seed: int = 0, kind: str = "mean", questions: int = 1000,
                  title: str = "", useful_loss: float = 0.05, **_) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    batch = question_sampler(task).sample(questions, gen).to(device)
    nodes = standard_nodes(model.cfg) + per_position(standard_nodes(model.cfg), range(task.n_ctx))
    table = ablate(model, batch, task, nodes, kind=kind, generator=torch.Generator().manual_seed(seed + 1))
    table["useful"] = table["loss_change"] > useful_loss
    heads = {}
    patterns = attention_patterns(model, batch.tokens)  # [layer, batch, head, query, key]
    heads["previous_token"] = previous_token_scores(patterns).tolist()
    if task.has_repeats:
        heads["induction"] = induction_scores(patterns, batch, task).tolist()
    if task.has_progress_measures and not model.cfg.attn_only:
        from ..progress import key_frequencies
        heads["key_frequencies"] = key_frequencies(model, task)
    useful = table[table["useful"]].sort_values("loss_change", ascending=False)
    useful_heads = sorted({(int(r["layer"]), int(r["index"])) for _, r in useful.iterrows()
                           if r["type"] == "head" and r["positions"] in ("all", None, "")})
    fresh = question_sampler(task).sample(questions, torch.Generator().manual_seed(seed + 2)).to(device)
    claims = others_claims.useful_head_claims(model, task, fresh, useful_heads, useful_loss, kind)
    if "induction" in heads:
        claims += others_claims.induction_claims(model, task, fresh, torch.tensor(heads["induction"]))
    paths = {name: out / name for name in OUTPUTS}
    others_claims.head_scores_figure(heads, paths["head_scores.png"])
    others_claims.attention_figure(patterns.mean(1).cpu(), useful_heads, paths["attention.png"])
    if heads.get("key_frequencies") is not None:
        others_claims.key_frequencies_figure(model, task, heads["key_frequencies"], out / "key_frequencies.png")
        paths["key_frequencies.png"] = out / "key_frequencies.png"
    atomic_write_text(out / "nodes.csv", table.to_csv(index=False))
    atomic_write_text(out / "heads.json", json.dumps(heads, indent=1) + "\n")
    atomic_write_text(out / "claims.json", json.dumps(claims, indent=1) + "\n")
    lines = [f"# {title or task.name}: useful nodes", "",
             f"{questions} questions, {kind} ablation; clean loss {table.attrs['clean_loss']:.4g}, "
             f"accuracy {table.attrs['clean_acc']:.4f}. Useful: loss change > {useful_loss}.", "",
             "| node | positions | loss change | accuracy change |", "|---|---|---|---|"]
    lines += [f"| {r['node']} | {r['positions']} | {r['loss_change']:.3f} | {r['acc_change']:.3f} |"
              for _, r in useful.head(30).iterrows()]
    lines += ["", "Previous-token score per layer and head: " + json.dumps(_round(heads["previous_token"]))]
    if "induction" in heads:
        lines.append("Induction score per layer and head: " + json.dumps(_round(heads["induction"])))
    if "key_frequencies" in heads:
        lines.append(f"Key frequencies: {heads['key_frequencies']}")
    lines += ["", "## Claims (tested on fresh questions)", "", "| claim | test | result | verdict |", "|---|---|---|---|"]
    for c in claims:
        result = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("claim", "test", "verdict"))
        lines.append(f"| `{c['claim']}` | {c['test']} | {result} | {c['verdict']} |")
    held = sum(c["verdict"] == "holds" for c in claims)
    lines += ["", f"{held} of {len(claims)} claims hold.", "",
              "Files: " + ", ".join(sorted(p.name for p in paths.values())) + "."]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return dict(table=table, heads=heads, claims=claims, paths=paths)


OUTPUTS = ("nodes.csv", "heads.json", "claims.json", "summary.md", "head_scores.png", "attention.png")


def _round(values):
    return [[round(v, 3) for v in row] for row in values]

"""The whole explain report of one trained model: `explain(model, task, out_dir)`, or for a run
folder `explain_run(load_run(run_dir))`, which writes RUN_DIR/analysis/explain/.

Arithmetic tasks (addition, subtraction, mixed) get everything: the node table (nodes.csv), probes
(probes.csv), claims proposed from the node table on one question set and tested by intervention
on a fresh one (claims.json), the paper's roles read from the heads' attention tested the same way,
figures, and summary.md. Skip-trigram, induction and modular get what fits (others.py): the useful
heads by mean ablation, induction and previous-token scores, the modular key frequencies.

    python scripts/explain.py runs/addition_5d_s129000
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ...store.files import atomic_write_text, refuse_existing
from ..attention import attention_patterns
from ..common import question_sampler
from . import figures
from .claims import claim_text, explain_failures, parse_claim, test_claims
from .probes import best_probes, probe_table
from .table import ATTRIBUTION_FLOOR, node_table
from .truth import is_arithmetic, position_names, question_set, variables

OUTPUTS = ("nodes.csv", "probes.csv", "claims.json", "summary.md", "quanta_map.png", "attention_by_node.png",
           "probes.png", "claims.png")


def explain(model, task, out_dir, per_class: int = 200, probe_questions: int = 2000, kind: str = "mean",
            seed: int = 0, progress: bool = True, title: str = "", attribution_floor: float = ATTRIBUTION_FLOOR) -> dict:
    """Write the report into `out_dir`; returns {'table', 'probes', 'claims', 'info', 'paths'}."""
    if not is_arithmetic(task):
        from .others import explain_other
        return explain_other(model, task, out_dir, seed=seed, kind=kind, title=title)  # (per_class etc. unused)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    batch, classes = question_set(task, per_class, gen)
    check_set, _ = question_set(task, per_class, torch.Generator().manual_seed(seed + 1))
    plain = question_sampler(task, enrich=False)
    reference = plain.sample(1000, gen).tokens.to(device)  # the mean (or resample donors) of the ablation
    bar = tqdm(total=1, desc="explain: ablate nodes", unit="node", disable=not progress, dynamic_ncols=True)

    def tick(n):  # the total grows as the nodes to try are chosen
        if bar.n + n > bar.total:
            bar.total = bar.n + n
        bar.update(n)
    timings = {}
    t = time.perf_counter()
    table, failed, info = node_table(model, task, batch.to(device), classes, kind, reference,
                                     torch.Generator().manual_seed(seed + 2), progress=tick,
                                     attribution_floor=attribution_floor)
    bar.close()
    timings["nodes"] = time.perf_counter() - t
    names = position_names(task)

    t = time.perf_counter()
    if progress:
        print("explain: probes", flush=True)
    probes = probe_table(model, task, plain.sample(probe_questions, gen).to(device),
                         plain.sample(probe_questions // 2, gen).to(device))
    timings["probes"] = time.perf_counter() - t

    t = time.perf_counter()
    if progress:
        print("explain: claims", flush=True)
    truth = variables(task, batch)
    proposed = propose(task, table, failed, batch, truth, model)
    paper = paper_claims(table)
    check_truth = variables(task, check_set)
    claims = []
    for source, texts in (("proposed", proposed), ("paper roles", paper)):
        parsed = [parse_claim(text, check_truth, _prefix(task)) for text in texts]
        for result in test_claims(model, task, check_set, parsed, check_truth, kind, reference,
                                  torch.Generator().manual_seed(seed + 3)):
            result["source"] = source
            claims.append(result)
    timings["claims"] = time.perf_counter() - t

    t = time.perf_counter()
    patterns = attention_patterns(model, batch.tokens.to(device)).mean(1).cpu().numpy()
    paths = {name: out / name for name in OUTPUTS}
    atomic_write_text(paths["nodes.csv"], table.to_csv(index=False))
    atomic_write_text(paths["probes.csv"], probes.to_csv(index=False))
    atomic_write_text(paths["claims.json"], json.dumps(claims, indent=1) + "\n")
    figures.quanta_map(table, paths["quanta_map.png"], names, title=f"{title} quanta map".strip())
    figures.attention_by_node(table, patterns, paths["attention_by_node.png"], names)
    figures.probe_map(probes, paths["probes.png"], names)
    figures.claim_verdicts(claims, paths["claims.png"])
    timings["figures"] = time.perf_counter() - t
    info.update(timings={k: round(v, 1) for k, v in timings.items()}, seconds=round(time.perf_counter() - start, 1))
    atomic_write_text(paths["summary.md"], summary(task, table, probes, claims, info, title))
    return dict(table=table, probes=probes, claims=claims, info=info, paths=paths)


def _prefix(task) -> str:
    return task.variable_prefix("add")


def propose(task, table: pd.DataFrame, failed: torch.Tensor, batch, truth, model) -> list[str]:
    """One claim per useful head or MLP (and the 20 most useful neurons): the variable that best
    predicts its failures on the questions of the node table, in the papers' role words."""
    device = next(model.parameters()).device
    with torch.no_grad():
        clean = model(batch.tokens.to(device))[:, task.pred_pos.to(device)].argmax(-1).cpu()
    right = (clean == batch.targets).all(-1)
    useful = table[table["useful"]]
    neurons = useful[useful["kind"] == "neuron"].sort_values("fail_pct", ascending=False).head(20)
    chosen = pd.concat([useful[useful["kind"] != "neuron"], neurons])
    texts = []
    for i, row in chosen.iterrows():
        best = explain_failures(failed[i], right, truth, top=1)
        if best and best[0]["f1"] >= 0.5:
            digit = int(row["impact"][1]) if row["impact"][:1] == "A" and row["impact"][1:2].isdigit() else 0
            texts.append(claim_text(row["node"], best[0]["variable"], best[0]["value"], digit))
    return list(dict.fromkeys(texts))


def paper_claims(table: pd.DataFrame) -> list[str]:
    """Quirke & Barez's roles as claims, for every useful head whose attention names one:
    BaseAdd An (attends Dn D'n), MakeCarry k (attends Dk D'k, k = n - 1), UseSum9 k+1 (attends
    Dk D'k with k = n - 2: the carry from k cascades through a sum of 9 at k + 1 into An)."""
    texts = []
    for _, row in table[table["useful"] & (table["kind"] == "head")].iterrows():
        role = str(row["tags"]).split(";")[0].strip()
        if " + " in role:
            continue  # a head with two roles: no single claim names it
        word, _, rest = role.partition(" ")
        if word in ("BaseAdd", "BaseSub"):
            texts.append(f"{row['node']} {word} {rest[1:]}")
        elif word == "MakeCarry":
            texts.append(f"{row['node']} MakeCarry {rest.split('->')[0]}")
        elif word == "Cascade":
            k, n = rest.split("->")
            if int(n[1:]) - int(k) == 2:
                texts.append(f"{row['node']} UseSum9 {int(k) + 1}")
    return texts


def summary(task, table, probes, claims, info, title="") -> str:
    """The one-page summary.md."""
    useful = table[table["useful"]]
    lines = [f"# {title or task.name}: what the model computes where", "",
             f"{info['questions']} questions drawn per case class ({info['right']} answered right), "
             f"{info['kind']} ablation, {len(table)} nodes tried, {len(useful)} useful "
             f"(fail % >= 0.5); {info['seconds']} s ({', '.join(f'{k} {v} s' for k, v in info['timings'].items())}).", "",
             "Answered right per question class (before any ablation): " + ", ".join(
                 f"{k} {100 * v:.1f}% of {info['class_count'][k]}" for k, v in info.get("class_accuracy", {}).items()) + ".",
             "", "## Which answer digit each position computes", "",
             "| position | predicts | useful heads (attends: role) | MLP fail % | useful neurons |",
             "|---|---|---|---|---|"]
    for pos in sorted(useful["position"].unique()):
        rows = useful[useful["position"] == pos]
        heads = rows[rows["kind"] == "head"]
        mlp = table[(table["position"] == pos) & (table["kind"] == "mlp")]["fail_pct"]
        head_text = "; ".join(f"{r['node']} {r['fail_pct']:.0f}% {r['impact']} ({r['attends']}: "
                              f"{str(r['tags']).split(';')[0]})" for _, r in heads.iterrows())
        lines.append(f"| P{pos} {rows['position_name'].iloc[0]} | {rows['predicts'].iloc[0]} | {head_text} | "
                     f"{mlp.max() if len(mlp) else '-'} | {int((rows['kind'] == 'neuron').sum())} |")
    skip = info.get("skipped_by_attribution", {})
    lines += ["", f"Attribution patching vs true ablation (Spearman, same nodes): all {info['spearman_all']:.2f}, "
              f"heads {info['spearman_heads']:.2f}, neurons {info['spearman_neurons']:.2f}; "
              f"neurons skipped by attribution: {info['neurons_skipped']}.",
              "", f"Skipped by attribution (outside the last layer, |estimated loss change| < "
              f"{info.get('attribution_floor', 0):g}; listed in nodes.csv with ablated = False, not ablated): "
              f"{skip.get('head', 0)} heads, {skip.get('mlp', 0)} MLPs; {info.get('ablations', len(table))} "
              "nodes ablated.", "", "## Claims (tested on fresh questions)", "",
              "| claim | source | precision | recall | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| `{c['claim']}` | {c['source']} | {c['precision']:.2f} | {c['recall']:.2f} | {c['verdict']} |")
    held = sum(c["verdict"] == "holds" for c in claims)
    lines += ["", f"{held} of {len(claims)} claims hold (precision and recall >= 0.8).", "",
              "## Where each variable is linearly readable (best probe, held-out questions)", "",
              "| variable | stage | position | accuracy | baseline |", "|---|---|---|---|---|"]
    for _, r in best_probes(probes).iterrows():
        lines.append(f"| {r['variable']} | {r['layer']} | P{r['position']} {r['position_name']} | "
                     f"{r['accuracy']:.3f} | {r['baseline']:.3f} |")
    hard = _class_fail(table)
    if hard:
        lines += ["", "## The question classes that fail most when a node is ablated", "", hard]
    lines += ["", "Files: nodes.csv, probes.csv, claims.json, quanta_map.png, attention_by_node.png, probes.png, claims.png."]
    return "\n".join(lines) + "\n"


def _class_fail(table) -> str:
    tags = table[table["useful"]]["tags"].astype(str)
    counts = {}
    for text in tags:
        for part in text.split(";"):
            part = part.strip()
            if ":" in part and part.split(":")[0].replace(" ", "").isalnum() and part.endswith("%"):
                name = part.split(":")[0]
                counts[name] = counts.get(name, 0) + 1
    if not counts:
        return ""
    return ", ".join(f"{name}: {n} nodes fail half of its questions or more" for name, n in sorted(counts.items()))


def explain_run(run, overwrite: bool = False, sae_dir=None, **options) -> dict:
    """explain() of a loaded run's model (`checkpoint.load_run`), into RUN_DIR/analysis/explain/;
    with `sae_dir` (a folder written by scripts/train_sae.py on this run) also sae_features.csv: the
    SAE's features scored against the ground truth at every position it reads, and a section of
    summary.md."""
    out = run.path / "analysis" / "explain"
    refuse_existing([out / name for name in OUTPUTS + ((SAE_OUTPUT,) if sae_dir else ())], overwrite)
    sae = _load_run_sae(run, sae_dir) if sae_dir else None  # refused before the long work, not after
    result = explain(run.model, run.task, out, title=f"{run.path.name} step {run.step}", **options)
    if sae is not None:
        result["sae"] = explain_sae(run.model, run.task, out, *sae, seed=options.get("seed", 0),
                                    per_class=options.get("per_class", 200))
        result["paths"]["sae_features.csv"] = out / SAE_OUTPUT
    return result


SAE_OUTPUT = "sae_features.csv"


def _load_run_sae(run, sae_dir):
    """(sae, hook, positions) of an SAE trained on this run's model, or one line saying why not."""
    from ..sae import load_sae
    from ..sae_source import select_positions

    if not is_arithmetic(run.task):
        raise ValueError(f"--sae scores features against the ground truth, which the {run.task.name} task lacks")
    device = next(run.model.parameters()).device
    sae, _, config = load_sae(sae_dir, device=device)
    hook = config.get("hook")
    if hook not in run.model.hook_dict:
        raise ValueError(f"{sae_dir} was trained on hook {hook!r}, which this model lacks: give an SAE of this run")
    one = question_sampler(run.task, enrich=False).sample(1, torch.Generator().manual_seed(0)).tokens
    _, cache = run.model.run_with_cache(one.to(device), names_filter=[hook])
    if cache[hook].shape[-1] != sae.d_in:
        raise ValueError(f"{sae_dir} reads {sae.d_in} numbers per position, but {hook} of this model has "
                         f"{cache[hook].shape[-1]}: give an SAE of this run")
    if config.get("run_dir") and Path(config["run_dir"]).resolve() != Path(run.path).resolve():
        print(f"explain: note: {sae_dir} was trained on {config['run_dir']}, not {run.path}", flush=True)
    return sae, hook, select_positions(run.task, config.get("positions", "all"))


def explain_sae(model, task, out, sae, hook, positions, seed: int = 0, per_class: int = 200) -> pd.DataFrame:
    """The SAE's features scored against the ground-truth variables (sae_scores) on the explain
    questions; writes sae_features.csv and appends a section to summary.md."""
    from .sae_scores import score_sae_at_positions

    batch, _ = question_set(task, per_class, torch.Generator().manual_seed(seed))
    table = score_sae_at_positions(sae, model, hook, batch, variables(task, batch), positions, position_names(task))
    out = Path(out)
    atomic_write_text(out / SAE_OUTPUT, table.to_csv(index=False))
    best = table.sort_values("f1", ascending=False).drop_duplicates("variable").head(12)
    lines = ["", f"## SAE features against the ground truth ({hook})", "",
             f"{sae.d_sae} features, scored at {len(positions)} positions on {len(batch.tokens)} questions; "
             "each variable's best feature (on = activation > 0):", "",
             "| variable = value | feature | position | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    for _, r in best.iterrows():
        lines.append(f"| {r['variable']} = {r['value']} | {r['feature']} | P{r['position']} {r['position_name']} | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} |")
    summary_path = out / "summary.md"
    atomic_write_text(summary_path, summary_path.read_text() + "\n".join(lines) + "\n")
    return table

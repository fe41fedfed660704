"""An SAE on a trained run's model: activations through the hook system, the spliced-in check,
what each feature fires on, the plots, and the whole experiment that scripts/train_sae.py runs.

`ModelSource(model, task, hook, n_batches, batch_size, seed)` draws the same `n_batches` batches of
task questions every epoch (a fixed seed), runs the model only up to `hook` (the forward stops
there) and yields the hooked activation at the chosen positions as rows [batch * n_pos, d_in]
(trailing dimensions flattened, e.g. hook_z's [head, d_head]). Positions: 'all' (the notebook) or
'answer' (the task's scored positions, `task.pred_pos`). Activations are kept in memory after the
first pass when they fit in `cache_mb`.

`spliced_losses` is the check researchers trust most: the task loss with the SAE's reconstruction
patched in place of the activation (at the SAE's positions), against the clean loss and the loss
with the activation zeroed; `loss_recovered` = (zero - spliced) / (zero - clean), 1 = perfect.

`feature_stats` says, per feature, how often it fires (> 0) overall, at each answer position
(A5 .. A0, sign) and in each case class: the task's `case_masks` (BaseAdd / UseCarry1 / UseSum9,
or one per op) and its `question_classes` (S0.., or 'add S0', 'sub M1', 'sub N1', 'mul').
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_json, atomic_write_text, load_run, refuse_existing
from ..losses import score_sums
from ..memory import FLOAT, check_fits
from ..tasks import make_task
from ..plots import save_figure  # sets matplotlib's Agg backend before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402,I001
from .sae import (GRID_FIELDS, SAEConfig, evaluate_sae, format_report, grid_search, save_sae)

POSITIONS = ("all", "answer")
NOT_ROW_SHAPED = ("hook_attn_scores", "hook_pattern", "hook_attn", "hook_attn_pre")


class _StopForward(Exception):
    """Raised by the collecting hook: nothing after the hooked activation is needed."""


def check_hook(model, hook: str) -> str:
    try:
        point = model.get_hook_point(hook)
    except KeyError:
        examples = [name for name in ("blocks.0.mlp.hook_post", "blocks.0.hook_resid_post") if name in model.hook_dict]
        raise ValueError(f"the model has no hook point {hook!r}: use e.g. {' or '.join(examples) or 'hook_embed'} "
                         "(the names are in model.hook_dict)") from None
    if point.name.rsplit(".", 1)[-1] in NOT_ROW_SHAPED:
        raise ValueError(f"{hook} is shaped [batch, head, query, key], not [batch, pos, ...]: train the SAE on "
                         "an activation per position, e.g. blocks.0.mlp.hook_post or blocks.0.attn.hook_z")
    return point.name


def select_positions(task, positions) -> torch.Tensor:
    """The token positions an SAE reads: 'all', 'answer' (task.pred_pos) or a list of ints."""
    if positions == "all":
        return torch.arange(task.n_ctx)
    if positions == "answer":
        return task.pred_pos.clone()
    if isinstance(positions, str):
        raise ValueError(f"positions {positions!r} is not known: use 'all', 'answer' or a list of positions")
    pos = torch.as_tensor(list(positions), dtype=torch.int64)
    if len(pos) == 0 or pos.min() < 0 or pos.max() >= task.n_ctx or len(pos.unique()) != len(pos):
        raise ValueError(f"positions {list(positions)} must be distinct positions from 0 to {task.n_ctx - 1}")
    return pos


class ModelSource:
    """The hooked activations of `model` on fixed batches of `task` questions (see the docstring)."""

    def __init__(self, model, task, hook: str, n_batches: int = 100, batch_size: int = 64, seed: int = 0,
                 positions="all", cache_mb: float = 512):
        self.model, self.task, self.hook = model, task, check_hook(model, hook)
        self.n_batches, self.batch_size, self.seed = n_batches, batch_size, seed
        self.positions = select_positions(task, positions)
        self.cache_mb = cache_mb
        self.device = next(model.parameters()).device
        self._cache = None

    def questions(self):
        """The fixed question batches (the same every call)."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_batches):
            yield self.task.sample(self.batch_size, gen).to(self.device)

    @torch.no_grad()
    def activations(self, batch) -> torch.Tensor:
        """The hooked activation at the source's positions: [batch, n_pos, d_in]."""
        found = []

        def grab(tensor, hook):
            found.append(tensor)
            raise _StopForward

        with self.model.hooks(fwd_hooks=[(self.hook, grab)]):
            try:
                self.model(batch.tokens)
            except _StopForward:
                pass
        acts = found[0][:, self.positions.to(self.device)]  # [batch, n_pos, ...]
        return acts.reshape(*acts.shape[:2], -1).float()

    def pairs(self):
        """(question batch, activations [batch, n_pos, d_in]) for every batch."""
        for batch in self.questions():
            yield batch, self.activations(batch)

    def __iter__(self):
        if self._cache is not None:
            yield from self._cache
            return
        kept, size = [], 0.0
        for _, acts in self.pairs():
            rows = acts.reshape(-1, acts.shape[-1])  # [batch * n_pos, d_in]
            size += rows.numel() * rows.element_size() / 2**20
            if kept is not None and size <= self.cache_mb:
                kept.append(rows)
            else:
                kept = None  # too large to keep: recompute every epoch, as the notebook does
            yield rows
        if kept is not None:
            self._cache = kept


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


# ---- the whole experiment ---------------------------------------------------------------------

def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse (before any work) an existing folder unless overwrite, and never replace a non-SAE folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        refuse_existing(out, overwrite, "pass --overwrite to replace it or --name to choose another folder")
        if not (out / "sae_config.json").is_file():
            raise ValueError(f"{out} exists and is not an SAE folder (no sae_config.json): choose another --name")


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create the SAE folder, replacing an existing SAE folder only with overwrite."""
    check_out_dir(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def check_sae_fits(source: ModelSource, d_sae: int, device) -> None:
    """Refuse, before anything is allocated, an SAE whose weights (with gradients and Adam's
    moments) and one step's features cannot fit in memory."""
    d_in = source.activations(next(source.questions()).index(slice(0, 1))).shape[-1]
    rows = source.batch_size * len(source.positions)
    check_fits(FLOAT * (8 * d_in * d_sae + 4 * rows * d_sae), device,
               f"an SAE of {d_sae} features on {source.hook} (width {d_in})", "lower --d-sae")


def train_sae_on_run(run_dir, hook: str = "blocks.0.mlp.hook_post", grid: dict | None = None,
                     base: SAEConfig | None = None, step: int | None = None, positions="all",
                     n_batches: int = 100, eval_batches: int = 20, batch_size: int = 64, seed: int = 0,
                     enrich: bool | None = None, name: str | None = None, overwrite: bool = False,
                     device="cpu", log=tqdm.write, progress: bool = True) -> dict:
    """Train (or grid-search) an SAE on `hook` of the run's model, write it and its report into
    RUN_DIR/sae/<name> and return the report."""
    run = load_run(run_dir, step=step, device=device)
    task = run.task
    if enrich is not None:
        options = {k: v for k, v in run.config["task"].items() if k != "name"}
        if "enrich" not in options:
            raise ValueError(f"the {task.name} task has no enrich option: leave --enrich/--no-enrich out")
        task = make_task(task.name, **{**options, "enrich": enrich})
    hook = check_hook(run.model, hook)
    out = Path(run.path) / "sae" / (name or hook)
    if name is not None and (not name.strip() or Path(name).name != name):
        raise ValueError(f"--name {name!r} must be a plain folder name (no '/')")
    grid = {k: list(v) for k, v in (grid or {}).items()}
    base = base or SAEConfig()
    check_out_dir(out, overwrite)
    train_source = ModelSource(run.model, task, hook, n_batches, batch_size, seed, positions)
    eval_source = ModelSource(run.model, task, hook, eval_batches, batch_size, seed + 1, positions)
    check_sae_fits(train_source, max(grid.get("d_sae", [base.d_sae])), device)
    sae, cfg, history, table = grid_search(train_source, eval_source, grid or {"d_sae": [base.d_sae]}, base,
                                           log=log, progress=progress)
    final = evaluate_sae(sae, eval_source, cfg)
    log("Held-out: " + format_report(None, final, cfg.d_sae))
    spliced = spliced_losses(eval_source, sae)
    log(f"Spliced-in loss {spliced['sae_loss']:.4g} vs clean {spliced['clean_loss']:.4g} vs zero ablation "
        f"{spliced['zero_ablation_loss']:.4g} (loss recovered {spliced['loss_recovered']:.2%})")
    stats = feature_stats(eval_source, sae)
    data = {"run_dir": str(run.path), "step": run.step, "hook": hook, "positions": positions
            if isinstance(positions, str) else list(positions), "n_batches": n_batches, "eval_batches": eval_batches,
            "batch_size": batch_size, "seed": seed, "task": {"name": task.name, **task.options()}}
    prepare_out_dir(out, overwrite)
    save_sae(out, sae, cfg, extra=data)
    report = {**data, "sae": cfg.to_dict(), "held_out": final, "spliced": spliced,
              "epochs": history.to_dict(orient="records"),
              "grid": table.to_dict(orient="records") if len(table) > 1 else None}
    atomic_write_json(out / "report.json", _finite(report))
    atomic_write_text(out / "epochs.csv", history.to_csv(index=False))
    atomic_write_text(out / "features.csv", stats.to_csv(index=False))
    if len(table) > 1:
        atomic_write_text(out / "grid.csv", table.to_csv(index=False))
    subject = f"{hook} of {Path(run.path).name}"
    plot_feature_frequency(stats, out / "feature_frequency.png", f"SAE feature frequency: {subject}")
    plot_feature_heatmap(stats, "freq_", out / "feature_digits.png", f"Features by answer digit: {subject}")
    plot_feature_heatmap(stats, "freq_case_", out / "feature_cases.png", f"Features by case: {subject}")
    report["out_dir"] = str(out)
    return report


def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


__all__ = ["ModelSource", "check_hook", "select_positions", "spliced_losses", "feature_stats",
           "plot_feature_frequency", "plot_feature_heatmap", "train_sae_on_run", "POSITIONS", "GRID_FIELDS"]

"""The whole SAE experiment that scripts/train_sae.py runs on a trained run: activations from
its model (sae_source.py), an SAE trained or grid-searched on them (sae.py), the spliced-in check
and what each feature fires on (sae_features.py), all written into RUN_DIR/sae/<name>.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from ..store.checkpoint import atomic_write_json, atomic_write_text, load_run, refuse_existing
from ..memory import FLOAT, check_fits
from ..tasks import make_task
from .sae import (GRID_FIELDS, SAEConfig, evaluate_sae, format_report, grid_search, save_sae)
from .sae_features import feature_stats, plot_feature_frequency, plot_feature_heatmap, spliced_losses
from .sae_source import POSITIONS, ModelSource, check_hook, select_positions  # noqa: F401 (importable from here)

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

"""The phase-change gallery: run each seed experiment with its defaults and collect its figures.

`reproduce(names, out, scale)` trains each named experiment (addition, skip_trigram, induction,
modular; their settings are grokmath/experiments.py's) through grokmath.training.run.start_run, draws its plots (and, for modular addition, the progress
measures), copies the figures into `<out>/gallery/` as `<experiment>_<figure>.png`, and rewrites
`<out>/gallery/README.md`, an index of every figure found there with what it shows and what it
should look like. `scale` is 'full' (the seed notebooks' settings, the defaults of
scripts/train_*.py; modular is p=113 for 40k epochs: use a GPU), 'quick' (small enough for a CPU in a few minutes in all) or
'tiny' (a few steps each, for tests of the plumbing).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..analysis.progress import write_progress
from ..store.checkpoint import atomic_copy, atomic_write_json, atomic_write_text
from ..experiments import experiment_configs
from ..training.plots import plot_run
from ..training.run import start_run
from ..training.train import resolve_device

# The seed experiments in the gallery (their settings: grokmath/experiments.py)
GALLERY = ("addition", "skip_trigram", "induction", "modular")


# What each figure shows and what it should look like: (experiment, file) -> (title, text).
FIGURES = {
    ("addition", "per_position_loss.png"): (
        "5-digit addition: per-digit loss",
        "The loss of each answer digit (A5 = the leading carry digit, ..., A0 = the units), linear and "
        "log. Each digit's loss sits on a plateau and then drops in its own phase change, at a "
        "different step for each digit: the digits are learnt separately, not together."),
    ("addition", "case_loss.png"): (
        "5-digit addition: per-case loss",
        "One panel per case of a digit (BaseAdd: no carry in; UseCarry1: a carry in; UseSum9: a carry "
        "passed on through a digit sum of 9), a curve per answer digit. A digit's curves drop near its "
        "own phase-change step in every case; the UseSum9 curves (rare cases, few per batch) are the "
        "noisiest."),
    ("addition", "loss.png"): ("5-digit addition: loss", "The training loss on fresh batches: "
                               "a staircase, one step down per digit's phase change."),
    ("skip_trigram", "loss.png"): ("Skip-trigrams: loss", "A plateau near ln 10 = 2.3, a drop "
                                   "once the attention head finds the signal token, then a steady "
                                   "exponential fall on the log scale."),
    ("skip_trigram", "case_loss.png"): (
        "Skip-trigrams: per-target loss",
        "One curve per target token: all sit on the plateau at first, then each drops at its own "
        "step (tens of steps apart), after which they fall together."),
    ("induction", "loss.png"): ("Induction heads: loss", "The loss on the predictable tokens "
                                "of the repeats."),
    ("induction", "loss_references.png"): (
        "Induction heads: loss with reference levels",
        "The loss sits at the uniform level ln(127) = 4.84 until the induction heads form, then drops "
        "sharply (around step 750-1000 with the defaults) towards the optimal loss."),
    ("modular", "loss.png"): (
        "Modular addition: train and test loss (grokking)",
        "Train loss falls within a few hundred epochs (memorisation) while the test loss stays high or "
        "rises; much later the test loss collapses (grokking). Log-step axis."),
    ("modular", "progress_measures.png"): (
        "Modular addition: progress measures",
        "The paper's figure: losses with the phases shaded (memorisation, circuit formation, clean-up). "
        "Restricted loss (key frequencies only) falls well before the test loss does; excluded loss "
        "(key frequencies removed) rises during circuit formation; the Gini coefficients of W_E's and "
        "W_L's Fourier norms climb (the weights become sparse in the Fourier basis); the sum of "
        "squared weights falls, fastest in clean-up."),
    ("modular", "fourier.png"): (
        "Modular addition: Fourier components of the trained model",
        "W_E and W_L = W_out W_U are sparse in the Fourier basis: a handful of key frequencies (red) "
        "carry almost all the norm, and nearly every MLP neuron is dominated by one of them. Which "
        "frequencies appear depends on the seed (the paper's p=113 model: 14, 35, 41, 42, 52)."),
}


def run_experiment(name: str, out, scale: str = "full", device=None, overwrite: bool = False,
                   progress: bool = True) -> list[Path]:
    """Train experiment `name` into `<out>/<name>[_<scale>]`, draw its figures, copy them into
    `<out>/gallery/`; returns the gallery's copies."""
    task, model_cfg, train_cfg = experiment_configs(name, scale)
    run_dir = Path(out) / (name if scale == "full" else f"{name}_{scale}")
    start_run(model_cfg, task, train_cfg, run_dir, overwrite=overwrite, device=device, progress=progress,
              plots=False)
    figures = list(plot_run(run_dir))
    if name == "modular":
        written = write_progress(run_dir, progress=progress)["paths"]
        figures += [p for p in written if p.suffix == ".png"]
    gallery = Path(out) / "gallery"
    gallery.mkdir(parents=True, exist_ok=True)
    for old in gallery.glob(f"{name}_*.png"):  # figures of an earlier run of this experiment
        old.unlink()
    copies = []
    for figure in figures:
        copy = gallery / f"{name}_{Path(figure).name}"
        atomic_copy(figure, copy)
        copies.append(copy)
    atomic_write_json(gallery / f"{name}.json", {"run_dir": str(run_dir), "scale": scale,
                                                "task": {"name": task.name, **task.options()},
                                                "steps": train_cfg.steps})
    return copies


def write_index(gallery) -> Path:
    """(Re)write `<gallery>/README.md` listing every figure in the folder, known ones described."""
    gallery = Path(gallery)
    lines = ["# Gallery of phase changes", "",
             "Made by `python scripts/reproduce.py all` (add `--quick` for the reduced CPU versions). "
             "Each figure is copied from its run folder; the text says what it shows and what it should "
             "look like.", ""]
    for name in GALLERY:
        found = {path.name[len(name) + 1:]: path for path in gallery.glob(f"{name}_*.png")}
        if not found:
            continue
        known = [figure for (exp, figure) in FIGURES if exp == name and figure in found]
        lines += [f"## {name.replace('_', ' ')}", ""]
        source = gallery / f"{name}.json"
        if source.is_file():
            made = json.loads(source.read_text())
            options = ", ".join(f"{k} {v}" for k, v in made["task"].items() if k != "name")
            lines += [f"From `{made['run_dir']}` ({made['scale']} scale: {options}; {made['steps']} steps).", ""]
        for figure in known + sorted(set(found) - set(known)):
            path = found[figure]
            title, text = FIGURES.get((name, figure), (figure, "Another plot of this run (see grokmath.training.plots)."))
            lines += [f"### {title}", "", f"![{title}]({path.name})", "", text, ""]
    index = gallery / "README.md"
    atomic_write_text(index, "\n".join(lines))
    return index


def reproduce(names, out="runs", scale: str = "full", device=None, overwrite: bool = False,
              progress: bool = True) -> Path:
    """Run the named experiments ('all' for every one) and rewrite the gallery's index; returns it."""
    names = list(GALLERY) if "all" in names else list(dict.fromkeys(names))
    for name in names:
        if name not in GALLERY:
            raise ValueError(f"unknown experiment {name!r}: choose from {', '.join(GALLERY)} or 'all'")
        experiment_configs(name, scale)  # a bad scale fails before anything is trained
    resolve_device(device)
    for name in names:
        run_experiment(name, out, scale, device, overwrite, progress)
    return write_index(Path(out) / "gallery")

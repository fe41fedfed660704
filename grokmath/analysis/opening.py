"""How every analysis script opens a run: load it (its newest checkpoint, or `step`), print the
one line that says which run and which step (`Run.describe`), and hand it back."""
from __future__ import annotations

from ..store.checkpoint import Run, load_run


def open_run(run_dir, step: int | None = None, device="cpu", load_model: bool = True,
             at_step: bool = False) -> Run:
    """load_run(run_dir, step, device, load_model), its description printed first thing.

    at_step: describe the run at `step` (default: its last step) even when no model is loaded,
    for scripts that load the model later themselves (scripts/train_sae.py)."""
    run = load_run(run_dir, step=step, device=device, load_model=load_model)
    shown = (run.steps_done if step is None else step) if at_step else None
    print(run.describe(shown), flush=True)
    return run

"""The seed notebooks' results, reproduced with their full settings (slow: run with `pytest -m slow`).

Minutes each on a CPU; CI skips them. The thresholds are the issues' and the notebooks' own."""
from dataclasses import replace

import pytest

from grokmath.experiments import experiment_configs
from grokmath.training.metrics import phase_change_steps
from grokmath.model.transformer import Transformer
from grokmath.training.train import train

pytestmark = pytest.mark.slow


def run(name, steps=None):
    """The experiment's first `steps` steps (its warm-up schedule does not depend on the length)."""
    task, model_cfg, train_cfg = experiment_configs(name, "full")
    if steps is not None:
        train_cfg = replace(train_cfg, steps=steps)
    return train(Transformer(model_cfg), task, train_cfg, progress=False).metrics


def test_five_digit_addition_phase_changes():
    metrics = run("addition")
    assert metrics["train_loss"].tail(100).mean() < 0.05  # the notebook: 0.033 at step 2900
    steps = phase_change_steps(metrics, 0.1)
    assert all(step is not None for step in steps.values())
    # the leading carry digit first, well before any other digit
    assert steps["A5"] < min(v for k, v in steps.items() if k != "A5") - 500


def test_skip_trigram_loss_under_0_01_by_step_400():
    metrics = run("skip_trigram", steps=401)
    assert metrics["train_loss"].iloc[400] < 0.01


def test_induction_loss_drop_between_800_and_1200():
    metrics = run("induction", steps=1201)
    loss = metrics["train_loss"].rolling(20).mean()
    assert loss.iloc[500] > 4.0  # the plateau near ln(127)
    assert loss.iloc[1200] < 1.5
